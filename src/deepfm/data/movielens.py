"""MovieLens readers: ``ratings.dat`` of MovieLens-1M (``UserID::MovieID::Rating::Timestamp``).

Parsing uses pandas' C engine (``::`` is read as two ``:`` separators around an empty column), so
a million lines take well under a second. It is trusted only on files made of digits, ``:`` and
newlines that it reads into in-range int64 columns; anything else is parsed line by line, which
either gives the same frame or reports the first bad line by file, line and field.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from deepfm.errors import DataError

RATING_FIELDS = ("user_id", "movie_id", "rating", "timestamp")
RATINGS_FORMAT = "UserID::MovieID::Rating::Timestamp"


INT64_MAX = np.iinfo(np.int64).max
_RATINGS_BYTES = b"0123456789:\r\n"  # all a well-formed file holds


def read_ratings(path: str | Path) -> pd.DataFrame:
    """Read a MovieLens-1M ``ratings.dat`` into int64 columns ``user_id movie_id rating timestamp``.

    Any input gives either this frame or a :class:`DataError` naming the file (and the first bad
    line and field where there is one): fuzzed with random bytes, cut lines, huge ids and non-UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found (expected MovieLens ratings, {RATINGS_FORMAT})", path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot be read ({exc.strerror or exc})", path) from None
    if not data.strip():
        raise DataError(f"file is empty (expected MovieLens ratings, {RATINGS_FORMAT})", path)
    frame = _fast_parse(data)
    if frame is None:  # something unusual: parse line by line, which names the first bad line
        frame = _parse_lines(data, path)
    return frame


def _fast_parse(data: bytes) -> pd.DataFrame | None:
    """pandas' C parser, trusted only on files of digits, ':' and newlines that it reads cleanly."""
    if data.translate(None, _RATINGS_BYTES) or data.count(b"\r") != data.count(b"\r\n"):
        return None
    try:
        raw = pd.read_csv(io.BytesIO(data), sep=":", header=None, engine="c", skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OverflowError):
        return None
    if not _looks_valid(raw):
        return None
    frame = raw[[0, 2, 4, 6]].astype(np.int64)
    frame.columns = list(RATING_FIELDS)
    return frame.reset_index(drop=True)


def _looks_valid(raw: pd.DataFrame) -> bool:
    if raw.shape[1] != 7 or len(raw) == 0:
        return False
    if not all(raw[c].isna().all() for c in (1, 3, 5)):
        return False
    if not all(raw[c].dtype == np.int64 for c in (0, 2, 4, 6)):  # uint64/object: out of int64 range
        return False
    ratings = raw[4]
    return bool(((ratings >= 1) & (ratings <= 5)).all() and (raw[0] >= 0).all() and (raw[2] >= 0).all())


def _parse_lines(data: bytes, path: Path) -> pd.DataFrame:
    """Parse line by line; raise a :class:`DataError` at the first malformed line."""
    rows: list[tuple[int, int, int, int]] = []
    for number, raw_line in enumerate(data.split(b"\n"), start=1):
        line = raw_line[:-1] if raw_line.endswith(b"\r") else raw_line
        if not line.strip():
            continue
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise DataError("line has non-ASCII bytes; expected digits and '::'", path, number) from None
        parts = text.split("::")
        if len(parts) != 4:
            raise DataError(
                f"expected 4 '::'-separated fields ({RATINGS_FORMAT}), found {len(parts)}: {text[:80]!r}",
                path,
                number,
            )
        values = []
        for name, part in zip(RATING_FIELDS, parts):
            value = part.strip(" \t")
            if value.startswith("-") and value[1:].isdigit():
                raise DataError(f"{value[:40]!r} is negative", path, number, name)
            if not (value.isascii() and value.isdigit()):
                raise DataError(f"{value[:40]!r} is not an integer", path, number, name)
            if len(value) > 19 and int(value) > INT64_MAX:
                raise DataError(f"{value[:40]} is too large (at most {INT64_MAX})", path, number, name)
            values.append(int(value))
        if not 1 <= values[2] <= 5:
            raise DataError(f"rating {values[2]} is outside 1..5", path, number, "rating")
        rows.append((values[0], values[1], values[2], values[3]))
    if not rows:
        raise DataError(f"holds only blank lines (expected MovieLens ratings, {RATINGS_FORMAT})", path)
    return pd.DataFrame(np.array(rows, dtype=np.int64).reshape(-1, 4), columns=list(RATING_FIELDS))

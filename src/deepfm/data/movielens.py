"""MovieLens readers: ``ratings.dat`` of MovieLens-1M (``UserID::MovieID::Rating::Timestamp``).

Parsing uses pandas' C engine (``::`` is read as two ``:`` separators around an empty column), so
a million lines take well under a second. When the fast parse fails or the values are out of
range, a line-by-line scan finds the first bad line and reports it by file, line and field.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepfm.errors import DataError

RATING_FIELDS = ("user_id", "movie_id", "rating", "timestamp")
RATINGS_FORMAT = "UserID::MovieID::Rating::Timestamp"


def read_ratings(path: str | Path) -> pd.DataFrame:
    """Read a MovieLens-1M ``ratings.dat`` into int64 columns ``user_id movie_id rating timestamp``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found (expected MovieLens ratings, {RATINGS_FORMAT})", path)
    if path.stat().st_size == 0:
        raise DataError(f"file is empty (expected MovieLens ratings, {RATINGS_FORMAT})", path)
    try:
        raw = pd.read_csv(
            path,
            sep=":",
            header=None,
            engine="c",
            encoding="latin-1",
            skip_blank_lines=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, UnicodeDecodeError):
        raw = None
    if raw is not None and _looks_valid(raw):
        frame = raw[[0, 2, 4, 6]].astype(np.int64)
        frame.columns = list(RATING_FIELDS)
        if len(frame):
            return frame
    _raise_first_bad_line(path)
    raise DataError(f"could not be parsed as MovieLens ratings ({RATINGS_FORMAT})", path)


def _looks_valid(raw: pd.DataFrame) -> bool:
    if raw.shape[1] != 7 or len(raw) == 0:
        return False
    if not all(raw[c].isna().all() for c in (1, 3, 5)):
        return False
    if not all(pd.api.types.is_integer_dtype(raw[c]) for c in (0, 2, 4, 6)):
        return False
    ratings = raw[4]
    return bool(((ratings >= 1) & (ratings <= 5)).all() and (raw[0] >= 0).all() and (raw[2] >= 0).all())


def _raise_first_bad_line(path: Path) -> None:
    """Scan ``path`` line by line and raise a :class:`DataError` at the first malformed line."""
    with open(path, "rb") as f:
        for number, raw_line in enumerate(f, start=1):
            line = raw_line.rstrip(b"\r\n")
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
            for name, value in zip(RATING_FIELDS, parts):
                if not value.strip().lstrip("-").isdigit():
                    raise DataError(f"{value[:40]!r} is not an integer", path, number, name)
                if int(value) < 0:
                    raise DataError(f"{value!r} is negative", path, number, name)
            if not 1 <= int(parts[2]) <= 5:
                raise DataError(f"rating {parts[2]} is outside 1..5", path, number, "rating")

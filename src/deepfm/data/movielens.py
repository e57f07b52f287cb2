"""MovieLens readers: ML-1M ``ratings.dat`` / ``users.dat`` / ``movies.dat``, ML-100K ``u.*`` files.

Parsing uses pandas' C engine (``::`` is read as two ``:`` separators around an empty column), so
a million lines take well under a second. It is trusted only on files made of digits, ``:`` and
newlines that it reads into in-range int64 columns; anything else is parsed line by line, which
either gives the same frame or reports the first bad line by file, line and field.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
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
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors)
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


# --- side tables (users.dat / movies.dat of ML-1M, u.user / u.item / u.data of ML-100K) -------------
#
# The side files are small (thousands of lines), so they are parsed line by line: every problem is
# reported with its file, line and field. Values are returned raw (bucketing is in ``side_features``).

USERS_FORMAT = "UserID::Gender::Age::Occupation::Zip-code"
MOVIES_FORMAT = "MovieID::Title::Genres"
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
U_USER_FORMAT = "user id|age|gender|occupation|zip code"
U_ITEM_FORMAT = "movie id|title|release date|video release date|IMDb URL|19 genre flags"
U_DATA_FORMAT = "user id<TAB>item id<TAB>rating<TAB>timestamp"
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _lines(
    path: str | Path, sep: str, count: int, fmt: str, encoding: str
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, fields)`` of the non-blank lines of ``path``, each with ``count`` fields."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found (expected {fmt})", path)
    with open(path, encoding=encoding, newline="") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if number == 1:  # a UTF-8 byte-order mark, read as UTF-8 or as Latin-1
                line = line.removeprefix("\ufeff").removeprefix("\xef\xbb\xbf")
            if not line.strip():
                continue
            parts = line.split(sep)
            if len(parts) != count:
                raise DataError(
                    f"expected {count} {sep!r}-separated fields ({fmt}), found {len(parts)}: {line[:80]!r}",
                    path,
                    number,
                )
            yield number, parts


def _int(value: str, path: Path, number: int, name: str, low: int = 0, high: int | None = None) -> int:
    text = value.strip()
    if not text.lstrip("-").isdigit():
        raise DataError(f"{value[:40]!r} is not an integer", path, number, name)
    number_value = int(text)
    if number_value < low or (high is not None and number_value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise DataError(f"{number_value} is outside {bounds}", path, number, name)
    return number_value


def _gender(value: str, path: Path, number: int) -> str:
    if value not in ("M", "F"):
        raise DataError(f"gender {value[:10]!r} is not M or F", path, number, "gender")
    return value


def _frame(rows: list[tuple], columns: list[str], path: Path) -> pd.DataFrame:
    if not rows:
        raise DataError("file has no data lines", path)
    return pd.DataFrame.from_records(rows, columns=columns)


def title_year(title: str) -> int:
    """Release year from a MovieLens title such as ``Toy Story (1995)``; 0 when absent."""
    match = _YEAR.search(title)
    return int(match.group(1)) if match else 0


def read_users(path: str | Path) -> pd.DataFrame:
    """ML-1M ``users.dat`` -> ``user_id gender age occupation zip`` (age is ML-1M's bucket code)."""
    path = Path(path)
    rows = []
    for n, (uid, gender, age, occupation, zip_code) in _lines(path, "::", 5, USERS_FORMAT, "latin-1"):
        rows.append(
            (
                _int(uid, path, n, "user_id"),
                _gender(gender, path, n),
                _int(age, path, n, "age", 0, 150),
                _int(occupation, path, n, "occupation", 0, 100),
                zip_code.strip(),
            )
        )
    return _frame(rows, ["user_id", "gender", "age", "occupation", "zip"], path)


def read_movies(path: str | Path) -> pd.DataFrame:
    """ML-1M ``movies.dat`` (latin-1) -> ``movie_id title genres year`` (genres: list of str)."""
    path = Path(path)
    rows = []
    for n, (mid, title, genres) in _lines(path, "::", 3, MOVIES_FORMAT, "latin-1"):
        names = [g for g in genres.strip().split("|") if g]
        if not names:
            raise DataError("no genre (expected e.g. Animation|Comedy)", path, n, "genres")
        rows.append((_int(mid, path, n, "movie_id"), title, names, title_year(title)))
    return _frame(rows, ["movie_id", "title", "genres", "year"], path)


def read_users_100k(path: str | Path) -> pd.DataFrame:
    """ML-100K ``u.user`` -> ``user_id gender age occupation zip`` (age in years)."""
    path = Path(path)
    rows = []
    for n, (uid, age, gender, occupation, zip_code) in _lines(path, "|", 5, U_USER_FORMAT, "latin-1"):
        rows.append(
            (
                _int(uid, path, n, "user_id"),
                _gender(gender, path, n),
                _int(age, path, n, "age", 0, 150),
                occupation,
                zip_code,
            )
        )
    return _frame(rows, ["user_id", "gender", "age", "occupation", "zip"], path)


def read_items_100k(path: str | Path) -> pd.DataFrame:
    """ML-100K ``u.item`` (latin-1) -> ``movie_id title genres year`` from its 19 genre flags."""
    path = Path(path)
    rows = []
    for n, parts in _lines(path, "|", 5 + len(GENRES_100K), U_ITEM_FORMAT, "latin-1"):
        flags = parts[5:]
        for name, flag in zip(GENRES_100K, flags):
            if flag not in ("0", "1"):
                raise DataError(f"genre flag {flag[:10]!r} is not 0 or 1", path, n, name)
        genres = [name for name, flag in zip(GENRES_100K, flags) if flag == "1"] or ["unknown"]
        date = parts[2].strip()
        year = int(date[-4:]) if date[-4:].isdigit() else title_year(parts[1])
        rows.append((_int(parts[0], path, n, "movie_id"), parts[1], genres, year))
    return _frame(rows, ["movie_id", "title", "genres", "year"], path)


def read_ratings_100k(path: str | Path) -> pd.DataFrame:
    """ML-100K ``u.data`` (tab-separated) -> int64 ``user_id movie_id rating timestamp``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found (expected {U_DATA_FORMAT})", path)
    try:
        raw = pd.read_csv(path, sep="\t", header=None, engine="c", dtype=np.int64)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OverflowError):
        raw = None
    if (
        raw is not None
        and raw.shape[1] == 4
        and len(raw)
        and bool(raw[2].between(1, 5).all() and (raw[[0, 1]] >= 0).all().all())
    ):
        raw.columns = list(RATING_FIELDS)
        return raw
    for n, parts in _lines(path, "\t", 4, U_DATA_FORMAT, "latin-1"):
        for name, value in zip(RATING_FIELDS, parts):
            _int(value, path, n, name)
        _int(parts[2], path, n, "rating", 1, 5)
    raise DataError(f"could not be parsed as MovieLens-100K ratings ({U_DATA_FORMAT})", path)

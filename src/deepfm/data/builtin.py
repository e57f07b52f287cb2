"""The built-in data sets (registered on import): MovieLens-1M and MovieLens-100K.

Both label a rating as a click when it is > 3 (``--drop-neutral`` drops the rating-3 rows).
``--features ids`` keeps the reference fields (user and movie id); ``--features all`` adds the
side features, held as side tables keyed by ``user_id`` / ``movie_id`` (so a trained model
predicts from ids alone): gender, age bucket, occupation, zip-code prefix, genres (a multi-valued
field) and release-year bucket. ``--features all+time`` adds hour of day and weekday of the rating
(those two must then be given at predict time).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from deepfm.data.datasets import DataOptions, DatasetInfo, RawData, register
from deepfm.data.download import fetch
from deepfm.data.movielens import (
    read_items_100k,
    read_movies,
    read_ratings,
    read_ratings_100k,
    read_users,
    read_users_100k,
)
from deepfm.errors import ConfigError, DataError

FEATURES = ("ids", "all", "all+time")
ID_FIELDS = ["user_id", "movie_id"]
USER_FIELDS = ["gender", "age", "occupation", "zip_prefix"]
MOVIE_FIELDS = ["genres", "year"]
TIME_FIELDS = ["hour", "weekday"]
AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)  # ML-1M's age codes: under 18, 18-24, ..., 56+


def find_file(data_dir: Path | None, dataset: str, name: str, subdir: str) -> Path:
    """Locate ``name`` in ``data_dir`` (or its ``subdir``), or download the data set."""
    if data_dir is None:
        return fetch(dataset, name) / name
    for candidate in (data_dir / name, data_dir / subdir / name):
        if candidate.is_file():
            return candidate
    if not data_dir.exists():
        raise DataError(f"--data-dir {data_dir} does not exist")
    raise DataError(f"no {name} in {data_dir} (nor in {data_dir / subdir})", data_dir / name)


def year_bucket(year: pd.Series) -> np.ndarray:
    """5-year buckets from 1980, decades before, everything before 1940 together; 0 stays unknown."""
    y = year.to_numpy(dtype=np.int64)
    bucket = np.where(y >= 1980, y // 5 * 5, np.maximum(y // 10 * 10, 1930))
    return np.where(y > 0, bucket, 0)


def age_bucket(age: pd.Series) -> np.ndarray:
    """Age in years -> ML-1M's age code (the largest bucket start not above it)."""
    starts = np.asarray(AGE_BUCKETS)
    return starts[np.searchsorted(starts, age.to_numpy(), side="right") - 1].clip(min=1)


def user_table(users: pd.DataFrame) -> pd.DataFrame:
    zip_prefix = users["zip"].astype(str).str.strip().str[:2]
    return pd.DataFrame(
        {
            "user_id": users["user_id"],
            "gender": users["gender"],
            "age": users["age"],
            "occupation": users["occupation"],
            "zip_prefix": zip_prefix,
        }
    )


def movie_table(movies: pd.DataFrame) -> pd.DataFrame:
    """Genres and year bucket (features) and the title (shown by ``recommend``, not a feature)."""
    return pd.DataFrame(
        {
            "movie_id": movies["movie_id"],
            "genres": movies["genres"],
            "year": year_bucket(movies["year"]),
            "title": movies["title"],
        }
    )


def time_columns(frame: pd.DataFrame) -> None:
    """Hour of day and weekday (0 = Monday, UTC) of each rating's timestamp."""
    ts = frame["timestamp"].to_numpy(dtype=np.int64)
    frame["hour"] = (ts // 3600) % 24
    frame["weekday"] = (ts // 86400 + 3) % 7  # 1970-01-01 was a Thursday


# hour and weekday are read from the raw ``timestamp`` (training rows and predict records alike)
TIME_TRANSFORMS = {
    "hour": {"type": "hour_of_day", "column": "timestamp", "time_format": "unix"},
    "weekday": {"type": "weekday", "column": "timestamp", "time_format": "unix"},
}


def title_table(movies: Callable[[], pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """``{"movie_id": movie_id, title}`` for ids-only models (``recommend`` shows titles), when the
    movie file is there; no features are made from it. Without the file: no titles."""
    try:
        frame = movies()
    except DataError:
        return {}
    return {"movie_id": frame[["movie_id", "title"]].reset_index(drop=True)}


def movielens_raw(
    ratings: pd.DataFrame,
    options: DataOptions,
    side: Callable[[], tuple[pd.DataFrame, pd.DataFrame]],
    movies: Callable[[], pd.DataFrame],
) -> RawData:
    """Label, optionally drop neutral rows, and attach the side tables ``side()`` reads."""
    if options.features not in FEATURES:
        raise ConfigError(f"--features must be one of {list(FEATURES)}, got {options.features!r}")
    if options.drop_neutral:
        ratings = ratings[ratings["rating"] != 3].reset_index(drop=True)
    ratings["label"] = (ratings["rating"] > 3).astype("float32")
    if options.features == "ids":
        return RawData(ratings, list(ID_FIELDS), tables=title_table(movies))
    users, movies_frame = side()
    fields = ID_FIELDS + USER_FIELDS + MOVIE_FIELDS
    if options.features == "all+time":
        time_columns(ratings)
        fields += TIME_FIELDS
    tables = {"user_id": user_table(users), "movie_id": movie_table(movies_frame)}
    transforms = TIME_TRANSFORMS if options.features == "all+time" else {}
    return RawData(ratings, fields, kinds={"genres": "sequence"}, tables=tables, transforms=transforms)


def load_movielens_1m(data_dir: Path | None, options: DataOptions) -> RawData:
    def path(name: str) -> Path:
        return find_file(data_dir, "movielens-1m", name, "ml-1m")

    def side() -> tuple[pd.DataFrame, pd.DataFrame]:
        return read_users(path("users.dat")), read_movies(path("movies.dat"))

    return movielens_raw(
        read_ratings(path("ratings.dat")), options, side, lambda: read_movies(path("movies.dat"))
    )


def load_movielens_100k(data_dir: Path | None, options: DataOptions) -> RawData:
    def path(name: str) -> Path:
        return find_file(data_dir, "movielens-100k", name, "ml-100k")

    def side() -> tuple[pd.DataFrame, pd.DataFrame]:
        users = read_users_100k(path("u.user"))
        users["age"] = age_bucket(users["age"])
        return users, read_items_100k(path("u.item"))

    return movielens_raw(
        read_ratings_100k(path("u.data")), options, side, lambda: read_items_100k(path("u.item"))
    )


register(
    DatasetInfo(
        "movielens-1m",
        "MovieLens-1M ratings.dat (+ users.dat, movies.dat with --features all); label = rating > 3",
        load_movielens_1m,
    )
)
register(
    DatasetInfo(
        "movielens-100k",
        "MovieLens-100K u.data (+ u.user, u.item with --features all); label = rating > 3",
        load_movielens_100k,
    )
)

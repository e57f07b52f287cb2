"""MovieLens-1M and MovieLens-100K as dataset specs (ratings, users and movies side tables).

Both label a rating as a click when it is > 3 (``--drop-neutral`` filters the rating-3 rows out).
``--features ids`` keeps the reference fields (user and movie id); ``--features all`` adds the
side features, read from the users and movies tables joined by ``user_id`` / ``movie_id`` (so a
trained model predicts from ids alone): gender, age bucket, occupation, zip-code prefix, genres (a
multi-valued field) and release-year bucket. ``--features all+time`` adds hour of day and weekday
of the rating, read from its timestamp (those two must then be given at predict time).
``--split leave-last`` holds out each user's latest rating (test) and the one before (valid).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepfm.data.cache_cap import mark_used
from deepfm.data.catalog.entry import CATALOG_OPTIONS, Entry
from deepfm.data.download import fetch
from deepfm.data.options import PrepareOptions
from deepfm.data.spec import DatasetSpec, spec_from_dict
from deepfm.errors import DataError

RATINGS = ["user_id", "movie_id", "rating", "timestamp"]
# ML-1M age codes (1: under 18, 18: 18-24, ..., 56: 56+) as bucket edges: ML-100K ages in years
# fall into the same buckets
AGE_EDGES = [18, 25, 35, 45, 50, 56]
# release year: 5-year buckets from 1980, decades before, everything before 1940 together
YEAR_EDGES = [1940, 1950, 1960, 1970, 1980, 1985, 1990, 1995, 2000]
YEAR = r"\((\d{4})\)\s*$"  # "Toy Story (1995)"
GENRES_100K = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]  # fmt: skip


def _dat(files: str, columns: list[str], encoding: str = "utf-8") -> dict[str, Any]:
    """A ``::``-separated ML-1M file without header."""
    inp = {"files": [files], "format": "csv", "header": False, "separator": "::", "columns": columns}
    return inp | ({"encoding": encoding} if encoding != "utf-8" else {})


def _fields(options: PrepareOptions, hundred_k: bool) -> list[Any]:
    fields: list[Any] = ["user_id", "movie_id"]
    if options.features == "ids":
        return fields
    age = (
        {"name": "age", "kind": "numeric", "transform": "bucket", "edges": AGE_EDGES} if hundred_k else "age"
    )
    fields += [
        "gender",
        age,
        "occupation",
        {"name": "zip_prefix", "column": "zip", "pattern": r"^\s*(.{0,2})"},
    ]
    if hundred_k:  # 19 genre flag columns; the release date's year
        fields.append({"name": "genres", "kind": "multi", "flags": GENRES_100K})
        year = {"column": "release_date", "pattern": r"(\d{4})\s*$"}
    else:
        fields.append({"name": "genres", "kind": "multi"})
        year = {"column": "title", "pattern": YEAR}
    fields.append({"name": "year", "kind": "numeric", "transform": "bucket", "edges": YEAR_EDGES, **year})
    if options.features == "all+time":
        fields += [
            {"name": name, "column": "timestamp", "transform": transform, "time_format": "unix"}
            for name, transform in (("hour", "hour_of_day"), ("weekday", "weekday"))
        ]
    return fields


def spec_dict(options: PrepareOptions, hundred_k: bool = False, titles: bool = True) -> dict[str, Any]:
    """The spec of a MovieLens folder for ``options`` (file names relative to it). ``titles``:
    carry the movies table (titles shown by ``recommend``) also with ``--features ids``."""
    if hundred_k:
        ratings = {"files": ["u.data"], "format": "tsv", "header": False, "columns": RATINGS}
        users = {
            "files": ["u.user"],
            "format": "csv",
            "header": False,
            "separator": "|",
            "columns": ["user_id", "age", "gender", "occupation", "zip"],
        }
        movies = {
            "files": ["u.item"],
            "format": "csv",
            "header": False,
            "separator": "|",
            "encoding": "latin-1",
            "columns": ["movie_id", "title", "release_date", "video_release_date", "url", *GENRES_100K],
        }
    else:
        ratings = _dat("ratings.dat", RATINGS)
        users = _dat("users.dat", ["user_id", "gender", "age", "occupation", "zip"], "latin-1")
        movies = _dat("movies.dat", ["movie_id", "title", "genres"], "latin-1")
    tables = []
    if options.features != "ids":
        tables.append({"key": "user_id", "input": users})
    if options.features != "ids" or titles:
        tables.append({"key": "movie_id", "input": movies})
    spec: dict[str, Any] = {
        "name": "movielens-100k" if hundred_k else "movielens-1m",
        "input": ratings,
        "label": "rating > 3",
        "checks": ["rating >= 1", "rating <= 5"],
        **({"filter": "rating != 3"} if options.drop_neutral else {}),
        **({"tables": tables} if tables else {}),
        "fields": _fields(options, hundred_k),
        "split": (
            {"method": "leave_last", "group": "user_id", "time": "timestamp", "item": "movie_id"}
            if options.split == "leave-last"
            else {"method": "random", "ratios": [0.8, 0.1, 0.1]}
        ),
        "roles": {"user": "user_id", "item": "movie_id"},
    }
    return spec


def folder_of(data_dir: Path | None, dataset: str, marker: str, subdir: str) -> Path:
    """The folder holding ``marker`` (``data_dir`` or its ``subdir``), or the download's."""
    if data_dir is None:
        folder = fetch(dataset, marker)
        mark_used(folder)  # the cache's size cap keeps what this run uses
        return folder
    for candidate in (data_dir, data_dir / subdir):
        if (candidate / marker).is_file():
            return candidate
    if not data_dir.exists():
        raise DataError(f"--data-dir {data_dir} does not exist")
    raise DataError(f"no {marker} in {data_dir} (nor in {data_dir / subdir})", data_dir / marker)


def _spec(dataset: str, marker: str, subdir: str, hundred_k: bool) -> Any:
    def build(data_dir: Path | None, options: PrepareOptions) -> DatasetSpec:
        folder = folder_of(data_dir, dataset, marker, subdir)
        movies = "u.item" if hundred_k else "movies.dat"
        if options.features != "ids":
            for name in ("u.user" if hundred_k else "users.dat", movies):
                if not (folder / name).is_file():
                    raise DataError(f"--features {options.features} needs {name} in {folder}", folder / name)
        data = spec_dict(options, hundred_k, titles=(folder / movies).is_file())
        return spec_from_dict(data, source=dataset, base_dir=folder)

    return build


ENTRIES = [
    Entry(
        "movielens-1m",
        "MovieLens-1M ratings.dat (+ users.dat, movies.dat with --features all); label = rating > 3",
        _spec("movielens-1m", "ratings.dat", "ml-1m", hundred_k=False),
        lambda options: spec_dict(options),
        CATALOG_OPTIONS,
    ),
    Entry(
        "movielens-100k",
        "MovieLens-100K u.data (+ u.user, u.item with --features all); label = rating > 3",
        _spec("movielens-100k", "u.data", "ml-100k", hundred_k=True),
        lambda options: spec_dict(options, hundred_k=True),
        CATALOG_OPTIONS,
    ),
]

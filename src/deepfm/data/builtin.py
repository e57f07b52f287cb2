"""The built-in data sets (registered on import): MovieLens-1M."""

from __future__ import annotations

from pathlib import Path

from deepfm.data.datasets import DataOptions, DatasetInfo, RawData, register
from deepfm.data.download import fetch
from deepfm.data.movielens import read_ratings
from deepfm.errors import ConfigError, DataError


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


def load_movielens_1m(data_dir: Path | None, options: DataOptions) -> RawData:
    if options.features != "ids":
        raise ConfigError(f"--features {options.features!r} is not available yet; use 'ids'")
    ratings = read_ratings(find_file(data_dir, "movielens-1m", "ratings.dat", "ml-1m"))
    if options.drop_neutral:
        ratings = ratings[ratings["rating"] != 3].reset_index(drop=True)
    ratings["label"] = (ratings["rating"] > 3).astype("float32")
    return RawData(ratings, ["user_id", "movie_id"])


register(
    DatasetInfo(
        "movielens-1m",
        "MovieLens-1M ratings.dat; label = rating > 3 (or rating-3 rows dropped)",
        load_movielens_1m,
    )
)

"""Shared fixtures: the real data in ../shared/data when present, small generated data otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared data and downloads of the whole session go to a folder of its own, never to the
    user's cache (tests that need a fresh one set ``DEEPFM_CACHE`` themselves)."""
    folder = tmp_path_factory.mktemp("deepfm-cache")
    old = os.environ.get("DEEPFM_CACHE")
    os.environ["DEEPFM_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("DEEPFM_CACHE", None)
    else:
        os.environ["DEEPFM_CACHE"] = old


def prepared(data_dir: Path | str | None = None, **options: object):  # noqa: ANN201
    """``data_dir``'s built-in data set (MovieLens-1M unless ``dataset=``) through the prepare stage."""
    from deepfm.data.options import PrepareOptions
    from deepfm.data.prepare import prepare

    if data_dir is not None:
        options["data_dir"] = str(data_dir)
    return prepare(PrepareOptions(**options), progress=False)


def write_movielens(
    path: Path, n_users: int = 300, n_movies: int = 200, n: int = 20000, seed: int = 0
) -> Path:
    """A MovieLens-format ``ratings.dat`` with a planted signal.

    Each user and movie has a bias and a 4-d taste vector; the probability of a high rating is
    sigmoid(user bias + movie bias + 1.5 * <taste_u, taste_m>), so a model of user/movie
    interactions can reach an AUC far above 0.5.
    """
    rng = np.random.default_rng(seed)
    ub, mb = rng.normal(0, 1, n_users), rng.normal(0, 1, n_movies)
    ut, mt = rng.normal(0, 1, (n_users, 4)), rng.normal(0, 1, (n_movies, 4))
    users = rng.integers(0, n_users, n)
    movies = rng.integers(0, n_movies, n)
    logit = ub[users] + mb[movies] + 1.5 * (ut[users] * mt[movies]).sum(1) / 2
    like = rng.random(n) < 1 / (1 + np.exp(-logit))
    rating = np.where(like, rng.integers(4, 6, n), rng.integers(1, 4, n))
    ts = 978300000 + rng.integers(0, 10**7, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{u + 1}::{m + 1}::{r}::{t}" for u, m, r, t in zip(users, movies, rating, ts)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny_ml(tmp_path: Path) -> Path:
    """A folder holding a generated MovieLens-format ratings.dat (20,000 rows, planted signal)."""
    write_movielens(tmp_path / "ml" / "ratings.dat")
    return tmp_path / "ml"


@pytest.fixture
def ml_1m_half() -> Path:
    path = SHARED / "ml-1m-half"
    if not (path / "ratings.dat").exists():
        pytest.skip("../shared/data/ml-1m-half not present")
    return path


def fit_map(
    frame,  # noqa: ANN001 - a pandas DataFrame of raw values
    names: list[str],
    kinds: dict[str, str] | None = None,
    min_count: int = 1,
    max_vocab: int = 0,
    base=None,  # noqa: ANN001 - a warm start's FeatureMap
):  # noqa: ANN201
    """A feature map of ``frame``'s columns as the prepare stage fits one (for small unit tests):
    each field's vocabulary from its values' counts by :func:`choose_vocab`."""
    import pandas as pd

    from deepfm.data.features import FeatureMap, Field, base_vocab, choose_vocab

    fields = []
    for name in names:
        kind = (kinds or {}).get(name, "categorical")
        if kind == "numeric":
            fields.append(Field(name, "numeric"))
            continue
        column = frame[name]
        if kind == "multi":
            longest = int(column.map(len).max()) if len(column) else 0
            column = column.explode().dropna()
        counts = pd.Series(column).value_counts(sort=False)
        vocab = choose_vocab(
            counts.index.tolist(), counts.to_numpy(), min_count, max_vocab, base_vocab(base, name, kind)
        )
        fields.append(Field(name, kind, vocab, max_len=longest if kind == "multi" else 0))
    return FeatureMap(fields).with_offsets()

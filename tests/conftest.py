"""Shared fixtures: the real data in ../shared/data when present, small generated data otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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

"""MovieLens side features: users.dat / movies.dat / u.user / u.item parsing, --features all,
side tables in checkpoints (predict from ids alone), and the built-in movielens-100k."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import deepfm
from deepfm.cli.main import main
from deepfm.data.builtin import age_bucket, time_columns, year_bucket
from deepfm.data.datasets import DataOptions, load_raw, prepare
from deepfm.data.movielens import read_items_100k, read_movies, read_ratings_100k, read_users, read_users_100k
from deepfm.data.split import random_split
from deepfm.errors import DataError

ITEM_OK = "1|A|01-Jan-1995||u" + "|0" * 18 + "|1"
ITEM_BAD = "2|B|||u" + "|2" * 19
GENRES = ["Action", "Comedy", "Drama", "Romance", "Sci-Fi", "Thriller"]


def write_side_movielens(folder: Path, n_users: int, n_movies: int, n: int, seed: int = 0) -> Path:
    """ML-1M layout whose signal lives in the side features: women like Romance, men do not.

    With few ratings per user an id-only model can hardly learn each user's gender, while
    ``--features all`` sees gender and genres directly.
    """
    rng = np.random.default_rng(seed)
    female = rng.random(n_users) < 0.5
    romance = rng.random(n_movies) < 0.4
    folder.mkdir(parents=True, exist_ok=True)
    users = [
        f"{u + 1}::{'F' if female[u] else 'M'}::{rng.choice([1, 18, 25, 35])}::{rng.integers(0, 21)}::"
        f"{rng.integers(10000, 99999)}"
        for u in range(n_users)
    ]
    (folder / "users.dat").write_text("\n".join(users) + "\n")
    movies = []
    for m in range(n_movies):
        genres = list(rng.choice([g for g in GENRES if g != "Romance"], rng.integers(1, 3), replace=False))
        genres = (["Romance"] if romance[m] else []) + genres
        movies.append(f"{m + 1}::Caf\xe9 {m} ({rng.integers(1930, 2001)})::{'|'.join(genres)}")
    (folder / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    u, m = rng.integers(0, n_users, n), rng.integers(0, n_movies, n)
    logit = 2.5 * np.where(female[u] == romance[m], 1.0, -1.0)
    like = rng.random(n) < 1 / (1 + np.exp(-logit))
    rating = np.where(like, rng.integers(4, 6, n), rng.integers(1, 4, n))
    ts = 978300000 + rng.integers(0, 10**7, n)
    lines = [f"{a + 1}::{b + 1}::{r}::{t}" for a, b, r, t in zip(u, m, rating, ts)]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(autouse=True)
def restore_threads():
    """The trainings below run with --threads 1 (tiny data); put the global setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def side_ml(tmp_path_factory) -> Path:
    return write_side_movielens(tmp_path_factory.mktemp("side") / "ml", 3000, 1500, 20000)


def test_users_and_movies_parse_with_latin1_titles_years_and_genre_lists(tmp_path):
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072-1234\n")
    (tmp_path / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Caf\xe9 Society (The) (1930)::Drama\n"
        "3::No Year::Drama\n".encode("latin-1")
    )
    users = read_users(tmp_path / "users.dat")
    assert users.to_numpy().tolist() == [[1, "F", 1, 10, "48067"], [2, "M", 56, 16, "70072-1234"]]
    movies = read_movies(tmp_path / "movies.dat")
    assert movies["genres"].tolist() == [["Animation", "Children's", "Comedy"], ["Drama"], ["Drama"]]
    assert movies["title"][1] == "Caf\xe9 Society (The) (1930)"
    assert movies["year"].tolist() == [1995, 1930, 0]


@pytest.mark.parametrize(
    ("reader", "name", "good", "bad", "field", "needle"),
    [
        (read_users, "users.dat", "1::F::1::10::48067", "2::X::1::10::48067", "gender", "not M or F"),
        (read_users, "users.dat", "1::F::1::10::48067", "2::F::old::10::48067", "age", "not an integer"),
        (read_users, "users.dat", "1::F::1::10::48067", "2::F::1::10", None, "expected 5"),
        (read_movies, "movies.dat", "1::A (1995)::Drama", "x::B (1995)::Drama", "movie_id", "not an integer"),
        (read_movies, "movies.dat", "1::A (1995)::Drama", "2::B (1995)", None, "expected 3"),
        (read_movies, "movies.dat", "1::A (1995)::Drama", "2::B (1995)::", "genres", "no genre"),
        (read_users_100k, "u.user", "1|24|M|technician|85711", "2|24|M|x", None, "expected 5"),
        (read_items_100k, "u.item", ITEM_OK, ITEM_BAD, "unknown", "0 or 1"),
        (read_ratings_100k, "u.data", "1\t2\t3\t4", "1\t2\t7\t4", "rating", "outside 1..5"),
    ],
)  # fmt: skip
def test_malformed_side_line_is_named(tmp_path, reader, name, good, bad, field, needle):
    path = tmp_path / name
    path.write_text(f"{good}\n\n{bad}\n{good}\n")  # the bad line is line 3 (blank line 2 skipped)
    with pytest.raises(DataError) as err:
        reader(path)
    assert (err.value.line, err.value.field) == (3, field)
    assert f"{path}, line 3" in str(err.value) and needle in str(err.value)


def test_100k_readers_turn_genre_flags_into_lists_and_dates_into_years(tmp_path):
    flags = ["0"] * 19
    flags[1] = flags[14] = "1"  # Action, Romance
    (tmp_path / "u.item").write_bytes(
        ("1|Caf\xe9 (1995)|01-Jan-1994||http://x|" + "|".join(flags) + "\n").encode("latin-1")
    )
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|60|F|other|T8H1N\n")
    items = read_items_100k(tmp_path / "u.item")
    assert items[["movie_id", "genres", "year"]].to_numpy().tolist() == [[1, ["Action", "Romance"], 1994]]
    users = read_users_100k(tmp_path / "u.user")
    assert age_bucket(users["age"]).tolist() == [18, 56]
    assert users["zip"].tolist() == ["85711", "T8H1N"]


def test_year_and_time_buckets():
    assert year_bucket(pd.Series([1919, 1944, 1967, 1983, 1999, 0])).tolist() == [
        1930,
        1940,
        1960,
        1980,
        1995,
        0,
    ]
    frame = pd.DataFrame({"timestamp": [978300760]})  # 2000-12-31 22:12:40 UTC, a Sunday
    time_columns(frame)
    assert (frame["hour"][0], frame["weekday"][0]) == (22, 6)


def test_features_all_adds_side_fields_with_genres_as_one_bag(side_ml):
    ids = prepare("movielens-1m", side_ml, DataOptions(features="ids"))
    data = prepare("movielens-1m", side_ml, DataOptions(features="all"))
    assert [f.name for f in ids.feature_map.fields] == ["user_id", "movie_id"] and ids.train.bags is None
    names = [f.name for f in data.feature_map.fields]
    assert names == ["user_id", "movie_id", "gender", "age", "occupation", "zip_prefix", "genres", "year"]
    assert data.feature_map.field("genres").kind == "sequence"
    assert data.train.ids.shape[1] == 7 and data.train.bags.shape[1:] == (1, 3)
    assert set(data.tables) == {"user_id", "movie_id"}
    # the split is the same rows whatever the features
    assert data.test.label.equal(ids.test.label)
    timed = prepare("movielens-1m", side_ml, DataOptions(features="all+time"))
    assert [f.name for f in timed.feature_map.fields][-2:] == ["hour", "weekday"]


def test_features_all_learns_a_signal_that_lives_in_side_features(side_ml, tmp_path):
    aucs = {}
    for features in ("ids", "all"):
        out = tmp_path / features
        args = [
            "train",
            "--data-dir",
            str(side_ml),
            "--out",
            str(out),
            "--model",
            "fm",
            "--features",
            features,
        ]
        assert main([*args, "--epochs", "4", "--lr", "0.01", "--no-progress", "--threads", "1"]) == 0
        aucs[features] = (
            deepfm.load(str(out)).config,
            json.loads((out / "metrics.json").read_text()),
        )
    ids_auc, all_auc = aucs["ids"][1]["test_auc"], aucs["all"][1]["test_auc"]
    assert all_auc > 0.75 and all_auc > ids_auc + 0.05, (ids_auc, all_auc)


def test_checkpoint_carries_side_tables_so_ids_alone_predict(side_ml, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(side_ml), "--out", str(out), "--features", "all", "--seed", "3"]
    assert main([*args, "--epochs", "1", "--no-progress", "--threads", "1"]) == 0
    model = deepfm.load(str(out))
    assert set(model.tables) == {"user_id", "movie_id"}
    data = prepare("movielens-1m", side_ml, DataOptions(features="all"), seed=3)
    raw = load_raw("movielens-1m", side_ml, DataOptions(features="ids"))
    test_rows = raw.frame.iloc[random_split(len(raw.frame), seed=3)[2]]
    records = test_rows[["user_id", "movie_id"]].to_dict("records")
    np.testing.assert_allclose(model.predict(records), model.predict_split(data.test), rtol=1e-6)
    unseen = model.predict([{"user_id": 10**6, "movie_id": 10**6}])  # no side row: OOV / empty bag
    assert 0 < unseen[0] < 1


def write_100k(folder: Path, n_users: int = 200, n_movies: int = 150, n: int = 6000) -> Path:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    bias_u, bias_m = rng.normal(0, 1.5, n_users), rng.normal(0, 1.5, n_movies)
    u, m = rng.integers(0, n_users, n), rng.integers(0, n_movies, n)
    like = rng.random(n) < 1 / (1 + np.exp(-(bias_u[u] + bias_m[m])))
    rating = np.where(like, 5, 2)
    (folder / "u.data").write_text(
        "".join(f"{a + 1}\t{b + 1}\t{r}\t88125094{r}\n" for a, b, r in zip(u, m, rating))
    )
    occupations = ["technician", "other", "writer"]
    (folder / "u.user").write_text(
        "".join(
            f"{i + 1}|{rng.integers(10, 70)}|{'MF'[i % 2]}|{occupations[i % 3]}|{10000 + i}\n"
            for i in range(n_users)
        )
    )
    items = []
    for i in range(n_movies):
        flags = ["1" if rng.random() < 0.2 else "0" for _ in range(19)]
        items.append(f"{i + 1}|Film {i} (1990)|01-Jan-{1950 + i % 50}||http://x|" + "|".join(flags))
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    return folder


def test_movielens_100k_builtin_reads_its_layout(tmp_path):
    folder = write_100k(tmp_path / "ml-100k")
    data = prepare("movielens-100k", folder, DataOptions(features="all"))
    assert len(data.train) + len(data.valid) + len(data.test) == 6000
    assert set(data.feature_map.field("age").vocab) <= {1, 18, 25, 35, 45, 50, 56}
    assert data.feature_map.field("genres").kind == "sequence"
    out = tmp_path / "run"
    args = ["train", "--dataset", "movielens-100k", "--data-dir", str(folder), "--out", str(out)]
    assert (
        main([*args, "--features", "all", "--epochs", "5", "--lr", "0.01", "--no-progress", "--threads", "1"])
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["test_auc"] > 0.7


def test_real_ml_1m_half_side_tables(ml_1m_half):
    data = prepare("movielens-1m", ml_1m_half, DataOptions(features="all"))
    sizes = {f.name: f.size for f in data.feature_map.fields}
    assert sizes["user_id"] == 3000 and sizes["gender"] == 3 and sizes["age"] == 8
    assert sizes["genres"] == 19  # 18 genres + OOV
    assert data.train.bags.shape[1:] == (1, 6)  # up to 6 genres a movie

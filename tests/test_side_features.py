"""MovieLens side features: users.dat / movies.dat / u.user / u.item parsing, --features all,
side tables in checkpoints (predict from ids alone), and the built-in movielens-100k."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import prepared

import deepfm
from deepfm.cli.main import main
from deepfm.data import transforms
from deepfm.data.split import random_parts, row_uniforms
from deepfm.data.tables import join_tables
from deepfm.errors import DataError

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


def test_side_tables_read_latin1_titles_years_zip_prefixes_and_genre_lists(tmp_path):
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072-1234\n")
    (tmp_path / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Caf\xe9 Society (The) (1930)::Drama\n"
        "3::No Year::Drama\n".encode("latin-1")
    )
    lines = [f"{1 + i % 2}::{1 + i % 3}::{1 + i % 5}::97830{i:04d}" for i in range(60)]
    (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n")
    data = prepared(tmp_path, features="all")
    users, movies = data.tables["user_id"], data.tables["movie_id"]
    assert users.to_numpy().tolist() == [["1", "F", "1", "10", "48067"], ["2", "M", "56", "16", "70072-1234"]]
    assert movies["title"][1] == "Caf\xe9 Society (The) (1930)"
    model_fields = data.feature_map
    encoded = model_fields.encode(
        join_tables(pd.DataFrame({"user_id": ["2"], "movie_id": ["1"]}), data.tables)
    )
    zip_prefix, year, genres = (model_fields.field(n) for n in ("zip_prefix", "year", "genres"))
    row = encoded["ids"][0]
    names = [f.name for f in model_fields.categorical]
    assert zip_prefix.vocab[row[names.index("zip_prefix")] - zip_prefix.offset - 1] == "70"
    assert year.vocab[row[names.index("year")] - year.offset - 1] == 8  # 1995: the 1995-1999 bucket
    bag = encoded["bags"][0, 0]
    assert sorted(genres.vocab[i - genres.offset - 1] for i in bag if i) == [
        "Animation",
        "Children's",
        "Comedy",
    ]
    no_year = transforms.apply(year.transform, pd.Series(["No Year"]))
    assert no_year.tolist() == [transforms.MISSING]


@pytest.mark.parametrize(
    ("name", "good", "bad", "field", "needle"),
    [
        ("users.dat", "1::F::1::10::48067", "2::F::1::10", None, "expected 5 columns, found 4"),
        ("movies.dat", "1::A (1995)::Drama", "2::B (1995)", None, "expected 3 columns, found 2"),
        ("u.user", "1|24|M|technician|85711", "2|24|M|x", None, "expected 5 columns, found 4"),
        ("u.user", "1|24|M|technician|85711", "2|old|M|x|85711", "age", "'old' is not a number"),
        ("u.data", "1\t2\t3\t4", "1\t2\t7\t4", "rating", "7 breaks the check 'rating <= 5'"),
    ],
)  # fmt: skip
def test_malformed_side_line_is_named(tmp_path, name, good, bad, field, needle):
    hundred_k = name.startswith("u.")
    folder = write_100k(tmp_path / "ml") if hundred_k else write_side_movielens(tmp_path / "ml", 20, 10, 200)
    path = folder / name
    path.write_text(f"{good}\n{bad}\n" if name != "u.data" else f"{good}\n{bad}\n" + path.read_text())
    dataset = "movielens-100k" if hundred_k else "movielens-1m"
    with pytest.raises(DataError) as err:
        prepared(folder, dataset=dataset, features="all")
    assert (err.value.line, err.value.field) == (2, field)
    assert f"{path}, line 2" in str(err.value) and needle in str(err.value)


def test_100k_genre_flags_become_one_bag_and_ages_ml_1m_buckets(tmp_path):
    flags = ["0"] * 19
    flags[1] = flags[14] = "1"  # Action, Romance
    folder = write_100k(tmp_path / "ml-100k")
    (folder / "u.item").write_bytes(
        ("1|Caf\xe9 (1995)|01-Jan-1994||http://x|" + "|".join(flags) + "\n").encode("latin-1")
    )
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|60|F|other|T8H1N\n")
    data = prepared(folder, dataset="movielens-100k", features="all")
    items = data.tables["movie_id"]
    assert items.loc[0, "genres"] == "Action|Romance" and items.loc[0, "release_date"] == "01-Jan-1994"
    age = data.feature_map.field("age")
    ages = transforms.apply(age.transform, pd.Series([24, 60, 17, None]))
    assert ages.tolist() == [1, 6, 0, transforms.MISSING]  # ML-1M's codes 18, 56, 1 as buckets 1, 6, 0
    year = data.feature_map.field("year")
    assert transforms.apply(year.transform, pd.Series(["01-Jan-1994"])).tolist() == [7]  # 1990-1994


def test_time_parts_of_a_unix_timestamp():
    at = pd.Series([978300760])  # 2000-12-31 22:12:40 UTC, a Sunday
    hour = transforms.apply({"type": "hour_of_day", "time_format": "unix"}, at)
    weekday = transforms.apply({"type": "weekday", "time_format": "unix"}, at)
    assert (hour[0], weekday[0]) == (22, 6)


def test_features_all_adds_side_fields_with_genres_as_one_bag(side_ml):
    ids = prepared(side_ml, features="ids")
    data = prepared(side_ml, features="all")
    assert [f.name for f in ids.feature_map.fields] == ["user_id", "movie_id"] and ids.train.bags is None
    names = [f.name for f in data.feature_map.fields]
    assert names == ["user_id", "movie_id", "gender", "age", "occupation", "zip_prefix", "genres", "year"]
    assert data.feature_map.field("genres").kind == "multi"
    assert data.train.ids.shape[1] == 7 and data.train.bags.shape[1:] == (1, 3)
    assert set(data.tables) == {"user_id", "movie_id"}
    # the split is the same rows whatever the features
    assert data.test.label.equal(ids.test.label)
    timed = prepared(side_ml, features="all+time")
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
    data = prepared(side_ml, features="all", seed=3)
    ratings = pd.read_csv(side_ml / "ratings.dat", sep="::", engine="python", header=None)
    parts = random_parts(
        row_uniforms(3, 0, np.arange(1, len(ratings) + 1)), (0.8, 0.1, 0.1)
    )  # the split rule
    test_rows = ratings[parts == 2].rename(columns={0: "user_id", 1: "movie_id"})
    records = test_rows[["user_id", "movie_id"]].to_dict("records")  # ids as ints: coerced to the vocabulary
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
    data = prepared(folder, dataset="movielens-100k", features="all")
    assert len(data.train) + len(data.valid) + len(data.test) == 6000
    assert data.feature_map.field("age").vocab == [transforms.MISSING, *range(7)]  # 7 age buckets
    assert data.feature_map.field("genres").kind == "multi"
    out = tmp_path / "run"
    args = ["train", "--dataset", "movielens-100k", "--data-dir", str(folder), "--out", str(out)]
    assert (
        main([*args, "--features", "all", "--epochs", "5", "--lr", "0.01", "--no-progress", "--threads", "1"])
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["test_auc"] > 0.7


def test_real_ml_1m_half_side_tables(ml_1m_half):
    data = prepared(ml_1m_half, features="all")
    sizes = {f.name: f.size for f in data.feature_map.fields}
    assert sizes["user_id"] == 3000 and sizes["gender"] == 3 and sizes["age"] == 8
    assert sizes["genres"] == 19  # 18 genres + OOV
    assert data.train.bags.shape[1:] == (1, 6)  # up to 6 genres a movie


@pytest.mark.parametrize("features", ["ids", "all"])
def test_the_printed_spec_saved_beside_the_files_trains_what_the_built_in_trains(
    side_ml, tmp_path, capsys, features
):
    """``deepfm datasets --show movielens-1m`` is the built-in data set: same split, same AUC."""
    folder = tmp_path / "ml"
    folder.mkdir()
    for name in ("ratings.dat", "users.dat", "movies.dat"):
        (folder / name).symlink_to(side_ml / name)
    assert main(["datasets", "--show", "movielens-1m", "--features", features]) == 0
    (folder / "movielens.yaml").write_text(capsys.readouterr().out)
    common = ["--epochs", "2", "--seed", "4", "--no-progress", "--threads", "1", "--model", "fm"]
    built_in = ["train", "--dataset", "movielens-1m", "--data-dir", str(folder), "--features", features]
    assert main([*built_in, *common, "--out", str(tmp_path / "built-in")]) == 0
    assert (
        main(["train", "--spec", str(folder / "movielens.yaml"), *common, "--out", str(tmp_path / "spec")])
        == 0
    )
    a, b = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("built-in", "spec"))
    assert a["data"]["rows"] == b["data"]["rows"] and a["data"]["fields"] == b["data"]["fields"]
    assert a["test_auc"] == b["test_auc"] and a["best_valid_auc"] == b["best_valid_auc"]
    assert a["data_fingerprint"] == b["data_fingerprint"]  # the same prepared arrays

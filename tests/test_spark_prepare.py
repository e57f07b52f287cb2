"""The parity contract of the two prepare engines: on the same spec and seed, ``--engine spark``
writes the same prepared folder as the default engine (identical feature map and encoded rows;
the mean / std of standardised fields up to the order of floating-point sums), with the same
bad-row counts and messages.

One Spark session (``local[2]``) serves the whole module. The tests skip only when no Java
runtime is installed or pyspark is not (it comes with ``deepfm[spark]``, which ``.[all]`` includes).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deepfm.data.catalog import dataset_spec
from deepfm.data.options import EngineOptions, PrepareOptions
from deepfm.data.prepare import open_prepared, write_prepared
from deepfm.data.spec import spec_from_dict
from deepfm.errors import DataError

JAVA = shutil.which("java") is not None
PYSPARK = importlib.util.find_spec("pyspark") is not None
pytestmark = [
    pytest.mark.skipif(not PYSPARK, reason="pyspark not installed: pip install 'deepfm[spark]'"),
    pytest.mark.skipif(not JAVA, reason="no Java runtime: the spark engine needs Java 17+"),
]

SPARK = EngineOptions("spark")


@pytest.fixture(scope="module", autouse=True)
def spark():
    """One local Spark session for the module (the engine uses the active session)."""
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.log.level", "ERROR")
        .getOrCreate()
    )
    yield session
    session.stop()


def both(spec, tmp_path: Path, shards: int = 0, **options) -> tuple[Path, Path]:
    """``spec`` prepared by the default engine and by Spark, into two folders."""
    opts = PrepareOptions(**options)
    a = write_prepared(spec, opts, tmp_path / "polars", progress=False, shards=shards)
    b = write_prepared(spec, opts, tmp_path / "spark", progress=False, shards=shards, engine=SPARK)
    return a, b


def assert_same(a: Path, b: Path) -> dict:
    """The two folders hold the same prepared data; returns Spark's meta.json."""
    fa, fb = (json.loads((f / "feature_map.json").read_text())["fields"] for f in (a, b))
    assert [f["name"] for f in fa] == [f["name"] for f in fb]
    for x, y in zip(fa, fb):
        if (x.get("transform") or {}).get("type") == "standardize":  # sums in another order
            for key in ("mean", "std"):
                assert y["transform"][key] == pytest.approx(x["transform"][key], rel=1e-12)
                x["transform"][key] = y["transform"][key]
        assert x == y, x["name"]
    ma, mb = (json.loads((f / "meta.json").read_text()) for f in (a, b))
    for key in (
        "rows",
        "shards",
        "positives",
        "bad_lines_skipped",
        "bad_line_examples",
        "hashing",
        "ignored_tokens",
    ):
        assert ma.get(key) == mb.get(key), key
    assert (ma["engine"]["name"], mb["engine"]["name"]) == ("polars", "spark")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name.endswith(".npy"):
            x, y = np.load(a / name), np.load(b / name)
            assert x.dtype == y.dtype and x.shape == y.shape, name
            if name.endswith("dense.npy"):
                np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7, err_msg=name)
            else:
                np.testing.assert_array_equal(y, x, err_msg=name)
    for table in a.glob("table_*.parquet"):
        assert (b / table.name).read_bytes() == table.read_bytes()
    data = open_prepared(b)  # what deepfm train --prepared reads
    assert len(data.train) == mb["rows"]["train"] > 0
    return mb


def write_clicks(folder: Path, n: int = 1500, seed: int = 0) -> None:
    """Two click-log files (the second gzipped) with every field kind and a few bad rows."""
    rng = np.random.default_rng(seed)
    header = "label,user,item,price,clicks,tags,device,ts,url,action,comedy,rating"
    lines = []
    for _ in range(n):
        tags = "|".join(f"t{t}" for t in rng.choice(12, rng.integers(0, 5), replace=False))
        lines.append(
            ",".join(
                [
                    str(int(rng.random() < 0.3)),
                    f"u{rng.integers(0, 60)}",
                    "" if rng.random() < 0.1 else str(rng.integers(0, 40)),
                    "" if rng.random() < 0.05 else f"{rng.lognormal(2, 1):.3f}",
                    "" if rng.random() < 0.1 else str(int(rng.lognormal(1, 1.5))),
                    f'"{tags}"',
                    f"d{rng.integers(0, 700):x}",
                    str(1_600_000_000 + int(rng.integers(0, 10**6))),
                    f"https://{['a.com', 'b.org', 'c.net'][rng.integers(0, 3)]}/p{rng.integers(0, 9)}",
                    str(int(rng.random() < 0.4)),
                    str(int(rng.random() < 0.3)),
                    str(int(rng.integers(0, 6))),
                ]
            )
        )
    bad = [
        "1,u1,3,4.5,2",  # too few columns
        '0,u2,3,abc,2,"t1",d1,1600000000,https://a.com/x,0,1,2',  # not a number
        '1,u3,3,1e400,2,"t1",d1,1600000000,https://a.com/x,0,1,2',  # beyond float32
        ',u4,3,4.5,2,"t1",d1,1600000000,https://a.com/x,0,1,2',  # no label
        'nan,u5,3,4.5,2,"t1",d1,1600000000,https://a.com/x,0,1,2',  # NaN label
        '0,u6,3,4.5,2,"t1",d1,1600000000,https://a.com/x,0,1,-1',  # breaks the check
    ]
    for k, line in enumerate(bad):
        lines.insert(37 * (k + 1), line)
    half = len(lines) // 2
    (folder / "a.csv").write_text("\n".join([header, *lines[:half]]) + "\n")
    with gzip.open(folder / "b.csv.gz", "wt") as f:
        f.write("\n".join([header, *lines[half:]]) + "\n")


CLICK_FIELDS = [
    {"name": "user", "min_count": 2},
    {"name": "item", "max_vocab": 25},
    {"name": "price", "kind": "numeric", "transform": "standardize"},
    {"name": "price_q", "column": "price", "kind": "numeric", "transform": "quantile", "buckets": 5},
    {"name": "clicks", "kind": "numeric", "transform": "log2bucket"},
    {"name": "tags", "kind": "multi", "max_len": 3},
    {"name": "device", "hash_buckets": 100},
    {"name": "hour", "column": "ts", "transform": "hour_of_day", "time_format": "unix"},
    {"name": "weekday", "column": "ts", "transform": "weekday", "time_format": "unix"},
    {"name": "domain", "column": "url", "pattern": "^https?://([^/]+)"},
    {"name": "genres", "kind": "multi", "flags": ["action", "comedy"]},
    {"name": "stars", "column": "rating", "kind": "numeric", "transform": "bucket", "edges": [2, 4]},
]


@pytest.mark.parametrize("split, shards", [("random", 0), ("time", 3)])
def test_csv_parity_every_field_kind_and_skipped_rows(tmp_path, split, shards):
    """With ``shards``: the training split dealt round robin into the same shard files."""
    write_clicks(tmp_path)
    spec = spec_from_dict(
        {
            "name": "clicks",
            "input": {"files": ["a.csv", "b.csv.gz"], "format": "csv"},
            "label": "label",
            "filter": "rating != 3",
            "checks": ["rating >= 0"],
            "fields": CLICK_FIELDS,
            "split": {"method": "random"} if split == "random" else {"method": "time", "column": "ts"},
        },
        "clicks.yaml",
        tmp_path,
    )
    a, b = both(spec, tmp_path, shards, on_bad_lines="skip", seed=7, min_count=1)
    meta = assert_same(a, b)
    if shards:
        assert meta["shards"]["train"]["count"] == 3 and not (b / "train_ids.npy").exists()
        assert (b / "train-00002-of-00003_bags.npy").exists()
    assert meta["bad_lines_skipped"] == 6 and "expected 12 columns, found 5" in meta["bad_line_examples"][0]
    assert meta["hashing"]["device"]["distinct_values"] > 100


def write_movielens_all(folder: Path, n: int = 3000, seed: int = 1) -> None:
    """ratings.dat, users.dat and movies.dat (latin-1, '::') of a small MovieLens-1M."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ratings = [
        f"{rng.integers(1, 80)}::{rng.integers(1, 50)}::{rng.integers(1, 6)}::{rng.integers(0, 10**6)}"
        for _ in range(n)
    ]
    (folder / "ratings.dat").write_text("\n".join(ratings) + "\n")
    users = [
        f"{u}::{'MF'[u % 2]}::{[1, 18, 25, 35][u % 4]}::{u % 21}::{10000 + 37 * u}" for u in range(1, 80)
    ]
    (folder / "users.dat").write_bytes(("\n".join(users) + "\n").encode("latin-1"))
    genres = ["Action", "Comedy", "Drama", "Sci-Fi", "Children's"]
    movies = [
        f"{m}::Film {'é' if m % 3 else 'a'} {m} ({1930 + 2 * m})::"
        + "|".join(genres[k] for k in range(5) if (m >> k) & 1)
        for m in range(1, 45)  # movies 45-49 are not in the table: missing side values
    ]
    (folder / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))


def test_movielens_parity_side_tables_filter_checks_leave_last(tmp_path):
    write_movielens_all(tmp_path / "ml")
    options = {"features": "all", "split": "leave-last", "drop_neutral": True}
    spec = dataset_spec(PrepareOptions(dataset="movielens-1m", data_dir=str(tmp_path / "ml"), **options))
    a, b = both(spec, tmp_path, **options)
    meta = assert_same(a, b)
    assert meta["tables"] == ["user_id", "movie_id"] and meta["rows"]["test"] > 50


def write_libsvm(folder: Path, seed: int = 2) -> None:
    """BARS-style libsvm train / valid / test files: user [0, 50), item [50, 80), tags [80, 92)."""
    rng = np.random.default_rng(seed)
    for part, n in (("train", 900), ("valid", 120), ("test", 120)):
        lines = []
        for i in range(n):
            tokens = [f"{rng.integers(0, 50)}:1", f"{50 + rng.integers(0, 30)}:1"]
            tokens += [f"{80 + t}:1" for t in rng.choice(12, rng.integers(0, 4), replace=False)]
            if rng.random() < 0.1:
                tokens.append(f"{100 + rng.integers(0, 5)}:1")  # outside every range
            if rng.random() < 0.05:
                tokens.append(f"{80 + rng.integers(0, 12)}:0")  # value 0: dropped
            rng.shuffle(tokens)
            lines.append(f"{int(rng.random() < 0.35)} " + " ".join(tokens))
            if part == "train" and i in (10, 500):
                lines.append("1 3:1 7:x")  # a malformed token: skipped
            if part == "train" and i == 200:
                lines.append("0 3:1 4:1 60:1")  # two users: skipped
        (folder / f"{part}.svm").write_text("\n".join(lines) + "\n")


def test_libsvm_parity_index_ranges_files_split_skipped_rows(tmp_path):
    write_libsvm(tmp_path)
    spec = spec_from_dict(
        {
            "input": {"files": ["train.svm"], "format": "libsvm"},
            "fields": [
                {"name": "user", "index_range": [0, 50]},
                {"name": "item", "index_range": [50, 80]},
                {"name": "tags", "index_range": [80, 92], "kind": "multi"},
                {"name": "features", "kind": "multi"},
            ],
            "split": {
                "method": "files",
                "files": {"train": ["train.svm"], "valid": ["valid.svm"], "test": ["test.svm"]},
            },
        },
        "svm.yaml",
        tmp_path,
    )
    a, b = both(spec, tmp_path, on_bad_lines="skip")
    meta = assert_same(a, b)
    assert meta["bad_lines_skipped"] == 3 and meta["ignored_tokens"] > 0


def test_a_bad_row_stops_both_engines_with_the_same_message(tmp_path):
    lines = ["label,user,price", *(f"{k % 2},u{k % 7},{k}.5" for k in range(40))]
    lines[17] = "1,u3,12x"
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    spec = spec_from_dict(
        {
            "input": {"files": ["d.csv"], "format": "csv"},
            "fields": ["user", {"name": "price", "kind": "numeric"}],
        },
        "d.yaml",
        tmp_path,
    )
    messages = []
    for engine, out in ((None, "p"), (SPARK, "s")):
        with pytest.raises(DataError) as caught:
            write_prepared(spec, PrepareOptions(), tmp_path / out, progress=False, engine=engine)
        messages.append(str(caught.value))
        assert not (tmp_path / out).exists()  # nothing half-written
    assert messages[0] == messages[1]
    assert "d.csv, line 18, field 'price': '12x' is not a number" in messages[1]

    (tmp_path / "d.csv").write_text("\n".join([*lines[:17], *lines[18:], "2,u1,3"]) + "\n")
    messages = []
    for engine, out in ((None, "p2"), (SPARK, "s2")):
        with pytest.raises(DataError) as caught:
            write_prepared(
                spec, PrepareOptions(on_bad_lines="skip"), tmp_path / out, progress=False, engine=engine
            )
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and "line 41, field 'label': label 2 is not 0/1" in messages[1]

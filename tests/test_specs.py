"""Dataset specs, streaming readers and the cached prepare stage, on small generated files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from deepfm.data import prepare as stage
from deepfm.data.memmap import MemmapSplit
from deepfm.data.options import PrepareOptions
from deepfm.data.prepare import prepare, prepare_spec, rows, stats
from deepfm.data.spec import load_spec, spec_from_dict
from deepfm.data.transforms import MISSING, log2bucket
from deepfm.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def clicks_frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Clicks with a planted signal in a categorical, a numeric and a multi-valued column."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 50, n)
    price = rng.lognormal(2, 1, n)
    tags = ["|".join(f"t{t}" for t in rng.choice(8, size=k, replace=False)) for k in rng.integers(0, 4, n)]
    has_t0 = np.array(["t0" in t.split("|") for t in tags])
    logit = (user % 2) * 2.0 - 1.0 + 1.5 * has_t0 - 0.4 * np.log(price)
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            "click": click,
            "user": [f"u{u}" for u in user],
            "price": np.round(price, 3),
            "count": rng.integers(0, 100, n),
            "tags": tags,
            "ts": np.arange(n),
        }
    )


FIELDS = [
    {"name": "user"},
    {"name": "price", "kind": "numeric", "transform": "standardize"},
    {"name": "price_q", "column": "price", "kind": "numeric", "transform": "quantile", "buckets": 5},
    {"name": "count", "kind": "numeric", "transform": "log2bucket"},
    {"name": "tags", "kind": "multi", "separator": "|", "max_len": 3},
]


def write_spec(folder: Path, inp: dict, fields=None, **extra) -> Path:
    data = {"name": "clicks", "input": inp, "label": "click", "fields": fields or FIELDS, **extra}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def csv_spec(tmp_path: Path, frame: pd.DataFrame | None = None, **extra) -> Path:
    frame = clicks_frame() if frame is None else frame
    frame.to_csv(tmp_path / "clicks.csv", index=False)
    return write_spec(tmp_path, {"files": ["clicks.csv"], "format": "csv"}, **extra)


def run(spec_path: Path, **options) -> object:
    return prepare_spec(load_spec(spec_path), PrepareOptions(**options), progress=False)


# ----------------------------------------------------------------------------- spec files


def test_spec_yaml_and_toml_parse_to_the_same_dataclasses(tmp_path):
    yml = csv_spec(tmp_path)
    data = yaml.safe_load(yml.read_text())
    toml = tmp_path / "spec.toml"
    lines = ['name = "clicks"', 'label = "click"', "[input]", 'files = ["clicks.csv"]', 'format = "csv"']
    for f in data["fields"]:
        lines.append("[[fields]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in f.items()]
    toml.write_text("\n".join(lines) + "\n")
    assert load_spec(toml).to_dict() == load_spec(yml).to_dict()


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"input": {"files": ["x.csv"], "format": "xls"}}, "input.format"),
        ({"fields": [{"name": "a", "kind": "numeric", "transform": "bogus"}]}, "fields[0].transform"),
        ({"fields": [{"name": "a", "colour": 1}]}, "fields[0].colour"),
        ({"fields": []}, "fields"),
        ({"fields": ["a", "a"]}, "fields[1].name"),
        ({"label": "rating >> 3"}, "label"),
        ({"split": {"ratios": [0.5, 0.5, 0.5]}}, "split.ratios"),
        ({"split": {"method": "time"}}, "split.column"),
        ({"input": {"files": ["x.tsv"], "format": "tsv", "header": False}}, "input.columns"),
        ({"fields": [{"name": "a", "min_count": 0}]}, "fields[0].min_count"),
    ],
)
def test_spec_errors_name_the_file_and_the_key(tmp_path, patch, key):
    data = {"input": {"files": ["x.csv"]}, "label": "click", "fields": ["a"]} | patch
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and f"{key}:" in str(err.value)


def test_label_rules_binarise(tmp_path):
    frame = pd.DataFrame({"rating": [1, 2, 3, 4, 5] * 4, "user": list("abcde") * 4})
    frame.to_csv(tmp_path / "r.csv", index=False)
    spec = write_spec(tmp_path, {"files": ["r.csv"]}, fields=["user"])
    spec.write_text(spec.read_text().replace("label: click", "label: rating > 3"))
    data = run(spec)
    total = sum(float(s.label.sum()) for s in (data.train, data.valid, data.test))
    assert total == 8  # ratings 4 and 5, 4 times each


# ----------------------------------------------------------------------------- formats and fields


def test_csv_every_field_kind_streams_equal_to_predict_path_encoding(tmp_path, monkeypatch):
    monkeypatch.setattr(stats, "SAMPLE_SIZE", 500)
    frame = clicks_frame()
    data = run(csv_spec(tmp_path, frame))
    fmap = data.feature_map
    assert [f.kind for f in fmap.fields] == [
        "categorical",
        "numeric",
        "categorical",
        "categorical",
        "multi",
    ]
    assert fmap.field("tags").max_len == 3 and len(fmap.field("price_q").vocab) == 1 + 5
    dense = fmap.field("price").transform
    assert dense["mean"] == pytest.approx(frame["price"].mean(), rel=0.1)
    # every row went to exactly one part, and the cached arrays equal FeatureMap.encode on raw rows
    rows = {tuple(r) for s in (data.train, data.valid, data.test) for r in s.ids.tolist()}
    assert len(data.train) + len(data.valid) + len(data.test) == len(frame)
    encoded = fmap.encode(frame)
    assert rows <= {tuple(r) for r in encoded["ids"].tolist()}
    everything = torch.cat([data.train.dense, data.valid.dense, data.test.dense]).numpy()
    np.testing.assert_allclose(np.sort(everything[:, 0]), np.sort(encoded["dense"][:, 0]), rtol=1e-5)
    bags = torch.cat([data.train.bags, data.valid.bags, data.test.bags]).numpy()
    assert sorted(map(tuple, bags.reshape(len(frame), -1).tolist())) == sorted(
        map(tuple, encoded["bags"].reshape(len(frame), -1).tolist())
    )


def test_log2bucket_is_criteos_rule():
    x = np.array([np.nan, -1, 0, 1, 2, 3, 10, 1000.0])
    expected = [MISSING, -1, 0, 1, 2, int(np.log(3) ** 2), int(np.log(10) ** 2), int(np.log(1000) ** 2)]
    assert log2bucket(x).tolist() == expected


def test_tsv_without_header_gz_and_parquet_give_the_same_arrays(tmp_path):
    frame = clicks_frame(600)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    with gzip.open(tmp_path / "a" / "clicks.tsv.gz", "wt") as f:
        frame.to_csv(f, sep="\t", index=False, header=False)
    frame.to_parquet(tmp_path / "b" / "clicks.parquet")
    frame.to_csv(tmp_path / "c" / "clicks.csv", index=False)
    cols = list(frame.columns)
    tsv = write_spec(
        tmp_path / "a", {"files": ["*.tsv.gz"], "format": "tsv", "header": False, "columns": cols}
    )
    parquet = write_spec(tmp_path / "b", {"files": ["clicks.parquet"], "format": "parquet"})
    csv = write_spec(tmp_path / "c", {"files": ["clicks.csv"]})
    results = [run(p) for p in (tsv, parquet, csv)]
    for other in results[1:]:
        assert other.feature_map.to_dict() == results[0].feature_map.to_dict()
        assert torch.equal(other.train.ids, results[0].train.ids)
        assert torch.equal(other.test.label, results[0].test.label)


def test_libsvm_and_libfm(tmp_path):
    rng = np.random.default_rng(1)
    svm, fm = [], []
    for _ in range(400):
        feats = sorted(rng.choice(20, size=3, replace=False))
        y = int(3 in feats or 7 in feats)
        svm.append(f"{'+1' if y else '-1'} " + " ".join(f"{i}:1" for i in feats) + " 99:0")
        fm.append(f"{y} 0:{feats[0]}:1 1:{feats[1]}:1 2:{feats[2]}:1 2:{feats[0]}:1")
    (tmp_path / "d.svm").write_text("\n".join(svm) + "\n")
    (tmp_path / "d.fm").write_text("\n".join(fm) + "\n")
    spec = spec_from_dict(
        {
            "input": {"files": ["d.svm"], "format": "libsvm"},
            "fields": [{"name": "features", "kind": "multi"}],
        },
        base_dir=tmp_path,
    )
    data = prepare_spec(spec, PrepareOptions(), progress=False)
    f = data.feature_map.field("features")
    assert f.max_len == 3 and "99" not in f.vocab  # zero-valued features are dropped
    assert float(torch.cat([data.train.label, data.valid.label, data.test.label]).sum()) == sum(
        s.startswith("+1") for s in svm
    )
    spec = spec_from_dict(
        {
            "input": {"files": ["d.fm"], "format": "libfm"},
            "fields": [
                {"name": "a", "column": "0"},
                {"name": "b", "column": "1"},
                {"name": "c", "column": "2", "kind": "multi"},
            ],
        },
        base_dir=tmp_path,
    )
    data = prepare_spec(spec, PrepareOptions(), progress=False)
    fmap = data.feature_map
    assert [f.kind for f in fmap.fields] == ["categorical", "categorical", "multi"]
    # the predict path encodes libfm-style list records the same way
    raw = pd.DataFrame({"0": [["3"]], "1": [["7"]], "2": [["3", "5"]]})
    encoded = fmap.encode(raw)
    c = fmap.field("c")
    assert encoded["bags"][0, 0].tolist() == [c.offset + 1 + c.vocab.index(v) for v in ("3", "5")]
    assert data.feature_map.field("c").max_len == 2 and data.train.ids.shape[1] == 2


def test_unseen_categories_at_test_time_go_to_oov(tmp_path):
    frame = clicks_frame(400)
    train, test = frame.iloc[:300].copy(), frame.iloc[300:].copy()
    test["user"] = "never-seen"
    test["tags"] = "zz|t0"
    for name, part in (("train", train), ("valid", train.iloc[:50]), ("test", test)):
        part.to_csv(tmp_path / f"{name}.csv", index=False)
    spec = write_spec(
        tmp_path,
        {"format": "csv"},
        split={"method": "files", "files": {p: [f"{p}.csv"] for p in ("train", "valid", "test")}},
    )
    data = run(spec)
    fmap = data.feature_map
    assert len(data.train) == 300 and len(data.test) == 100
    user = fmap.field("user")
    assert (data.test.ids[:, 0] == user.offset).all()  # the OOV row of "user"
    tags = fmap.field("tags")
    t0 = tags.offset + 1 + tags.vocab.index("t0")
    assert data.test.bags[:, 0, :2].tolist() == [[tags.offset, t0]] * 100


def test_time_split_puts_the_latest_rows_in_test(tmp_path):
    data = run(csv_spec(tmp_path, split={"method": "time", "column": "ts", "ratios": [0.7, 0.1, 0.2]}))
    assert (len(data.train), len(data.valid), len(data.test)) == (2100, 300, 600)


def test_min_count_sends_rare_values_to_oov(tmp_path):
    frame = clicks_frame()
    frame.loc[:4, "user"] = [f"rare{i}" for i in range(5)]
    data = run(csv_spec(tmp_path, frame, min_count=3))
    assert not any(str(v).startswith("rare") for v in data.feature_map.field("user").vocab)


# ----------------------------------------------------------------------------- cache


def test_second_run_reuses_the_cache_without_reading_input(tmp_path, cache, monkeypatch):
    spec = csv_spec(tmp_path)
    first = run(spec)

    def no_reading(*args, **kwargs):
        raise AssertionError("input re-read although the cache is valid")

    monkeypatch.setattr(rows, "read_chunks", no_reading)
    second = run(spec)
    assert torch.equal(first.train.ids, second.train.ids)
    assert len(list((cache / "prepared").iterdir())) == 1
    # a changed input file (size/mtime) or option is a new cache entry, which has to read
    with open(tmp_path / "clicks.csv", "a") as f:
        f.write("1,u1,2.0,3,t1,9999\n")
    with pytest.raises(AssertionError, match="re-read"):
        run(spec)
    assert not [p for p in (cache / "prepared").iterdir() if p.name.startswith(".")]  # no half cache


def test_interrupted_preprocessing_leaves_no_trusted_folder(tmp_path, cache, monkeypatch):
    spec = csv_spec(tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "feature_map", crash)
    with pytest.raises(KeyboardInterrupt):
        run(spec)
    assert list((cache / "prepared").iterdir()) == []


def test_large_data_streams_from_disk_in_shuffled_blocks(tmp_path):
    data = prepare_spec(load_spec(csv_spec(tmp_path)), PrepareOptions(), progress=False, in_memory=False)
    split = data.train
    assert isinstance(split, MemmapSplit)
    split.block_rows, split.window_blocks = 100, 3
    seen = []
    gen = torch.Generator().manual_seed(0)
    batches = list(split.batches(64, generator=gen, shuffle=True))
    assert len(batches) == split.num_batches(64, shuffle=True)
    for b in batches:
        assert b.ids.dtype == torch.int64 and b.bags is not None and b.dense is not None
        seen.append(b.ids)
    ids = torch.cat(seen)
    in_order = torch.cat([b.ids for b in split.batches(64)])
    assert len(in_order) == len(split) and len(ids) == len(split) - (len(split) % 64 == 1)
    assert not torch.equal(ids[:200], in_order[:200])  # shuffled
    if len(ids) == len(in_order):  # every row exactly once
        assert sorted(map(tuple, ids.tolist())) == sorted(map(tuple, in_order.tolist()))
    assert torch.equal(torch.cat([b.label for b in split.batches(64)]), split.label)


def test_training_epoch_streams_from_a_memory_mapped_split(tmp_path):
    from deepfm.models import build_model
    from deepfm.training.loop import train_epoch

    data = prepare_spec(load_spec(csv_spec(tmp_path)), PrepareOptions(), progress=False, in_memory=False)
    fmap = data.feature_map
    torch.manual_seed(0)
    model = build_model("deepfm", fmap.num_rows, len(fmap.fields), len(fmap.numerics), embed_dim=4, mlp=(8,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    stats = train_epoch(model, data.train, optimizer, 64, torch.Generator().manual_seed(0))
    assert stats.samples == len(data.train) - (len(data.train) % 64 == 1)
    assert 0.0 < stats.loss < 5.0


# ----------------------------------------------------------------------------- bad input


BAD_CSV = "click,user,price\n1,a,1.5\n0,b,2.5\n1,c\n0,d,abc\n,e,1\n" + "1,f,3\n" * 20


@pytest.mark.parametrize(
    "line, column, needle",
    [
        (4, None, "expected 3 columns, found 2"),
        (5, "price", "'abc' is not a number"),
        (6, "click", "missing click"),
    ],
)
def test_bad_rows_name_file_line_and_column(tmp_path, line, column, needle):
    lines = BAD_CSV.splitlines()
    keep = [lines[0], lines[1], lines[2], lines[line - 1]] + lines[6:]
    (tmp_path / "bad.csv").write_text("\n".join(keep) + "\n")
    spec = write_spec(tmp_path, {"files": ["bad.csv"]}, fields=["user", {"name": "price", "kind": "numeric"}])
    with pytest.raises(DataError) as err:
        run(spec)
    assert err.value.line == 4 and err.value.field == column and needle in str(err.value)
    assert err.value.path and err.value.path.endswith("bad.csv")


def test_skip_bad_lines_reports_the_count(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text(BAD_CSV)
    spec = write_spec(tmp_path, {"files": ["bad.csv"]}, fields=["user", {"name": "price", "kind": "numeric"}])
    data = prepare_spec(load_spec(spec), PrepareOptions(on_bad_lines="skip"))
    assert data.facts.bad_lines_skipped == 3
    assert len(data.train) + len(data.valid) + len(data.test) == 22
    assert "skipped 3 bad rows" in capsys.readouterr().err


def test_bad_libsvm_token_is_named(tmp_path):
    (tmp_path / "d.svm").write_text("1 1:1 2:1\n0 3:1 4\n" * 6)
    spec = spec_from_dict(
        {
            "input": {"files": ["d.svm"], "format": "libsvm"},
            "fields": [{"name": "features", "kind": "multi"}],
        },
        base_dir=tmp_path,
    )
    with pytest.raises(DataError) as err:
        prepare_spec(spec, PrepareOptions(), progress=False)
    assert err.value.line == 2 and err.value.field == "features" and "'4'" in str(err.value)


def test_missing_column_and_missing_file_are_config_errors(tmp_path):
    spec = csv_spec(tmp_path, fields=["user", "nope"])
    with pytest.raises(ConfigError, match="nope"):
        run(spec)
    spec = write_spec(tmp_path, {"files": ["absent*.csv"]})
    with pytest.raises(ConfigError, match="input.files"):
        run(spec)


# ----------------------------------------------------------------------------- built-ins and CLI


def write_criteo(folder: Path, n: int = 2000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    c1 = rng.integers(0, 20, n)
    i1 = rng.integers(0, 50, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(c1 % 3 - 1) * 3 - 2 * (i1 > 25) + 1))).astype(int)
    rows = []
    for k in range(n):
        ints = [str(i1[k])] + [str(v) if v >= 0 else "" for v in rng.integers(-3, 100, 12)]
        cats = [f"{c1[k]:08x}"] + [f"{v:08x}" if v else "" for v in rng.integers(0, 30, 25)]
        rows.append("\t".join([str(y[k]), *ints, *cats]))
    (folder / "part1.txt").write_text("\n".join(rows[: n // 2]) + "\n")
    with gzip.open(folder / "part2.tsv.gz", "wt") as f:
        f.write("\n".join(rows[n // 2 :]) + "\n")
    return folder


def test_criteo_needs_a_data_dir_and_says_where_to_get_it():
    with pytest.raises(ConfigError, match="criteo cannot be downloaded.*--data-dir"):
        prepare(PrepareOptions(dataset="criteo"))


def test_criteo_reads_every_file_in_the_folder_and_learns(tmp_path):
    from deepfm.artifact.trained import load_model
    from deepfm.config import TrainConfig
    from deepfm.training.run import train

    folder = write_criteo(tmp_path / "criteo")
    config = TrainConfig(
        dataset="criteo", data_dir=str(folder), out=str(tmp_path / "run"), model="fm",
        epochs=3, lr=0.01, batch_size=256, progress=False,
    )  # fmt: skip
    metrics = train(config, echo=lambda *a: None)
    assert sum(metrics["data"]["rows"].values()) == 2000
    assert metrics["test_auc"] > 0.7
    # the checkpoint predicts raw Criteo records (transforms travel with the feature map)
    model = load_model(tmp_path / "run")
    data = prepare(PrepareOptions(dataset="criteo", data_dir=str(folder)))
    record = {f"I{i}": 5 for i in range(1, 14)} | {f"C{i}": "00000001" for i in range(1, 27)}
    record["I3"] = None
    probs = model.predict([record, record | {"C1": "unseen"}])
    assert probs.shape == (2,) and np.isfinite(probs).all()
    # predict on the headerless file writes its integer columns as integers, blanks kept blank
    from deepfm.cli.main import main

    scored = tmp_path / "scored.csv"
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(folder / "part1.txt"),
                 "--output", str(scored), "--format", "spec"]) == 0  # fmt: skip
    source = [line.split("\t") for line in (folder / "part1.txt").read_text().splitlines()]
    written = [line.split(",") for line in scored.read_text().splitlines()]
    i_columns = slice(1, 14)  # label, I1..I13
    assert written[0][i_columns] == [f"I{i}" for i in range(1, 14)]
    assert [row[i_columns] for row in written[1:]] == [row[i_columns] for row in source]
    assert data.facts.cache in {str(p) for p in Path(data.facts.cache).parent.iterdir()}


def test_cli_spec_option_and_datasets_command(tmp_path, capsys):
    from deepfm.cli.main import main

    spec = csv_spec(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--spec", str(spec), "--out", str(out), "--epochs", "2", "--lr", "0.01", "--no-progress"]
    assert main(args + ["--model", "fm"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["dataset"] == "clicks" and metrics["test_auc"] > 0.7
    assert main(["datasets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("criteo", "avazu", "movielens-1m"))
    assert main(["datasets", "--show", "criteo"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert spec_from_dict(shown).fields[0].transform == "log2bucket"


def test_cli_bad_line_is_one_line_error(tmp_path, capsys):
    from deepfm.cli.main import main

    (tmp_path / "bad.csv").write_text(BAD_CSV)
    spec = write_spec(tmp_path, {"files": ["bad.csv"]}, fields=["user", {"name": "price", "kind": "numeric"}])
    assert main(["train", "--spec", str(spec), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "bad.csv, line 4" in err and "--on-bad-lines skip" in err


def test_avazu_hour_becomes_hour_of_day_and_weekday(tmp_path):
    from deepfm.data.catalog.ctr import AVAZU_COLUMNS

    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame({c: rng.integers(0, 5, n).astype(str) for c in AVAZU_COLUMNS})
    frame["click"] = rng.integers(0, 2, n)
    frame["hour"] = 14102100 + rng.integers(0, 24, n)  # 2014-10-21 was a Tuesday
    (tmp_path / "avazu").mkdir()
    frame.to_csv(tmp_path / "avazu" / "train.csv", index=False)
    data = prepare(PrepareOptions(dataset="avazu", data_dir=str(tmp_path / "avazu")))
    fmap = data.feature_map
    assert fmap.field("weekday").vocab == [1]
    hours = fmap.field("hour_of_day").vocab
    assert set(hours) <= set(range(24)) and len(hours) >= 20
    assert "id" not in [f.name for f in fmap.fields] and len(fmap.fields) == 23


def test_spec_file_prepare_helper_uses_run_options(tmp_path):
    data = prepare(PrepareOptions(spec=str(csv_spec(tmp_path)), min_count=10**6, seed=3))
    assert data.feature_map.field("user").vocab == []  # --min-count is a floor on every field


def test_real_criteo_sample_trains_above_chance(tmp_path):
    from conftest import SHARED

    from deepfm.cli.main import main

    folder = SHARED / "criteo-sample" / "wide-resdnn"
    if not (folder / "train.csv").exists():
        pytest.skip("../shared/data/criteo-sample not present")
    out = tmp_path / "run"
    args = ["train", "--dataset", "criteo", "--data-dir", str(folder), "--out", str(out)]
    assert main(args + ["--epochs", "3", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(metrics["data"]["rows"].values()) == 8000  # train.csv + dev.csv + test.csv
    assert metrics["test_auc"] > 0.6  # chance is 0.5; 800 test rows give AUC a std of about 0.02

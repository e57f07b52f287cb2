"""libsvm keeps its interactions: positional fields (``fields: auto``), fields declared by index
range (``index_range: [lo, hi)``) and sum-pooled bags (every active index its own feature in the
FM term) against the same rows as a fielded CSV."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from deepfm.cli.main import main
from deepfm.config import TrainConfig
from deepfm.data.options import PrepareOptions
from deepfm.data.prepare import prepare_spec
from deepfm.data.prepare.cache import cache_key
from deepfm.data.spec import load_spec, spec_from_dict
from deepfm.errors import ConfigError, DataError
from deepfm.models import build_model
from deepfm.training.run import train


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))


def write_copies(folder: Path, n: int = 6000, seed: int = 0) -> dict[str, Path]:
    """The same rows as a CSV with 3 fields and as libsvm (global index = 1000 * field + value),
    with a planted pairwise interaction between fields 0 and 1 (no first-order signal)."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 30, (n, 3))
    factors = rng.normal(size=(2, 30, 2))
    logit = 2.5 * (factors[0][values[:, 0]] * factors[1][values[:, 1]]).sum(1)
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    index = values + 1000 * np.arange(1, 4)  # unique across fields, same order within a field
    with open(folder / "rows.csv", "w") as f:
        f.write("click,a,b,c\n")
        f.writelines(f"{y},{i[0]},{i[1]},{i[2]}\n" for y, i in zip(click, index))
    with open(folder / "rows.svm", "w") as f:
        f.writelines(f"{y} {i[0]}:1 {i[1]}:1 {i[2]}:1\n" for y, i in zip(click, index))
    split = {"method": "random", "ratios": [0.7, 0.15, 0.15]}
    specs = {
        "csv": {
            "input": {"files": ["rows.csv"], "format": "csv"},
            "label": "click",
            "fields": ["a", "b", "c"],
        },
        "auto": {"input": {"files": ["rows.svm"], "format": "libsvm"}, "fields": "auto"},
        "bag": {
            "input": {"files": ["rows.svm"], "format": "libsvm"},
            "fields": [{"name": "features", "kind": "multi"}],  # pooling: sum (libsvm default)
        },
        "mean": {
            "input": {"files": ["rows.svm"], "format": "libsvm"},
            "fields": [{"name": "features", "kind": "multi", "pooling": "mean"}],
        },
    }
    paths = {}
    for name, spec in specs.items():
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump({"name": name, **spec, "split": split}))
    return paths


def _auc(spec: Path, model: str, out: Path) -> float:
    config = TrainConfig(
        spec=str(spec), model=model, out=str(out), embed_dim=4, mlp=(16,), dropout=0.0, lr=0.01,
        batch_size=256, epochs=6, patience=6, threads=1, progress=False, seed=1,
    )  # fmt: skip
    return train(config, echo=lambda *_: None)["test_auc"]


@pytest.mark.slow
def test_libsvm_copy_trains_like_the_fielded_csv(tmp_path):
    specs = write_copies(tmp_path)
    auc = {
        (kind, model): _auc(specs[kind], model, tmp_path / f"{kind}-{model}")
        for kind, model in itertools.product(["csv", "auto", "bag", "mean"], ["fm", "deepfm"])
        if not (kind in ("bag", "mean") and model == "deepfm")
    }
    assert auc["csv", "fm"] > 0.75, auc  # the planted interaction is learnt
    # positional fields: the same vocabularies in the same order, so the very same model
    assert auc["auto", "fm"] == pytest.approx(auc["csv", "fm"], abs=1e-9)
    assert auc["auto", "deepfm"] == pytest.approx(auc["csv", "deepfm"], abs=1e-9)
    # one sum-pooled bag: FM still has every pair of active indices; only the initial rows
    # differ (one vocabulary), which moves test AUC by ~0.01 per seed on 6,000 rows
    assert auc["bag", "fm"] == pytest.approx(auc["csv", "fm"], abs=0.03)
    # a mean-pooled bag is one field: FM has no pairs left, the interaction is lost
    assert auc["mean", "fm"] < auc["csv", "fm"] - 0.1, auc


def test_sum_pooled_bag_fm_equals_fm_over_fields():
    """FM over one sum-pooled bag of every index == FM over the same indices as fields."""
    torch.manual_seed(0)
    model = build_model("fm", num_rows=40, num_fields=1, embed_dim=5).double()
    with torch.no_grad():
        model.features.sparse.table.weight.normal_()
        model.features.sparse.table.weight[0] = 0
    model.eval()
    ids = torch.randint(1, 40, (16, 4))
    fields = build_model("fm", num_rows=40, num_fields=4, embed_dim=5).double().eval()
    fields.load_state_dict(model.state_dict())
    expected = fields(ids)
    model.features.sparse.bag_pooling = ("sum",)
    bags = torch.cat([ids, torch.zeros(16, 2, dtype=torch.long)], 1).unsqueeze(1)  # padded bag
    torch.testing.assert_close(model(ids[:, :0], bags), expected)
    model.features.sparse.bag_pooling = ("mean",)  # one averaged field: no pairs at all
    linear = model.features.sparse.table.weight[ids, 0].mean(1)
    torch.testing.assert_close(model(ids[:, :0], bags), model.bias + linear)


def test_auto_fields_and_pooling_are_validated(tmp_path):
    (tmp_path / "d.svm").write_text("1 3:1 7:1 9:1\n0 4:1 7:1 8:1\n")
    spec = spec_from_dict(
        {"input": {"files": ["d.svm"], "format": "libsvm"}, "fields": "auto"}, "s.yaml", tmp_path
    )
    assert [(f.name, f.source, f.kind) for f in spec.fields] == [
        ("f0", "@0", "categorical"),
        ("f1", "@1", "categorical"),
        ("f2", "@2", "categorical"),
    ]
    with pytest.raises(ConfigError, match=r"s.yaml: fields: 'auto' .* libsvm files only"):
        spec_from_dict({"input": {"files": ["d.svm"], "format": "csv"}, "fields": "auto"}, "s.yaml", tmp_path)
    with pytest.raises(ConfigError, match=r"fields\[0\].pooling: must be one of \['mean', 'sum'\]"):
        spec_from_dict(
            {
                "input": {"files": ["d.svm"], "format": "libsvm"},
                "fields": [{"name": "features", "kind": "multi", "pooling": "max"}],
            },
            "s.yaml",
            tmp_path,
        )
    with pytest.raises(ConfigError, match=r"fields\[0\].column: .*'@N'"):
        spec_from_dict(
            {"input": {"files": ["d.svm"], "format": "libsvm"}, "fields": [{"name": "x", "column": "f"}]},
            "s.yaml",
            tmp_path,
        )


# ----------------------------------------------------------------------------- index ranges


def _ranges_spec(files: list[str], fields: list[dict], **extra: object) -> dict:
    """A libsvm spec dict over ``files`` with ``fields``."""
    split = {"method": "random", "ratios": [0.7, 0.15, 0.15]}
    return {"input": {"files": files, "format": "libsvm"}, "fields": fields, "split": split, **extra}


RANGES = [
    {"name": "a", "column": "features", "index_range": [1000, 2000]},
    {"name": "b", "index_range": [2000, 3000]},  # column defaults to features
    {"name": "c", "column": "features", "index_range": [3000, 4000]},
]


def _prepared(spec: dict, folder: Path):
    return prepare_spec(spec_from_dict(spec, "s.yaml", folder), PrepareOptions(), progress=False)


def test_index_ranges_encode_like_positions_and_the_csv(tmp_path):
    """Declared index ranges give the very arrays that ``@N`` positions and the fielded CSV give,
    and, unlike positions, do not depend on the token order within a row."""
    specs = write_copies(tmp_path, n=1500)
    ranged = _prepared(_ranges_spec(["rows.svm"], RANGES), tmp_path)
    rows = (tmp_path / "rows.svm").read_text().splitlines()
    rng = np.random.default_rng(3)
    with open(tmp_path / "shuffled.svm", "w") as f:  # tokens in any order, plus one outside
        for row in rows:
            label, *tokens = row.split()
            tokens = [*tokens, "5:1"]
            rng.shuffle(tokens)
            f.write(" ".join([label, *tokens]) + "\n")
    shuffled = _prepared(_ranges_spec(["shuffled.svm"], RANGES), tmp_path)
    for name in ("auto", "csv"):
        other = prepare_spec(load_spec(specs[name]), PrepareOptions(), progress=False)
        assert [f.vocab for f in ranged.feature_map.fields] == [f.vocab for f in other.feature_map.fields]
        for part in ("train", "valid", "test"):
            assert torch.equal(getattr(ranged, part).ids, getattr(other, part).ids), (name, part)
            assert torch.equal(getattr(ranged, part).label, getattr(other, part).label)
    assert ranged.feature_map.to_dict()["fields"][0]["transform"] == {
        "type": "string",
        "column": "features[1000:2000]",
    }
    for part in ("train", "valid", "test"):
        assert torch.equal(getattr(shuffled, part).ids, getattr(ranged, part).ids)
    assert ranged.summary()["ignored_tokens"] == 0
    assert shuffled.summary()["ignored_tokens"] == len(rows)  # every "5:1" is outside the ranges
    assert "ignored_tokens" not in prepare_spec(load_spec(specs["auto"]), PrepareOptions()).summary()


def test_index_range_changes_the_cache_key_and_round_trips(tmp_path):
    (tmp_path / "d.svm").write_text("1 3:1 12:1\n0 4:1 11:1\n")
    one = spec_from_dict(_ranges_spec(["d.svm"], [{"name": "a", "index_range": [0, 10]}]), "s", tmp_path)
    two = spec_from_dict(_ranges_spec(["d.svm"], [{"name": "a", "index_range": [0, 12]}]), "s", tmp_path)
    assert cache_key(one, PrepareOptions()) != cache_key(two, PrepareOptions())
    again = spec_from_dict(one.to_yaml_dict(), "s", tmp_path)
    assert again.fields == one.fields and again.fields[0].source == "features[0:10]"
    plain = spec_from_dict(_ranges_spec(["d.svm"], [{"name": "features", "kind": "multi"}]), "s", tmp_path)
    assert "index_range" not in plain.to_dict()["fields"][0]  # unchanged keys of specs without ranges


def write_genre_rows(path: Path, n: int = 4000, seed: int = 0) -> None:
    """libsvm rows: a user index in [0, 40) and a bag of 0-3 genre indices in [40, 48); the click
    depends on genre 40 being in the bag (and a little on the user); one unrelated index 900."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            user = int(rng.integers(0, 40))
            genres = sorted(40 + rng.choice(8, size=int(rng.integers(0, 4)), replace=False))
            logit = 3.0 * (40 in genres) - 1.5 + 0.3 * (user % 2)
            y = int(rng.random() < 1 / (1 + np.exp(-logit)))
            tokens = [f"{g}:1" for g in genres] + [f"{user}:1", "900:1"]
            rng.shuffle(tokens)
            f.write(f"{y} {' '.join(tokens)}\n")


@pytest.mark.parametrize("model", ["fm", "deepfm"])
def test_multi_index_range_carries_a_planted_signal(tmp_path, model):
    write_genre_rows(tmp_path / "g.svm")
    user = {"name": "user", "index_range": [0, 40]}
    genres = {"name": "genres", "index_range": [40, 48], "kind": "multi"}
    auc = {}
    for name, fields in {"with": [user, genres], "without": [user]}.items():
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(yaml.safe_dump({"name": name, **_ranges_spec(["g.svm"], fields)}))
        config = TrainConfig(
            spec=str(spec), model=model, out=str(tmp_path / name), embed_dim=4, mlp=(8,), dropout=0.0,
            lr=0.02, batch_size=256, epochs=3, patience=3, threads=1, progress=False, seed=1,
        )  # fmt: skip
        auc[name] = train(config, echo=lambda *_: None)["test_auc"]
    data = _prepared(_ranges_spec(["g.svm"], [user, genres]), tmp_path)
    bag = data.feature_map.field("genres")
    assert (bag.kind, bag.pooling, bag.max_len, len(bag.vocab)) == ("multi", "sum", 3, 8)
    assert data.summary()["ignored_tokens"] == 4000  # the 900s
    assert auc["with"] > 0.7 and auc["with"] > auc["without"] + 0.15, auc


def test_two_tokens_in_a_categorical_range_is_a_one_line_error(tmp_path, capsys):
    good = "".join(f"{i % 2} {i % 10}:1 {10 + i % 7}:1\n" for i in range(30))
    (tmp_path / "d.svm").write_text(good + "1 3:1 7:1 12:1\n" + good)
    fields = [{"name": "user", "index_range": [0, 10]}, {"name": "movie", "index_range": [10, 20]}]
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(_ranges_spec(["d.svm"], fields)))
    args = ["train", "--spec", str(spec), "--out", str(tmp_path / "o"), "--threads", "1", "--epochs", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err  # one line, no traceback
    assert errors[0].startswith(
        f"error: {tmp_path / 'd.svm'}, line 31, field 'user': 2 tokens in index_range [0, 10)"
    )
    with pytest.raises(DataError) as caught:
        _prepared(_ranges_spec(["d.svm"], fields), tmp_path)
    assert (caught.value.line, caught.value.field) == (31, "user")
    data = prepare_spec(
        spec_from_dict(_ranges_spec(["d.svm"], fields), "s", tmp_path),
        PrepareOptions(on_bad_lines="skip"),
        progress=False,
    )
    assert data.facts.bad_lines_skipped == 1 and len(data.train) + len(data.valid) + len(data.test) == 60
    # a bag takes them all; a row without a token in a range is a missing value, as with "@N":
    # the value "" (its own category when seen in training, else the OOV row)
    (tmp_path / "e.svm").write_text(good + "1 3:1 7:1\n" * 5 + good)  # (some of them train)
    fields[0]["kind"] = "multi"
    data = _prepared(_ranges_spec(["e.svm"], fields), tmp_path)
    assert data.feature_map.field("user").max_len == 2
    movie = data.feature_map.field("movie")
    missing = movie.offset + (1 + movie.vocab.index("") if "" in movie.vocab else 0)
    rows = torch.cat([data.train.ids, data.valid.ids, data.test.ids])
    assert int((rows[:, 0] == missing).sum()) == 5


@pytest.mark.parametrize(
    ("fields", "fmt", "message"),
    [
        ([{"name": "a", "index_range": [0, 10]}], "libfm", r"fields\[0\].index_range: is for libsvm files"),
        ([{"name": "a", "index_range": [0, 10]}], "csv", r"fields\[0\].index_range: is for libsvm files"),
        ([{"name": "a", "index_range": [5]}], "libsvm", r"fields\[0\].index_range: expected two integers"),
        (
            [{"name": "a", "index_range": [0, 1.5]}],
            "libsvm",
            r"fields\[0\].index_range: expected two integers",
        ),
        ([{"name": "a", "index_range": "0-10"}], "libsvm", r"fields\[0\].index_range: expected two integers"),
        (
            [{"name": "a", "index_range": [10, 10]}],
            "libsvm",
            r"fields\[0\].index_range: expected 0 <= lo < hi",
        ),
        (
            [{"name": "a", "index_range": [-1, 10]}],
            "libsvm",
            r"fields\[0\].index_range: expected 0 <= lo < hi",
        ),
        (
            [{"name": "a", "index_range": [0, 10]}, {"name": "b", "index_range": [9, 20]}],
            "libsvm",
            r"fields\[1\].index_range: \[9, 20\] overlaps \[0, 10\) of field 'a'",
        ),
        (
            [{"name": "a", "index_range": [10, 20]}, {"name": "b", "index_range": [0, 30]}],
            "libsvm",
            r"fields\[1\].index_range: \[0, 30\] overlaps \[10, 20\) of field 'a'",
        ),
        (
            [{"name": "a", "index_range": [0, 10]}, {"name": "b", "column": "@1"}],
            "libsvm",
            r"fields\[1\].column: '@1' \(a token position\) cannot be combined with index_range",
        ),
        (
            [{"name": "a", "column": "@0", "index_range": [0, 10]}],
            "libsvm",
            r"fields\[0\].column: an index_range field reads column 'features'",
        ),
        (
            [{"name": "a", "kind": "numeric", "index_range": [0, 10]}],
            "libsvm",
            r"fields\[0\].index_range: an index range is a categorical or multi field",
        ),
    ],
)
def test_index_range_is_validated_at_spec_load(tmp_path, fields, fmt, message):
    (tmp_path / "d.svm").write_text("1 3:1 12:1\n")
    spec = {"input": {"files": ["d.svm"], "format": fmt}, "fields": fields}
    if fmt == "csv":
        spec["label"] = "click"
    with pytest.raises(ConfigError, match=r"^s.yaml: " + message) as caught:
        spec_from_dict(spec, "s.yaml", tmp_path)
    assert "\n" not in str(caught.value)

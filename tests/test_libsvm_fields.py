"""libsvm keeps its interactions: positional fields (``fields: auto``) and sum-pooled bags
(every active index its own feature in the FM term) against the same rows as a fielded CSV."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from deepfm.config import TrainConfig
from deepfm.data.spec import spec_from_dict
from deepfm.errors import ConfigError
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

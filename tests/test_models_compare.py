"""The model family (lr, fm, widedeep, deepfm, dcnv2) and ``deepfm compare``."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest
import torch

from deepfm.cli.main import main
from deepfm.config import TrainConfig
from deepfm.experiments.compare import COLUMNS, compare
from deepfm.models import MODELS, build_model
from deepfm.models.fm import FM
from deepfm.models.layers import CrossNetV2


def test_fm_treats_a_multi_valued_field_as_one_pooled_field():
    torch.manual_seed(0)
    model = FM(num_rows=30, num_fields=3, embed_dim=4).double()
    with torch.no_grad():
        model.features.sparse.table.weight[1:].normal_()  # non-zero linear column too; row 0 = padding
        model.bias.fill_(0.3)
    ids = torch.tensor([[1, 11], [2, 12], [3, 13]])  # user, movie
    bags = torch.tensor([[[20, 21, 22, 0]], [[23, 0, 0, 0]], [[24, 25, 0, 0]]])  # genres, 0 = padding
    table = model.features.sparse.table.weight.detach()
    expected, unpooled = [], []
    for b in range(3):
        genres = [int(g) for g in bags[b, 0] if g > 0]
        fields = [table[int(i)] for i in ids[b]] + [table[genres].mean(0)]  # pooled bag = one field
        linear = sum(f[0] for f in fields)
        pairs = sum((x[1:] * y[1:]).sum() for x, y in itertools.combinations(fields, 2))
        expected.append(0.3 + linear + pairs)
        # treating each genre as its own field would give a different value
        separate = [table[int(i)] for i in ids[b]] + [table[g] for g in genres]
        unpooled.append(sum((x[1:] * y[1:]).sum() for x, y in itertools.combinations(separate, 2)))
    got = model(ids, bags)
    torch.testing.assert_close(got, torch.stack(expected))
    assert not torch.allclose(got - 0.3, torch.stack(unpooled), atol=1e-3)


def test_cross_net_v2_layer_formula():
    torch.manual_seed(0)
    layer = CrossNetV2(5, num_layers=2)
    x0 = torch.randn(3, 5)
    x1 = x0 * layer.layers[0](x0) + x0
    torch.testing.assert_close(layer(x0), x0 * layer.layers[1](x1) + x1)


def test_lr_has_no_embedding_columns():
    model = build_model("lr", num_rows=50, num_fields=2, embed_dim=16, mlp=(8,), dropout=0.1)
    assert sum(p.numel() for p in model.parameters()) == 50 + 1


@pytest.fixture(scope="module")
def family(tiny_ml_module, tmp_path_factory):
    """Every registered model trained on the same planted-signal data (one compare run)."""
    out = tmp_path_factory.mktemp("family")
    threads = torch.get_num_threads()
    base = TrainConfig(
        data_dir=str(tiny_ml_module), epochs=5, lr=0.01, progress=False, embed_dim=8, threads=1
    )
    try:
        rows = compare(base, list(MODELS), [0], out, echo=lambda _m: None)
    finally:
        torch.set_num_threads(threads)  # tiny models: one thread is faster and shares the machine
    return {r["model"]: r for r in rows}, out


@pytest.fixture(scope="module")
def tiny_ml_module(tmp_path_factory):
    from conftest import write_movielens

    folder = tmp_path_factory.mktemp("tiny") / "ml"
    write_movielens(folder / "ratings.dat")
    return folder


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_learns_the_planted_signal(family, name):
    rows, _ = family
    assert rows[name]["test_auc_mean"] > 0.68, rows[name]


def test_interaction_models_beat_first_order_lr(family):
    rows, _ = family
    assert rows["fm"]["test_auc_mean"] > rows["lr"]["test_auc_mean"] + 0.01


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_compare_cli_writes_csv_markdown_png_and_prints_the_table(tiny_ml, tmp_path, capsys, one_thread):
    out = tmp_path / "cmp"
    args = ["compare", "--data-dir", str(tiny_ml), "--models", "fm,deepfm", "--seeds", "2", "--out", str(out)]
    assert main([*args, "--epochs", "2", "--lr", "0.01", "--embed-dim", "4", "--threads", "1"]) == 0
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS and [r["model"] for r in rows] == ["fm", "deepfm"]
    assert all(float(r["test_auc_std"]) > 0 for r in rows)  # two seeds: two different splits
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "comparison.md").read_text()
    assert "| fm |" in md and "±" in md and "minus fm's, paired by seed" in md
    assert "| deepfm − fm |" in md and "p-value" in md
    # the epoch cap is stated, and that every run hit it (patience 3 cannot stop a 2-epoch run)
    assert "at most 2 epochs with early stopping (patience 3); 4 of 4 runs used all 2." in md
    printed = capsys.readouterr().out
    assert "| deepfm |" in printed and "comparison.csv" in printed
    runs = json.loads((out / "comparison.json").read_text())["runs"]
    assert sorted((r["model"], r["seed"]) for r in runs) == [
        ("deepfm", 0),
        ("deepfm", 1),
        ("fm", 0),
        ("fm", 1),
    ]
    (pair,) = json.loads((out / "comparison.json").read_text())["paired"]
    auc = {(r["model"], r["seed"]): r["test_auc"] for r in runs}
    diffs = [auc["deepfm", s] - auc["fm", s] for s in (0, 1)]
    assert pair["model"] == "deepfm" and pair["baseline"] == "fm" and pair["seeds"] == [0, 1]
    assert pair["differences"] == pytest.approx(diffs)
    # two seeds: t = mean / (std / sqrt(2)), p from the t distribution with 1 degree of freedom
    t = np.mean(diffs) / (np.std(diffs, ddof=1) / np.sqrt(2))
    assert pair["t"] == pytest.approx(t)
    assert pair["p_value"] == pytest.approx(1 - 2 * np.arctan(abs(t)) / np.pi)
    # deterministic: the same seeds reproduce the same numbers
    again = tmp_path / "again"
    assert (
        main([*args[:-1], str(again), "--epochs", "2", "--lr", "0.01", "--embed-dim", "4", "--threads", "1"])
        == 0
    )
    with open(again / "comparison.csv") as f:
        rows_again = list(csv.DictReader(f))
    for a, b in zip(rows, rows_again):
        assert (a["test_auc_mean"], a["test_logloss_std"]) == (b["test_auc_mean"], b["test_logloss_std"])


def test_compare_refuses_unknown_models(tmp_path, capsys):
    assert main(["compare", "--data-dir", str(tmp_path), "--models", "fm,nope", "--out", str(tmp_path)]) == 2
    assert "--models takes names from" in capsys.readouterr().err

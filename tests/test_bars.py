"""Built-in BARS x1 data sets: header CSVs split by file, read with their published layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deepfm.cli.main import main
from deepfm.data.catalog.ctr import BARS

PRESETS = Path(__file__).resolve().parents[1] / "src" / "deepfm" / "presets"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))


def write_bars(folder: Path, name: str, rows: int = 6000, seed: int = 0) -> Path:
    """train/valid/test.csv (70/20/10) in the layout of BARS ``name`` with a planted signal on
    the first two categorical fields (an interaction) and, for Criteo, the first numeric one."""
    rng = np.random.default_rng(seed)
    d = BARS[name]
    cats = rng.integers(0, 20, (rows, len(d.categorical)))
    nums = rng.normal(size=(rows, len(d.numeric)))
    taste = rng.normal(size=(2, 20, 3))
    logit = 2 * (taste[0][cats[:, 0]] * taste[1][cats[:, 1]]).sum(1) + (nums[:, 0] if d.numeric else 0)
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    header = ",".join(["label", *d.numeric, *d.categorical])
    lines = [
        ",".join([str(y), *(f"{v:.4f}" for v in n), *(str(c + 1000 * j) for j, c in enumerate(cs))])
        for y, n, cs in zip(label, nums, cats)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    cut = [0, int(rows * 0.7), int(rows * 0.9), rows]
    for part, a, b in zip(("train", "valid", "test"), cut, cut[1:]):
        (folder / f"{part}.csv").write_text("\n".join([header, *lines[a:b]]) + "\n")
    return folder


@pytest.mark.parametrize("name", sorted(BARS))
def test_bars_dataset_trains_with_its_published_recipe(name, tmp_path):
    data = write_bars(tmp_path / name, name)
    out = tmp_path / "run"
    args = ["train", "--dataset", name, "--data-dir", str(data), "--config", str(PRESETS / f"{name}.yaml")]
    args += ["--out", str(out), "--epochs", "5", "--batch-size", "256", "--lr", "0.01", "--threads", "1"]
    assert main([*args, "--mlp", "32", "--lr-decay", "1", "--patience", "5", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    d = BARS[name]
    assert metrics["data"]["rows"] == {"train": 4200, "valid": 1200, "test": 600}  # the files' split
    assert list(metrics["data"]["fields"]) == [*d.numeric, *d.categorical]
    assert metrics["config"]["embedding_l2"] > 0 and metrics["config"]["net_l2"] == 0  # the recipe
    assert metrics["test_auc"] > 0.7, metrics["test_auc"]


def test_bars_dataset_without_files_names_what_is_missing(tmp_path, capsys):
    folder = write_bars(tmp_path / "f", "frappe-x1", rows=100)
    (folder / "valid.csv").unlink()
    assert main(["train", "--dataset", "frappe-x1", "--data-dir", str(folder), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no valid.csv for frappe-x1" in err and "reczoo/Datasets" in err
    assert main(["train", "--dataset", "criteo-x1", "--out", str(tmp_path)]) == 2
    assert "criteo-x1 cannot be downloaded automatically" in capsys.readouterr().err

"""``deepfm evaluate`` and ``deepfm predict`` on the layouts a model was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED
from sklearn.metrics import log_loss, roc_auc_score

import deepfm
from deepfm.cli.main import main

CRITEO = SHARED / "criteo-sample" / "wide-resdnn"


def write_criteo(path: Path, n: int, seed: int) -> Path:
    """Headerless Criteo TSV (label, I1-I13, C1-C26) whose label follows C1 and I1."""
    rng = np.random.default_rng(seed)
    c1 = rng.integers(0, 20, n)
    i1 = rng.integers(0, 50, n)
    label = rng.random(n) < 1 / (1 + np.exp(-(np.where(c1 % 2 == 0, 1.5, -1.5) + (i1 > 25))))
    lines = []
    for r in range(n):
        ints = [str(i1[r])] + ["" if rng.random() < 0.3 else str(rng.integers(0, 100)) for _ in range(12)]
        cats = [f"{c1[r]:08x}"] + [f"{rng.integers(0, 5):08x}" for _ in range(25)]
        lines.append("\t".join([str(int(label[r])), *ints, *cats]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def criteo_run(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A model trained with --dataset criteo, and headerless files to evaluate it on."""
    tmp = tmp_path_factory.mktemp("criteo")
    if (CRITEO / "train.csv").exists():
        folder, files = CRITEO, [CRITEO / "test.csv", CRITEO / "dev.csv"]
    else:
        folder = tmp / "data"
        write_criteo(folder / "train.txt", 3000, 0)
        files = [
            write_criteo(tmp / "held" / "test.csv", 400, 1),
            write_criteo(tmp / "held" / "dev.csv", 400, 2),
        ]
    out = tmp / "run"
    args = ["train", "--dataset", "criteo", "--data-dir", str(folder), "--out", str(out), "--epochs", "2"]
    assert main(args + ["--threads", "1", "--no-progress", "--batch-size", "256"]) == 0
    return out, files


def test_evaluate_reads_headerless_criteo_files_as_shipped(criteo_run, tmp_path, capsys):
    out, files = criteo_run
    target = tmp_path / "eval.json"
    args = ["evaluate", "--model", str(out), "--input", *map(str, files), "--group-by", "C1"]
    assert main(args + ["--output", str(target)]) == 0
    printed = capsys.readouterr().out
    for name in ("AUC", "logloss", "gAUC", "calibration"):
        assert f"\n{name} " in "\n" + printed
    result = json.loads(target.read_text())
    assert {"auc", "logloss", "gauc", "calibration", "rows", "evaluation"} <= set(result)
    # the same numbers from predict's output and sklearn
    frames = []
    for i, file in enumerate(files):
        assert (
            main(
                [
                    "predict",
                    "--model",
                    str(out),
                    "--input",
                    str(file),
                    "--output",
                    str(tmp_path / f"p{i}.csv"),
                ]
            )
            == 0
        )
        frames.append(pd.read_csv(tmp_path / f"p{i}.csv"))
    scored = pd.concat(frames)
    assert len(scored) == result["rows"] == sum(len(f.read_text().splitlines()) for f in files)
    assert result["auc"] == pytest.approx(roc_auc_score(scored["label"], scored["probability"]), abs=1e-6)
    assert result["logloss"] == pytest.approx(log_loss(scored["label"], scored["probability"]), abs=1e-5)
    assert result["calibration"] == pytest.approx(
        scored["probability"].mean() / scored["label"].mean(), rel=1e-5
    )


def test_evaluate_without_a_user_field_says_how_to_get_gauc(criteo_run, capsys):
    out, files = criteo_run
    assert main(["evaluate", "--model", str(out), "--input", str(files[0])]) == 0
    assert "gAUC         n/a" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(out), "--input", str(files[0]), "--metrics", "gauc"]) == 2
    assert "--group-by FIELD" in capsys.readouterr().err


def test_evaluate_and_predict_read_ratings_dat(tiny_ml, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_ml), "--out", str(out), "--epochs", "2", "--no-progress"]
    assert main(args + ["--threads", "1"]) == 0
    capsys.readouterr()
    ratings = tiny_ml / "ratings.dat"
    assert (
        main(["evaluate", "--model", str(out), "--input", str(ratings), "--output", str(tmp_path / "e.json")])
        == 0
    )
    printed = capsys.readouterr().out
    for name in ("AUC", "logloss", "gAUC", "calibration"):
        assert f"\n{name} " in "\n" + printed
    result = json.loads((tmp_path / "e.json").read_text())
    frame = pd.read_csv(
        ratings, sep="::", engine="python", names=["user_id", "movie_id", "rating", "timestamp"]
    )
    expected = deepfm.load(out).evaluate(frame)  # label: the training rule, rating > 3
    assert result["rows"] == len(frame) and result["gauc"] == pytest.approx(expected["gauc"], abs=1e-12)
    assert result["positive_rate"] == pytest.approx((frame["rating"] > 3).mean(), abs=1e-6)
    assert (
        main(["predict", "--model", str(out), "--input", str(ratings), "--output", str(tmp_path / "p.csv")])
        == 0
    )
    assert len(pd.read_csv(tmp_path / "p.csv")) == len(frame)
    # --format names the layout: the model's own (its spec's), or a wrong one is a one-line error
    assert main(["evaluate", "--model", str(out), "--input", str(ratings), "--format", "spec"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_status:  # argparse: the choices
        main(["evaluate", "--model", str(out), "--input", str(ratings), "--format", "parquet"])
    assert exit_status.value.code == 2 and "invalid choice: 'parquet'" in capsys.readouterr().err

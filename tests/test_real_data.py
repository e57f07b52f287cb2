"""Runs only where ../shared/data is present: one short epoch on real MovieLens-1M data."""

import json

from deepfm.cli.main import main


def test_one_epoch_on_ml_1m_half(ml_1m_half, tmp_path):
    out = tmp_path / "run"
    assert (
        main(["train", "--data-dir", str(ml_1m_half), "--out", str(out), "--epochs", "1", "--no-progress"])
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["rows"]["train"] == 390502  # the split rule at seed 0 (80.08 % of 487,650)
    assert metrics["test_auc"] > 0.77  # one epoch of DeepFM on the real data

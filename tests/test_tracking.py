"""Experiment tracking: TensorBoard event files and MLflow runs written by ``deepfm train``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from deepfm.cli.main import main
from deepfm.config import TrainConfig
from deepfm.errors import ConfigError
from deepfm.experiments import tracking
from deepfm.experiments.tracking import train_tracked as train
from deepfm.training.tracker import with_step_logging


def config(tmp_path: Path, data_dir: Path, **extra) -> TrainConfig:
    base = dict(data_dir=str(data_dir), out=str(tmp_path / "run"), epochs=2, patience=5, progress=False)
    return TrainConfig(**{**base, **extra})


def test_tensorboard_event_files_read_back(tmp_path, tiny_ml):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = train(
        config(tmp_path, tiny_ml, tensorboard=str(tmp_path / "tb"), tensorboard_every=5), echo=print
    )
    (logdir,) = (tmp_path / "tb").iterdir()
    assert logdir.name == f"run-{metrics['run_id']}"  # one folder per run: tensorboard --logdir tb
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss_step", "train/loss", "valid/auc", "valid/logloss", "train/lr"} <= set(tags)
    auc = events.Scalars("valid/auc")
    assert [e.step for e in auc] == [1, 2]
    assert [e.value for e in auc] == pytest.approx([r["valid_auc"] for r in metrics["epochs"]], abs=1e-6)
    steps = events.Scalars("train/loss_step")
    per_epoch = -(-16_000 // 1024)  # 16 steps an epoch on the 16,000 training rows
    assert [e.step for e in steps] == [5, 10, 15, per_epoch + 4, per_epoch + 9, per_epoch + 14]
    assert all(0.3 < e.value < 0.8 for e in steps)
    hparams = events.PluginTagToContent("hparams")  # the HPARAMS tab: options and final metrics
    assert {"_hparams_/session_start_info", "_hparams_/experiment"} <= set(hparams)
    start = hparams["_hparams_/session_start_info"]
    assert b"embed_dim" in start and b"deepfm" in start


def test_mlflow_run_is_found_by_search_runs(tmp_path, tiny_ml, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = tmp_path / "mlruns"
    metrics = train(config(tmp_path, tiny_ml, mlflow=str(store)), echo=print)
    mlflow.set_tracking_uri(store.resolve().as_uri())
    runs = mlflow.search_runs(experiment_names=["movielens-1m"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.deepfm.run_id"] == metrics["run_id"]
    assert run["params.model"] == "deepfm" and run["params.mlp"] == "16,16"
    assert run["metrics.test_auc"] == pytest.approx(metrics["test_auc"])
    history = mlflow.tracking.MlflowClient().get_metric_history(run["run_id"], "valid_auc")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run["run_id"])}
    assert {"metrics.json", "model.pt", "history.csv"} <= artifacts


def test_missing_extra_is_a_one_line_error_naming_it(tmp_path, tiny_ml, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"--mlflow needs mlflow .*deepfm\[track\]"):
        tracking.from_config(TrainConfig(mlflow="mlruns"))
    code = main(["train", "--data-dir", str(tiny_ml), "--out", str(tmp_path / "run"), "--mlflow"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'deepfm[track]'" in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_without_tracking_options_nothing_is_tracked():
    tracker = tracking.from_config(TrainConfig())
    assert isinstance(tracker, tracking.Trackers) and tracker.trackers == [] and tracker.step_every == 0
    options = {"on_step": None, "step_every": 0}
    assert with_step_logging(options, tracker, lambda: 0) is options  # the loop is untouched

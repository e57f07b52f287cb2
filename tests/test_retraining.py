"""Daily retraining: warm start (--init-from) on drifting generated days, and run folders as units."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import fit_map

from deepfm.artifact.checkpoint import model_from_config
from deepfm.artifact.trained import load_model
from deepfm.config import TrainConfig
from deepfm.training.optim import optimizer_for
from deepfm.training.run import load_data, train
from deepfm.training.warmstart import load_base, table_keys, warm_start

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_days(folder: Path, days: int = 3, n: int = 6000, seed: int = 0) -> Path:
    """Click logs of consecutive days with drift and a planted signal.

    Users and items have a bias and a 4-d taste; P(click) = sigmoid(bias_u + bias_i + <t_u, t_i>).
    Each day 100 users and 50 items appear and as many vanish, so a day shares most of its ids
    with the day before and has some new ones. Day d: ``day{d}.csv`` (training rows) and
    ``day{d}-valid.csv`` (a held-out sample of the same day).
    """
    rng = np.random.default_rng(seed)
    n_users, n_items = 400 + 100 * days, 200 + 50 * days
    ub, ib = rng.normal(0, 1, n_users), rng.normal(0, 1, n_items)
    ut, it = rng.normal(0, 1, (n_users, 4)), rng.normal(0, 1, (n_items, 4))
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(1, days + 1):
        for name, rows in ((f"day{d}.csv", n), (f"day{d}-valid.csv", n // 5)):
            u = rng.integers(100 * (d - 1), 100 * (d - 1) + 400, rows)
            i = rng.integers(50 * (d - 1), 50 * (d - 1) + 200, rows)
            logit = ub[u] + ib[i] + (ut[u] * it[i]).sum(1)
            click = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
            frame = pd.DataFrame({"click": click, "user": [f"u{x}" for x in u], "item": [f"i{x}" for x in i]})
            frame.to_csv(folder / name, index=False)
    return folder


def day_spec(folder: Path, day: int) -> Path:
    """Train on day ``day``, validate on its held-out sample, test on the next day."""
    spec = {
        "name": f"clicks-day{day}",
        "input": {"format": "csv"},
        "label": "click",
        "fields": [{"name": "user"}, {"name": "item"}],
        "split": {
            "method": "files",
            "files": {
                "train": [f"day{day}.csv"],
                "valid": [f"day{day}-valid.csv"],
                "test": [f"day{day + 1}.csv"],
            },
        },
    }
    path = folder / f"day{day}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def options(tmp_path: Path, spec: Path, out: str, **extra) -> TrainConfig:
    base = dict(spec=str(spec), out=str(tmp_path / out), batch_size=256, lr=0.01, progress=False, threads=1)
    return TrainConfig(**{**base, **extra})


def test_warm_start_carries_old_rows_exactly_and_extends_the_vocabulary(tmp_path):
    days = write_days(tmp_path / "days")
    train(options(tmp_path, day_spec(days, 1), "day1", epochs=2), echo=lambda *_: None)
    config = options(tmp_path, day_spec(days, 2), "day2", init_from=str(tmp_path / "day1"), epochs=1)
    base = load_base(config)
    data = load_data(config, base.feature_map)
    torch.manual_seed(0)
    module = model_from_config(config, data.feature_map)
    fresh = {k: v.clone() for k, v in module.state_dict().items()}
    report = warm_start(base, module, data.feature_map)

    old_fmap, new_fmap = base.feature_map, data.feature_map
    (table,) = table_keys(module, new_fmap.num_rows)
    old_table, new_table = base.model.module.state_dict()[table], module.state_dict()[table]
    for name in ("user", "item"):
        old, new = old_fmap.field(name), new_fmap.field(name)
        assert new.vocab[: len(old.vocab)] == old.vocab  # old values first, in their order
        assert len(new.vocab) > len(old.vocab)  # day 2 brought new users / items
        assert torch.equal(new_table[new.offset], old_table[old.offset])  # OOV row
        for j, value in enumerate(old.vocab):
            assert torch.equal(new_table[new.offset + 1 + j], old_table[old.offset + 1 + j]), value
        for j in range(len(old.vocab), len(new.vocab)):  # new rows: as initialised
            assert torch.equal(new_table[new.offset + 1 + j], fresh[table][new.offset + 1 + j])
    for key, value in module.state_dict().items():  # MLP, biases, BatchNorm: carried as they were
        if key != table:
            assert torch.equal(value, base.model.module.state_dict()[key]), key
    assert report.rows_carried == len(old_fmap.field("user").vocab) + len(old_fmap.field("item").vocab) + 2
    assert report.rows_new == new_fmap.num_rows - 1 - report.rows_carried
    assert report.rows_dropped == 0 and report.fresh == []


def test_prune_below_drops_vanished_values_and_init_optimizer_carries_moments(tmp_path):
    days = write_days(tmp_path / "days")
    # full-table Adam: one moment tensor per parameter, indexed like named_parameters()
    train(options(tmp_path, day_spec(days, 1), "day1", epochs=1, optimizer="fused"), echo=lambda *_: None)
    config = options(
        tmp_path,
        day_spec(days, 2),
        "day2",
        init_from=str(tmp_path / "day1"),
        prune_below=1,
        epochs=1,
        optimizer="fused",
    )
    config.init_optimizer = True
    base = load_base(config)
    day1_users = set(base.feature_map.field("user").vocab)
    day2_users = set(pd.read_csv(days / "day2.csv")["user"])
    data = load_data(config, base.feature_map)
    assert set(data.feature_map.field("user").vocab) == day2_users  # vanished users pruned
    assert day1_users - day2_users  # (some did vanish)
    module = model_from_config(config, data.feature_map)
    optimizer = optimizer_for(module, config)
    report = warm_start(base, module, data.feature_map, optimizer)
    day1_items = set(base.feature_map.field("item").vocab)
    day2_items = set(pd.read_csv(days / "day2.csv")["item"])
    assert report.optimizer
    assert report.rows_dropped == len(day1_users - day2_users) + len(day1_items - day2_items)
    state = torch.load(tmp_path / "day1" / "state.pt", weights_only=True)["optimizer"]
    (table,) = table_keys(module, data.feature_map.num_rows)
    # the state dict numbers parameters in the order of the optimizer's groups
    flat = [p for group in optimizer.param_groups for p in group["params"]]
    position = next(i for i, p in enumerate(flat) if p is dict(module.named_parameters())[table])
    moments = optimizer.state[dict(module.named_parameters())[table]]["exp_avg"]
    old_moments = state["state"][position]["exp_avg"]
    old, new = base.feature_map.field("user"), data.feature_map.field("user")
    for j, value in enumerate(new.vocab):
        if value in day1_users:
            assert torch.equal(
                moments[new.offset + 1 + j], old_moments[old.offset + 1 + old.vocab.index(value)]
            )
        else:
            assert not moments[new.offset + 1 + j].any()


def test_warm_start_beats_a_cold_start_on_the_next_day_after_one_epoch(tmp_path):
    days = write_days(tmp_path / "days", n=20000)
    quiet = lambda *_: None  # noqa: E731
    train(options(tmp_path, day_spec(days, 1), "day1", epochs=6, patience=2), echo=quiet)
    spec2 = day_spec(days, 2)
    cold = train(options(tmp_path, spec2, "cold", epochs=1), echo=quiet)
    warm = train(options(tmp_path, spec2, "warm", epochs=1, init_from=str(tmp_path / "day1")), echo=quiet)
    assert warm["warm_start"]["rows_carried"] > 0
    # measured: warm 0.742, cold 0.685 (seed 0)
    assert warm["test_auc"] > cold["test_auc"] + 0.03, (warm["test_auc"], cold["test_auc"])
    assert (
        load_model(tmp_path / "warm").feature_map.num_rows
        > load_model(tmp_path / "day1").feature_map.num_rows
    )


def test_in_place_warm_start_with_optimizer_and_its_resume(tmp_path):
    """--init-from RUN --out RUN --init-optimizer: RUN's model and state are read before the folder
    is cleared; a resume later prepares the same vocabulary from its own state.pt."""
    days = write_days(tmp_path / "days", n=2000)
    out = tmp_path / "run"
    quiet = lambda *_: None  # noqa: E731
    train(options(tmp_path, day_spec(days, 1), "run", epochs=1), echo=quiet)
    config = options(
        tmp_path, day_spec(days, 2), "run", epochs=1, init_from=str(out), init_optimizer=True, prune_below=2
    )
    first = train(config, echo=quiet)
    assert first["warm_start"]["optimizer"] and first["warm_start"]["rows_dropped"] > 0
    resumed = train(TrainConfig.from_dict({**config.to_dict(), "epochs": 2, "resume": True}), echo=quiet)
    assert resumed["run_id"] == first["run_id"] and len(resumed["epochs"]) == 2
    assert resumed["data_fingerprint"] == first["data_fingerprint"]  # the same vocabulary and data


@pytest.mark.slow
def test_cli_init_from_a_folder_that_is_also_out(tmp_path):
    """Retraining in place: --init-from RUN --out RUN reads the old model before clearing the folder."""
    days = write_days(tmp_path / "days", n=2000)
    out = tmp_path / "run"
    common = ["--out", str(out), "--epochs", "1", "--batch-size", "256", "--no-progress", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "deepfm", "train", *common]
    subprocess.run([*cmd, "--spec", str(day_spec(days, 1))], check=True, env=env, capture_output=True)
    first = json.loads((out / "metrics.json").read_text())
    done = subprocess.run(
        [*cmd, "--spec", str(day_spec(days, 2)), "--init-from", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "warm start from" in done.stdout
    second = json.loads((out / "metrics.json").read_text())
    assert second["run_id"] != first["run_id"] and second["warm_start"]["rows_carried"] > 0


# ----------------------------------------------------------------------------- run folders


def test_run_id_and_fingerprint_in_metrics_model_and_state(tmp_path, tiny_ml):
    config = TrainConfig(data_dir=str(tiny_ml), out=str(tmp_path / "run"), epochs=1, progress=False)
    metrics = train(config, echo=lambda *_: None)
    payload = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert metrics["run_id"] and len(metrics["data_fingerprint"]) == 16
    assert (
        payload["run"]
        == state["run"]
        == {"id": metrics["run_id"], "data_fingerprint": metrics["data_fingerprint"]}
    )
    again = train(TrainConfig(**{**config.to_dict(), "seed": 1, "mlp": (16, 16)}), echo=lambda *_: None)
    assert again["run_id"] != metrics["run_id"]
    assert again["data_fingerprint"] != metrics["data_fingerprint"]  # another seed, another split


def test_fresh_run_removes_the_previous_runs_outputs_and_resume_keeps_them(tmp_path, tiny_ml):
    out = tmp_path / "run"
    config = TrainConfig(data_dir=str(tiny_ml), out=str(out), epochs=2, patience=5, progress=False)
    first = train(config, echo=lambda *_: None)
    (out / "notes.txt").write_text("mine")  # not an output: left alone
    resumed = train(
        TrainConfig(**{**config.to_dict(), "epochs": 3, "resume": True, "mlp": (16, 16)}), echo=print
    )
    assert resumed["run_id"] == first["run_id"] and len(resumed["epochs"]) == 3
    # a fresh run that dies before writing anything leaves the previous run as it was
    bad = TrainConfig(**{**config.to_dict(), "batch_size": 10**6, "mlp": (16, 16)})
    with pytest.raises(Exception, match="batch"):
        train(bad, echo=lambda *_: None)
    assert json.loads((out / "metrics.json").read_text())["run_id"] == first["run_id"]
    # a fresh run that completes replaces every output of the previous one
    again = train(TrainConfig(**{**config.to_dict(), "epochs": 1, "mlp": (16, 16)}), echo=lambda *_: None)
    assert again["run_id"] != first["run_id"] and len(again["epochs"]) == 1
    assert torch.load(out / "state.pt", weights_only=True)["run"]["id"] == again["run_id"]
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_second_training_into_the_same_out_is_refused_and_the_first_finishes_intact(tmp_path, tiny_ml):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "DEEPFM_TEST_STEP_DELAY": "0.1"}
    cmd = [sys.executable, "-m", "deepfm", "train", "--data-dir", str(tiny_ml), "--out", str(out)]
    cmd += ["--epochs", "2", "--patience", "5", "--batch-size", "256", "--no-progress", "--threads", "1"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120  # (imports are slow on a loaded machine) wait until it holds
    while not (out / ".lock").exists() or not (out / ".lock").read_text():
        assert first.poll() is None and time.monotonic() < deadline, (
            first.stderr.read() if first.stderr else ""
        )
        time.sleep(0.2)
    time.sleep(2)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr
    assert second.stderr.count("\n") == 1 and "is in use" in second.stderr and str(first.pid) in second.stderr
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and (out / ".lock").read_text() == ""  # released
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["run"]["id"] == metrics["run_id"]  # the first run's outputs, whole
    assert len((out / "history.csv").read_text().splitlines()) == 3


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, tiny_ml):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (out / ".lock").write_text(f"{dead.stdout.strip()} 20000101-000000-dead00\n")
    config = TrainConfig(data_dir=str(tiny_ml), out=str(out), epochs=1, progress=False)
    assert train(config, echo=lambda *_: None)["epochs_run"] == 1


def test_carry_over_is_generic_over_layer_names():
    """Any model: tables found as nn.Embedding modules over the feature map's rows, the rest by key."""
    from torch import nn

    from deepfm.artifact.trained import TrainedModel
    from deepfm.training.warmstart import Base

    class Toy(nn.Module):
        def __init__(self, rows: int) -> None:
            super().__init__()
            self.lookup = nn.Embedding(rows, 3)
            self.deep = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1))

    day1 = pd.DataFrame({"user": ["a", "b", "c"], "ad": ["x", "y", "x"]})
    day2 = pd.DataFrame({"user": ["c", "d", "a"], "ad": ["z", "y", "y"]})
    old_map = fit_map(day1, ["user", "ad"])
    new_map = fit_map(day2, ["user", "ad"], base=old_map)
    assert new_map.field("user").vocab == ["a", "b", "c", "d"] and new_map.field("ad").vocab == [
        "x",
        "y",
        "z",
    ]
    old, new = Toy(old_map.num_rows), Toy(new_map.num_rows)
    base = Base(old_map, TrainedModel(old, old_map, TrainConfig()), source="toy")
    report = warm_start(base, new, new_map)
    for name in ("user", "ad"):
        f, g = new_map.field(name), old_map.field(name)
        for value in g.vocab:
            i, j = f.offset + 1 + f.vocab.index(value), g.offset + 1 + g.vocab.index(value)
            assert torch.equal(new.lookup.weight[i], old.lookup.weight[j])
    assert torch.equal(new.deep[0].weight, old.deep[0].weight) and torch.equal(
        new.deep[2].bias, old.deep[2].bias
    )
    assert report.tables == ["lookup.weight"] and report.rows_new == 2  # user d, ad z

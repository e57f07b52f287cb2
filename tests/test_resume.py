"""Resumable training (state.pt, --resume), NaN/inf guard and up-front config checks (issue 8)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepfm.cli.main import main
from deepfm.config import TrainConfig
from deepfm.errors import ConfigError, NumericalError
from deepfm.training import run as run_module
from deepfm.training.loop import EpochPosition, check_weights
from deepfm.training.run import train
from deepfm.training.state import STATE_FILE, TrainingState, read_state, resume_config

SRC = Path(__file__).resolve().parents[1] / "src"
COMPARED = ("test_auc", "test_logloss", "best_epoch", "best_valid_auc", "epochs_run")


@pytest.fixture
def small_ml(tmp_path: Path) -> Path:
    from conftest import write_movielens

    write_movielens(tmp_path / "ml" / "ratings.dat", n=2500)
    return tmp_path / "ml"


def config(data: Path, out: Path, **kw) -> TrainConfig:
    values = dict(data_dir=str(data), out=str(out), epochs=3, batch_size=64, lr=0.01, progress=False)
    values.update(threads=1, checkpoint_every=4)
    values.update(kw)
    return TrainConfig(**values)


def same_run(a: dict, b: dict) -> None:
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
    for ea, eb in zip(a["epochs"], b["epochs"], strict=True):
        for key in ("epoch", "train_loss", "valid_auc", "valid_logloss"):
            assert ea[key] == eb[key], (key, ea, eb)


@pytest.fixture(autouse=True)
def keep_threads():
    """--threads 1 (for exact comparisons) must not leak into other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class Crash(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way catches it."""


def steps_per_epoch(data: Path) -> int:
    from conftest import prepared

    return len(prepared(data).train) // 64  # (config's batch size; a last single row is dropped)


@pytest.mark.parametrize(
    ("where", "when", "warmup"),
    [("step", "4", 1000), ("step", "end", 1000), ("step", "mid2", 1000), ("epoch", "1", 1000)]
    + [("epoch", "2", 1000), ("step", "8", 10), ("step", "12", 10)],
    ids=["epoch1-step4", "epoch1-end-lost-steps", "epoch2-mid", "after-epoch1", "after-epoch2"]
    + ["resumed-in-warmup-thaws-at-step10", "resumed-after-warmup"],
)
def test_crash_then_resume_gives_identical_metrics(small_ml, tmp_path, monkeypatch, where, when, warmup):
    """Also with the FM warm-up ending mid-epoch (``fm_warmup_steps`` 10): a run resumed before
    step 10 freezes the MLP until then, one resumed after it does not."""
    reference = train(
        config(small_ml, tmp_path / "ref", checkpoint_every=0, fm_warmup_steps=warmup), echo=lambda *_: None
    )
    steps = steps_per_epoch(small_ml)
    # a save (every 4 steps of an epoch) and a crash 3 steps later: at the start of epoch 1, near
    # its end, in the middle of epoch 2; or right after an epoch's end
    named = {"end": (steps - 4) // 4 * 4, "mid2": steps + 16}
    at = named[when] if when in named else int(when)

    original_step, original_end = TrainingState._on_step, TrainingState.end_epoch

    def on_step(self, pos):
        original_step(self, pos)
        if where == "step" and self.global_step == at + 3:  # 3 steps after a save at `at`: lost work
            raise Crash

    def end_epoch(self, epoch):
        original_end(self, epoch)
        if where == "epoch" and epoch == at:
            raise Crash

    monkeypatch.setattr(TrainingState, "_on_step", on_step)
    monkeypatch.setenv("DEEPFM_TEST_STEP_DELAY", "1e-9")  # the step hook then runs every step
    monkeypatch.setattr(TrainingState, "end_epoch", end_epoch)
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train(config(small_ml, out, fm_warmup_steps=warmup), echo=lambda *_: None)
    assert not (out / "metrics.json").exists()
    saved = read_state(out / STATE_FILE)
    assert saved["global_step"] == at if where == "step" else saved["position"]["step"] == 0
    monkeypatch.undo()

    resumed = train(resume_config(out, {}), echo=lambda *_: None)
    same_run(reference, resumed)
    assert resumed["config"]["resume"] is True


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(small_ml, tmp_path):
    """The acceptance test: a real SIGKILL at a random step of a training subprocess."""
    args = ["--data-dir", str(small_ml), "--epochs", "2", "--batch-size", "64", "--lr", "0.01"]
    args += ["--threads", "1", "--no-progress", "--seed", "3"]
    assert main(["train", *args, "--out", str(tmp_path / "ref")]) == 0
    reference = json.loads((tmp_path / "ref" / "metrics.json").read_text())

    env = dict(os.environ, PYTHONPATH=str(SRC), DEEPFM_TEST_STEP_DELAY="0.02")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "deepfm", "train", *args, "--out", str(out), "--checkpoint-every", "3"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seed = random.randrange(10**6)
    target = random.Random(seed).randint(1, 40)  # of ~62 steps in 2 epochs
    extra = random.Random(seed).uniform(0, 0.06)
    try:
        state, seen, deadline = out / STATE_FILE, 0.0, time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if state.exists() and state.stat().st_mtime != seen:
                seen = state.stat().st_mtime
                try:
                    if read_state(state)["global_step"] >= target:
                        break
                except Exception:  # being replaced right now
                    continue
            time.sleep(0.005)
        time.sleep(extra)
        assert proc.poll() is None, f"run ended before the kill (seed {seed}): {proc.stderr.read()}"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (out / "metrics.json").exists()
    saved = read_state(out / STATE_FILE)
    assert saved["global_step"] >= target and saved["position"]["epoch"] <= 2, saved["position"]

    resumed = subprocess.run(
        [sys.executable, "-m", "deepfm", "train", "--out", str(out), "--resume", "--no-progress"],
        env=dict(os.environ, PYTHONPATH=str(SRC)),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    same_run(reference, json.loads((out / "metrics.json").read_text()))


def test_state_is_saved_at_every_epoch_end_and_holds_everything(small_ml, tmp_path):
    train(config(small_ml, tmp_path, epochs=2, checkpoint_every=0), echo=lambda *_: None)
    state = read_state(tmp_path / STATE_FILE)
    assert state["position"] == {
        "epoch": 3,
        "step": 0,
        "samples": 0,
        "loss_sum": state["position"]["loss_sum"],
    }
    assert [r["epoch"] for r in state["history"]] == [1, 2]
    for key in ("model", "optimizer", "early_stopping", "rng", "epoch_generator", "config"):
        assert state[key] is not None, key
    assert state["optimizer"]["state"], "Adam moments are saved"
    assert state["early_stopping"]["best_state"] is not None
    assert not list(tmp_path.glob(".state.pt.*"))  # no temp files left behind


def test_resume_extends_a_finished_run_with_more_epochs(small_ml, tmp_path):
    full = train(config(small_ml, tmp_path / "full", epochs=3, patience=5), echo=lambda *_: None)
    train(config(small_ml, tmp_path / "short", epochs=2, patience=5), echo=lambda *_: None)
    extended = train(resume_config(tmp_path / "short", {"epochs": 3}), echo=lambda *_: None)
    same_run(full, extended)


def test_resume_with_more_epochs_keeps_the_warmup_it_started_with(small_ml, tmp_path):
    """A one-epoch run's FM warm-up is a tenth of it; extended to 2 epochs, it does not freeze
    the MLP again (a fresh 2-epoch run would warm up for the whole first epoch)."""
    from conftest import prepared

    from deepfm.training.loop import epoch_steps

    tenth = epoch_steps(prepared(small_ml).train, 64) // 10
    assert tenth > 0
    one = train(config(small_ml, tmp_path / "one", epochs=1), echo=lambda *_: None)
    assert one["epochs"][0]["warmup_samples"] == tenth * 64
    assert read_state(tmp_path / "one" / STATE_FILE)["warmup_steps"] == tenth
    extended = train(resume_config(tmp_path / "one", {"epochs": 2}), echo=lambda *_: None)
    assert extended["epochs"][1]["warmup_samples"] == 0
    reference = train(
        config(small_ml, tmp_path / "ref", epochs=2, fm_warmup_steps=tenth), echo=lambda *_: None
    )
    same_run(reference, extended)


def test_resume_refuses_changed_options_and_missing_state(small_ml, tmp_path, capsys):
    train(config(small_ml, tmp_path, epochs=1), echo=lambda *_: None)
    with pytest.raises(ConfigError, match=r"--lr \(started with 0.01, given 0.5\)"):
        resume_config(tmp_path, {"lr": 0.5})
    assert main(["train", "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no training state to resume in") and err.count("\n") == 1


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_good_state(small_ml, tmp_path, monkeypatch):
    """Weights poisoned after step 10 of epoch 2: the error names that step; state.pt stays good."""
    build = run_module.trainable  # the module the training loop runs (fused or plain)
    calls = {"n": 0}
    steps = steps_per_epoch(small_ml)

    def poisoned(*args, **kwargs):
        module = build(*args, **kwargs)

        def hook(mod, inputs, output):
            if mod.training:
                calls["n"] += 1
                if calls["n"] == steps + 10:  # step 10 of epoch 2
                    return output * float("nan")
            return output

        module.register_forward_hook(hook)
        return module

    monkeypatch.setattr(run_module, "trainable", poisoned)
    with pytest.raises(NumericalError) as info:
        train(config(small_ml, tmp_path, checkpoint_every=4), echo=lambda *_: None)
    assert (info.value.epoch, info.value.step) == (2, 10)
    message = str(info.value)
    assert (
        "epoch 2, step 10" in message and "last good state kept" in message and "(epoch 2, step 8)" in message
    )
    state = read_state(tmp_path / STATE_FILE)
    assert (state["position"]["epoch"], state["position"]["step"]) == (2, 8)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert (tmp_path / "model.pt").exists() and not (tmp_path / "metrics.json").exists()


def test_nan_from_cli_is_one_line_exit_2(small_ml, tmp_path, capsys):
    """A learning rate so large the loss overflows: a one-line error, no traceback."""
    code = main(
        ["train", "--data-dir", str(small_ml), "--out", str(tmp_path), "--lr", "1e30", "--model", "fm"]
        + ["--no-progress", "--epochs", "2", "--batch-size", "64", "--embed-dim", "4"]
    )
    err = capsys.readouterr().err
    if code == 0:  # Adam's normalised steps can survive even this; then nothing is wrong
        pytest.skip("training stayed finite")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ") and "step" in err and "epoch" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--batch-size", "5000"], "--batch-size 5000 is larger than the training split (1,9"),
        (["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0"),
        (["--lr", "inf"], "--lr must be a finite number > 0"),
        (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0"),
        (["--model", "xgboost"], "--model must be one of ['dcnv2', 'deepfm', 'fm', 'lr', 'widedeep']"),
    ],
)
def test_impossible_options_are_refused_with_what_is_allowed(small_ml, tmp_path, capsys, args, needle):
    code = main(["train", "--data-dir", str(small_ml), "--out", str(tmp_path / "o"), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "o" / STATE_FILE).exists()


def test_yaml_values_of_the_wrong_type_are_refused(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("epochs: ten\nmlp: [16, x]\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "mlp must be a list of integer widths" in err or "--epochs must be int, got 'ten'" in err


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_weights_finds_one_bad_entry_of_a_big_table(bad):
    """One NaN/inf entry among a million raises; finite extremes (float64 beyond float32) do not."""
    module = torch.nn.Module()
    module.table = torch.nn.Parameter(torch.randn(65_537, 17))
    module.register_buffer("wide", torch.tensor([1e300, -1e300], dtype=torch.float64))
    check_weights(module, EpochPosition(1, 5))
    with torch.no_grad():
        module.table[40_000, 3] = bad
    with pytest.raises(NumericalError) as info:
        check_weights(module, EpochPosition(1, 5))
    assert (info.value.epoch, info.value.step) == (1, 5)

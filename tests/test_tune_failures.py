"""``deepfm tune`` when trials fail or processes die: exactly N trials, a diverging trial is a
failed trial (the search goes on), option errors are one line, workers die with the search."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import write_movielens
from test_tune import _alive, _children

import deepfm
from deepfm.cli.main import main
from deepfm.config import load_yaml
from deepfm.errors import ConfigError
from deepfm.experiments.tune import load_space

pytest.importorskip("optuna")
SRC = Path(deepfm.__file__).resolve().parents[1]  # the package under test, for subprocesses


@pytest.fixture
def small_ml(tmp_path) -> Path:
    write_movielens(tmp_path / "ml" / "ratings.dat", n=3000)
    return tmp_path / "ml"


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


def tune_args(space: Path, out: Path, data: Path, *extra: str) -> list[str]:
    args = ["tune", "--space", str(space), "--out", str(out), "--data-dir", str(data), "--no-prune"]
    return [*args, "--epochs", "1", "--batch-size", "256", "--threads", "1", *extra]


def test_space_steps_must_be_positive_and_yaml_numbers_read_as_numbers(tmp_path):
    path = tmp_path / "space.yaml"
    for step in ("0", "-0.5"):
        path.write_text(f"lr: {{low: 0.001, high: 0.01, step: {step}}}\n")
        with pytest.raises(ConfigError, match=r"space.yaml: lr: 'step' must be a number > 0"):
            load_space(path)
    path.write_text("lr: {low: 1e-4, high: 1e-2, log: true}\nweight_decay: {choices: [1e-6, 1E-5]}\n")
    space = load_space(path)  # (YAML 1.1 would read 1e-4 as text)
    assert space["lr"] == {"low": 1e-4, "high": 1e-2, "log": True}
    assert space["weight_decay"]["choices"] == [1e-6, 1e-5]
    config = tmp_path / "config.yaml"
    config.write_text("lr: 1e-3\nseed: '1e3'\n")  # a quoted value stays text
    assert load_yaml(config) == {"lr": 0.001, "seed": "1e3"}


def test_a_diverging_trial_is_recorded_failed_and_the_search_goes_on(small_ml, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {choices: [1e30, 0.01]}\nfm_warmup_epochs: {choices: [0]}\n")
    out = tmp_path / "tune"
    assert main(tune_args(space, out, small_ml, "--trials", "4")) == 0
    table = rows(out)
    states = {r["lr"]: r["state"] for r in table}
    assert states == {"1e+30": "FAIL", "0.01": "COMPLETE"}, table  # both values ran
    assert len(table) == 4 and (out / "best.yaml").exists()
    assert yaml.safe_load((out / "best.yaml").read_text())["lr"] == 0.01
    assert "failed (diverged" in capsys.readouterr().out


def test_an_option_error_inside_a_trial_is_one_line(small_ml, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("dropout: {choices: [1.5]}\n")
    assert main(tune_args(space, tmp_path / "tune", small_ml, "--trials", "2")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("error: trial 0 ({'dropout': 1.5}): --dropout must be in [0, 1), got 1.5"), err


@pytest.mark.slow
def test_n_jobs_runs_exactly_the_trials_asked_for(small_ml, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("embed_dim: {choices: [4, 8, 12]}\n")
    out = tmp_path / "tune"
    assert main(tune_args(space, out, small_ml, "--trials", "3", "--n-jobs", "3")) == 0
    assert len(rows(out)) == 3 and len(list((out / "trials").iterdir())) == 3


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_die_with_a_killed_search_and_the_resume_counts_right(small_ml, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("embed_dim: {choices: [4, 8, 12]}\n")
    out = tmp_path / "tune"
    command = [
        sys.executable,
        "-m",
        "deepfm",
        *tune_args(space, out, small_ml, "--trials", "3", "--n-jobs", "2"),
    ]
    env = {**os.environ, "PYTHONPATH": str(SRC), "DEEPFM_TEST_STEP_DELAY": "0.05"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while len(list((out / "trials").glob("*/history.csv"))) < 1:
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = _children(first.pid)
    assert len(workers) >= 2
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    stop = time.monotonic() + 10
    while [pid for pid in workers if _alive(pid)] and time.monotonic() < stop:
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)]  # no orphan keeps training

    resumed = subprocess.run(
        command, env={**env, "DEEPFM_TEST_STEP_DELAY": ""}, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    line = next(x for x in resumed.stdout.splitlines() if x.startswith("tune: "))
    done = int(line.split()[1])
    assert done <= 3 and f"tune: {done} of 3 trials done, {3 - done} to run" in line, line
    finished = [r for r in rows(out) if r["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3

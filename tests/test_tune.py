"""``deepfm tune``: a killed search resumes and completes; best.yaml reproduces its validation AUC."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from deepfm.cli.main import main
from deepfm.errors import ConfigError
from deepfm.experiments.tune import load_space

pytest.importorskip("optuna")

SPACE = {
    "lr": {"low": 0.002, "high": 0.02, "log": True},
    "embed_dim": {"choices": [4, 8]},
    "mlp": {"choices": [[16], [32, 16]]},
}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_killed_search_resumes_and_best_config_reproduces_its_valid_auc(tiny_ml, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    out = tmp_path / "tune"
    command = [sys.executable, "-m", "deepfm", "tune", "--space", str(space), "--out", str(out)]
    command += ["--trials", "4", "--data-dir", str(tiny_ml), "--epochs", "3", "--threads", "1"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (out / "trials" / "1" / "history.csv").exists():  # trial 1 is mid-run
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert not (out / "trials.csv").exists()  # it never got to the end

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 trial(s) left running by a killed search queued again" in resumed.stdout
    assert "tune: 1 of 4 trials done, 3 to run" in resumed.stdout
    rows = _rows(out / "trials.csv")
    states = [r["state"] for r in rows]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") + states.count("PRUNED") == 4
    killed = rows[states.index("FAIL")]
    retried = [r for r in rows if r["number"] != killed["number"] and r["lr"] == killed["lr"]]
    assert retried and retried[0]["state"] in ("COMPLETE", "PRUNED")  # the same parameters, again
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"

    best = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: float(r["valid_auc"]))
    options = yaml.safe_load((out / "best.yaml").read_text())
    assert options["lr"] == pytest.approx(float(best["lr"])) and options["mlp"] == json.loads(best["mlp"])
    run = tmp_path / "again"
    assert main(["train", "--config", str(out / "best.yaml"), "--out", str(run), "--no-progress"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_valid_auc"] == pytest.approx(float(best["valid_auc"]), abs=1e-6)


def test_space_errors_name_the_file_and_option(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("lr: {low: 0.1, high: 0.01}\n")
    with pytest.raises(ConfigError, match=r"s.yaml: lr: 'low' must be below 'high'"):
        load_space(path)
    path.write_text("out: {choices: [a, b]}\n")
    with pytest.raises(ConfigError, match=r"s.yaml: out: not a tunable option"):
        load_space(path)
    path.write_text("lr: {low: 0, high: 0.01, log: true}\n")
    with pytest.raises(ConfigError, match=r"log range needs low > 0"):
        load_space(path)
    assert main(["tune", "--space", str(path), "--out", str(tmp_path / "t")]) == 2


def _late_bloomer_pruned(tmp_path: Path, prune_after: int | None) -> list[bool]:
    """Four finished trials that rise early, then one that starts low and gains late (as with an lr
    decay after an FM warm-up): whether the study's pruner stops it at epochs 1-4."""
    from deepfm.experiments.tune import _study

    tmp_path.mkdir()
    study = _study(f"sqlite:///{tmp_path / 'study.db'}", seed=0, prune_after=prune_after)
    for _ in range(4):
        trial = study.ask()
        for epoch, auc in enumerate([0.78, 0.80, 0.81, 0.812], start=1):
            trial.report(auc, epoch)
        study.tell(trial, 0.812)
    late = study.ask()
    verdicts = []
    for epoch, auc in enumerate([0.77, 0.775, 0.78, 0.79], start=1):
        late.report(auc, epoch)
        verdicts.append(late.should_prune())
    return verdicts


def test_prune_after_and_no_prune_decide_when_a_late_trial_may_be_stopped(tmp_path):
    assert _late_bloomer_pruned(tmp_path / "default", 2) == [False, True, True, True]
    assert _late_bloomer_pruned(tmp_path / "after4", 4) == [False, False, False, True]
    assert _late_bloomer_pruned(tmp_path / "none", None) == [False, False, False, False]


def test_prune_after_must_be_an_epoch(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    assert main(["tune", "--space", str(space), "--out", str(tmp_path / "t"), "--prune-after", "0"]) == 2
    assert "--prune-after must be >= 1 (an epoch), got 0" in capsys.readouterr().err


def _stat(path: Path) -> list[str] | None:
    """The fields of a /proc/PID/stat after the command name (state, parent pid, ...); None when
    the process is gone."""
    try:
        return path.read_bytes().decode(errors="replace").rsplit(")", 1)[1].split()  # (any command name)
    except OSError:
        return None


def _children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    stats = {int(path.parent.name): _stat(path) for path in Path("/proc").glob("[0-9]*/stat")}
    return {child for child, fields in stats.items() if fields is not None and int(fields[1]) == pid}


def _alive(pid: int) -> bool:
    fields = _stat(Path(f"/proc/{pid}/stat"))
    return fields is not None and fields[0] != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigterm_stops_the_trial_processes_and_the_search_resumes(tiny_ml, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    out = tmp_path / "tune"
    command = [sys.executable, "-m", "deepfm", "tune", "--space", str(space), "--out", str(out)]
    command += ["--trials", "3", "--n-jobs", "2", "--data-dir", str(tiny_ml), "--epochs", "3"]
    command += ["--threads", "1"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not all((out / "trials" / n / "history.csv").exists() for n in ("0", "1")):
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = {
        pid
        for pid in _children(first.pid)
        if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    }
    assert len(workers) == 2
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=60)
    assert first.returncode != 0
    time.sleep(0.5)
    assert not [pid for pid in workers if _alive(pid)]  # no trial keeps running on its own

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # stopped mid-trial, not left to finish (before: the workers ran the search to its end)
    assert "left running by a killed search queued again" in resumed.stdout
    states = [r["state"] for r in _rows(out / "trials.csv")]
    assert states.count("COMPLETE") + states.count("PRUNED") >= 3


def test_every_trial_trains_on_data_prepared_for_its_own_data_options(tiny_ml, tmp_path):
    """A space over an option that changes the prepared data (here the vocabulary cap): each
    trial's data is prepared with its own value, not reused from a trial with another one."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"max_vocab": {"choices": [3, 100000]}}))
    out = tmp_path / "tune"
    args = ["tune", "--space", str(space), "--out", str(out), "--trials", "4", "--no-prune"]
    assert main([*args, "--data-dir", str(tiny_ml), "--epochs", "1", "--threads", "1"]) == 0
    seen = set()
    for trial in (out / "trials").iterdir():
        metrics = json.loads((trial / "metrics.json").read_text())
        cap = metrics["config"]["max_vocab"]
        sizes = metrics["data"]["fields"]  # each field's rows: its vocabulary + the OOV row
        assert all(size <= cap + 1 for size in sizes.values()) and (cap == 3) == (max(sizes.values()) == 4)
        seen.add(cap)
    assert seen == {3, 100000}  # both values ran (the sampler is seeded)

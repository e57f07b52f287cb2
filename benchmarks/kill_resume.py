"""Kill-and-resume survival: SIGKILL ``deepfm train`` at several points, resume, compare metrics.

For each kill point, a training subprocess is started (steps slowed by the test hook
``DEEPFM_TEST_STEP_DELAY`` so a kill lands inside an epoch), killed with SIGKILL once its
``state.pt`` has passed a chosen global step plus a random extra delay, then resumed with
``deepfm train --out DIR --resume``. A kill point "survives" when the resumed run's metrics
(test AUC/logloss, best epoch, every epoch's train loss and valid AUC/logloss) equal those of an
uninterrupted run with the same seed, bit for bit.

    python benchmarks/kill_resume.py                     # generated data, 8 kill points
    python benchmarks/kill_resume.py --points 12 --data-dir ../shared/data/ml-1m-half

Prints one line per kill point and a summary ``survived N/M``; exits 1 unless all survived.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("test_auc", "test_logloss", "best_epoch", "best_valid_auc", "epochs_run")
PER_EPOCH = ("train_loss", "valid_auc", "valid_logloss")


def write_data(path: Path, n: int, seed: int = 0) -> Path:
    """Planted-signal MovieLens-format ratings.dat (the same generator as the tests)."""
    rng = np.random.default_rng(seed)
    users, movies = rng.integers(0, 300, n), rng.integers(0, 200, n)
    ub, mb = rng.normal(0, 1, 300), rng.normal(0, 1, 200)
    like = rng.random(n) < 1 / (1 + np.exp(-(ub[users] + mb[movies])))
    rating = np.where(like, rng.integers(4, 6, n), rng.integers(1, 4, n))
    path.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{u + 1}::{m + 1}::{r}::{978300000 + i}" for i, (u, m, r) in enumerate(zip(users, movies, rating))
    ]
    (path / "ratings.dat").write_text("\n".join(lines) + "\n")
    return path


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "deepfm", "train", "--no-progress", *args]


def environment(delay: float = 0.0) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("DEEPFM_TEST_STEP_DELAY", None)
    if delay:
        env["DEEPFM_TEST_STEP_DELAY"] = str(delay)
    return env


def state_position(state: Path) -> tuple[int, int, int] | None:
    """(global step, epoch, step in epoch) of a state.pt, or None if absent/being replaced."""
    try:
        payload = torch.load(state, map_location="cpu", weights_only=True)
    except Exception:
        return None
    pos = payload["position"]
    return int(payload["global_step"]), int(pos["epoch"]), int(pos["step"])


def kill_at(args: list[str], out: Path, target_step: int, extra: float, delay: float, timeout: float = 300):
    """Start training, SIGKILL it once state.pt reaches ``target_step`` (+``extra`` seconds).

    Returns the last saved position before the kill, or None when the run finished first.
    """
    proc = subprocess.Popen(
        command(*args, "--out", str(out)),
        env=environment(delay),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state, deadline, seen = out / "state.pt", time.monotonic() + timeout, 0.0
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if state.exists() and state.stat().st_mtime != seen:
                seen = state.stat().st_mtime
                pos = state_position(state)
                if pos is not None and pos[0] >= target_step:
                    time.sleep(extra)
                    break
            time.sleep(0.005)
        if proc.poll() is not None:
            return None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (out / "metrics.json").exists()
    return state_position(state)


def compare(a: dict, b: dict) -> list[str]:
    """Differences between two metrics.json contents (empty when the runs match exactly)."""
    diffs = [f"{k}: {a[k]} != {b[k]}" for k in COMPARED if a[k] != b[k]]
    for ea, eb in zip(a["epochs"], b["epochs"]):
        diffs += [f"epoch {ea['epoch']} {k}: {ea[k]} != {eb[k]}" for k in PER_EPOCH if ea[k] != eb[k]]
    return diffs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=8, help="kill points (default 8)")
    p.add_argument("--data-dir", help="a MovieLens-1M folder (default: generated, --rows rows)")
    p.add_argument("--rows", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--delay", type=float, default=0.01, help="seconds slept per step while killable")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill points (and of training)")
    opts = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="deepfm-kill-"))
    data = Path(opts.data_dir) if opts.data_dir else write_data(work / "data", opts.rows)
    args = ["--data-dir", str(data), "--epochs", str(opts.epochs), "--batch-size", str(opts.batch_size)]
    args += ["--lr", "0.01", "--seed", str(opts.seed), "--threads", "1"]
    started = time.perf_counter()  # the reference saves state only at epoch ends
    subprocess.run(
        command(*args, "--out", str(work / "ref")), env=environment(), check=True, capture_output=True
    )
    args += ["--checkpoint-every", str(opts.checkpoint_every)]
    reference = json.loads((work / "ref" / "metrics.json").read_text())
    steps_per_epoch = -(-reference["data"]["rows"]["train"] // opts.batch_size)
    total = steps_per_epoch * reference["epochs_run"]
    print(
        f"reference: {reference['epochs_run']} epochs x ~{steps_per_epoch} steps, test AUC "
        f"{reference['test_auc']:.6f} ({time.perf_counter() - started:.1f}s)"
    )

    rng = random.Random(opts.seed)
    survived = killed = 0
    for i in range(opts.points):
        out = work / f"run{i}"
        target = rng.randint(1, max(total - opts.checkpoint_every - 1, 1))
        extra = rng.uniform(0, opts.checkpoint_every * opts.delay)
        pos = kill_at(args, out, target, extra, opts.delay)
        if pos is None:
            print(f"point {i}: run finished before the kill (target step {target}); not counted")
            continue
        killed += 1
        resumed = subprocess.run(
            command("--out", str(out), "--resume"), env=environment(), capture_output=True, text=True
        )
        if resumed.returncode != 0:
            print(f"point {i}: resume FAILED: {resumed.stderr.strip()[-300:]}")
            continue
        diffs = compare(reference, json.loads((out / "metrics.json").read_text()))
        survived += not diffs
        where = f"global step {pos[0]} (epoch {pos[1]}, step {pos[2]})"
        status = "identical metrics" if not diffs else "DIFFERENT: " + "; ".join(diffs[:3])
        print(f"point {i}: killed after state at {where} + {extra * 1e3:.0f} ms -> resumed: {status}")
    seconds = time.perf_counter() - started
    print(f"survived {survived}/{killed} kills (exact metrics after resume); {seconds:.0f}s")
    return 0 if survived == killed and killed > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

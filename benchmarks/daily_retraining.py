"""Daily retraining on real data: warm start (``--init-from``) vs a cold start, one epoch each.

MovieLens ratings sorted by time are cut into consecutive "days" of equal size; day ``d`` keeps
a random 10% of its rows as its validation file. Day 1 is trained with early stopping; day 2 is
then trained for one epoch twice with the same options, cold and ``--init-from`` day 1, and
both are tested on day 3 (the next day). Every training is a ``deepfm train`` command line,
printed as it runs, so the numbers can be reproduced by hand.

    python benchmarks/daily_retraining.py --data-dir ../shared/data/ml-1m-half --seeds 0,1,2

Prints one line per seed and the mean difference of day-3 test AUC (warm - cold).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_days(ratings: Path, folder: Path, days: int = 3, seed: int = 0) -> None:
    """``day{d}.csv`` (90%) and ``day{d}-valid.csv`` (10%) per day, and a spec per day."""
    frame = pd.read_csv(
        ratings, sep="::", engine="python", names=["user_id", "movie_id", "rating", "timestamp"]
    )
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(frame), days + 1).astype(int)
    for d in range(1, days + 1):
        part = frame.iloc[bounds[d - 1] : bounds[d]]
        valid = rng.random(len(part)) < 0.1
        part[~valid].to_csv(folder / f"day{d}.csv", index=False)
        part[valid].to_csv(folder / f"day{d}-valid.csv", index=False)
        if d < days:
            spec = {
                "name": f"ml-day{d}",
                "input": {"format": "csv"},
                "label": "rating > 3",
                "fields": ["user_id", "movie_id"],
                "split": {
                    "method": "files",
                    "files": {
                        "train": [f"day{d}.csv"],
                        "valid": [f"day{d}-valid.csv"],
                        "test": [f"day{d + 1}.csv"],
                    },
                },
            }
            (folder / f"day{d}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def deepfm_train(*args: str) -> dict:
    cmd = [sys.executable, "-m", "deepfm", "train", *args, "--no-progress", "--threads", "1"]
    print("$ deepfm train " + " ".join(cmd[4:]), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "metrics.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "ml-1m-half"))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--work", default=None, help="folder for the day files and runs (default: temporary)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="daily-"))
    write_days(Path(args.data_dir) / "ratings.dat", work / "days")
    diffs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        s = ["--seed", str(seed)]
        runs = work / f"seed{seed}"
        day1 = deepfm_train("--spec", str(work / "days/day1.yaml"), "--out", str(runs / "day1"), *s)
        spec2 = ["--spec", str(work / "days/day2.yaml"), "--epochs", "1", *s]
        cold = deepfm_train(*spec2, "--out", str(runs / "day2-cold"))
        cold0 = deepfm_train(*spec2, "--out", str(runs / "day2-cold-nowarmup"), "--fm-warmup-epochs", "0")
        warm = deepfm_train(*spec2, "--out", str(runs / "day2-warm"), "--init-from", str(runs / "day1"))
        diffs.append(warm["test_auc"] - max(cold["test_auc"], cold0["test_auc"]))
        print(
            f"seed {seed}: day 1 (best epoch {day1['best_epoch']}) day-2 AUC {day1['test_auc']:.4f}; "
            f"day 2, 1 epoch -> day-3 test AUC: cold {cold['test_auc']:.4f}, cold without FM warm-up "
            f"{cold0['test_auc']:.4f}, warm {warm['test_auc']:.4f} "
            f"(carried {warm['warm_start']['rows_carried']:,} rows, {warm['warm_start']['rows_new']:,} new)",
            flush=True,
        )
    print(f"warm - best cold, day-3 test AUC: mean {np.mean(diffs):+.4f} over {len(diffs)} seed(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

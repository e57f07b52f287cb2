"""One process vs data-parallel ranks (torchrun, gloo on CPU), side by side on the same data and seed.

Runs ``deepfm train`` once per setup below, one after the other, each as its own subprocess, and
prints wall time, training samples/s (all ranks together), the ratio to the first setup, best
epoch and test AUC read from each run's ``metrics.json``:

  1proc-t1  one process, 1 intra-op thread, batch B
  1proc     one process, default threads,   batch B
  2x(B/2)   torchrun 2 ranks, batch B/2 per rank (same global batch as 1proc)
  2xB       torchrun 2 ranks, batch B per rank   (global batch 2B)

``--optimizer`` is passed to every setup; the table prints the resolved optimizer, the embedding
sync and the bytes per step and rank handed to collectives (``metrics.json``).

    python benchmarks/distributed.py --data-dir ../shared/data/ml-1m-half --epochs 10

On a machine with few cores the ranks share them, so no speed-up is expected there; the point of
the comparison is that the data-parallel runs reach the same test AUC.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def run(name: str, cmd: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["process_seconds"] = elapsed
    return metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--batch-size", type=int, default=1024, help="B: the single-process batch")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="deepfm")
    p.add_argument("--only", nargs="*", help="run only these setups")
    p.add_argument("--optimizer", default="auto", help="--optimizer of every setup (default auto)")
    args = p.parse_args()

    b = args.batch_size
    common = ["--data-dir", args.data_dir, "--epochs", str(args.epochs), "--seed", str(args.seed)]
    common += ["--model", args.model, "--no-progress", "--optimizer", args.optimizer]
    one = [sys.executable, "-m", "deepfm", "train"]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    two += ["-m", "deepfm", "train"]
    setups = {
        "1proc-t1": (one, ["--batch-size", str(b), "--threads", "1"]),
        "1proc": (one, ["--batch-size", str(b)]),
        f"2x{b // 2}": (two, ["--batch-size", str(b // 2)]),
        f"2x{b}": (two, ["--batch-size", str(b)]),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (launcher, extra) in setups.items():
            if args.only and name not in args.only:
                continue
            out = Path(tmp) / name
            metrics = run(name, [*launcher, *common, *extra, "--out", str(out)], out)
            rows.append((name, metrics))
            print(row(name, metrics, rows[0][1]), file=sys.stderr, flush=True)  # as soon as known

    print(HEADER)
    for name, m in rows:
        print(row(name, m, rows[0][1]))


HEADER = (
    f"{'setup':<10} {'ranks':>5} {'global batch':>12} {'wall s':>8} {'train s':>8} "
    f"{'samples/s':>10} {'ratio':>6} {'best ep':>7} {'test AUC':>9} {'logloss':>8} "
    f"{'optimizer':>9} {'sync':>5} {'KB/step':>8}"
)


def row(name: str, m: dict, base: dict) -> str:
    d = m.get("distributed", {"world_size": 1, "global_batch_size": m["config"]["batch_size"]})
    traffic = d.get("bytes_per_step", {}).get("total")
    return (
        f"{name:<10} {d['world_size']:>5} {d['global_batch_size']:>12} {m['process_seconds']:>8.1f} "
        f"{m['train_seconds']:>8.1f} {m['train_samples_per_s']:>10,.0f} "
        f"{m['train_samples_per_s'] / base['train_samples_per_s']:>6.2f} {m['best_epoch']:>7} "
        f"{m['test_auc']:>9.4f} {m['test_logloss']:>8.4f} {m['environment']['optimizer']:>9} "
        f"{d.get('embedding_sync') or '-':>5} {'-' if traffic is None else f'{traffic / 1e3:,.0f}':>8}"
    )


if __name__ == "__main__":
    main()

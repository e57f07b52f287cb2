"""Re-run what the README's results table reports and write that table (docs/results.md).

Each row is a ``deepfm train`` command line run as written, once per seed; the table gives test
AUC and logloss (mean ± std over seeds when there are several), the best epochs and the training
time, with the command, the CPU and the date above it. The README shows this file's table as is.

    python benchmarks/results.py --data-dir ../shared/data/ml-1m-half --seeds 0 --out docs/results.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from deepfm.cli.main import build_parser
from deepfm.cli.train import config_from_args
from deepfm.experiments.tracking import train_tracked

ROWS = {  # name: the options of ``deepfm train`` besides --data-dir, --seed and --out
    "DeepFM": "",
    "FM": "--model fm",
    "DeepFM, side features": "--features all --config movielens-1m-all",
}


def run(data_dir: str, options: str, seed: int, out: Path) -> dict[str, Any]:
    argv = ["train", "--data-dir", data_dir, "--seed", str(seed), "--out", str(out), "--no-progress"]
    config = config_from_args(build_parser().parse_args(argv + shlex.split(options)))
    started = time.perf_counter()
    metrics = train_tracked(config, echo=lambda *_: None)
    return {
        "auc": metrics["test_auc"],
        "logloss": metrics["test_logloss"],
        "best_epoch": metrics["best_epoch"],
        "seconds": time.perf_counter() - started,
    }


def cpu() -> str:
    """``lscpu``'s model name, the cores this process sees, and AVX-512 / BF16 support."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    model = fields.get("Model name", "").strip()
    flags = fields.get("Flags", "").split()
    avx512 = "AVX-512" if "avx512f" in flags else "no AVX-512"
    bf16 = "BF16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "no BF16"
    return f"{model}, {len(os.sched_getaffinity(0))} cores, {avx512}, {bf16}"


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(results: dict[str, list[dict[str, Any]]], data_dir: str, seeds: list[int]) -> str:
    name = Path(data_dir).name
    lines = [
        f"`deepfm train --data-dir {name} --seed S OPTIONS`, seed{'s' * (len(seeds) > 1)} "
        f"{', '.join(map(str, seeds))}; "
        f"{cpu()}; {datetime.date.today().isoformat()} (`python benchmarks/results.py`).",
        "",
        "| model | options | test AUC | test logloss | best epoch | train s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row, runs in results.items():
        epochs = ", ".join(str(r["best_epoch"]) for r in runs)
        seconds = statistics.fmean(r["seconds"] for r in runs)
        lines.append(
            f"| {row} | `{ROWS[row] or '(defaults)'}` | {cell([r['auc'] for r in runs])} | "
            f"{cell([r['logloss'] for r in runs])} | {epochs} | {seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="MovieLens-1M layout (ratings.dat ...)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--out", default="docs/results.md", help="where the table is written")
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, Any]]] = {row: [] for row in args.rows}
    with tempfile.TemporaryDirectory(prefix="results-") as tmp:
        for seed in args.seeds:
            for n, row in enumerate(args.rows):
                results[row].append(run(args.data_dir, ROWS[row], seed, Path(tmp) / f"{n}-{seed}"))
                print(row, seed, results[row][-1], flush=True)
    text = "# Results\n\n" + table(results, args.data_dir, args.seeds)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

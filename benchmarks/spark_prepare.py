"""The two prepare engines side by side on a Criteo-like file: rows/s and the same prepared data.

Generates a Criteo-layout TSV (``criteo_scale.generate``), then runs ``deepfm prepare --dataset
criteo`` once with the default engine (Polars) and once per Spark master given, each in a fresh
process, and reports wall seconds and rows/s (whole command, JVM start included), Spark's rows/s
per stage (from ``meta.json``), and whether each Spark folder holds the same feature map and
encoded arrays as the default engine's (byte for byte).

    nice python benchmarks/spark_prepare.py --rows 1000000 --master 'local[2]' 'local-cluster[2,1,1024]'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from criteo_scale import generate  # noqa: E402


def prepare(data: Path, out: Path, env: dict[str, str], min_count: int, engine: list[str]) -> float:
    command = [sys.executable, "-m", "deepfm", "prepare", "--dataset", "criteo", "--data-dir", str(data)]
    command += ["--min-count", str(min_count), "--out", str(out), *engine]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return time.perf_counter() - started


def same(a: Path, b: Path) -> bool:
    """The feature map and every encoded array of two prepared folders are identical."""
    if (a / "feature_map.json").read_bytes() != (b / "feature_map.json").read_bytes():
        return False
    names = sorted(p.name for p in a.glob("*.npy"))
    if names != sorted(p.name for p in b.glob("*.npy")):
        return False
    return all(np.array_equal(np.load(a / n, mmap_mode="r"), np.load(b / n, mmap_mode="r")) for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--master", nargs="*", default=["local[2]"], help="Spark masters to run")
    parser.add_argument("--min-count", type=int, default=10)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="deepfm-spark-prepare-"))
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = (
        str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    )
    try:
        tsv = data / "train.txt"
        if not tsv.exists():
            generate(tsv, args.rows)
        print(f"{args.rows:,} rows, {tsv.stat().st_size / 1e6:.0f} MB")
        runs = [("polars", [])] + [(f"spark {m}", ["--engine", "spark", "--master", m]) for m in args.master]
        results = []
        for k, (name, engine) in enumerate(runs):
            out = work / f"out{k}"
            seconds = prepare(data, out, env, args.min_count, engine)
            meta = json.loads((out / "meta.json").read_text())
            rows = sum(meta["rows"].values())
            stages = meta["engine"].get("stage_rows_per_s", {})
            match = "-" if k == 0 else ("identical" if same(work / "out0", out) else "DIFFERENT")
            results.append((name, seconds, rows, stages, match))
            print(json.dumps({"engine": name, "seconds": seconds, "rows": rows, "stages": stages}))
        base = results[0][1]
        header = (
            "| engine | wall s | rows/s (wall) | vs polars | read + split | statistics | encode + write |"
        )
        print(header + " data |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for name, seconds, rows, stages, match in results:
            cells = [
                f"{stages[s]:,.0f}" if stages.get(s) else "-"
                for s in ("read_split", "statistics", "encode_write")
            ]
            speed = f"{rows / seconds:,.0f} | {base / seconds:.2f}x"
            print(f"| {name} | {seconds:.1f} | {speed} | {' | '.join(cells)} | {match} |")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

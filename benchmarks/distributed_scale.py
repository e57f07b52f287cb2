"""Data-parallel training from shards at Criteo scale: one process vs 2 ranks on the same data.

Generates a Criteo-like TSV (``criteo_scale.generate``), prepares it once into a sharded folder
(``deepfm prepare --spec ... --shards 2``), then trains, each as its own command under
``/usr/bin/time -v`` (every rank under its own), one epoch from that folder:

  1proc   ``deepfm train --prepared DIR --batch-size 2B``      (streams both shards)
  2ranks  ``torchrun --nproc-per-node 2 ... --batch-size B``   (each rank streams its own shard)

and prints, per setup: training samples/s (all ranks), wall seconds, the peak RSS of every
process, test AUC, the embedding sync and the bytes per step and rank handed to collectives.
Both runs use the same model, optimizer and global batch. Every stage is kept in ``--workdir`` and
skipped when its output is there (re-run a setup with ``--only``).

    nice python benchmarks/distributed_scale.py --rows 20000000 --workdir /tmp/deepfm-dscale
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import criteo_scale  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
TIME = "/usr/bin/time"


def env() -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(name, None)
    return out


def peak_rss(report: Path) -> int:
    """``Maximum resident set size`` of a ``/usr/bin/time -v`` report, in bytes."""
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report.read_text())
    return int(match.group(1)) * 1024 if match else -1


def run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.run(cmd, env=env(), stdout=sink, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-4000:]}")
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--workdir", required=True)
    p.add_argument("--batch-size", type=int, default=4096, help="B: per rank (one process: 2B)")
    p.add_argument("--min-count", type=int, default=10)
    p.add_argument("--model", default="deepfm")
    p.add_argument("--only", nargs="*", choices=["1proc", "2ranks"], help="(re)run only these setups")
    args = p.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tsv, spec, prepared = work / "train.txt", work / "spec.yaml", work / "prepared"
    if not tsv.exists():
        t = time.perf_counter()
        rate = criteo_scale.generate(work / "train.tmp", args.rows)
        (work / "train.tmp").rename(tsv)
        print(f"generated {args.rows:,} rows ({tsv.stat().st_size / 1e9:.2f} GB, CTR {rate:.3f}) in "
              f"{time.perf_counter() - t:.0f}s", flush=True)  # fmt: skip
    if not spec.exists():
        from deepfm.data.catalog.ctr import criteo_spec_dict

        spec.write_text(
            yaml.safe_dump(criteo_spec_dict([str(tsv)]) | {"name": "criteo-like"}, sort_keys=False)
        )
    if not prepared.exists():
        cmd = [TIME, "-v", "-o", str(work / "prepare.time"), sys.executable, "-m", "deepfm", "prepare"]
        cmd += ["--spec", str(spec), "--min-count", str(args.min_count), "--shards", "2"]
        cmd += ["--out", str(prepared), "--no-progress"]
        seconds = run(cmd, work / "prepare.log")
        print(
            f"prepared in {seconds:.0f}s, peak RSS {peak_rss(work / 'prepare.time') / 2**30:.2f} GiB",
            flush=True,
        )
    meta = json.loads((prepared / "meta.json").read_text())
    size = sum(v["bytes"] for k, v in meta["files_written"].items() if k.startswith("train-"))
    print(f"rows {meta['rows']}, training shards {meta['shards']['train']['rows']} ({size / 2**30:.2f} GiB)")

    common = ["train", "--prepared", str(prepared), "--model", args.model, "--epochs", "1"]
    common += ["--fm-warmup-epochs", "0", "--optimizer", "lazy", "--threads", "1", "--no-progress"]
    b = args.batch_size
    setups = {
        "1proc": (1, ["--batch-size", str(2 * b)]),
        "2ranks": (2, ["--batch-size", str(b)]),
    }
    rows = []
    for name, (ranks, extra) in setups.items():
        out = work / f"run-{name}"
        if args.only is None or name in args.only:
            for old in work.glob(f"{name}-rank*.time"):
                old.unlink()
            train = [*common, *extra, "--out", str(out)]
            if ranks == 1:
                cmd = [
                    TIME,
                    "-v",
                    "-o",
                    str(work / f"{name}-rank0.time"),
                    sys.executable,
                    "-m",
                    "deepfm",
                    *train,
                ]
            else:  # every rank under its own /usr/bin/time (torchrun sets RANK)
                inner = f'exec {TIME} -v -o {work}/{name}-rank"$RANK".time {sys.executable} -m deepfm '
                inner += " ".join(train)
                cmd = [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc-per-node={ranks}",
                ]
                cmd += ["--no-python", "sh", "-c", inner]
            seconds = run(cmd, work / f"{name}.log")
            (out / "process_seconds").write_text(f"{seconds}\n")
        if not (out / "metrics.json").exists():
            print(f"{name}: not run yet (no {out / 'metrics.json'}; run it with --only {name})", flush=True)
            continue
        metrics = json.loads((out / "metrics.json").read_text())
        peaks = [peak_rss(work / f"{name}-rank{r}.time") for r in range(ranks)]
        dist = metrics["distributed"]
        rows.append(
            f"| {name} | {ranks} | {dist['batch_size_per_rank']} | {metrics['train_samples_per_s']:,.0f} | "
            f"{float((out / 'process_seconds').read_text()):,.0f} | "
            f"{', '.join(f'{p / 2**30:.2f}' for p in peaks)} | {metrics['test_auc']:.4f} | "
            f"{dist.get('embedding_sync') or '-'} | "
            f"{dist['bytes_per_step']['total'] / 1e6:.2f} |"
            if ranks > 1
            else f"| {name} | 1 | {dist['batch_size_per_rank']} | {metrics['train_samples_per_s']:,.0f} | "
            f"{float((out / 'process_seconds').read_text()):,.0f} | {peaks[0] / 2**30:.2f} | "
            f"{metrics['test_auc']:.4f} | - | - |"
        )
        print(rows[-1], flush=True)
    print(
        "\n| setup | ranks | batch per rank | train samples/s | wall s | peak RSS per process GiB "
        "| test AUC | embedding sync | MB per step and rank |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

"""Bytes per step of the two embedding syncs, and samples/s of 1 process vs 2 ranks, side by side.

A Criteo-like data set (``criteo_scale.generate``: label, I1-I13, C1-C26, Zipf categories) is
prepared once per table size with the 26 categorical fields hashed into buckets in proportion to
their cardinalities (``hash_buckets``), so the table has the asked-for rows whatever the data's
size: 39 fields a row (13 ``log2bucket`` integers + 26 hashed). For each table it trains one epoch
of the Criteo recipe (DeepFM, embed 16, MLP 400-400-400, dropout 0.2, lazy Adam, 1 thread a
process) as

  1proc        ``deepfm train``, batch B
  2ranks-rows  ``torchrun --nproc-per-node 2``, batch B per rank, ``--embedding-sync rows``
  2ranks-dense the same with ``--embedding-sync dense``

and prints the bytes per step and rank handed to the collective calls (``metrics.json`` ->
``distributed.bytes_per_step``, counted at the calls: DDP's bucket all-reduces of the dense layers,
the table's all-reduce or its gathered (id, row) pairs) and training samples/s (all ranks).

    nice python benchmarks/embedding_sync.py --rows 200000 --tables 620000 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import criteo_scale  # noqa: E402

from deepfm.data.features import FeatureMap  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
ZIPF = 1.2  # as throughput.py's Criteo-like workload
LOG2BUCKET_ROWS = 13 * 40  # the integer fields' rows, roughly (their buckets are fitted)


def env() -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(name, None)
    return out


def spec_for(tsv: Path, table_rows: int) -> dict:
    """The Criteo layout with C1-C26 hashed into ``table_rows`` rows in all (by cardinality)."""
    from deepfm.data.catalog.ctr import criteo_spec_dict

    spec = criteo_spec_dict([str(tsv)]) | {"name": f"criteo-like-{table_rows}"}
    total = sum(criteo_scale.CARDINALITY)
    budget = table_rows - LOG2BUCKET_ROWS - 26  # each hashed field adds its OOV row
    for field, card in zip(
        (f for f in spec["fields"] if f["name"].startswith("C")), criteo_scale.CARDINALITY
    ):
        field["hash_buckets"] = max(2, round(budget * card / total))
    return spec


def run(cmd: list[str], out: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["process_seconds"] = time.perf_counter() - start
    return metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000, help="rows to generate (80%% train)")
    p.add_argument("--tables", type=int, nargs="+", default=[620_000, 10_000_000])
    p.add_argument("--batch-size", type=int, default=4096, help="per process / rank")
    p.add_argument("--workdir", required=True)
    p.add_argument("--only", nargs="*", help="run only these setups (1proc, 2ranks-rows, 2ranks-dense)")
    args = p.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tsv = work / f"criteo-{args.rows}.txt"
    if not tsv.exists():
        rate = criteo_scale.generate(work / "tmp.txt", args.rows, seed=0, zipf=ZIPF)
        (work / "tmp.txt").rename(tsv)
        print(f"generated {args.rows:,} rows, CTR {rate:.3f}", flush=True)
    model = ["--model", "deepfm", "--mlp", "400,400,400", "--dropout", "0.2", "--fm-warmup-epochs", "0"]
    model += ["--optimizer", "lazy", "--threads", "1", "--epochs", "1", "--no-progress"]
    model += ["--batch-size", str(args.batch_size)]
    one = [sys.executable, "-m", "deepfm", "train"]
    two = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "deepfm",
    ]
    two += ["train"]
    table = []
    for rows in args.tables:
        spec, prepared = work / f"spec-{rows}.yaml", work / f"prepared-{rows}"
        spec.write_text(yaml.safe_dump(spec_for(tsv, rows), sort_keys=False))
        if not prepared.exists():
            cmd = [sys.executable, "-m", "deepfm", "prepare", "--spec", str(spec), "--out", str(prepared)]
            subprocess.run([*cmd, "--no-progress"], env=env(), check=True, capture_output=True)
        fmap = FeatureMap.from_dict(json.loads((prepared / "feature_map.json").read_text()))
        table_rows = fmap.num_rows
        setups = {
            "1proc": one,
            "2ranks-rows": [*two, "--embedding-sync", "rows"],
            "2ranks-dense": [*two, "--embedding-sync", "dense"],
        }
        for name, cmd in setups.items():
            if args.only and name not in args.only:
                continue
            out = work / f"run-{rows}-{name}"
            m = run([*cmd, "--prepared", str(prepared), *model, "--out", str(out)], out)
            traffic = m["distributed"].get("bytes_per_step", {})
            emb = traffic.get("embedding_rows", traffic.get("embedding_dense", 0.0))
            row = (
                f"| {table_rows:,} | {name} | {m['distributed']['world_size']} | "
                f"{emb / 1e6:,.2f} | {traffic.get('dense_parameters', 0.0) / 1e6:,.2f} | "
                f"{traffic.get('total', 0.0) / 1e6:,.2f} | {m['train_samples_per_s']:,.0f} | "
                f"{m['test_auc']:.4f} |"
            )
            table.append(row)
            print(row, flush=True)
    print(
        "\n| table rows | setup | ranks | table MB/step/rank | dense layers MB/step/rank "
        "| total MB/step/rank | train samples/s (all ranks) | test AUC |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(table))


if __name__ == "__main__":
    main()

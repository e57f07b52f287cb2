"""Out-of-core preprocessing and streamed training at Criteo scale, on synthetic data.

Generates a Criteo-format TSV (label, I1-I13, C1-C26; empty = missing; Zipf-distributed
categories with Criteo-like cardinalities; a planted signal), then, each in a fresh child process:

1. preprocesses it with the ``criteo`` spec (two streaming passes into the cache folder) and
   reports rows/s and the child's peak RSS (``ru_maxrss``);
2. trains one DeepFM epoch streaming the training rows from the ``.npy`` files
   (:class:`MemmapSplit`), sampling RSS as it goes to show it stays flat.

    python benchmarks/criteo_scale.py --rows 1000000            # quick
    nice python benchmarks/criteo_scale.py --rows 20000000      # the acceptance run

The generated file and the cache are deleted at the end unless ``--keep``.
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
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

# Criteo-like cardinalities of C1..C26 (capped) and Zipf exponents
CARDINALITY = [1400, 550, 200_000, 150_000, 300, 24, 12_000, 600, 3, 50_000, 5_000, 200_000, 3_000,
               27, 14_000, 180_000, 10, 5_000, 2_000, 4, 190_000, 17, 15, 80_000, 100, 60_000]  # fmt: skip
MISSING_RATE = [0.0, 0.0, 0.03, 0.03, 0.0, 0.12, 0.0, 0.0, 0.0, 0.0, 0.0, 0.03, 0.0,
                0.0, 0.0, 0.03, 0.0, 0.0, 0.44, 0.44, 0.03, 0.0, 0.76, 0.03, 0.44, 0.44]  # fmt: skip
CHUNK = 250_000


def generate(path: Path, rows: int, seed: int = 0, zipf: float = 1.15) -> float:
    """Write ``rows`` synthetic Criteo rows to ``path``; returns the positive rate.

    ``zipf``: the exponent of the category ranks (larger = fewer distinct values).
    """
    rng = np.random.default_rng(seed)
    vocab = [pa.array([f"{(k * 2654435761 + 977 * f) & 0xFFFFFFFF:08x}" for k in range(n)])
             for f, n in enumerate(CARDINALITY)]  # fmt: skip
    weight = [rng.normal(0, 0.8, n) for n in CARDINALITY]  # planted per-value effects
    signal_fields = (0, 1, 4, 6, 13, 16)
    positives = 0
    with open(path, "wb") as sink:
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            columns: dict[str, pa.Array] = {}
            logit = np.full(n, -1.6)
            ints = []
            for i in range(13):
                x = np.floor(rng.lognormal(1.0 + 0.2 * i, 1.5, n)).astype(np.int64)
                missing = rng.random(n) < (0.45 if i in (0, 9, 11) else 0.05)
                ints.append(pa.array(x, mask=missing))
                if i in (0, 4):
                    logit += np.where(missing, 0.0, 0.35 * np.log1p(x) - 0.5)
            cats = []
            for f, card in enumerate(CARDINALITY):
                rank = (rng.zipf(zipf, n) - 1) % card
                missing = rng.random(n) < MISSING_RATE[f]
                if f in signal_fields:
                    logit += np.where(missing, 0.0, weight[f][rank])
                cats.append(pc.take(vocab[f], pa.array(rank, mask=missing)))
            label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
            positives += int(label.sum())
            columns = {"label": pa.array(label)}
            columns |= {f"I{i + 1}": a for i, a in enumerate(ints)}
            columns |= {f"C{f + 1}": a for f, a in enumerate(cats)}
            pacsv.write_csv(
                pa.table(columns),
                sink,
                pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"),
            )
    return positives / rows


CHILD_PREPROCESS = """
import json, resource, sys, time
from pathlib import Path
from deepfm.data.catalog.ctr import criteo_spec
from deepfm.data.options import PrepareOptions
from deepfm.data.prepare import prepared_folder
t = time.perf_counter()
options = PrepareOptions(min_count=int(sys.argv[2]))
folder = prepared_folder(criteo_spec(Path(sys.argv[1])), options, progress=True)
meta = json.loads((folder / "meta.json").read_text())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": time.perf_counter() - t, "rows": meta["rows"], "folder": str(folder),
                  "passes": meta["seconds"], "peak": peak}))
"""

CHILD_EPOCH = """
import json, resource, sys, time
import psutil, torch
from pathlib import Path
from deepfm.data.memmap import MemmapSplit
from deepfm.data.features import FeatureMap
from deepfm.models import build_model
from deepfm.training.loop import train_epoch
folder, max_batches = Path(sys.argv[1]), int(sys.argv[2])
fmap = FeatureMap.from_dict(json.loads((folder / "feature_map.json").read_text()))
split = MemmapSplit(folder, "train")
proc = psutil.Process()
samples = []
class Capped:  # the real split, cut to max_batches, recording RSS every 20 batches
    label = split.label
    def __len__(self): return min(len(split), max_batches * 4096) if max_batches else len(split)
    def num_batches(self, b, shuffle=False): return len(self) // b
    def batches(self, b, generator=None, shuffle=False):
        for k, batch in enumerate(split.batches(b, generator, shuffle)):
            if max_batches and k >= max_batches: return
            if k % 20 == 0: samples.append((k, proc.memory_info().rss))
            yield batch
torch.manual_seed(0)
model = build_model("deepfm", num_rows=fmap.num_rows, num_fields=len(fmap.fields), embed_dim=16,
                    mlp=(400, 400, 400), dropout=0.0)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
before = proc.memory_info().rss
stats = train_epoch(model, Capped(), opt, 4096, torch.Generator().manual_seed(0))
print(json.dumps({"rows": stats.samples, "seconds": stats.seconds, "samples_per_s": stats.samples_per_s,
                  "loss": stats.loss, "table_rows": fmap.num_rows, "rss_before_epoch": before,
                  "rss_samples": samples, "rss_end": proc.memory_info().rss,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def child(code: str, args: list[str], env: dict[str, str]) -> tuple[dict, int]:
    """Run ``code`` in a fresh interpreter; its JSON result and its own peak RSS (ru_maxrss) in bytes."""
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, check=True)
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result, int(result.pop("peak"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", default=None, help="where the TSV and cache go (default: a temp dir)")
    parser.add_argument("--min-count", type=int, default=10)
    parser.add_argument("--max-batches", type=int, default=0, help="cut the epoch (0 = whole epoch)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file and cache")
    parser.add_argument("--input", help="use this existing Criteo TSV instead of generating one (kept)")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="deepfm-criteo-scale-"))
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DEEPFM_CACHE=str(work / "cache"))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    results: dict = {"rows": args.rows}
    try:
        tsv = data / "train.txt"
        t = time.perf_counter()
        if args.input:
            tsv.symlink_to(Path(args.input).resolve())
            rate = float("nan")
        else:
            rate = generate(tsv, args.rows)
        results["generate"] = {"seconds": time.perf_counter() - t, "bytes": tsv.stat().st_size, "ctr": rate}
        what = f"using {args.input}" if args.input else f"generated {args.rows:,} rows"
        print(f"{what}: {tsv.stat().st_size / 1e9:.2f} GB, CTR {rate:.3f}, in {time.perf_counter() - t:.0f}s")

        prep, peak = child(CHILD_PREPROCESS, [str(data), str(args.min_count)], env)
        rows = sum(prep["rows"].values())
        results["preprocess"] = prep | {"peak_rss_bytes": peak, "rows_per_s": rows / prep["seconds"]}
        print(f"preprocess: {rows:,} rows, {rows / prep['seconds']:,.0f} rows/s ({prep['seconds']:.0f}s), "
              f"peak RSS {peak / 2**30:.2f} GiB, passes {prep['passes']}")  # fmt: skip

        epoch, peak = child(CHILD_EPOCH, [prep["folder"], str(args.max_batches)], env)
        rss = [r for _, r in epoch["rss_samples"]]
        results["epoch"] = epoch | {"peak_rss_bytes": peak}
        print(f"epoch: {epoch['rows']:,} rows in {epoch['seconds']:.0f}s ({epoch['samples_per_s']:,.0f}/s), "
              f"table {epoch['table_rows']:,} rows; RSS before {epoch['rss_before_epoch'] / 2**30:.2f} GiB, "
              f"during min {min(rss) / 2**30:.2f} / max {max(rss) / 2**30:.2f} GiB, "
              f"peak {peak / 2**30:.2f} GiB")  # fmt: skip
        print(json.dumps(results, indent=1, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""libsvm keeps its interactions: the same MovieLens-100K rows as a fielded CSV and as libsvm.

Writes ``rows.csv`` (label, user, item, gender, age, occupation) and ``rows.svm`` (``label
idx:1 ...``, one global index per (field, value), numbered by first appearance, as libsvm
converters do) and trains FM and DeepFM on

- ``csv``: the CSV, 5 categorical fields;
- ``auto``: the libsvm file with ``fields: auto`` (token position = field);
- ``bag``: the libsvm file as one multi-valued field, sum-pooled (every index its own feature in
  the FM term; the libsvm default);
- ``mean``: the same bag mean-pooled (the old behaviour: FM has no pairs left);
- ``ranges`` (with ``--index-ranges``): ``blocks.svm``, each field's indices a block of their
  own (the BARS/AFN layout) in shuffled token order, read with one ``index_range`` per field.

Usage: python benchmarks/libsvm_parity.py [--data-dir ../shared/data/ml-100k] [--seeds 3] [--index-ranges]
Prints test AUC per seed and the mean for each (format, model).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepfm.config import TrainConfig  # noqa: E402
from deepfm.training.run import train  # noqa: E402

FIELDS = ["user", "item", "gender", "age", "occupation"]


def write_copies(data_dir: Path, folder: Path) -> dict[str, Path]:
    ratings = pd.read_csv(data_dir / "u.data", sep="\t", names=["user", "item", "rating", "ts"])
    users = pd.read_csv(data_dir / "u.user", sep="|", names=["user", "age", "gender", "occupation", "zip"])
    rows = ratings.merge(users, on="user", how="left", sort=False)
    label = (rows["rating"] > 3).astype(int).to_numpy()
    with open(folder / "rows.csv", "w") as f:
        f.write("label," + ",".join(FIELDS) + "\n")
        for y, values in zip(label, rows[FIELDS].astype(str).to_numpy()):
            f.write(f"{y}," + ",".join(values) + "\n")
    index: dict[tuple[str, str], int] = {}
    with open(folder / "rows.svm", "w") as f:
        for y, values in zip(label, rows[FIELDS].astype(str).to_numpy()):
            ids = [index.setdefault((k, v), len(index) + 1) for k, v in zip(FIELDS, values)]
            f.write(f"{y} " + " ".join(f"{i}:1" for i in ids) + "\n")
    values = rows[FIELDS].astype(str)
    codes = {k: {v: i for i, v in enumerate(dict.fromkeys(values[k]))} for k in FIELDS}  # first seen
    starts = np.cumsum([0] + [len(codes[k]) for k in FIELDS])  # field k owns [starts[k], starts[k+1])
    rng = np.random.default_rng(0)
    with open(folder / "blocks.svm", "w") as f:
        for y, row in zip(label, values.to_numpy()):
            tokens = [f"{starts[k] + codes[name][v]}:1" for k, (name, v) in enumerate(zip(FIELDS, row))]
            rng.shuffle(tokens)  # a range does not depend on the token order
            f.write(f"{y} " + " ".join(tokens) + "\n")
    ranges = [
        {"name": name, "index_range": [int(starts[k]), int(starts[k + 1])]} for k, name in enumerate(FIELDS)
    ]
    svm = {"files": ["rows.svm"], "format": "libsvm"}
    specs = {
        "csv": {"input": {"files": ["rows.csv"], "format": "csv"}, "label": "label", "fields": FIELDS},
        "auto": {"input": svm, "fields": "auto"},
        "bag": {"input": svm, "fields": [{"name": "features", "kind": "multi"}]},
        "mean": {"input": svm, "fields": [{"name": "features", "kind": "multi", "pooling": "mean"}]},
        "ranges": {"input": {"files": ["blocks.svm"], "format": "libsvm"}, "fields": ranges},
    }
    paths = {}
    for name, spec in specs.items():
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump({"name": f"ml100k-{name}", **spec}))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/ml-100k")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--index-ranges", action="store_true", help="also train on blocks.svm read with index_range fields"
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="libsvm-parity-"))
    os.environ.setdefault("DEEPFM_CACHE", str(folder / "cache"))
    specs = write_copies(Path(args.data_dir), folder)
    runs = [("csv", "fm"), ("auto", "fm"), ("bag", "fm"), ("mean", "fm")]
    runs += [("csv", "deepfm"), ("auto", "deepfm")]
    if args.index_ranges:
        runs += [("ranges", "fm"), ("ranges", "deepfm")]
    print("| input | model | test AUC per seed | mean |")
    print("|---|---|---|---|")
    for kind, model in runs:
        aucs = []
        for seed in range(args.seeds):
            config = TrainConfig(
                spec=str(specs[kind]), model=model, out=str(folder / "run"), seed=seed, threads=1,
                progress=False, embed_dim=16, mlp=(128, 64), dropout=0.3, lr=0.004, batch_size=4096,
                patience=2,
            )  # fmt: skip
            aucs.append(train(config, echo=lambda *_: None)["test_auc"])
        per_seed = ", ".join(f"{a:.4f}" for a in aucs)
        print(f"| {kind} | {model} | {per_seed} | {np.mean(aucs):.4f} |", flush=True)


if __name__ == "__main__":
    main()

"""Golden record: what the data pipeline and training produce, written once and checked later.

Records, for the built-in MovieLens data set (``--features ids | all | all+time`` x
``--split random | leave-last``, one seed): which ratings land in each part (the (user, movie)
pairs decoded from the encoded ids, plus row, OOV and positive counts), the feature map, and the
deterministic keys of ``metrics.json`` after a short run; for spec data sets (the Criteo sample
when present, and a generated CSV with numeric, categorical, hashed and multi-valued fields) a
digest of every prepared array and the feature map.

    python benchmarks/golden_record.py write DIR --data-dir ../shared/data/ml-1m-half
    python benchmarks/golden_record.py check DIR --data-dir ../shared/data/ml-1m-half

``check`` prints per item what changed (rows per part, vocabularies as sets, arrays, metrics).
The runs use one thread, so the metrics are bit-reproducible on one machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FEATURES = ("ids", "all", "all+time")
SPLITS = ("random", "leave-last")
VOLATILE = {
    "run_id",
    "train_samples_per_s",
    "train_seconds",
    "wall_seconds",
    "environment",
    "config",
    "epochs",
    "data_fingerprint",
}
EPOCH_VOLATILE = {"train_seconds", "train_samples_per_s"}


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def load_split_arrays(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """The feature map and the encoded parts of a prepared folder written by ``deepfm prepare``
    (or by this script's ``prepare`` helper for code without that command)."""
    fmap = json.loads((folder / "feature_map.json").read_text())
    parts = {}
    for part in ("train", "valid", "test"):
        parts[part] = {p.stem.split("_", 1)[1]: np.load(p) for p in sorted(folder.glob(f"{part}_*.npy"))}
    return fmap, parts


PREPARE = r"""
import json, sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[1]); kind = sys.argv[2]
try:  # the single prepare stage
    from deepfm.data.options import PrepareOptions
    from deepfm.data.prepare import prepare
    if kind == "spec":
        data = prepare(PrepareOptions(spec=sys.argv[3], seed=0), progress=False)
    else:
        opts = PrepareOptions(data_dir=sys.argv[3], features=sys.argv[4], split=sys.argv[5], seed=0)
        data = prepare(opts, progress=False)
except ImportError:  # the code before it
    from deepfm.config import TrainConfig
    from deepfm.training.run import load_data
    if kind == "spec":
        config = TrainConfig(spec=sys.argv[3], progress=False)
    else:
        config = TrainConfig(data_dir=sys.argv[3], features=sys.argv[4], split=sys.argv[5], progress=False)
    data = load_data(config)
out.mkdir(parents=True, exist_ok=True)
(out / "feature_map.json").write_text(json.dumps(data.feature_map.to_dict()))
for part in ("train", "valid", "test"):
    split = getattr(data, part)
    for name in ("ids", "bags", "dense", "label"):
        value = getattr(split, name, None)
        if value is None and hasattr(split, "columns"):  # streamed from disk
            column = split.columns.get(name)
            value = column.read(0, len(split)) if column is not None else None
        if value is not None:
            np.save(out / f"{part}_{name}.npy", np.asarray(value))
"""


def prepare(out: Path, *args: str) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    subprocess.run([sys.executable, "-c", PREPARE, str(out), *args], check=True)
    return load_split_arrays(out)


def pairs(fmap: dict[str, Any], ids: np.ndarray) -> tuple[np.ndarray, int]:
    """(user, movie) raw values of each row where both are known, and the number of OOV rows."""
    cats = [f for f in fmap["fields"] if f["kind"] == "categorical"]
    names = [f["name"] for f in cats]
    cols = []
    known = np.ones(len(ids), dtype=bool)
    for name in ("user_id", "movie_id"):
        f = cats[names.index(name)]
        local = ids[:, names.index(name)].astype(np.int64) - f["offset"] - 1
        known &= local >= 0
        vocab = np.asarray([int(v) for v in f["vocab"]], dtype=np.int64)  # ids as numbers or text
        cols.append(np.where(local >= 0, vocab[np.clip(local, 0, len(vocab) - 1)], -1))
    both = np.stack(cols, axis=1)[known]
    order = np.lexsort((both[:, 1], both[:, 0]))
    return both[order], int((~known).sum())


def train_metrics(out: Path, data_dir: str, features: str, split: str, epochs: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "deepfm", "train", "--data-dir", data_dir, "--features", features]
    cmd += ["--split", split, "--epochs", str(epochs), "--threads", "1", "--no-progress"]
    cmd += ["--out", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())
    kept = {k: v for k, v in metrics.items() if k not in VOLATILE}
    kept["epochs"] = [{k: v for k, v in e.items() if k not in EPOCH_VOLATILE} for e in metrics["epochs"]]
    return kept


def generated_spec(folder: Path) -> Path:
    """A CSV with numeric, quantile, log2bucket, categorical, hashed and multi-valued fields."""
    rng = np.random.default_rng(7)
    n = 4000
    rows = ["click,price,count,city,device,tags,ts"]
    for i in range(n):
        tags = "|".join(rng.choice(["a", "b", "c", "d", "e"], size=rng.integers(0, 4), replace=False))
        price = "" if i % 37 == 0 else f"{rng.lognormal(2, 1):.3f}"
        rows.append(
            f"{int(rng.random() < 0.3)},{price},{rng.integers(0, 500)},c{rng.integers(0, 40)},"
            f"d{rng.integers(0, 900)},{tags},{1_000_000_000 + rng.integers(0, 10**7)}"
        )
    (folder / "clicks.csv").write_text("\n".join(rows) + "\n")
    spec = {
        "name": "generated",
        "input": {"files": ["clicks.csv"], "format": "csv"},
        "label": "click",
        "fields": [
            {"name": "price", "kind": "numeric"},
            {"name": "price_q", "column": "price", "kind": "numeric", "transform": "quantile", "buckets": 5},
            {"name": "count", "kind": "numeric", "transform": "log2bucket"},
            "city",
            {"name": "device", "hash_buckets": 64},
            {"name": "tags", "kind": "multi"},
            {"name": "hour", "column": "ts", "transform": "hour_of_day", "time_format": "unix"},
        ],
    }
    import yaml

    path = folder / "generated.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def criteo_spec(folder: Path, shared: Path) -> Path | None:
    sample = shared / "criteo-sample" / "wide-resdnn" / "train.csv"
    if not sample.exists():
        return None
    import yaml

    ints = [f"I{i}" for i in range(1, 14)]
    cats = [f"C{i}" for i in range(1, 27)]
    spec = {
        "name": "criteo-sample",
        "input": {
            "files": [str(sample)],
            "format": "tsv",
            "header": False,
            "columns": ["label", *ints, *cats],
        },
        "label": "label",
        "fields": [{"name": c, "kind": "numeric", "transform": "log2bucket"} for c in ints]
        + [{"name": c} for c in cats],
    }
    path = folder / "criteo.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def record(data_dir: str, epochs: int, shared: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for features in FEATURES:
            for split in SPLITS:
                key = f"movielens-1m/{features}/{split}"
                print(key, flush=True)
                fmap, parts = prepare(work / key, "builtin", data_dir, features, split)
                entry: dict[str, Any] = {"feature_map": fmap, "parts": {}}
                for part, arrays in parts.items():
                    both, oov = pairs(fmap, arrays["ids"])
                    entry["parts"][part] = {
                        "rows": len(arrays["label"]),
                        "positives": int(arrays["label"].sum()),
                        "oov_rows": oov,
                        "pairs": digest(both),
                        "ids": digest(arrays["ids"].astype(np.int64)),
                        "bags": digest(arrays["bags"].astype(np.int64)) if "bags" in arrays else None,
                    }
                entry["metrics"] = train_metrics(work / "runs" / key, data_dir, features, split, epochs)
                out[key] = entry
        specs = {"generated": generated_spec(work), "criteo-sample": criteo_spec(work, shared)}
        for name, path in specs.items():
            if path is None:
                continue
            print(name, flush=True)
            fmap, parts = prepare(work / "spec" / name, "spec", str(path))
            out[f"spec/{name}"] = {
                "feature_map": fmap,
                "parts": {
                    part: {k: digest(v.astype(np.float64)) for k, v in arrays.items()}
                    | {"rows": len(arrays["label"])}
                    for part, arrays in parts.items()
                },
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["write", "check"])
    p.add_argument("folder", type=Path)
    p.add_argument("--data-dir", default="../shared/data/ml-1m-half")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    shared = Path(args.data_dir).resolve().parent
    now = record(args.data_dir, args.epochs, shared)
    file = args.folder / "golden.json"
    if args.action == "write":
        args.folder.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(now, indent=1, sort_keys=True))
        print(f"wrote {file}")
        return
    golden = json.loads(file.read_text())
    for key in sorted(set(golden) | set(now)):
        print(f"{key}:")
        for line in summarize(golden.get(key), now.get(key)):
            print(f"    {line}")


def summarize(golden: dict[str, Any] | None, now: dict[str, Any] | None) -> list[str]:
    """What changed, item by item: the split (which rows in each part), the vocabularies (as
    sets of values, their order and type aside), the prepared arrays, the metrics."""
    if golden is None or now is None:
        return [f"only in {'now' if golden is None else 'golden'}"]
    lines = []
    gf = {f["name"]: f for f in golden["feature_map"]["fields"]}
    nf = {f["name"]: f for f in now["feature_map"]["fields"]}
    if list(gf) != list(nf):
        lines.append(f"fields: golden {list(gf)} now {list(nf)}")
    for name in gf.keys() & nf.keys():
        g, n = gf[name], nf[name]
        same_values = {str(v) for v in g["vocab"]} == {str(v) for v in n["vocab"]}
        if g["vocab"] != n["vocab"]:
            what = (
                "same values, other order or type"
                if same_values
                else f"{len(g['vocab'])} -> {len(n['vocab'])} values"
            )
            lines.append(f"vocab {name}: {what}")
    for part in ("train", "valid", "test"):
        g, n = golden["parts"][part], now["parts"][part]
        if "pairs" in g:
            state = "same rows" if g["pairs"] == n["pairs"] and g["rows"] == n["rows"] else "other rows"
            lines.append(
                f"{part}: {state} ({g['rows']} -> {n['rows']} rows, "
                f"{g['positives']} -> {n['positives']} positive)"
            )
        else:
            changed = sorted(k for k in g if g[k] != n.get(k))
            lines.append(f"{part}: {'same arrays' if not changed else 'changed ' + ', '.join(changed)}")
    if "metrics" in golden:
        gm, nm = golden["metrics"], now["metrics"]
        for k in ("test_auc", "test_logloss", "best_epoch", "best_valid_auc"):
            lines.append(f"{k}: {gm.get(k)} -> {nm.get(k)}" + ("  (same)" if gm.get(k) == nm.get(k) else ""))
    return lines


if __name__ == "__main__":
    main()

"""Training speed and accuracy of DeepFM in deepfm, DeepCTR-Torch, FuxiCTR and pytorch-fm, side by side.

One split, written once as CSV files (``WORK/ml-1m-ids/{train,valid,test}.csv``: a header,
``label``, ``user_id``, ``movie_id`` as text) from deepfm's own prepared MovieLens split of
``--shared``/ml-1m-half (ids only, label rating > 3, seed 0), is given to every tool. Each tool
trains DeepFM with the reference setup (embed 16, MLP 16-16 with BatchNorm, ReLU, dropout 0.5,
Adam lr 1e-3, batch 1024, one thread: ``torch.set_num_threads(1)``) for ``--epochs`` epochs, in a
child process of its own, the tools interleaved round by round (``--rounds``):

- ``deepfm``: what ``deepfm train --spec WORK/ml-1m-ids/spec.json --epochs 2 --threads 1`` runs
  (:func:`deepfm.training.run.train` with the same :class:`~deepfm.config.TrainConfig`, the data
  loaded before the clock starts);
- ``deepctr``: DeepCTR-Torch's ``DeepFM`` (``dnn_use_bn=True``, no L2 terms; torch Adam with weight
  decay 1e-6), ``fit(..., epochs=1)`` once per epoch, then the validation AUC;
- ``fuxictr``: FuxiCTR 2.3.10's ``model_zoo`` DeepFM, driven as ``peer_fuxictr.py`` drives it (its
  ``FeatureProcessor``, in-memory batches, its own fit loop with a validation per epoch; no
  regularizer terms);
- ``pytorch-fm``: ``torchfm.model.dfm.DeepFactorizationMachineModel`` fed as pytorch-fm's
  example feeds it (a per-sample ``Dataset`` + ``DataLoader``, ``BCELoss``, Adam with weight decay
  1e-6; :mod:`reference`'s pipeline), then the validation AUC.

An epoch is one pass over the 390k training rows plus scoring the validation split, as each tool's
fit loop does it. The clocks start after the data is loaded and the model built: process CPU time
(``time.process_time``: every thread of the child, so other programs on a loaded machine do not
count) and wall time. The first epoch (the warm-up: lazy initialisation, a compiled path) is
reported apart from the later ones. The test AUC is what each tool gives after the same epochs.
Ratios are deepfm's samples per second over the tool's (above 1: deepfm is faster), and the
tool's test AUC minus deepfm's.

    python -m venv /work/venvs/deepctr
    /work/venvs/deepctr/bin/pip install torch==2.13.0 deepctr-torch torchfm pandas requests
    python -m venv /work/venvs/fuxictr
    /work/venvs/fuxictr/bin/pip install torch==2.13.0 fuxictr==2.3.10 'polars<2'
    git clone https://github.com/reczoo/FuxiCTR      # model_zoo/DeepFM/DeepFM_torch/src/DeepFM.py

    nice PYTHONPATH=src python benchmarks/peer_speed.py --epochs 2 --rounds 2 \\
        --deepctr-python /work/venvs/deepctr/bin/python \\
        --fuxictr-python /work/venvs/fuxictr/bin/python \\
        --fuxictr-src FuxiCTR/model_zoo/DeepFM/DeepFM_torch/src

Prints one line per run as it ends and, after each round, a Markdown table: per tool the medians
over the rounds so far.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peer_fuxictr  # noqa: E402  (the split files, FuxiCTR's driver and options)

FIELDS = ["user_id", "movie_id"]
RECIPE = {"embed_dim": 16, "mlp": [16, 16], "dropout": 0.5, "lr": 1e-3, "batch_size": 1024}
TOOLS = ("deepfm", "deepctr", "fuxictr", "pytorch-fm")


# ---------------------------------------------------------------------------------------------
# the split files


def export_split(work: Path, shared: Path, seed: int) -> Path:
    """deepfm's prepared ml-1m-half split (ids only) as CSV text files, plus ``meta.json`` in
    ``peer_fuxictr.py``'s layout (made once, then reused). A validation or test id that is not in
    the training vocabulary is written as ``<unseen>``."""
    import pandas as pd

    from deepfm.config import TrainConfig
    from deepfm.training.run import load_data

    folder = work / "ml-1m-ids"
    if (folder / "meta.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = TrainConfig.from_dict(
        {"dataset": "movielens-1m", "data_dir": str(shared / "ml-1m-half"), "features": "ids", "seed": seed}
    )
    config.progress = False
    data = load_data(config)
    fields = data.feature_map.categorical
    assert [f.name for f in fields] == FIELDS, [f.name for f in fields]
    rows, rates = [], []
    for part in ("train", "valid", "test"):
        split = getattr(data, part)
        ids = split.ids.numpy()
        columns = {"label": split.label.numpy().astype(np.int8)}
        for i, f in enumerate(fields):
            vocab = np.asarray(["<unseen>", *map(str, f.vocab)], dtype=object)
            columns[f.name] = vocab[ids[:, i] - f.offset]
        pd.DataFrame(columns).to_csv(folder / f"{part}.csv", index=False)
        rows.append(len(split))
        rates.append(float(columns["label"].mean()))
    meta = {"name": "ml-1m-ids", "fields": FIELDS, "multi": {}, "rows": rows, "positive_rate": rates}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return folder


def encoded(folder: Path) -> tuple[list[int], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per-field label encoding fitted on ``train.csv`` (1..n; 0 = not in training), as a peer's
    user would write it: field sizes and (ids [rows, fields], labels) per split."""
    import pandas as pd

    frames = {p: pd.read_csv(folder / f"{p}.csv", dtype=str) for p in ("train", "valid", "test")}
    sizes, out = [], {}
    vocab = {f: pd.Index(frames["train"][f].unique()) for f in FIELDS}
    for f in FIELDS:
        sizes.append(len(vocab[f]) + 1)
    for part, frame in frames.items():
        ids = np.stack([vocab[f].get_indexer(frame[f]) + 1 for f in FIELDS], axis=1).astype(np.int64)
        out[part] = (ids, frame["label"].astype(np.float32).to_numpy())
    return sizes, out


class Clock:
    """Process CPU time and wall time at each epoch's end, from the start."""

    def __init__(self) -> None:
        self.marks = [(time.process_time(), time.perf_counter())]

    def mark(self) -> None:
        self.marks.append((time.process_time(), time.perf_counter()))

    def epochs(self) -> list[dict[str, float]]:
        return [
            {"cpu": c1 - c0, "wall": w1 - w0}
            for (c0, w0), (c1, w1) in zip(self.marks[:-1], self.marks[1:], strict=True)
        ]


# ---------------------------------------------------------------------------------------------
# the tools (each in a child process: ``--role TOOL``)


def run_deepfm(job: dict[str, Any]) -> dict[str, Any]:
    from deepfm.config import TrainConfig
    from deepfm.training.run import load_data, train

    config = TrainConfig.from_dict(
        {
            "spec": str(peer_fuxictr.spec_file(Path(job["folder"]))),
            "out": job["out"],
            "epochs": job["epochs"],
            "threads": 1,
            "seed": job["seed"],
            "progress": False,
        }
    )
    data = load_data(config)
    clock = Clock()
    aucs: list[float] = []

    def on_epoch(record: dict[str, Any]) -> None:
        clock.mark()
        aucs.append(record["valid_auc"])

    metrics = train(config, data=data, echo=lambda *_: None, on_epoch=on_epoch)
    return {
        "epochs": clock.epochs(),
        "valid_auc": aucs,
        "test_auc": metrics["test_auc"],
        "rows": len(data.train),
    }


def run_deepctr(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from deepctr_torch.inputs import SparseFeat, get_feature_names
    from deepctr_torch.models import DeepFM
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(1)
    torch.manual_seed(job["seed"])
    sizes, splits = encoded(Path(job["folder"]))
    columns = [
        SparseFeat(f, vocabulary_size=n, embedding_dim=RECIPE["embed_dim"])
        for f, n in zip(FIELDS, sizes, strict=True)
    ]
    names = get_feature_names(columns)
    model = DeepFM(
        columns,
        columns,
        dnn_hidden_units=tuple(RECIPE["mlp"]),
        dnn_dropout=RECIPE["dropout"],
        dnn_use_bn=True,
        l2_reg_linear=0.0,
        l2_reg_embedding=0.0,
        l2_reg_dnn=0.0,
        seed=job["seed"],
        task="binary",
        device="cpu",
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"], weight_decay=1e-6)
    model.compile(optimizer, "binary_crossentropy", metrics=["binary_crossentropy"])

    def inputs(part: str) -> dict[str, np.ndarray]:
        return {f: splits[part][0][:, i] for i, f in enumerate(names)}

    x = {p: inputs(p) for p in splits}
    clock = Clock()
    aucs = []
    for _ in range(job["epochs"]):
        model.fit(x["train"], splits["train"][1], batch_size=RECIPE["batch_size"], epochs=1, verbose=0)
        aucs.append(float(roc_auc_score(splits["valid"][1], model.predict(x["valid"], 65536))))
        clock.mark()
    test = float(roc_auc_score(splits["test"][1], model.predict(x["test"], 65536)))
    return {"epochs": clock.epochs(), "valid_auc": aucs, "test_auc": test, "rows": len(splits["train"][1])}


def run_pytorch_fm(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from reference import predict, train_reference_epoch
    from sklearn.metrics import roc_auc_score
    from torchfm.model.dfm import DeepFactorizationMachineModel

    torch.set_num_threads(1)
    torch.manual_seed(job["seed"])
    sizes, splits = encoded(Path(job["folder"]))
    model = DeepFactorizationMachineModel(
        np.asarray(sizes),
        embed_dim=RECIPE["embed_dim"],
        mlp_dims=tuple(RECIPE["mlp"]),
        dropout=RECIPE["dropout"],
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"], weight_decay=1e-6)
    generator = torch.Generator().manual_seed(job["seed"])
    x = {p: torch.from_numpy(ids) for p, (ids, _) in splits.items()}
    clock = Clock()
    aucs = []
    for _ in range(job["epochs"]):
        train_reference_epoch(
            model, splits["train"][0], splits["train"][1], RECIPE["batch_size"], optimizer, generator
        )
        aucs.append(float(roc_auc_score(splits["valid"][1], predict(model, x["valid"]))))
        clock.mark()
    test = float(roc_auc_score(splits["test"][1], predict(model, x["test"])))
    return {"epochs": clock.epochs(), "valid_auc": aucs, "test_auc": test, "rows": len(splits["train"][1])}


def run_fuxictr(args: argparse.Namespace, folder: Path, seed: int, out: Path) -> dict[str, Any]:
    """FuxiCTR through ``peer_fuxictr.run_fuxictr`` (its own virtual environment)."""
    recipe = {
        "embedding_dim": RECIPE["embed_dim"],
        "hidden_units": RECIPE["mlp"],
        "net_dropout": RECIPE["dropout"],
        "learning_rate": RECIPE["lr"],
        "batch_size": RECIPE["batch_size"],
        "embedding_regularizer": 0.0,
        "net_regularizer": 0.0,
        "early_stop_patience": 10**6,
        "epochs": args.epochs,
    }
    driver = argparse.Namespace(
        fuxictr_python=args.fuxictr_python,
        fuxictr_src=args.fuxictr_src,
        threads=1,
        fuxictr_loader="memory",
        device="cpu",
    )
    result = peer_fuxictr.run_fuxictr(driver, folder, recipe, seed, out)
    clocks = [(result["clock_start"]["cpu"], result["clock_start"]["wall"])]
    clocks += [(e["clock"]["cpu"], e["clock"]["wall"]) for e in result["epochs"]]
    epochs = [
        {"cpu": c1 - c0, "wall": w1 - w0} for (c0, w0), (c1, w1) in zip(clocks[:-1], clocks[1:], strict=True)
    ]
    return {
        "epochs": epochs,
        "valid_auc": [e["valid_auc"] for e in result["epochs"]],
        "test_auc": result["test_auc"],
        "rows": json.loads((folder / "meta.json").read_text())["rows"][0],
    }


CHILDREN = {"deepfm": run_deepfm, "deepctr": run_deepctr, "pytorch-fm": run_pytorch_fm}


def run_child(args: argparse.Namespace, tool: str, folder: Path, seed: int, out: Path) -> dict[str, Any]:
    if tool == "fuxictr":
        return run_fuxictr(args, folder, seed, out)
    python = sys.executable if tool == "deepfm" else args.deepctr_python
    out.mkdir(parents=True, exist_ok=True)
    job = out / "job.json"
    job.write_text(json.dumps({"folder": str(folder), "epochs": args.epochs, "seed": seed, "out": str(out)}))
    env = dict(os.environ)
    if tool != "deepfm":
        env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [python, str(Path(__file__).resolve()), "--role", tool, "--job", str(job)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{tool} run failed (exit {done.returncode}); see its output above")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# output


def rates(result: dict[str, Any]) -> dict[str, float]:
    """Samples per CPU-second and per wall-second of the first epoch and of the later ones."""
    first, later = result["epochs"][0], result["epochs"][1:] or result["epochs"][:1]
    rows = result["rows"]
    return {
        "warmup_cpu": rows / first["cpu"],
        "warmup_wall": rows / first["wall"],
        "cpu": rows * len(later) / sum(e["cpu"] for e in later),
        "wall": rows * len(later) / sum(e["wall"] for e in later),
        "test_auc": result["test_auc"],
    }


def table(results: dict[str, list[dict[str, Any]]], epochs: int) -> str:
    medians = {
        tool: {k: statistics.median(rates(r)[k] for r in runs) for k in rates(runs[0])}
        for tool, runs in results.items()
    }
    ours = medians["deepfm"]
    later = "epoch 2" if epochs == 2 else f"epochs 2-{epochs}"
    lines = [
        f"| tool | samples/CPU-s, {later} | deepfm × | samples/wall-s, {later} | deepfm × | "
        f"samples/CPU-s, epoch 1 (warm-up) | deepfm × | test AUC after {epochs} | − deepfm |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tool, m in medians.items():
        lines.append(
            f"| {tool} | {m['cpu']:,.0f} | {ours['cpu'] / m['cpu']:.1f} | {m['wall']:,.0f} | "
            f"{ours['wall'] / m['wall']:.1f} | {m['warmup_cpu']:,.0f} | "
            f"{ours['warmup_cpu'] / m['warmup_cpu']:.1f} | "
            f"{m['test_auc']:.4f} | {m['test_auc'] - ours['test_auc']:+.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", default="harness", choices=("harness", *CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every tool, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "peer_speed"))
    peer_fuxictr.add_peer_options(parser)
    parser.add_argument(
        "--deepctr-python",
        default=os.environ.get("DEEPCTR_PYTHON", "/work/venvs/deepctr/bin/python"),
        help="a Python with deepctr-torch and torchfm installed",
    )
    args = parser.parse_args()
    if args.role != "harness":
        print(json.dumps(CHILDREN[args.role](json.loads(Path(args.job).read_text()))))
        return
    tools = args.tools.split(",")
    if "fuxictr" in tools and not args.fuxictr_src:
        parser.error("--fuxictr-src (or $FUXICTR_SRC) is needed: FuxiCTR's model_zoo/DeepFM/DeepFM_torch/src")
    work = Path(args.work)
    os.environ.setdefault("DEEPFM_CACHE", str(work / "deepfm-cache"))
    folder = export_split(work, Path(args.shared), args.seed)
    rows = json.loads((folder / "meta.json").read_text())["rows"]
    print(f"split {folder}: {rows} rows; load average {os.getloadavg()}")
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    for round_ in range(args.rounds):
        for tool in tools:
            r = run_child(args, tool, folder, args.seed, work / "runs" / f"{tool}-{round_}")
            results[tool].append(r)
            m = rates(r)
            print(
                f"round {round_} {tool:>10s}: epochs CPU "
                + ", ".join(f"{e['cpu']:.1f}s" for e in r["epochs"])
                + " wall "
                + ", ".join(f"{e['wall']:.1f}s" for e in r["epochs"])
                + f"  {m['cpu']:,.0f} samples/CPU-s  valid AUC "
                + ", ".join(f"{a:.4f}" for a in r["valid_auc"])
                + f"  test AUC {r['test_auc']:.4f}  load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        print(f"\nafter round {round_}, medians so far:\n{table(results, args.epochs)}\n", flush=True)


if __name__ == "__main__":
    main()

"""Side by side with FuxiCTR 2.3.10: the same split files, the same recipe, both tools, epoch by epoch.

The harness writes one split (``train.csv``, ``valid.csv``, ``test.csv``: a header, ``label``, then
every field as text) and gives the same files to both tools: to ``deepfm`` as a dataset spec
(``split: files``), to FuxiCTR through its own ``FeatureProcessor`` (vocabularies from the training
file, ``min_categr_count: 1``) and its ``model_zoo`` DeepFM class. FuxiCTR runs in its own virtual
environment (never a dependency of this package), in a child process of this same file:

    python -m venv /work/venvs/fuxictr
    /work/venvs/fuxictr/bin/pip install torch==2.13.0 fuxictr==2.3.10 'polars<2'
    git clone https://github.com/reczoo/FuxiCTR      # model_zoo/DeepFM/DeepFM_torch/src/DeepFM.py

    PYTHONPATH=src python benchmarks/peer_fuxictr.py --data frappe-like --seeds 0,1,2 \\
        --fuxictr-python /work/venvs/fuxictr/bin/python \\
        --fuxictr-src FuxiCTR/model_zoo/DeepFM/DeepFM_torch/src \\
        --ours "recipe:" --ours "bars-deepfm:config=bars-deepfm"

Data sets (``--data``): ``frappe-like`` (generated: 57,722 / 14,430 / 14,430 rows, 10 fields with
Frappe's shape and cardinalities, one third positives; planted user x app and app x context
preferences, see :func:`frappe_like`),
``criteo-sample`` (the 8,000 real Criteo rows of ``--shared``/criteo-sample/wide-resdnn, their own
7,200 / 409 / 391 split; integer fields log2-bucketed into categories for both tools),
``ml-1m-ids`` / ``ml-1m-all`` (``--shared``/ml-1m-half, label rating > 3, one seeded 80/10/10
split; ``all`` adds gender, age, occupation, zip prefix, year bucket and genres, a mean-pooled
multi-valued field in both tools), ``criteo-like-1m`` (1M rows from ``criteo_scale.py``'s
generator, 80/10/10).

The recipe (``--embed-dim`` ... ``--patience``; the BARS DeepFM recipe by default: embed 10, MLP
400-400-400 with BatchNorm, dropout 0.2, Adam lr 1e-3, batch 4096, embedding L2 0.05, net L2 0,
patience 2) is given to FuxiCTR as published (its own lr rule: x0.1 at every epoch without a
valid-AUC gain) and to each ``--ours LABEL:key=value,...`` variant: ``config=NAME`` starts from a
preset or YAML file, the recipe's options are set on top, then the variant's own options. The
default variants: ``recipe:`` (the recipe's values on our defaults: what copying the published
numbers alone gives) and ``bars-deepfm:config=bars-deepfm`` (FuxiCTR's training rules too). Batches:
FuxiCTR's batches come from an in-memory loader with the semantics of its ``ParquetDataLoader``
(a fresh random order each epoch, no row dropped); ``--fuxictr-loader ray`` uses the real one.

Prints per-epoch validation AUC / logloss / lr of every run, then one line per run with the test
AUC, logloss and calibration (mean prediction / positive rate), and appends every run to
``WORK/results.jsonl``; ``--summary`` prints mean +- std per tool and variant from that file.
``--calibration-check RUN`` prints a run's test calibration with its BatchNorm running statistics,
with exact population statistics, and in training mode on the training split.
``--trace`` instead runs the first epoch step by step in both tools from the same initial weights
and the same batches (no dropout) and prints where their losses part.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SPLIT_ROWS = {"frappe-like": (57_722, 14_430, 14_430)}
FRAPPE_CARDINALITY = {
    "user": 885,
    "item": 4083,
    "daytime": 8,
    "weekday": 8,
    "isweekend": 3,
    "homework": 4,
    "cost": 3,
    "weather": 10,
    "country": 76,
    "city": 222,
}

# the BARS DeepFM recipe (FuxiCTR names) and the deepfm option each one maps to
RECIPE = {
    "embedding_dim": 10,
    "hidden_units": [400, 400, 400],
    "net_dropout": 0.2,
    "learning_rate": 1e-3,
    "batch_size": 4096,
    "embedding_regularizer": 0.05,
    "net_regularizer": 0.0,
    "early_stop_patience": 2,
    "epochs": 100,
}
OURS = {
    "embedding_dim": "embed_dim",
    "hidden_units": "mlp",
    "net_dropout": "dropout",
    "learning_rate": "lr",
    "batch_size": "batch_size",
    "embedding_regularizer": "embedding_l2",
    "net_regularizer": "net_l2",
    "early_stop_patience": "patience",
    "epochs": "epochs",
}


# ---------------------------------------------------------------------------------------------
# the split files


def prepare(data: str, work: Path, shared: Path) -> Path:
    """``WORK/DATA/{train,valid,test}.csv`` and ``meta.json`` (made once, then reused)."""
    folder = work / data
    if (folder / "meta.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if data == "frappe-like":
        frame = frappe_like(sum(SPLIT_ROWS[data]), seed=0)
        parts = _cut(frame, SPLIT_ROWS[data], seed=0)
        multi: dict[str, str] = {}
    elif data == "criteo-sample":
        parts = [
            _criteo_frame(shared / "criteo-sample" / "wide-resdnn" / f"{n}.csv")
            for n in ("train", "dev", "test")
        ]
        multi = {}
    elif data in ("ml-1m-ids", "ml-1m-all"):
        frame = movielens(shared / "ml-1m-half", side=data.endswith("all"))
        parts = _cut(frame, _ratios(len(frame)), seed=0)
        multi = {"genres": "|"} if data.endswith("all") else {}
    elif data == "criteo-like-1m":
        sys.path.insert(0, str(HERE))
        from criteo_scale import generate

        tsv = folder / "generated.tsv"
        generate(tsv, 1_000_000, seed=0)
        frame = _criteo_frame(tsv)
        tsv.unlink()
        parts = _cut(frame, _ratios(len(frame)), seed=0)
        multi = {}
    else:
        raise SystemExit(f"unknown --data {data!r}")
    fields = [c for c in parts[0].columns if c != "label"]
    for name, part in zip(("train", "valid", "test"), parts, strict=True):
        part.to_csv(folder / f"{name}.csv", index=False)
    meta = {
        "name": data,
        "fields": fields,
        "multi": multi,
        "rows": [len(p) for p in parts],
        "positive_rate": [float(p["label"].mean()) for p in parts],
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"prepared {data}: {meta['rows']} rows in {time.perf_counter() - t:.0f}s -> {folder}", flush=True)
    return folder


def shared_folder() -> Path:
    """``../shared/data`` from the repository root or from its parent folder (a worktree)."""
    for up in HERE.parents[:3]:
        if (up / "shared" / "data").is_dir():
            return up / "shared" / "data"
    return HERE.parents[1] / "shared" / "data"


def _ratios(n: int) -> tuple[int, int, int]:
    """80/10/10 row counts."""
    tenth = round(n * 0.1)
    return n - 2 * tenth, tenth, tenth


def _cut(frame: Any, sizes: tuple[int, ...], seed: int) -> list[Any]:
    """``frame`` in a seeded random order, cut into parts of ``sizes`` rows."""
    order = np.random.default_rng(seed).permutation(len(frame))
    bounds = np.cumsum((0, *sizes))
    return [
        frame.iloc[order[a:b]].reset_index(drop=True) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def frappe_like(rows: int, seed: int = 0, favourites: float = 20.0) -> Any:
    """Frappe-shaped app-usage clicks. Each user has a list of favourite apps (about
    ``favourites``, drawn by a Zipf popularity over 4,083 apps) with personal weights; a positive
    row is a user (Zipf-like activity), a context (daytime, weekday, homework, weather) and one of
    the user's favourites, chosen by weight x app-by-daytime, app-by-weekday and app-by-weather
    effects (the planted pairwise interactions: user x app, app x context); every positive is
    followed by two negatives with a random app and the same user and context (one third
    positives, as Frappe's own sampling). ``cost`` is a property of the app (10% paid), ``country``
    and ``city`` of the user, ``isweekend`` follows ``weekday``."""
    import pandas as pd

    card = FRAPPE_CARDINALITY
    rng = np.random.default_rng(seed)
    n_pos = -(-rows // 3)
    popularity = 1 / np.arange(1, card["item"] + 1)
    popularity = popularity[rng.permutation(card["item"])] / popularity.sum()
    counts = np.maximum(2, rng.poisson(favourites, card["user"]))
    liked = [rng.choice(card["item"], size=min(k, 400), replace=False, p=popularity) for k in counts]
    weights = [rng.gamma(0.7, size=len(apps)) for apps in liked]
    by_daytime = rng.normal(0, 1.0, (card["item"], card["daytime"]))
    by_weekday = rng.normal(0, 0.7, (card["item"], card["weekday"]))
    by_weather = rng.normal(0, 0.5, (card["item"], card["weather"]))
    activity = 1 / np.arange(1, card["user"] + 1) ** 0.7
    user = rng.choice(card["user"], n_pos, p=activity / activity.sum())
    context = {c: rng.integers(0, card[c], n_pos) for c in ("daytime", "weekday", "homework", "weather")}
    item = np.empty(n_pos, dtype=np.int64)
    for i in range(n_pos):
        apps = liked[user[i]]
        score = np.log(weights[user[i]]) + by_daytime[apps, context["daytime"][i]]
        score += by_weekday[apps, context["weekday"][i]] + by_weather[apps, context["weather"][i]]
        p = np.exp(score - score.max())
        item[i] = apps[rng.choice(len(apps), p=p / p.sum())]
    paid = (rng.random(card["item"]) < 0.1).astype(np.int64)
    country = rng.integers(0, card["country"], card["user"])
    city = rng.integers(0, card["city"], card["user"])
    user = np.tile(user, 3)
    item = np.concatenate([item, rng.integers(0, card["item"], 2 * n_pos)])
    weekday = np.tile(context["weekday"], 3)
    columns = {
        "label": np.repeat(np.array([1, 0, 0], dtype=np.int8), n_pos),
        "user": user,
        "item": item,
        "daytime": np.tile(context["daytime"], 3),
        "weekday": weekday,
        "isweekend": (weekday >= 5).astype(np.int64) + (weekday == 7),
        "homework": np.tile(context["homework"], 3),
        "cost": paid[item],
        "weather": np.tile(context["weather"], 3),
        "country": country[user],
        "city": city[user],
    }
    frame = pd.DataFrame({k: (c if k == "label" else [f"{k[0]}{x}" for x in c]) for k, c in columns.items()})
    return frame.iloc[:rows]


def _criteo_frame(path: Path) -> Any:
    """A Criteo-layout TSV (label, I1-I13, C1-C26) with the integers log2-bucketed: all text."""
    import pandas as pd

    from deepfm.data.transforms import log2bucket

    names = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
    raw = pd.read_csv(path, sep="\t", header=None, names=names, dtype=str, keep_default_na=False)
    out = {"label": raw["label"].astype(np.int8)}
    for i in range(1, 14):
        column = pd.to_numeric(raw[f"I{i}"].replace("", np.nan)).to_numpy(dtype=np.float64)
        bucket = log2bucket(column)
        out[f"I{i}"] = np.where(np.isnan(column), "", bucket.astype(str))
    for i in range(1, 27):
        out[f"C{i}"] = raw[f"C{i}"]
    return pd.DataFrame(out)


def movielens(folder: Path, side: bool) -> Any:
    """ml-1m ratings, label rating > 3; with ``side`` the fields of ``--features all`` (as
    ``deepfm datasets --show movielens-1m --features all`` declares them): gender, age, occupation,
    zip prefix (2 characters), genres (``|``-joined) and the release year's bucket (edges 1940,
    1950, ..., 1980, 1985, ..., 2000; written as the bucket's first year)."""
    import pandas as pd

    def table(name: str, columns: list[str]) -> Any:
        text = (folder / name).read_bytes().decode("latin-1")
        rows = [line.split("::") for line in text.splitlines() if line]
        return pd.DataFrame(rows, columns=columns)

    ratings = table("ratings.dat", ["user_id", "movie_id", "rating", "timestamp"])
    frame = pd.DataFrame(
        {
            "label": (ratings["rating"].astype(int) > 3).astype(np.int8),
            "user_id": ratings["user_id"],
            "movie_id": ratings["movie_id"],
        }
    )
    if side:
        users = table("users.dat", ["user_id", "gender", "age", "occupation", "zip"])
        users["zip_prefix"] = users["zip"].str.strip().str[:2]
        movies = table("movies.dat", ["movie_id", "title", "genres"])
        year = movies["title"].str.extract(r"\((\d{4})\)\s*$")[0].astype(float).fillna(0).astype(int)
        start = np.where(year >= 1980, year // 5 * 5, np.maximum(year // 10 * 10, 1930))
        movies["year"] = np.where(year > 0, start, 0)
        frame = frame.merge(
            users[["user_id", "gender", "age", "occupation", "zip_prefix"]], on="user_id", how="left"
        )
        frame = frame.merge(movies[["movie_id", "genres", "year"]], on="movie_id", how="left")
    return frame.astype({c: str for c in frame.columns if c != "label"})


# ---------------------------------------------------------------------------------------------
# deepfm


def spec_file(folder: Path) -> Path:
    meta = json.loads((folder / "meta.json").read_text())
    fields = [
        {"name": f, "kind": "multi", "separator": meta["multi"][f]} if f in meta["multi"] else f
        for f in meta["fields"]
    ]
    spec = {
        "name": f"peer-{meta['name']}",
        "input": {"format": "csv", "header": True},
        "label": "label",
        "min_count": 1,
        "fields": fields,
        "split": {"method": "files", "files": {p: [f"{p}.csv"] for p in ("train", "valid", "test")}},
    }
    path = folder / "spec.json"  # JSON is YAML
    path.write_text(json.dumps(spec, indent=1))
    return path


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``LABEL:key=value,key=value`` -> label, options (values read as YAML scalars)."""
    import yaml

    label, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, _, value = item.partition("=")
        options[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return label, options


def run_ours(
    folder: Path, recipe: dict[str, Any], options: dict[str, Any], seed: int, threads: int, out: Path
) -> dict:
    from deepfm.config import TrainConfig, load_yaml
    from deepfm.training.run import train

    options = dict(options)
    base = load_yaml(options.pop("config")) if "config" in options else {}
    for key in ("dataset", "data_dir", "features", "spec", "out"):
        base.pop(key, None)
    values = {**base, **{OURS[k]: v for k, v in recipe.items()}, **options}
    values["mlp"] = (
        ",".join(map(str, values["mlp"])) if isinstance(values.get("mlp"), list) else values.get("mlp")
    )
    if values["mlp"] is None:
        del values["mlp"]
    config = TrainConfig.from_dict(
        {
            **values,
            "spec": str(spec_file(folder)),
            "out": str(out),
            "seed": seed,
            "threads": threads,
            "progress": False,
            "metrics": "auc,logloss,calibration",
        }
    )
    metrics = train(config, echo=lambda *_: None)
    return {
        "epochs": [
            {
                "epoch": e["epoch"],
                "train_loss": e["train_loss"],
                "valid_auc": e["valid_auc"],
                "valid_logloss": e["valid_logloss"],
                "valid_calibration": e.get("valid_calibration"),
                "lr": e["lr"],
            }
            for e in metrics["epochs"]
        ],
        "best_epoch": metrics["best_epoch"],
        "test_auc": metrics["test_auc"],
        "test_logloss": metrics["test_logloss"],
        "test_calibration": metrics.get("test_calibration"),
        "seconds": metrics["train_seconds"],
        "config": {k: v for k, v in config.to_dict().items() if k in values},
    }


def calibration_check(run: Path) -> None:
    """Where a run's miscalibration comes from: its best model's test calibration (mean prediction
    / positive rate) with the BatchNorm running statistics it was evaluated with, with exact
    population statistics of the final weights (one pass over the training split, dropout on and
    off), and in training mode on the training split itself (batch statistics, dropout on)."""
    import copy

    import torch
    from sklearn.metrics import roc_auc_score

    from deepfm import load
    from deepfm.evaluation.scoring import predict_probs
    from deepfm.training.run import load_data

    model = load(str(run))
    model.config.progress = False
    data = load_data(model.config)

    def line(name: str, split: Any, probs: np.ndarray) -> None:
        y = split.label.numpy()
        print(f"{name:58s} AUC {roc_auc_score(y, probs):.4f}  calibration {probs.mean() / y.mean():.3f}")

    def population(dropout: bool) -> torch.nn.Module:
        module = copy.deepcopy(model.module).train()
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average: the exact population statistics
            elif isinstance(m, torch.nn.Dropout) and not dropout:
                m.p = 0.0
        with torch.no_grad():
            for batch in data.train.batches(4096):
                module(*batch.inputs)
        return module.eval()

    line("test, eval mode, the run's running statistics", data.test, predict_probs(model.module, data.test))
    for dropout in (True, False):
        name = f"test, eval mode, population statistics (dropout {'on' if dropout else 'off'})"
        line(name, data.test, predict_probs(population(dropout), data.test))
    module = copy.deepcopy(model.module).train()
    torch.manual_seed(0)
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(module(*b.inputs)) for b in data.train.batches(4096)]).numpy()
    line("train split, training mode (batch statistics, dropout on)", data.train, probs)


# ---------------------------------------------------------------------------------------------
# FuxiCTR (runs in its own virtual environment: ``--role fuxictr``)


def fuxictr_child(job: dict[str, Any]) -> dict[str, Any]:
    """Train FuxiCTR's model_zoo DeepFM on the split of ``job["folder"]`` with ``job["recipe"]``."""
    import importlib.util
    import logging

    import torch
    from fuxictr.features import FeatureMap
    from fuxictr.preprocess import FeatureProcessor
    from fuxictr.pytorch.torch_utils import seed_everything

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(job["threads"])
    folder, recipe, seed = Path(job["folder"]), job["recipe"], job["seed"]
    meta = json.loads((folder / "meta.json").read_text())
    spec = importlib.util.spec_from_file_location("fuxictr_deepfm", Path(job["fuxictr_src"]) / "DeepFM.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    seed_everything(seed=seed)
    data_root = Path(job["out"])
    categorical = [f for f in meta["fields"] if f not in meta["multi"]]
    feature_cols = [{"name": categorical, "active": True, "dtype": "str", "type": "categorical"}]
    for name, splitter in meta["multi"].items():
        feature_cols.append(
            {"name": name, "active": True, "dtype": "str", "type": "sequence", "splitter": splitter}
        )
    processor = FeatureProcessor(
        feature_cols=feature_cols,
        label_col={"name": "label", "dtype": "float"},
        dataset_id="data",
        data_root=str(data_root),
    )
    train_frame = processor.preprocess(processor.read_data(str(folder / "train.csv")))
    processor.fit(train_frame, min_categr_count=1)
    params = {
        "model_root": str(data_root / "checkpoints"),
        "verbose": 0,
        "metrics": ["logloss", "AUC"],
        "task": "binary_classification",
        "optimizer": "adam",
        "loss": "binary_crossentropy",
        "monitor": "AUC",
        "monitor_mode": "max",
        "save_best_only": True,
        "eval_steps": None,
        "hidden_activations": "relu",
        "batch_norm": True,
        "gpu": 0 if job.get("device", "cpu").startswith("cuda") else -1,
        **{k: v for k, v in recipe.items() if k != "epochs"},
    }
    feature_map = FeatureMap("data", str(data_root / "data"))
    feature_map.load(str(data_root / "data" / "feature_map.json"), params)

    def arrays(part: str) -> dict[str, np.ndarray]:
        frame = processor.preprocess(processor.read_data(str(folder / f"{part}.csv"))).collect()
        batch = processor.transform({c: frame[c].to_numpy() for c in frame.columns})
        out = {k: np.asarray(v) for k, v in batch.items()}
        return {k: np.stack(v) if v.dtype == object else v for k, v in out.items()}

    splits = {p: arrays(p) for p in ("train", "valid", "test")}
    if job.get("loader") == "ray":
        loaders = _ray_loaders(splits, data_root, feature_map, recipe["batch_size"])
    else:
        loaders = {
            p: MemoryLoader(a, recipe["batch_size"], shuffle=p == "train", seed=seed)
            for p, a in splits.items()
        }

    history: list[dict[str, Any]] = []

    class Recorded(module.DeepFM):
        """The model_zoo DeepFM, recording each validation (all metrics) and the mean batch BCE."""

        def add_loss(self, return_dict, y_true):  # noqa: ANN001, ANN202
            loss = super().add_loss(return_dict, y_true)
            self._bce += float(loss.detach()) * len(y_true)
            self._rows += len(y_true)
            return loss

        def evaluate_metrics(self, y_true, y_pred, metrics, group_id=None):  # noqa: ANN001, ANN202
            self._calibration = float(np.mean(y_pred) / np.mean(y_true))
            return super().evaluate_metrics(y_true, y_pred, metrics, group_id)

        def eval_step(self):  # noqa: ANN202
            logs = self.evaluate(self.valid_gen, metrics=["logloss", "AUC"])
            history.append(
                {
                    "epoch": len(history) + 1,
                    "train_loss": self._bce / max(self._rows, 1),
                    "valid_auc": logs["AUC"],
                    "valid_logloss": logs["logloss"],
                    "valid_calibration": self._calibration,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "clock": {"cpu": time.process_time(), "wall": time.perf_counter()},  # peer_speed.py
                }
            )
            with open(data_root / "history.jsonl", "a") as sink:  # progress of a long run
                sink.write(json.dumps(history[-1]) + "\n")
            self._bce, self._rows = 0.0, 0
            self.checkpoint_and_earlystop(logs)
            self.train()

    if job.get("trace") is not None:
        params["net_dropout"] = 0.0
        seed_everything(seed=seed)
        fuxictr_trace(
            job, module.DeepFM(feature_map, **params), loaders, {p: a["label"] for p, a in splits.items()}
        )
        return {}
    model = Recorded(feature_map, **params)
    model._bce, model._rows = 0.0, 0
    Path(model.model_dir).mkdir(parents=True, exist_ok=True)
    (data_root / "history.jsonl").unlink(missing_ok=True)
    clock_start = {"cpu": time.process_time(), "wall": time.perf_counter()}
    t = time.perf_counter()
    model.fit(loaders["train"], epochs=recipe["epochs"], validation_data=loaders["valid"])
    seconds = time.perf_counter() - t
    test = model.evaluate(loaders["test"])
    probs = model.predict(loaders["test"])
    labels = splits["test"]["label"]
    best = max(history, key=lambda e: e["valid_auc"])["epoch"]
    return {
        "epochs": history,
        "best_epoch": best,
        "test_auc": float(test["AUC"]),
        "test_logloss": float(test["logloss"]),
        "test_calibration": float(np.mean(probs) / np.mean(labels)),
        "seconds": seconds,
        "clock_start": clock_start,
        "config": recipe,
    }


def fuxictr_trace(
    job: dict[str, Any], model: Any, loaders: dict[str, Any], labels: dict[str, np.ndarray]
) -> None:
    """The first epoch step by step: FuxiCTR's model and ours (``deepfm.models``, from ``src``) from
    the same weights (FuxiCTR's initialisation copied into our fused table and MLP), on the same
    batches, with dropout 0. Prints per step both losses, FuxiCTR's gradient norm before its
    clipping at 10, and the largest weight difference after the step; then both valid AUCs."""
    import torch
    from sklearn.metrics import log_loss, roc_auc_score

    from deepfm.models import build_model
    from deepfm.training.optim import clip_grad_norm, make_optimizer

    trace, recipe = job["trace"], job["recipe"]
    fields = list(model.feature_map.features)
    tables = model.embedding_layer.embedding_layer.embedding_layers
    linear = model.fm.lr_layer.embedding_layer.embedding_layer.embedding_layers
    sizes = [tables[f].weight.shape[0] for f in fields]
    offsets = np.cumsum([1, *sizes[:-1]])  # our row 0 is the padding row

    def build() -> torch.nn.Module:
        return build_model(
            "deepfm",
            num_rows=1 + sum(sizes),
            num_fields=len(fields),
            embed_dim=recipe["embedding_dim"],
            mlp=tuple(recipe["hidden_units"]),
            dropout=0.0,
        )

    ours = build()
    theirs_mlp = [m for m in model.mlp.mlp if isinstance(m, (torch.nn.Linear, torch.nn.BatchNorm1d))]
    ours_mlp = [m for m in ours.mlp if isinstance(m, (torch.nn.Linear, torch.nn.BatchNorm1d))]

    def pairs() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(name, ours, theirs) views of every mapped tensor."""
        table = ours.features.sparse.table.weight
        out = []
        for f, off, n in zip(fields, offsets, sizes, strict=True):
            out += [
                (f"{f} embedding", table[off : off + n, 1:], tables[f].weight),
                (f"{f} first-order", table[off : off + n, :1], linear[f].weight),
            ]
        out.append(("bias", ours.bias, model.fm.lr_layer.bias))
        for i, (a, b) in enumerate(zip(ours_mlp, theirs_mlp, strict=True)):
            out += [(f"mlp {i} weight", a.weight, b.weight), (f"mlp {i} bias", a.bias, b.bias)]
            if isinstance(a, torch.nn.BatchNorm1d):
                out += [
                    (f"mlp {i} running_mean", a.running_mean, b.running_mean),
                    (f"mlp {i} running_var", a.running_var, b.running_var),
                ]
        return out

    pre_norm = {
        f"mlp {i} bias"
        for i, m in enumerate(ours_mlp[:-1])
        if isinstance(ours_mlp[i + 1], torch.nn.BatchNorm1d)
    }
    with torch.no_grad():
        for _, a, b in pairs():
            a.copy_(b)
    if trace.get("our_init"):  # ours: its own initialisation copied into FuxiCTR instead
        torch.manual_seed(job["seed"])
        ours.load_state_dict(build().state_dict())
        with torch.no_grad():
            for _, a, b in pairs():
                b.copy_(a)
    decay = {"embedding": recipe["embedding_regularizer"], "dense": recipe["net_regularizer"]}
    optimizer = make_optimizer(ours, trace.get("optimizer", "adam"), recipe["learning_rate"], 0.0, decay)
    if trace.get("clip"):  # --clip-grad-norm, as FuxiCTR clips (at 10)
        clip_grad_norm(optimizer, float(trace["clip"]))
    frozen = list(ours.mlp.parameters()) if trace.get("fm_warmup") else []
    net = ours
    if trace.get("fast"):
        from deepfm import fast
        from deepfm.fast import models as _  # noqa: F401  (registers the fused DeepFM)

        net = fast.accelerate(ours, fast.BatchLayout(fields=len(fields))) or ours

    def ids_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([batch[f].long() + int(o) for f, o in zip(fields, offsets, strict=True)], 1)

    print(
        "step | FuxiCTR BCE | ours BCE | difference | FuxiCTR grad norm | max weight difference", flush=True
    )
    model.train()
    ours.train()
    for step, batch in enumerate(loaders["train"], 1):
        if step > trace.get("steps", 10**9):
            break
        label = batch["label"].float()
        model.optimizer.zero_grad()
        y = model.forward(batch)["y_pred"]
        bce = model.loss_fn(y, label.view(-1, 1), reduction="mean")
        (bce + model.regularization_loss()).backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        model.optimizer.step()
        optimizer.zero_grad()
        if getattr(net, "train_step", None) is not None:
            loss = net.train_step(ids_of(batch), None, None, label)
        else:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(ids_of(batch)), label)
            loss.backward()
        for p in frozen:
            p.grad = None
        optimizer.step()
        # a Linear bias right before BatchNorm has no effect on any output (BN removes it): left out
        diff, where = max(
            (float((a.detach() - b.detach()).abs().max()), name)
            for name, a, b in pairs()
            if name not in pre_norm
        )
        print(
            f"{step:4d} | {float(bce):.6f} | {float(loss.detach()):.6f} | {float(bce) - float(loss):+.2e} | "
            f"{float(norm):.3f} | {diff:.2e} ({where})",
            flush=True,
        )
    model.eval()
    ours.eval()
    with torch.no_grad():
        theirs_p = np.concatenate([model.forward(b)["y_pred"].view(-1).numpy() for b in loaders["valid"]])
        ours_p = np.concatenate([torch.sigmoid(ours(ids_of(b))).numpy() for b in loaders["valid"]])
    y = labels["valid"]
    for name, p in (("FuxiCTR", theirs_p), ("ours", ours_p)):
        print(
            f"after the epoch, {name}: valid AUC {roc_auc_score(y, p):.6f}  logloss {log_loss(y, p):.6f}  "
            f"calibration {p.mean() / y.mean():.4f}"
        )


class MemoryLoader:
    """Batches of dicts of tensors, as FuxiCTR's ``ParquetDataLoader`` yields them for one parquet
    file: with ``shuffle`` a fresh random order every epoch, the last short batch kept."""

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, shuffle: bool, seed: int) -> None:
        import torch

        self.tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        self.rows = len(next(iter(self.tensors.values())))
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(self.rows / self.batch_size)

    def __iter__(self):  # noqa: ANN204
        import torch

        order = (
            torch.randperm(self.rows, generator=self.generator) if self.shuffle else torch.arange(self.rows)
        )
        for start in range(0, self.rows, self.batch_size):
            index = order[start : start + self.batch_size]
            yield {k: t[index] for k, t in self.tensors.items()}


def _ray_loaders(
    splits: dict[str, dict[str, np.ndarray]], root: Path, feature_map: Any, batch_size: int
) -> dict:
    """FuxiCTR's own ``ParquetDataLoader`` (Ray Data) over the transformed splits."""
    import pandas as pd
    from fuxictr.pytorch.dataloaders import ParquetDataLoader

    out = {}
    for part, arrays in splits.items():
        path = root / f"{part}.parquet"
        pd.DataFrame({k: list(v) if v.ndim > 1 else v for k, v in arrays.items()}).to_parquet(path)
        out[part] = ParquetDataLoader(
            feature_map, str(path), split=part, batch_size=batch_size, shuffle=part == "train"
        )
    return out


def run_fuxictr(
    args: argparse.Namespace,
    folder: Path,
    recipe: dict[str, Any],
    seed: int,
    out: Path,
    trace: dict | None = None,
) -> dict:
    """FuxiCTR in a child process of its own virtual environment; with ``trace``, the step-by-step
    comparison (which imports ``deepfm.models`` from this checkout's ``src``) printed as it goes."""
    job = {
        "folder": str(folder),
        "recipe": recipe,
        "seed": seed,
        "threads": args.threads,
        "out": str(out),
        "fuxictr_src": args.fuxictr_src,
        "loader": args.fuxictr_loader,
        "device": args.device,
        "trace": trace,
    }
    out.mkdir(parents=True, exist_ok=True)
    job_file = out / "job.json"
    job_file.write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if trace is not None:
        env["PYTHONPATH"] = str(HERE.parent / "src")
    done = subprocess.run(
        [args.fuxictr_python, str(Path(__file__).resolve()), "--role", "fuxictr", "--job", str(job_file)],
        env=env,
        stdout=None if trace is not None else subprocess.PIPE,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"FuxiCTR run failed (exit {done.returncode}); see its output above")
    return {} if trace is not None else json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# output


def print_epochs(runs: list[tuple[str, dict]]) -> None:
    longest = max(len(r["epochs"]) for _, r in runs)
    head = "epoch | " + " | ".join(f"{name}: valid AUC, logloss, calibration, lr" for name, _ in runs)
    print(head)
    for i in range(longest):
        cells = []
        for _, r in runs:
            e = r["epochs"][i] if i < len(r["epochs"]) else None
            star = "*" if e and e["epoch"] == r["best_epoch"] else " "
            calibration = e.get("valid_calibration") if e else None
            cells.append(
                f"{e['valid_auc']:.4f}{star} {e['valid_logloss']:.4f} "
                + (f"{calibration:.3f}" if calibration is not None else "  -  ")
                + f" {e['lr']:.0e}"
                if e
                else " " * 28
            )
        print(f"{i + 1:5d} | " + " | ".join(cells))


def print_tests(runs: list[tuple[str, dict]], seed: int) -> None:
    for name, r in runs:
        print(
            f"  {name:>24s} seed {seed}: test AUC {r['test_auc']:.4f}  logloss {r['test_logloss']:.4f}  "
            f"calibration {r['test_calibration']:.3f}  best epoch {r['best_epoch']}/{len(r['epochs'])}  "
            f"{r['seconds']:.0f}s"
        )


def _mean_std(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def summary(path: Path) -> None:
    """One row per data set and run: test AUC per seed, mean ± std, the mean difference to
    FuxiCTR paired by seed, logloss, calibration and epochs run (the last entry per seed counts)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    latest = {(r["data"], r["tool"], r["seed"]): r for r in rows}
    groups: dict[tuple[str, str], list[dict]] = {}
    for (data, tool, _), r in sorted(latest.items()):
        groups.setdefault((data, tool), []).append(r)
    print(
        "| data | run | seeds | test AUC | mean ± std | − FuxiCTR, paired | logloss | calibration | epochs |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---|")
    for (data, tool), rs in groups.items():
        peer = [latest.get((data, "fuxictr", r["seed"])) for r in rs]
        paired = [r["test_auc"] - p["test_auc"] for r, p in zip(rs, peer, strict=True) if p is not None]
        per_seed = ", ".join(f"{r['test_auc']:.4f}" for r in rs)
        print(
            f"| {data} | {tool} | {','.join(str(r['seed']) for r in rs)} | "
            f"{per_seed} | {_mean_std([r['test_auc'] for r in rs])} | "
            f"{_mean_std(paired) if paired and tool != 'fuxictr' else ''} | "
            f"{_mean_std([r['test_logloss'] for r in rs])} | "
            f"{_mean_std([r['test_calibration'] for r in rs])} | "
            f"{','.join(str(len(r['epochs'])) for r in rs)} |"
        )


def add_peer_options(parser: argparse.ArgumentParser) -> None:
    """``--shared`` and where FuxiCTR is (``--fuxictr-python``, ``--fuxictr-src``): the options
    of this script that ``peer_speed.py`` has too."""
    shared = str(shared_folder())
    parser.add_argument("--shared", default=shared, help="the shared data folder (../shared/data)")
    parser.add_argument(
        "--fuxictr-python", default=os.environ.get("FUXICTR_PYTHON", "/work/venvs/fuxictr/bin/python")
    )
    parser.add_argument(
        "--fuxictr-src",
        default=os.environ.get("FUXICTR_SRC"),
        help="the folder holding FuxiCTR's model_zoo/DeepFM/DeepFM_torch/src/DeepFM.py",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", default="harness", choices=("harness", "fuxictr"), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument(
        "--data",
        default="frappe-like",
        choices=("frappe-like", "criteo-sample", "ml-1m-ids", "ml-1m-all", "criteo-like-1m"),
    )
    parser.add_argument(
        "--split-folder", help="use this folder's split (train/valid/test.csv, meta.json) instead"
    )
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "peer_fuxictr"))
    add_peer_options(parser)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fuxictr-loader", default="memory", choices=("memory", "ray"))
    parser.add_argument("--no-fuxictr", action="store_true", help="run only our variants")
    parser.add_argument("--no-ours", action="store_true", help="run only FuxiCTR")
    parser.add_argument(
        "--ours",
        action="append",
        default=[],
        help="a variant LABEL:key=value,... (repeatable; 'recipe:' = the recipe on our defaults)",
    )
    for key, value in RECIPE.items():
        kind = (lambda s: [int(x) for x in s.split(",")]) if isinstance(value, list) else type(value)
        parser.add_argument("--" + OURS[key].replace("_", "-"), dest=key, type=kind, default=value)
    parser.add_argument(
        "--trace",
        help="step-by-step first epoch, options key=value,...: steps=N, "
        "optimizer=adam|fused, fast=1, fm_warmup=1, our_init=1, clip=10 (all optional; '' = defaults)",
    )
    parser.add_argument("--calibration-check", metavar="RUN", help="diagnose a run's calibration and exit")
    parser.add_argument("--summary", action="store_true", help="summarise WORK/results.jsonl and exit")
    args = parser.parse_args()

    if args.role == "fuxictr":
        result = fuxictr_child(json.loads(Path(args.job).read_text()))
        print(json.dumps(result))
        return
    work = Path(args.work)
    if args.summary:
        summary(work / "results.jsonl")
        return
    if args.calibration_check:
        os.environ.setdefault("DEEPFM_CACHE", str(work / "deepfm-cache"))
        calibration_check(Path(args.calibration_check))
        return
    if not args.no_fuxictr and not args.fuxictr_src:
        parser.error("--fuxictr-src (or $FUXICTR_SRC) is needed: FuxiCTR's model_zoo/DeepFM/DeepFM_torch/src")
    os.environ.setdefault("DEEPFM_CACHE", str(work / "deepfm-cache"))
    folder = Path(args.split_folder) if args.split_folder else prepare(args.data, work, Path(args.shared))
    if args.split_folder:
        args.data = folder.name
    recipe = {k: getattr(args, k) for k in RECIPE}
    variants = [parse_variant(v) for v in (args.ours or ["recipe:", "bars-deepfm:config=bars-deepfm"])]
    if args.no_ours:
        variants = []
    print(f"{args.data}: recipe {recipe}", flush=True)
    if args.trace is not None:
        trace = parse_variant(":" + args.trace)[1]
        run_fuxictr(
            args, folder, recipe, int(args.seeds.split(",")[0]), work / "runs" / f"{args.data}-trace", trace
        )
        return
    for seed in (int(s) for s in args.seeds.split(",")):
        runs: list[tuple[str, dict]] = []
        if not args.no_fuxictr:
            runs.append(
                (
                    "fuxictr",
                    run_fuxictr(args, folder, recipe, seed, work / "runs" / f"{args.data}-fuxictr-{seed}"),
                )
            )
            print_tests(runs[-1:], seed)
        for label, options in variants:
            out = work / "runs" / f"{args.data}-ours-{label}-{seed}"
            runs.append((f"ours {label}", run_ours(folder, recipe, options, seed, args.threads, out)))
            print_tests(runs[-1:], seed)
        print(f"\n{args.data}, seed {seed}")
        print_epochs(runs)
        print_tests(runs, seed)
        with open(work / "results.jsonl", "a") as sink:
            for name, r in runs:
                sink.write(json.dumps({"data": args.data, "tool": name, "seed": seed, **r}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

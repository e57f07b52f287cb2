"""``deepfm train`` end to end: data, model, epochs with early stopping, test, outputs.

Outputs in ``--out``: ``model.pt`` (best epoch, self-contained), ``metrics.json``,
``history.csv`` (one row per epoch, rewritten atomically after each) and ``learning_curve.png``.
"""

from __future__ import annotations

import csv
import io
import platform
import time
from pathlib import Path
from typing import Any

import torch

from deepfm import __version__
from deepfm.config import TrainConfig
from deepfm.data.datasets import DataOptions, PreparedData, prepare
from deepfm.training.checkpoint import MODEL_FILE, TrainedModel, model_from_config, save_checkpoint
from deepfm.training.early_stopping import EarlyStopping
from deepfm.training.io import write_json, write_text
from deepfm.training.loop import predict_probs, train_epoch
from deepfm.training.metrics import evaluate
from deepfm.training.plots import learning_curve


def configure_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def make_optimizer(module: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def load_data(config: TrainConfig) -> PreparedData:
    options = DataOptions(config.features, config.drop_neutral, config.min_count)
    options.on_bad_lines = config.on_bad_lines
    if config.spec:
        from deepfm.data.preprocess import prepare_spec_file

        return prepare_spec_file(config.spec, options, seed=config.seed)
    return prepare(config.dataset, config.data_dir, options, seed=config.seed)


def train(config: TrainConfig, data: PreparedData | None = None, echo: Any = print) -> dict[str, Any]:
    """Train, early-stop, test and write every output; returns the ``metrics.json`` content."""
    config.validate()
    configure_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if data is None:
        data = load_data(config)
    prep_seconds = time.perf_counter() - started
    summary = data.summary()
    echo(
        f"{data.name}: {summary['rows']['train']:,} train / {summary['rows']['valid']:,} valid / "
        f"{summary['rows']['test']:,} test rows, fields {summary['fields']} "
        f"(prepared in {prep_seconds:.1f}s)"
    )

    torch.manual_seed(config.seed)
    module = model_from_config(config, data.feature_map)
    optimizer = make_optimizer(module, config)
    generator = torch.Generator().manual_seed(config.seed)
    stopper = EarlyStopping(config.patience)
    params = sum(p.numel() for p in module.parameters())
    echo(f"model {config.model}: {params:,} parameters; up to {config.epochs} epochs")

    epochs: list[dict[str, Any]] = []
    for epoch in range(1, config.epochs + 1):
        stats = train_epoch(
            module,
            data.train,
            optimizer,
            config.batch_size,
            generator,
            progress=config.progress,
            desc=f"epoch {epoch}/{config.epochs}",
        )
        valid = evaluate(data.valid.label.numpy(), predict_probs(module, data.valid, config.eval_batch_size))
        record = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "valid_auc": valid["auc"],
            "valid_logloss": valid["logloss"],
            "train_seconds": stats.seconds,
            "train_samples_per_s": stats.samples_per_s,
        }
        epochs.append(record)
        improved = stopper.update(epoch, valid["auc"], module)
        echo(
            f"epoch {epoch:3d}  loss {stats.loss:.4f}  valid AUC {valid['auc']:.4f}  "
            f"logloss {valid['logloss']:.4f}  {stats.samples_per_s / 1e3:,.0f}k samples/s"
            + ("  *" if improved else "")
        )
        if improved:
            save_checkpoint(out / MODEL_FILE, module, data.feature_map, config, data.tables, data.extras)
        write_text(out / "history.csv", _csv(epochs))
        if stopper.should_stop:
            echo(f"early stop: no valid AUC gain for {config.patience} epochs")
            break

    if stopper.best_state is not None:
        module.load_state_dict(stopper.best_state)
    model = TrainedModel(module, data.feature_map, config, data.tables, data.extras)
    test = evaluate(data.test.label.numpy(), model.predict_split(data.test, config.eval_batch_size))
    train_seconds = sum(e["train_seconds"] for e in epochs)
    train_samples = sum(e["train_samples_per_s"] * e["train_seconds"] for e in epochs)
    metrics = {
        "test_auc": test["auc"],
        "test_logloss": test["logloss"],
        "best_epoch": stopper.best_epoch,
        "best_valid_auc": stopper.best,
        "epochs_run": len(epochs),
        "train_samples_per_s": train_samples / train_seconds if train_seconds else float("nan"),
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "params": params,
        "data": summary,
        "config": config.to_dict(),
        "epochs": epochs,
        "environment": {
            "deepfm": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
    }
    write_json(out / "metrics.json", metrics)
    learning_curve(epochs, out / "learning_curve.png", f"{config.model} on {data.name}")
    echo(
        f"test AUC {test['auc']:.4f}  test logloss {test['logloss']:.4f}  "
        f"(best epoch {stopper.best_epoch}, {metrics['train_samples_per_s'] / 1e3:,.0f}k train "
        f"samples/s) -> {out}"
    )
    return metrics


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()

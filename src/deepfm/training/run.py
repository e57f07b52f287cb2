"""``deepfm train`` end to end: data, model, epochs with early stopping, test, outputs.

Outputs in ``--out``: ``model.pt`` (best epoch, self-contained), ``metrics.json``,
``history.csv`` (one row per epoch, rewritten atomically after each) and ``learning_curve.png``.
The folder is one run's (``deepfm.training.runfolder``: a lock, a run id, no stale outputs);
``--init-from`` warm-starts (``warmstart``), ``--tensorboard`` / ``--mlflow`` track (``tracking``).
"""

from __future__ import annotations

import csv
import io
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from deepfm.artifact.checkpoint import MODEL_FILE, model_from_config, save_checkpoint
from deepfm.artifact.trained import TrainedModel
from deepfm.config import TrainConfig
from deepfm.data.datasets import DataOptions, PreparedData, prepare
from deepfm.data.features import FeatureMap
from deepfm.data.validate import check_splits
from deepfm.errors import ConfigError
from deepfm.evaluation import evaluator as evaluation
from deepfm.evaluation.plots import learning_curve
from deepfm.evaluation.scoring import predict_probs
from deepfm.io import clean_temporary_files, finite, write_json, write_text
from deepfm.training import auto, optim
from deepfm.training.distributed import init_distributed, is_main_process
from deepfm.training.early_stopping import EarlyStopping
from deepfm.training.loop import train_epoch
from deepfm.training.precision import Autocast
from deepfm.training.runfolder import RunFolder, data_fingerprint
from deepfm.training.state import TrainingState
from deepfm.training.tracker import Tracker, with_step_logging
from deepfm.training.warmstart import Base, Carried, load_base, warm_start
from deepfm.version import __version__


def configure_threads(threads: int) -> None:
    """``threads`` intra-op threads; 0 = automatic: one until the model is built, then the
    choice of :func:`deepfm.training.auto.auto_threads` (see :func:`train`)."""
    torch.set_num_threads(threads if threads > 0 else optim.AUTO_THREADS)


def trainable(module: torch.nn.Module, data: PreparedData, config: TrainConfig) -> torch.nn.Module:
    """What the training loop runs: the fused training path of ``deepfm.fast`` for ``module`` on
    the training split's layout where there is one (and ``config.fast``), else ``module``."""
    from deepfm import fast

    return fast.trainable(module, data.train, enabled=config.fast)


def make_scheduler(optimizer: Any, config: TrainConfig) -> Any | None:
    """Decay the lr by ``lr_decay`` after ``lr_patience`` epochs without a valid-AUC gain."""
    if config.lr_decay >= 1.0:
        return None
    return optim.plateau_scheduler(
        optimizer, mode="max", factor=config.lr_decay, patience=config.lr_patience - 1, threshold=0.0
    )


def frozen_parameters(module: torch.nn.Module, config: TrainConfig, epoch: int) -> list[torch.Tensor]:
    """Parameters not updated in ``epoch``, as the model declares them (``warmup_frozen``, e.g.
    DeepFM's MLP during its ``fm_warmup_epochs``); none for a model that declares nothing."""
    if config.init_from:
        return []  # a warm start's parts are trained already
    declared = getattr(module, "warmup_frozen", None)
    return list(declared(epoch, config.fm_warmup_epochs)) if declared is not None else []


def load_data(config: TrainConfig, base: FeatureMap | None = None) -> PreparedData:
    """The run's data; ``base`` (a warm start's feature map): extend its vocabularies."""
    options = DataOptions(
        config.features,
        config.drop_neutral,
        config.min_count,
        on_bad_lines=config.on_bad_lines,
        split=config.split,
        max_vocab=config.max_vocab,
        base=base,
        prune_below=config.prune_below,
    )
    if config.spec:
        from deepfm.data.preprocess import prepare_spec_file

        return prepare_spec_file(config.spec, options, seed=config.seed)
    return prepare(config.dataset, config.data_dir, options, seed=config.seed)


def train(
    config: TrainConfig,
    data: PreparedData | None = None,
    echo: Any = print,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    tracker: Tracker | None = None,
) -> dict[str, Any]:
    """Train, early-stop, test and write every output; returns the ``metrics.json`` content.

    Holds the run folder's lock throughout; a fresh run first removes the previous run's outputs.

    ``on_epoch(record)`` is called after every epoch's validation (``deepfm tune`` prunes there).
    ``tracker`` receives the run's progress (``--tensorboard`` / ``--mlflow``: the caller builds it
    with :func:`deepfm.experiments.tracking.from_config`, which checks the extras first).
    """
    config.validate()
    main = is_main_process()  # torchrun: rank 0 owns the folder and the trackers
    if tracker is None:
        if (config.tensorboard is not None or config.mlflow is not None) and main:
            raise ConfigError(
                "--tensorboard / --mlflow need a tracker: "
                "train(config, tracker=deepfm.experiments.tracking.from_config(config))"
            )
        tracker = Tracker()
    with RunFolder(config.out, writer=main) as folder:
        base = load_base(config)  # --init-from: read before clearing (RUN may be --out itself)
        if not config.resume:
            folder.clear_outputs()
        failed = True
        try:
            metrics = _train(config, data, echo, folder, tracker, base, on_epoch)
            failed = False
        finally:
            tracker.close(failed)
    return metrics


def _train(
    config: TrainConfig,
    data: PreparedData | None,
    echo: Any,
    folder: RunFolder,
    tracker: Tracker,
    base: Base | None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    configure_threads(config.threads)
    ddp = init_distributed(config.device)  # torchrun ranks; world size 1 = no-op context
    echo = echo if ddp.is_main else _silent
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    clean_temporary_files(out)  # left by a run killed while writing (atomic writes)
    started = time.perf_counter()
    if data is None:
        with ddp.main_first():  # rank 0 prepares (downloads, caches) first, then the others
            data = load_data(config, base.feature_map if base is not None else None)
    check_splits(data.name, {"train": data.train.label, "valid": data.valid.label, "test": data.test.label})
    sizes = [data.feature_map.num_rows, len(data.train), len(data.valid), len(data.test)]
    ddp.check_same("data sizes (vocabulary rows, train, valid, test)", sizes)
    prep_seconds = time.perf_counter() - started
    if config.spec:  # metadata: the spec's data set, not the --dataset default
        config.dataset = data.name
    config.check_data(len(data.train))  # e.g. a batch larger than the training split
    summary = data.summary()
    evaluator = evaluation.for_run(config, data)  # --metrics, gAUC group, ranking protocol
    folder.data_fingerprint = data_fingerprint(data)
    echo(
        f"{data.name}: {summary['rows']['train']:,} train / {summary['rows']['valid']:,} valid / "
        f"{summary['rows']['test']:,} test rows, fields {summary['fields']} "
        f"(prepared in {prep_seconds:.1f}s)"
    )
    if summary.get("ignored_tokens"):
        echo(f"ignored {summary['ignored_tokens']:,} libsvm tokens outside every index_range field")
    for name, h in summary.get("hashing", {}).items():
        echo(
            f"hashed field {name}: {h['distinct_values']:,} distinct training values in {h['buckets']:,} "
            f"buckets, collision rate {h['collision_rate']:.3f}"
        )

    torch.manual_seed(config.seed)
    module = model_from_config(config, data.feature_map).to(config.device)
    choices = auto.resolve(config, module, data.feature_map)  # threads, precision, optimizer
    torch.set_num_threads(choices.threads)
    # the fused training path of deepfm.fast where there is one; DDP (rank 0's weights
    # broadcast) when world > 1
    net = ddp.wrap(trainable(module, data, config), seed=config.seed)
    if choices.precision != "fp32":
        net = Autocast(net, choices.precision, config.device)  # training forward only
    optimizer = optim.optimizer_for(module, config, choices.optimizer)
    eval_rows = auto.eval_batch_rows(config, data.feature_map)  # --eval-batch-size, memory-capped
    scheduler = make_scheduler(optimizer, config)
    generator = torch.Generator().manual_seed(config.seed)
    stopper = EarlyStopping(config.patience)
    carried: Carried | None = None
    if base is not None and not config.resume:
        carried = warm_start(base, module, data.feature_map, optimizer if config.init_optimizer else None)
        echo(carried.describe())
    params = sum(p.numel() for p in module.parameters())
    echo(
        f"model {config.model}: {params:,} parameters; up to {config.epochs} epochs; "
        f"{choices.threads} thread(s), {choices.precision}, optimizer {choices.optimizer}"
    )
    if ddp.enabled:
        echo(
            f"data parallel: {ddp.world_size} ranks ({ddp.backend}), batch {config.batch_size} per rank, "
            f"global batch {config.batch_size * ddp.world_size}"
        )

    # DIR/state.pt: restored on --resume, saved at every epoch end and every N steps
    state = TrainingState(out, config, module, optimizer, generator, stopper, scheduler, writer=ddp.is_main)
    base_map = {"base_feature_map": base.feature_map.to_dict()} if base is not None else {}
    state.run = {**folder.info, **base_map}  # (a resumed warm start prepares the same vocabulary)
    if config.resume:
        echo(f"resuming from {state.restore().path} ({state.saved})")
        folder.adopt(state.run)  # a resumed run keeps its run id
        state.run = {**folder.info, **base_map}
    tracker.start(config, folder.info, out, summary)
    epochs: list[dict[str, Any]] = state.history
    for epoch in range(state.next_epoch, config.epochs + 1):
        if stopper.should_stop:  # a resumed run that had already stopped early
            break
        # state.guard: a NaN/inf error also says where the last good state is
        stats = state.guard(train_epoch)(
            net,
            data.train,
            optimizer,
            config.batch_size,
            generator,
            progress=config.progress and ddp.is_main,
            desc=f"epoch {epoch}/{config.epochs}",
            shard=ddp.shard if ddp.enabled else None,
            frozen=frozen_parameters(module, config, epoch),
            **with_step_logging(state.loop_options(epoch), tracker, lambda: state.global_step),
        )
        stats = ddp.reduce_stats(stats)  # loss and samples/s over all ranks
        ddp.sync_buffers(module)  # same BatchNorm running stats on every rank
        valid_probs = ddp.predict(lambda s: predict_probs(module, s, eval_rows), data.valid)
        valid = evaluator.evaluate(module, data.valid, valid_probs)
        record = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "valid_auc": valid["auc"],
            "valid_logloss": valid["logloss"],
            "train_seconds": stats.seconds,
            "train_samples_per_s": stats.samples_per_s,
            "lr": optimizer.param_groups[0]["lr"],
            **evaluation.prefixed("valid", valid),  # gAUC, calibration, HitRate@K, ... (--metrics)
        }
        epochs.append(record)
        tracker.log_epoch(record)
        improved = stopper.update(epoch, valid["auc"], module)
        if scheduler is not None:
            scheduler.step(valid["auc"])
        echo(
            f"epoch {epoch:3d}  loss {stats.loss:.4f}  valid AUC {valid['auc']:.4f}  "
            f"logloss {valid['logloss']:.4f}  {stats.samples_per_s / 1e3:,.0f}k samples/s"
            + ("  *" if improved else "")
        )
        if improved and ddp.is_main:
            save_checkpoint(
                out / MODEL_FILE, module, data.feature_map, config, data.tables, data.extras, run=folder.info
            )
        if ddp.is_main:
            write_text(out / "history.csv", _csv(epochs))
        state.end_epoch(epoch)  # (writes on rank 0 only)
        if on_epoch is not None:
            on_epoch(record)
        if stopper.should_stop:
            echo(f"early stop: no valid AUC gain for {config.patience} epochs")
            break

    ddp.dump_state(module, best_state=stopper.best_state)  # debug hook for tests
    if stopper.best_state is not None:
        module.load_state_dict(stopper.best_state)
    model = TrainedModel(module, data.feature_map, config, data.tables, data.extras)
    test_probs = ddp.predict(lambda s: model.predict_split(s, eval_rows), data.test)
    test = evaluator.evaluate(module, data.test, test_probs)
    train_seconds = sum(e["train_seconds"] for e in epochs)
    train_samples = sum(e["train_samples_per_s"] * e["train_seconds"] for e in epochs)
    metrics = {
        "run_id": folder.run_id,
        "data_fingerprint": folder.data_fingerprint,
        "test_auc": test["auc"],
        "test_logloss": test["logloss"],
        "best_epoch": stopper.best_epoch,
        "best_valid_auc": stopper.best,
        **evaluation.prefixed("test", test),
        "evaluation": evaluator.describe(),
        "epochs_run": len(epochs),
        "train_samples_per_s": train_samples / train_seconds if train_seconds else float("nan"),
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "params": params,
        "data": summary,
        "distributed": ddp.describe(config.batch_size),
        "config": config.to_dict(),
        "epochs": epochs,
        **({"warm_start": carried.to_dict()} if carried is not None else {}),
        "environment": {
            "deepfm": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "precision": choices.precision,
            "optimizer": choices.optimizer,
        },
    }
    if ddp.is_main:  # only rank 0 writes
        write_json(out / "metrics.json", finite(metrics))  # strict JSON: an undefined number is null
        evaluator.save_predictions(out / evaluation.PREDICTIONS_FILE, data.test, test_probs)
        learning_curve(epochs, out / "learning_curve.png", curve_title(config, data.name), stopper.best_epoch)
        tracker.end(metrics, out)
    echo(
        f"test AUC {test['auc']:.4f}  test logloss {test['logloss']:.4f}  {evaluation.brief(test)}"
        f"(best epoch {stopper.best_epoch}, {metrics['train_samples_per_s'] / 1e3:,.0f}k train "
        f"samples/s) -> {out}"
    )
    return metrics


def curve_title(config: TrainConfig, name: str) -> str:
    """``fm on my-clicks (my.yaml)``: the data's own name, and the spec or folder it came from."""
    source = Path(config.spec).name if config.spec else Path(config.data_dir).name if config.data_dir else ""
    return f"{config.model} on {name}" + (f" ({source})" if source and source != name else "")


def _silent(*_: Any, **__: Any) -> None:
    """``echo`` of ranks other than 0."""


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()

"""``deepfm train`` end to end: data, model, epochs with early stopping, test, outputs.

:func:`train` holds the run folder and the tracker; the run itself is three steps that read top to
bottom: :func:`setup` (threads, processes, data, model, optimizer, resumable state),
:func:`train_one_epoch` (train, validate, keep the best) and :func:`finish` (test, outputs).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepfm.artifact.checkpoint import MODEL_FILE, model_from_config, save_checkpoint
from deepfm.artifact.trained import TrainedModel
from deepfm.config import TrainConfig
from deepfm.data.batching import Split
from deepfm.data.features import FeatureMap
from deepfm.data.prepare import open_prepared, prepare
from deepfm.data.prepared import PreparedData
from deepfm.data.validate import check_splits
from deepfm.errors import ConfigError
from deepfm.evaluation import evaluator as evaluation
from deepfm.evaluation.evaluator import Evaluator
from deepfm.evaluation.plots import learning_curve
from deepfm.evaluation.scoring import predict_probs
from deepfm.io import clean_temporary_files, finite, write_json, write_text
from deepfm.training import auto, optim
from deepfm.training.distributed import DistContext, init_distributed, is_main_process
from deepfm.training.early_stopping import EarlyStopping
from deepfm.training.loop import epoch_steps, train_epoch
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


def frozen_parameters(
    module: torch.nn.Module, config: TrainConfig, epoch: int, steps_per_epoch: int, warmup: int
) -> tuple[list[torch.Tensor], int]:
    """``(parameters, steps)``: what the FM warm-up holds still in ``epoch`` (the model's
    ``warmup_frozen``, e.g. DeepFM's MLP), for its first ``steps`` optimizer steps: the run's
    first ``warmup`` steps (see :func:`warmup_steps`), or with ``fm_warmup_epochs`` set every
    step of the first ``fm_warmup_epochs`` epochs. Nothing for a model that declares nothing, or
    a warm start (its parts are trained already)."""
    declared = getattr(module, "warmup_frozen", None)
    if config.init_from or declared is None:
        return [], 0
    if config.fm_warmup_epochs is not None:
        steps = steps_per_epoch if epoch <= config.fm_warmup_epochs else 0
    else:
        steps = min(steps_per_epoch, max(0, warmup - (epoch - 1) * steps_per_epoch))
    params = list(declared()) if steps else []
    return params, steps if params else 0


ONE_PASS_WARMUP_SHARE = 10  # a one-epoch run's FM warm-up is at most 1/10 of it


def warmup_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """The step-counted FM warm-up of a run: the first ``fm_warmup_steps`` optimizer steps, at
    most the first epoch (longer warm-ups are ``fm_warmup_epochs``), and in a one-epoch run at
    most its first tenth, so a one-pass run trains the whole model for 90% of its steps. None
    (0) when the warm-up is counted in epochs (``fm_warmup_epochs`` set).

    Why a tenth: one-pass training on click logs is common (a second epoch overfits), and there
    a long warm-up keeps the deep part untrained for much of the run, while MovieLens-sized runs
    of many epochs keep their whole first epoch (benchmarks/README.md, "Equal work")."""
    if config.fm_warmup_epochs is not None:
        return 0
    cap = steps_per_epoch // ONE_PASS_WARMUP_SHARE if config.epochs == 1 else steps_per_epoch
    return min(config.fm_warmup_steps, cap)


def warmup_description(config: TrainConfig, steps_per_epoch: int, warmup: int) -> str:
    """``MLP frozen for the first 19 of the 195 optimizer steps of epoch 1`` (or N epochs)."""
    if config.fm_warmup_epochs is not None:
        return f"MLP frozen for the first {config.fm_warmup_epochs} epoch(s)"
    return f"MLP frozen for the first {warmup:,} of the {steps_per_epoch:,} optimizer steps of epoch 1"


def load_data(
    config: TrainConfig, base: FeatureMap | None = None, rank: int = 0, world: int = 1
) -> PreparedData:
    """The run's data: a folder ``deepfm prepare`` wrote (``--prepared``), or prepared here;
    ``base`` (a warm start's feature map): extend its vocabularies. Rank ``rank`` of ``world``
    data-parallel ranks: a streamed training split is that rank's share."""
    if config.prepared is not None:
        if base is not None:
            raise ConfigError("--init-from prepares the new data on the base's vocabulary; drop --prepared")
        return open_prepared(config.prepared, rank=rank, world=world)
    return prepare(config.prepare_options(), base, progress=config.progress).for_rank(rank, world)


def train(
    config: TrainConfig,
    data: PreparedData | None = None,
    echo: Any = print,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    tracker: Tracker | None = None,
    files: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    """Train, early-stop, test and write every output; returns the ``metrics.json`` content.

    Holds the run folder's lock throughout; a fresh run replaces the previous run's outputs once
    it has written its first own (``state.pt`` or ``model.pt``): a run that fails earlier leaves
    them as they were. ``files`` (name -> content) are written into the folder at that moment too
    (``deepfm.fit``'s ``spec.yaml``).

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
        base = load_base(config)  # --init-from: read first (RUN may be --out itself)
        if config.resume:
            folder.keep_previous()
        folder.files = dict(files or {})
        failed = True
        try:
            metrics = _train(config, data, echo, folder, tracker, base, on_epoch)
            failed = False
        finally:
            tracker.close(failed)
    return metrics


@dataclass
class Session:
    """What one run holds from its setup to its finish."""

    config: TrainConfig
    echo: Any
    folder: RunFolder
    tracker: Tracker
    ddp: DistContext
    started: float
    data: PreparedData
    summary: dict[str, Any]
    evaluator: Evaluator
    module: torch.nn.Module  # the plain model: checkpoints, evaluation
    net: torch.nn.Module  # what the training loop runs: fused, DDP-wrapped, autocast
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    stopper: EarlyStopping
    state: TrainingState
    choices: auto.Choices
    eval_rows: int
    params: int
    steps_per_epoch: int
    carried: Carried | None = None

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def epochs(self) -> list[dict[str, Any]]:
        return self.state.history


def _train(
    config: TrainConfig,
    data: PreparedData | None,
    echo: Any,
    folder: RunFolder,
    tracker: Tracker,
    base: Base | None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    run = setup(config, data, echo, folder, tracker, base)
    for epoch in range(run.state.next_epoch, config.epochs + 1):
        if run.stopper.should_stop:  # a resumed run that had already stopped early
            break
        record = train_one_epoch(run, epoch)
        if on_epoch is not None:
            on_epoch(record)
        if run.stopper.should_stop:
            run.echo(f"early stop: no valid AUC gain for {config.patience} epochs")
            break
    return finish(run)


def setup(
    config: TrainConfig,
    data: PreparedData | None,
    echo: Any,
    folder: RunFolder,
    tracker: Tracker,
    base: Base | None,
) -> Session:
    """Everything before the first epoch: threads, processes, data, model, optimizer, state."""
    configure_threads(config.threads)
    ddp = init_distributed(config.device)  # torchrun ranks; world size 1 = no-op context
    echo = echo if ddp.is_main else _silent
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    clean_temporary_files(out)  # left by a run killed while writing (atomic writes)
    started = time.perf_counter()
    data = _data(config, data, ddp, base, echo, started)
    summary = data.summary()
    evaluator = evaluation.for_run(config, data)  # --metrics, gAUC group, ranking protocol
    folder.data_fingerprint = data_fingerprint(data)
    ddp.check_same_text("the prepared data (feature map and arrays)", folder.data_fingerprint)

    torch.manual_seed(config.seed)
    module = model_from_config(config, data.feature_map).to(config.device)
    choices = auto.resolve(config, module, data.feature_map)  # threads, precision, optimizer
    torch.set_num_threads(choices.threads)
    optimizer = optim.optimizer_for(module, config, choices.optimizer)  # (lazy: row-sparse tables)
    sync = ddp.embedding_sync(config.embedding_sync, module, data.train, config.batch_size, config.seed)
    # the fused training path of deepfm.fast where there is one; when world > 1 DDP for the dense
    # layers (rank 0's weights broadcast) and the tables synchronised by `sync` (dense or rows)
    net = ddp.wrap(
        trainable(module, data, config),
        seed=config.seed,
        embedding_sync=sync,
        sparse_update=choices.optimizer == "lazy",
    )
    if choices.precision != "fp32":
        net = Autocast(net, choices.precision, config.device)  # training forward only
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
            f"global batch {config.batch_size * ddp.world_size}, embedding sync {sync}"
            + (
                f", {len(data.train):,} training rows streamed per rank"
                if not isinstance(data.train, Split)
                else ""
            )
        )
    # DIR/state.pt: restored on --resume, saved at every epoch end and every N steps
    ranks = ddp.all_gather if ddp.enabled else None  # each rank's running loss kept in state.pt
    state = TrainingState(
        out, config, module, optimizer, generator, stopper, scheduler, ddp.is_main, ranks, ddp.rank
    )
    state.on_save = folder.replace_previous  # the previous run's outputs go once this run has one
    steps_per_epoch = epoch_steps(data.train, config.batch_size, ddp.shard if ddp.enabled else None)
    state.warmup_steps = warmup_steps(config, steps_per_epoch)  # a resumed run keeps its own
    base_map = {"base_feature_map": base.feature_map.to_dict()} if base is not None else {}
    state.run = {**folder.info, **base_map}  # (a resumed warm start prepares the same vocabulary)
    if config.resume:
        echo(f"resuming from {state.restore().path} ({state.saved})")
        folder.adopt(state.run)  # a resumed run keeps its run id
        state.run = {**folder.info, **base_map}
    if frozen_parameters(module, config, 1, steps_per_epoch, state.warmup_steps)[0]:
        echo(f"FM warm-up: {warmup_description(config, steps_per_epoch, state.warmup_steps)}")
    tracker.start(config, folder.info, out, summary)
    return Session(
        config, echo, folder, tracker, ddp, started, data, summary, evaluator, module, net, optimizer,
        scheduler, generator, stopper, state, choices, eval_rows, params, steps_per_epoch, carried,
    )  # fmt: skip


def _data(
    config: TrainConfig,
    data: PreparedData | None,
    ddp: DistContext,
    base: Base | None,
    echo: Any,
    started: float,
) -> PreparedData:
    """The run's data (prepared here unless given), checked, and announced."""
    if data is None:
        with ddp.main_first():  # rank 0 prepares (downloads, caches) first, then the others
            data = load_data(config, base.feature_map if base is not None else None, ddp.rank, ddp.world_size)
    else:
        data = data.for_rank(ddp.rank, ddp.world_size)
    check_splits(data.name, {"train": data.train.label, "valid": data.valid.label, "test": data.test.label})
    sizes = [data.feature_map.num_rows, data.train_rows, len(data.train), len(data.valid), len(data.test)]
    ddp.check_same("data sizes (vocabulary rows, train, train per rank, valid, test)", sizes)
    if config.spec:  # metadata: the spec's data set, not the --dataset default
        config.dataset = data.name
    config.check_data(len(data.train))  # e.g. a batch larger than the training split
    summary = data.summary()
    echo(
        f"{data.name}: {summary['rows']['train']:,} train / {summary['rows']['valid']:,} valid / "
        f"{summary['rows']['test']:,} test rows, fields {summary['fields']} "
        f"(prepared in {time.perf_counter() - started:.1f}s)"
    )
    if summary.get("ignored_tokens"):
        echo(f"ignored {summary['ignored_tokens']:,} libsvm tokens outside every index_range field")
    for name, h in summary.get("hashing", {}).items():
        echo(
            f"hashed field {name}: {h['distinct_values']:,} distinct training values in {h['buckets']:,} "
            f"buckets, collision rate {h['collision_rate']:.3f}"
        )
    return data


def train_one_epoch(run: Session, epoch: int) -> dict[str, Any]:
    """Train one epoch, validate, keep the best model and the history; the epoch's record."""
    config, state, module = run.config, run.state, run.module
    frozen, frozen_steps = frozen_parameters(module, config, epoch, run.steps_per_epoch, state.warmup_steps)
    # state.guard: a NaN/inf error also says where the last good state is
    stats = state.guard(train_epoch)(
        run.net,
        run.data.train,
        run.optimizer,
        config.batch_size,
        run.generator,
        progress=config.progress and run.ddp.is_main,
        desc=f"epoch {epoch}/{config.epochs}",
        shard=run.ddp.shard if run.ddp.enabled else None,
        frozen=frozen,
        frozen_steps=frozen_steps,
        sync=run.ddp.sync,
        **with_step_logging(state.loop_options(epoch), run.tracker, lambda: state.global_step),
    )
    stats = run.ddp.reduce_stats(stats)  # loss and samples/s over all ranks
    run.ddp.sync_buffers(module)  # same BatchNorm running stats on every rank
    valid_probs = run.ddp.predict(lambda s: predict_probs(module, s, run.eval_rows), run.data.valid)
    valid = run.evaluator.evaluate(module, run.data.valid, valid_probs)
    record = {
        "epoch": epoch,
        "train_loss": stats.loss,
        "valid_auc": valid["auc"],
        "valid_logloss": valid["logloss"],
        "train_seconds": stats.seconds,
        "train_samples_per_s": stats.samples_per_s,
        "warmup_samples": stats.warmup_samples,  # of which trained with the MLP frozen
        "warmup_seconds": stats.warmup_seconds,
        "lr": run.optimizer.param_groups[0]["lr"],
        **evaluation.prefixed("valid", valid),  # gAUC, calibration, HitRate@K, ... (--metrics)
    }
    run.epochs.append(record)
    run.tracker.log_epoch(record)
    improved = run.stopper.update(epoch, valid["auc"], module)
    if run.scheduler is not None:
        run.scheduler.step(valid["auc"])
    run.echo(
        f"epoch {epoch:3d}  loss {stats.loss:.4f}  valid AUC {valid['auc']:.4f}  "
        f"logloss {valid['logloss']:.4f}  {stats.samples_per_s / 1e3:,.0f}k samples/s"
        + ("  *" if improved else "")
    )
    data = run.data
    if improved and run.ddp.is_main:
        save_checkpoint(
            run.out / MODEL_FILE,
            module,
            data.feature_map,
            config,
            data.tables,
            data.facts,
            run=run.folder.info,
        )
        run.folder.replace_previous(MODEL_FILE)
    if run.ddp.is_main:
        write_text(run.out / "history.csv", _csv(run.epochs))
        run.folder.replace_previous("history.csv")
    state.end_epoch(epoch)  # (writes on rank 0 only)
    return record


def finish(run: Session) -> dict[str, Any]:
    """The best epoch's model scored on the test split; metrics.json and every other output."""
    config, data, stopper, out = run.config, run.data, run.stopper, run.out
    run.ddp.dump_state(run.module, best_state=stopper.best_state)  # debug hook for tests
    if stopper.best_state is not None:
        run.module.load_state_dict(stopper.best_state)
    model = TrainedModel(run.module, data.feature_map, config, data.tables, data.facts)
    test_probs = run.ddp.predict(lambda s: model.predict_split(s, run.eval_rows), data.test)
    test = run.evaluator.evaluate(run.module, data.test, test_probs)
    metrics = _metrics(run, test)
    if run.ddp.is_main:  # only rank 0 writes
        run.folder.replace_previous("")  # (a run always has written by now)
        write_json(out / "metrics.json", finite(metrics))  # strict JSON: an undefined number is null
        run.evaluator.save_predictions(out / evaluation.PREDICTIONS_FILE, data.test, test_probs)
        learning_curve(
            run.epochs, out / "learning_curve.png", curve_title(config, data.name), stopper.best_epoch
        )
        run.tracker.end(metrics, out)
    run.echo(
        f"test AUC {test['auc']:.4f}  test logloss {test['logloss']:.4f}  {evaluation.brief(test)}"
        f"(best epoch {stopper.best_epoch}, {metrics['train_samples_per_s'] / 1e3:,.0f}k train "
        f"samples/s) -> {out}"
    )
    return metrics


def _metrics(run: Session, test: dict[str, Any]) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    epochs = run.epochs
    train_seconds = sum(e["train_seconds"] for e in epochs)
    train_samples = sum(e["train_samples_per_s"] * e["train_seconds"] for e in epochs)
    warmup_seconds = sum(e.get("warmup_seconds", 0.0) for e in epochs)
    warmup_samples = sum(e.get("warmup_samples", 0) for e in epochs)
    return {
        "run_id": run.folder.run_id,
        "data_fingerprint": run.folder.data_fingerprint,
        "test_auc": test["auc"],
        "test_logloss": test["logloss"],
        "best_epoch": run.stopper.best_epoch,
        "best_valid_auc": run.stopper.best,
        **evaluation.prefixed("test", test),
        "evaluation": run.evaluator.describe(),
        "epochs_run": len(epochs),
        "train_samples_per_s": train_samples / train_seconds if train_seconds else float("nan"),
        "train_seconds": train_seconds,
        # speeds apart: the steps with the MLP frozen (FM warm-up), and those training every part
        "warmup_samples_per_s": _rate(warmup_samples, warmup_seconds),
        "after_warmup_samples_per_s": _rate(train_samples - warmup_samples, train_seconds - warmup_seconds),
        "wall_seconds": time.perf_counter() - run.started,
        "params": run.params,
        "data": run.summary,
        "distributed": run.ddp.describe(run.config.batch_size),
        "config": run.config.to_dict(),
        "epochs": epochs,
        **({"warm_start": run.carried.to_dict()} if run.carried is not None else {}),
        "environment": {
            "deepfm": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "precision": run.choices.precision,
            "optimizer": run.choices.optimizer,
        },
    }


def curve_title(config: TrainConfig, name: str) -> str:
    """``fm on my-clicks (my.yaml)``: the data's own name, and the spec or folder it came from."""
    source = Path(config.spec).name if config.spec else Path(config.data_dir).name if config.data_dir else ""
    return f"{config.model} on {name}" + (f" ({source})" if source and source != name else "")


def _rate(samples: float, seconds: float) -> float:
    return samples / seconds if samples > 0 and seconds > 0 else float("nan")


def _silent(*_: Any, **__: Any) -> None:
    """``echo`` of ranks other than 0."""


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()

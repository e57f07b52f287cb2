"""Resumable training: the run's full state in ``DIR/state.pt``, saved atomically and restored.

``model.pt`` is the self-contained best model; ``state.pt`` is everything needed to continue a
run exactly where it stopped: model and optimizer (and LR scheduler, when one is used), the
early-stopping state with its best weights, the RNG states (torch global and CUDA, the shuffling
generator, NumPy and Python), the epoch and the optimizer steps done in it, the running loss of
the unfinished epoch, the per-epoch history so far, the run's config and its FM warm-up length.

It is written at the end of every epoch and every ``--checkpoint-every`` steps. A mid-epoch
resume re-derives the epoch's permutation from the shuffling generator's state at the start of
that epoch and skips the batches already trained on, so a run resumed after a kill ends with the
same metrics as an uninterrupted one (bit for bit on CPU with the same thread count).

Nothing non-finite is ever saved: the losses are checked before every save and the weights are
checked too, so after a NaN/inf the last good ``state.pt`` is kept.
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from deepfm.config import TrainConfig
from deepfm.errors import CheckpointError, ConfigError, NumericalError, brief
from deepfm.io import atomic_write, load_torch_payload
from deepfm.training.early_stopping import EarlyStopping
from deepfm.training.loop import EpochPosition, check_weights
from deepfm.version import __version__

T = TypeVar("T")
STATE_FILE = "state.pt"
FORMAT = "deepfm-train-state"
VERSION = 1
# Test hook: seconds to sleep after every optimizer step (makes "kill mid-epoch" easy to hit).
STEP_DELAY_ENV = "DEEPFM_TEST_STEP_DELAY"
# Options a resumed run may change: they do not change what is computed (epochs only extends it).
RESUME_OVERRIDABLE = (
    "progress",
    "data_dir",
    "epochs",
    "eval_batch_size",
    "checkpoint_every",
    "tensorboard",
    "tensorboard_every",
    "mlflow",
)


class TrainingState:
    """Owns ``DIR/state.pt`` for one run: restores it on ``--resume`` and saves it as training goes."""

    def __init__(
        self,
        out: str | Path,
        config: TrainConfig,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        stopper: EarlyStopping,
        scheduler: Any | None = None,
        writer: bool = True,
        ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
        rank: int = 0,
    ) -> None:
        self.path = Path(out) / STATE_FILE
        self.writer = writer  # False on DDP ranks other than 0: they check but never write
        # data-parallel: every rank's value of a tensor stacked (all ranks call save together), so
        # each rank's running loss of an unfinished epoch is kept and restored to that rank
        self.ranks, self.rank = ranks, rank
        self.config = config
        self.module = module
        self.optimizer = optimizer
        self.generator = generator
        self.stopper = stopper
        self.scheduler = scheduler
        self.history: list[dict[str, Any]] = []
        self.next_epoch = 1
        self.global_step = 0
        self.saved: str | None = None  # where the last good state stands, for messages
        self.run: dict[str, Any] = {}  # run id and data fingerprint (deepfm.training.runfolder)
        self.on_save: Callable[[str], Any] | None = None  # called with the file name after a save
        # the run's step-counted FM warm-up, fixed when it starts (a resume may change --epochs,
        # which bounds it); a state written before warm-ups were counted in steps had none
        self.warmup_steps = 0
        self._resume: EpochPosition | None = None
        self._resume_generator: torch.Tensor | None = None
        self._epoch_generator = generator.get_state()
        self._steps_before = 0  # global steps before the current epoch
        delay = os.environ.get(STEP_DELAY_ENV, "")
        self.delay = float(delay) if delay else 0.0

    # --- restore -------------------------------------------------------------------------------
    def restore(self) -> TrainingState:
        """Load ``state.pt`` into the model, optimizer, stopper and RNGs; set the resume position."""
        payload = read_state(self.path)
        try:
            self.module.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            if self.scheduler is not None and payload.get("scheduler") is not None:
                self.scheduler.load_state_dict(payload["scheduler"])
            stop = payload["early_stopping"]
            self.stopper.best = float(stop["best"])
            self.stopper.best_epoch = int(stop["best_epoch"])
            self.stopper.bad_epochs = int(stop["bad_epochs"])
            self.stopper.best_state = stop["best_state"]
            pos = payload["position"]
            self.history = [dict(r) for r in payload["history"]]
            self.next_epoch = int(pos["epoch"])
            self.global_step = int(payload["global_step"])
            self._steps_before = self.global_step - int(pos["step"])
            loss_sum = pos["loss_sum"]
            per_rank = pos.get("rank_loss_sums")
            if per_rank is not None and self.ranks is not None and len(per_rank) > self.rank:
                loss_sum = per_rank[self.rank]  # this rank's own running loss
            self._resume = EpochPosition(
                int(pos["epoch"]), int(pos["step"]), loss_sum.clone(), int(pos["samples"])
            )
            self._resume_generator = payload["epoch_generator"]
            _set_rng(payload["rng"])
            self.run = dict(payload.get("run") or self.run)
            self.warmup_steps = int(payload.get("warmup_steps", 0))
        except (
            KeyError,
            TypeError,
            ValueError,
            RuntimeError,
            AttributeError,
            IndexError,
            OverflowError,
        ) as exc:
            raise CheckpointError(unreadable_state(self.path, payload, exc)) from None
        self.saved = _where(self._resume)
        _remove_stale_temp_files(self.path)
        return self

    # --- per epoch -----------------------------------------------------------------------------
    def loop_options(self, epoch: int) -> dict[str, Any]:
        """Keyword arguments for :func:`train_epoch` for ``epoch`` (resume position, step hook)."""
        start = EpochPosition(epoch)
        if self._resume is not None and self._resume.epoch == epoch:
            start = self._resume
            self.generator.set_state(self._resume_generator)
        self._resume = None
        self._epoch_generator = self.generator.get_state()
        self._steps_before = self.global_step - start.step
        every = 1 if self.delay else self.config.checkpoint_every
        return {"start": start, "on_step": self._on_step, "step_every": every}

    def end_epoch(self, epoch: int) -> None:
        """Save the state after ``epoch`` (its history row and early-stopping update are done)."""
        self._epoch_generator = self.generator.get_state()
        self._steps_before = self.global_step
        self.save(EpochPosition(epoch + 1))

    def guard(self, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` whose :class:`NumericalError` also says where the last good state is."""

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> T:
            try:
                return fn(*args, **kwargs)
            except NumericalError as exc:
                raise self.diverged(exc) from None

        return guarded

    def diverged(self, exc: NumericalError) -> NumericalError:
        """``exc`` with where the last good state and the best model are."""
        kept = f"last good state kept in {self.path} ({self.saved})" if self.saved else "no state saved yet"
        best = f"; {self.path.parent / 'model.pt'} holds the best epoch ({self.stopper.best_epoch})"
        return NumericalError(
            f"{exc}; {kept}{best if self.stopper.best_epoch else ''}", epoch=exc.epoch, step=exc.step
        )

    def _on_step(self, pos: EpochPosition) -> None:
        self.global_step = self._steps_before + pos.step
        if self.delay:
            time.sleep(self.delay)
        every = self.config.checkpoint_every
        if every and pos.step % every == 0:
            self.save(pos)

    # --- save ----------------------------------------------------------------------------------
    def save(self, pos: EpochPosition) -> Path:
        """Write ``state.pt`` atomically at ``pos``; refuses (NumericalError) if weights are NaN/inf."""
        check_weights(self.module, pos)
        loss_sum = pos.loss_sum if pos.loss_sum is not None else torch.zeros((), dtype=torch.float64)
        rank_sums = self.ranks(loss_sum.detach().cpu().reshape(())) if self.ranks is not None else None
        if not self.writer:
            self.saved = _where(pos)
            return self.path
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "deepfm": __version__,  # the package that wrote it, named when another cannot resume it
            "config": self.config.to_dict(),
            "position": {
                "epoch": pos.epoch,
                "step": pos.step,
                "samples": pos.samples,
                "loss_sum": loss_sum.detach().cpu().clone(),
                **({"rank_loss_sums": rank_sums} if rank_sums is not None else {}),
            },
            "global_step": self.global_step,
            "epoch_generator": self._epoch_generator,
            "model": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "early_stopping": {
                "best": self.stopper.best,
                "best_epoch": self.stopper.best_epoch,
                "bad_epochs": self.stopper.bad_epochs,
                "best_state": self.stopper.best_state,
            },
            "rng": _get_rng(),
            "history": self.history,
            "run": self.run,
            "warmup_steps": self.warmup_steps,
        }
        atomic_write(self.path, lambda f: torch.save(payload, f))
        self.saved = _where(pos)
        if self.on_save is not None:
            self.on_save(self.path.name)
        return self.path


def read_state(path: str | Path) -> dict[str, Any]:
    """Load and check a ``state.pt`` file (``weights_only``: no pickled code is run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no training state to resume in {path.parent} (expected {path.name}, written at the end of "
            "every epoch and every --checkpoint-every steps); start the run without --resume"
        )
    return load_torch_payload(path, "deepfm training state", FORMAT, VERSION, "state format")


def unreadable_state(path: Path, payload: dict[str, Any], exc: BaseException) -> str:
    """Why a ``state.pt`` that loaded cannot be resumed: written by another deepfm (named, with
    what to do), else damaged."""
    writer = payload.get("deepfm")
    if writer == __version__:
        return f"{path} is damaged or not from this run ({brief(exc)})"
    by = f"deepfm {writer}" if isinstance(writer, str) else "an older deepfm (one that kept no version)"
    return (
        f"{path} was written by {by}; deepfm {__version__} cannot resume it ({brief(exc, 80)}): "
        f"finish it with that version, or start a new run from its model with --init-from {path.parent}"
    )


def option_flag(name: str) -> str:
    """The command-line flag of config field ``name`` (``progress`` is turned off by --no-progress)."""
    return "--no-progress" if name == "progress" else "--" + name.replace("_", "-")


def resume_config(out: str | Path, given: dict[str, Any]) -> TrainConfig:
    """The config a run in ``out`` was started with, for ``--resume``.

    ``given`` holds options set on the command line (or in ``--config``); those in
    ``RESUME_OVERRIDABLE`` replace the stored ones, any other one must equal the stored value.
    """
    payload = read_state(Path(out) / STATE_FILE)
    try:
        stored = TrainConfig.from_dict(payload["config"]).validate()
    except (KeyError, TypeError, AttributeError, ConfigError) as exc:
        if payload.get("deepfm") != __version__:
            raise CheckpointError(unreadable_state(Path(out) / STATE_FILE, payload, exc)) from None
        raise CheckpointError(f"{Path(out) / STATE_FILE} holds no valid config ({brief(exc)})") from None
    values = stored.to_dict()
    check = TrainConfig.from_dict({k: v for k, v in given.items() if k not in ("out", "resume")})
    conflicts = []
    for key in given:
        if key in ("out", "resume"):
            continue
        new = getattr(check, key)
        new = list(new) if isinstance(new, tuple) else new
        if key in RESUME_OVERRIDABLE:
            values[key] = new
        elif new != values[key]:
            conflicts.append(f"--{key.replace('_', '-')} (started with {values[key]!r}, given {new!r})")
    if conflicts:
        allowed = ", ".join(option_flag(k) for k in RESUME_OVERRIDABLE)
        raise ConfigError(
            f"--resume continues {out} with the options it was started with; these differ: "
            f"{', '.join(conflicts)}. Only {allowed} may change on resume"
        )
    values.update(out=str(out), resume=True)
    return TrainConfig.from_dict(values).validate()


def _where(pos: EpochPosition) -> str:
    if pos.step == 0:
        return f"after epoch {pos.epoch - 1}" if pos.epoch > 1 else "before epoch 1"
    return f"epoch {pos.epoch}, step {pos.step}"


def _get_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *(np_state[2:])],
        "python": list(random.getstate()),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _remove_stale_temp_files(path: Path) -> None:
    """Temporary files left by a kill in the middle of an atomic write."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)

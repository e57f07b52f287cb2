"""The inner loops: one training epoch over shuffled tensor batches, and batched prediction.

Hot-loop rules: batches are slices of pre-shuffled tensors, the loss is ``BCEWithLogits`` on
logits, the running loss stays a tensor (no ``.item()`` per step), and the progress bar is
advanced every few dozen steps, not every step.

Resumable training (issue 8): ``start`` resumes an epoch after its first ``start.step`` batches
(same permutation, same running loss), ``on_step`` is called every ``step_every`` steps with the
position (to write ``state.pt``), and the losses are checked for NaN/inf every ``CHECK_EVERY``
steps and before every ``on_step`` call, without a device sync per step.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from deepfm.data.batching import Split
from deepfm.errors import NumericalError
from deepfm.training.distributed import Shard

PROGRESS_EVERY = 32
CHECK_EVERY = 32  # [issue 8] steps between NaN/inf checks of the loss (one sync each)


@dataclass
class EpochPosition:
    """[issue 8] Where an epoch stands: optimizer steps done and the running loss sum so far."""

    epoch: int
    step: int = 0
    loss_sum: torch.Tensor | None = None  # float64 sum of loss * batch rows
    samples: int = 0


@dataclass
class EpochStats:
    loss: float
    samples: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def train_epoch(
    module: nn.Module,
    split: Split,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    progress: bool = False,
    desc: str = "train",
    shard: Shard | None = None,
    start: EpochPosition | None = None,
    on_step: Callable[[EpochPosition], None] | None = None,
    step_every: int = 0,
) -> EpochStats:
    """One pass over ``split`` (or, with ``shard``, over this rank's slice of the epoch's permutation)."""
    module.train()
    # issue 7 (DDP): all ranks draw the same permutation; each visits its own disjoint slice
    order = shard.permutation(len(split), generator) if shard is not None else None
    loss_fn = nn.BCEWithLogitsLoss()
    total = torch.zeros((), dtype=torch.float64)
    samples = 0
    steps = 0
    # [issue 8] resume mid-epoch: same permutation (caller restored the generator), skip done steps
    pos = start or EpochPosition(0)
    if pos.loss_sum is not None:
        total += pos.loss_sum.to(total)
    samples, steps = pos.samples, pos.step
    window: list[torch.Tensor] = []  # losses since the last finiteness check
    start = time.perf_counter()
    bar = tqdm(
        total=split.num_batches(batch_size, shuffle=True, rows=None if order is None else len(order)),
        desc=desc,
        unit="batch",
        disable=not progress,
        leave=False,
        mininterval=0.5,
        dynamic_ncols=True,
    )
    bar.update(steps)  # [issue 8] resumed steps
    batches = split.batches(batch_size, generator=generator, shuffle=True, order=order)
    for batch in itertools.islice(batches, steps, None):
        logits = module(*batch.inputs)
        loss = loss_fn(logits, batch.label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = batch.label.shape[0]
        total += loss.detach() * n
        samples += n
        steps += 1
        if steps % PROGRESS_EVERY == 0:
            bar.update(steps - bar.n)
        window.append(loss.detach())  # [issue 8]
        if on_step is not None and step_every and steps % step_every == 0:
            _check_finite(window, steps, pos.epoch)
            on_step(EpochPosition(pos.epoch, steps, total, samples))
        elif len(window) >= CHECK_EVERY:
            _check_finite(window, steps, pos.epoch)
    _check_finite(window, steps, pos.epoch)  # [issue 8]
    check_weights(module, EpochPosition(pos.epoch, steps))
    bar.update(steps - bar.n)
    bar.close()
    seconds = time.perf_counter() - start
    return EpochStats(float(total) / max(samples, 1), samples, seconds)


def _check_finite(window: list[torch.Tensor], steps: int, epoch: int) -> None:
    """[issue 8] Raise :class:`NumericalError` naming the first step whose loss was NaN/inf."""
    if not window:
        return
    losses = torch.stack(window)
    window.clear()
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        step = steps - len(losses) + first + 1
        raise NumericalError(
            f"training loss became {float(losses[first])} at epoch {epoch}, step {step}; stopped "
            "(lower --lr, or check the data for extreme values)",
            epoch=epoch,
            step=step,
        )


def check_weights(module: nn.Module, pos: EpochPosition) -> None:
    """[issue 8] Raise :class:`NumericalError` if any parameter or buffer of ``module`` is NaN/inf."""
    tensors = [t for t in module.state_dict().values() if t.is_floating_point() and t.numel()]
    # a float64 sum is NaN/inf iff some element is (finite float32 values cannot overflow it),
    # and needs no tensor-sized temporary (a big embedding table stays a single pass)
    if tensors and not bool(torch.isfinite(torch.stack([t.sum(dtype=torch.float64) for t in tensors])).all()):
        raise NumericalError(
            f"model weights became NaN/inf by epoch {pos.epoch}, step {pos.step}; stopped "
            "(lower --lr, or check the data for extreme values)",
            epoch=pos.epoch,
            step=pos.step,
        )


@torch.inference_mode()
def predict_probs(module: nn.Module, split: Split, batch_size: int = 65536) -> np.ndarray:
    """Click probabilities for every row of ``split``, in order (eval mode, no autograd)."""
    was_training = module.training
    module.eval()
    out = [torch.sigmoid(module(*b.inputs)) for b in split.batches(batch_size)]
    module.train(was_training)
    return torch.cat(out).float().cpu().numpy() if out else np.zeros(0, dtype=np.float32)

"""The inner loops: one training epoch over shuffled tensor batches, and batched prediction.

Hot-loop rules: batches are views of the epoch's pre-shuffled tensors (one gather per epoch, on
the model's device), the loss is ``BCEWithLogits`` on logits, per-step losses stay tensors (no
``.item()`` or host sync per step), and the progress bar is advanced every few dozen steps.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from deepfm.data.batching import Split

PROGRESS_EVERY = 32


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
    step: Callable[..., torch.Tensor] | None = None,
) -> EpochStats:
    """One pass over ``split`` in a fresh random order (``generator``); returns the mean loss.

    The epoch's permutation gathers every tensor once (on the module's device), batches are
    views of that, and the per-step work is: forward, loss, ``zero_grad``, backward, step.
    ``step`` replaces the default ``forward + loss`` function (e.g. a compiled one).
    """
    start = time.perf_counter()
    module.train()
    device = _device_of(module)
    n = len(split)
    perm = torch.randperm(n, generator=generator)
    data = _to_device(split, device).take(perm.to(device, non_blocking=True))
    full, rest = divmod(n, batch_size)
    sizes = [batch_size] * full + ([rest] if rest >= 2 else [])  # BatchNorm cannot train on 1 row
    n_used = sum(sizes)
    if n_used < n:
        data = data.map(lambda t: t[:n_used])
    parts = [t.split(sizes) if t is not None else [None] * len(sizes) for t in _fields(data)]
    forward_loss = step or _forward_loss(module)
    losses: list[torch.Tensor] = []
    bar = tqdm(
        total=len(sizes),
        desc=desc,
        unit="batch",
        disable=not progress,
        leave=False,
        mininterval=0.5,
        dynamic_ncols=True,
    )
    for steps, (ids, bags, dense, label) in enumerate(zip(*parts), 1):
        loss = forward_loss(ids, bags, dense, label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        if steps % PROGRESS_EVERY == 0:
            bar.update(PROGRESS_EVERY)
    bar.update(len(sizes) % PROGRESS_EVERY)
    total = (
        (torch.stack(losses).double().cpu() * torch.tensor(sizes, dtype=torch.float64)).sum() if losses else 0
    )
    seconds = time.perf_counter() - start
    bar.close()
    return EpochStats(float(total) / max(n_used, 1), n_used, seconds)


def _forward_loss(module: nn.Module) -> Callable[..., torch.Tensor]:
    def forward_loss(ids, bags, dense, label):  # noqa: ANN001, ANN202
        return F.binary_cross_entropy_with_logits(module(ids, bags, dense), label)

    return forward_loss


def _fields(split: Split) -> tuple[torch.Tensor | None, ...]:
    return split.ids, split.bags, split.dense, split.label


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


_ON_DEVICE: dict[tuple[int, str], tuple[weakref.ref, Split]] = {}


def _to_device(split: Split, device: torch.device) -> Split:
    """``split`` on ``device``: itself when already there, else a copy made once and reused
    while ``split`` lives (pinned memory, non-blocking copies), so every epoch after the
    first gathers on the GPU with no host-to-device traffic."""
    if split.ids.device == device:
        return split
    key = (id(split), str(device))
    cached = _ON_DEVICE.get(key)
    if cached is not None and cached[0]() is split:
        return cached[1]
    for k in [k for k, (ref, _) in _ON_DEVICE.items() if ref() is None]:
        del _ON_DEVICE[k]
    pin = device.type == "cuda" and torch.cuda.is_available()
    moved = split.map(lambda t: (t.pin_memory() if pin else t).to(device, non_blocking=pin))
    _ON_DEVICE[key] = (weakref.ref(split), moved)
    return moved


@torch.inference_mode()
def predict_probs(module: nn.Module, split: Split, batch_size: int = 65536) -> np.ndarray:
    """Click probabilities for every row of ``split``, in order (eval mode, no autograd)."""
    was_training = module.training
    module.eval()
    device = _device_of(module)
    out = [torch.sigmoid(module(*b.inputs)) for b in _to_device(split, device).batches(batch_size)]
    module.train(was_training)
    return torch.cat(out).float().cpu().numpy() if out else np.zeros(0, dtype=np.float32)

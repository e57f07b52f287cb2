"""The inner loops: one training epoch over shuffled tensor batches, and batched prediction.

Hot-loop rules: batches are slices of pre-shuffled tensors, the loss is ``BCEWithLogits`` on
logits, the running loss stays a tensor (no ``.item()`` per step), and the progress bar is
advanced every few dozen steps, not every step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from deepfm.data.batching import Split
from deepfm.training.distributed import Shard

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
    shard: Shard | None = None,
) -> EpochStats:
    """One pass over ``split`` (or, with ``shard``, over this rank's slice of the epoch's permutation)."""
    module.train()
    # issue 7 (DDP): all ranks draw the same permutation; each visits its own disjoint slice
    order = shard.permutation(len(split), generator) if shard is not None else None
    loss_fn = nn.BCEWithLogitsLoss()
    total = torch.zeros((), dtype=torch.float64)
    samples = 0
    steps = 0
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
    for batch in split.batches(batch_size, generator=generator, shuffle=True, order=order):
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
            bar.update(PROGRESS_EVERY)
    bar.update(steps % PROGRESS_EVERY)
    bar.close()
    seconds = time.perf_counter() - start
    return EpochStats(float(total) / max(samples, 1), samples, seconds)


@torch.inference_mode()
def predict_probs(module: nn.Module, split: Split, batch_size: int = 65536) -> np.ndarray:
    """Click probabilities for every row of ``split``, in order (eval mode, no autograd)."""
    was_training = module.training
    module.eval()
    out = [torch.sigmoid(module(*b.inputs)) for b in split.batches(batch_size)]
    module.train(was_training)
    return torch.cat(out).float().cpu().numpy() if out else np.zeros(0, dtype=np.float32)

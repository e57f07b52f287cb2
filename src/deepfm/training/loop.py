"""The inner loop: one training epoch over shuffled tensor batches.

Hot-loop rules: batches are views of the epoch's pre-shuffled tensors (gathered on the model's
device in chunks of up to 64 MiB: one gather per epoch on MovieLens), the loss is ``BCEWithLogits``
on logits, per-step losses stay tensors (no ``.item()`` or host sync per step), and the progress bar
is advanced every few dozen steps.

Resumable training: ``start`` resumes an epoch after its first ``start.step`` batches (same
permutation, same running loss), ``on_step`` is called every ``step_every`` steps with the
position (to write ``state.pt``), and the losses are checked for NaN/inf every ``CHECK_EVERY``
steps and before every ``on_step`` call. Data-parallel training: with ``shard`` every rank draws
the same permutation of an in-memory split and visits its own disjoint slice of it (a streamed
split is already the rank's own share), and ``sync`` exchanges what DDP does not (the embedding
tables' gradients) between backward and the optimizer step.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from deepfm import masks
from deepfm.data.batching import Split
from deepfm.data.shards import StreamedRows
from deepfm.errors import ConfigError, NumericalError
from deepfm.evaluation.scoring import module_device, on_device
from deepfm.training.distributed import Shard

PROGRESS_EVERY = 32
CHECK_EVERY = 32  # steps between NaN/inf checks of the loss (one sync each)
GATHER_CHUNK_BYTES = 64 << 20  # an epoch's shuffled rows are gathered this much at a time

Inputs = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]


@dataclass
class EpochPosition:
    """Where an epoch stands: optimizer steps done and the running loss sum so far."""

    epoch: int
    step: int = 0
    loss_sum: torch.Tensor | None = None  # float64 sum of loss * batch rows
    samples: int = 0


@dataclass
class EpochStats:
    """An epoch's mean loss, samples and seconds; of which ``warmup_*`` with parameters frozen."""

    loss: float
    samples: int
    seconds: float
    warmup_samples: int = 0
    warmup_seconds: float = 0.0

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
    frozen: list[torch.Tensor] | None = None,
    sync: Callable[[], None] | None = None,
    frozen_steps: int | None = None,
) -> EpochStats:
    """One pass over ``split`` in a fresh random order drawn from ``generator``.

    Per step: ``zero_grad``, forward, loss, backward (or the fused step of ``deepfm.fast``, which
    does those three without autograd), optimizer step. Returns the mean loss.
    Parameters in ``frozen`` have their gradients dropped before the step in the epoch's first
    ``frozen_steps`` steps (``None``: all), so the optimizer leaves them (and their moments, and
    their weight decay) alone then; dropping them after ``backward`` rather than switching
    ``requires_grad`` also works under DDP. In one process the frozen parts are also cut out of
    the backward pass (:func:`skip_frozen_backward`). The steps are counted from the start of
    the epoch, so a run resumed mid-epoch thaws them at the same step.
    """
    t0 = time.perf_counter()
    module.train()
    pos = start or EpochPosition(0)
    # dropout masks keyed by (epoch seed, step): a resumed epoch draws the same ones (deepfm.masks);
    # data-parallel ranks each draw their own (as rows of one big batch would)
    mask_seed = int(torch.randint(0, 2**62, (), generator=generator))
    if shard is not None and shard.rank:
        mask_seed = hash((mask_seed, shard.rank)) & (2**62 - 1)
    device = module_device(module)
    with masks.epoch_stream(mask_seed, pos.step) as stream, contextlib.ExitStack() as cut:
        sizes, batches = _epoch_batches(split, batch_size, generator, shard, device)
        frozen = frozen or []
        thaw_after = len(sizes) if frozen_steps is None else min(frozen_steps, len(sizes))
        warm = bool(frozen) and pos.step < thaw_after  # the frozen parameters are still frozen
        if warm and shard is None:
            cut.enter_context(skip_frozen_backward(module, frozen))
        warmup_samples, warmup_seconds = (sum(sizes[pos.step : thaw_after]), 0.0) if warm else (0, 0.0)
        forward_loss = _forward_loss(module)
        # the speed layer's forward + loss + gradients without autograd, where it has one
        # (deepfm.fast.FastModel; a DDP-wrapped module has none: its reducer needs autograd)
        fused_step = getattr(module, "train_step", None)
        total = torch.zeros((), dtype=torch.float64)
        if pos.loss_sum is not None:
            total += pos.loss_sum.to(total)
        samples = pos.samples
        window: list[torch.Tensor] = []  # losses since the last flush (finiteness check + sum)
        bar = tqdm(
            total=len(sizes),
            desc=desc,
            unit="batch",
            disable=not progress,
            leave=False,
            mininterval=0.5,
            dynamic_ncols=True,
        )
        bar.update(pos.step)
        steps = pos.step
        for steps, (ids, bags, dense, label) in enumerate(
            itertools.islice(batches, pos.step, None), pos.step + 1
        ):
            if warm and steps > thaw_after:  # the warm-up ends: every part trains from here
                warm = False
                cut.close()
                warmup_seconds = _elapsed(t0, device)
            stream.at(steps - 1)
            optimizer.zero_grad(set_to_none=True)
            loss = fused_step(ids, bags, dense, label) if fused_step is not None else None
            if loss is None:
                loss = forward_loss(ids, bags, dense, label)
                loss.backward()
            if warm:
                for p in frozen:
                    p.grad = None
            if sync is not None:
                sync()
            optimizer.step()
            window.append(loss.detach())
            hook = on_step is not None and step_every and steps % step_every == 0
            # flush at absolute step numbers, so a resumed epoch sums its losses in the same groups
            if hook or steps % CHECK_EVERY == 0:
                total, samples = _flush(window, sizes, steps, pos.epoch, total, samples)
                if hook:
                    on_step(EpochPosition(pos.epoch, steps, total, samples))
            if steps % PROGRESS_EVERY == 0:
                bar.update(steps - bar.n)
        total, samples = _flush(window, sizes, steps, pos.epoch, total, samples)
    check_weights(module, EpochPosition(pos.epoch, steps))
    bar.update(steps - bar.n)
    bar.close()
    seconds = time.perf_counter() - t0
    if warm:  # frozen to the end
        warmup_seconds = seconds
    return EpochStats(float(total) / max(samples, 1), samples, seconds, warmup_samples, warmup_seconds)


def _elapsed(t0: float, device: torch.device) -> float:
    """Seconds since ``t0``, after the device's queued work (timing a part of an epoch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def epoch_steps(split: Split, batch_size: int, shard: Shard | None = None) -> int:
    """Optimizer steps in one epoch of :func:`train_epoch` (the same in every epoch)."""
    rows = len(split) if shard is None or not isinstance(split, Split) else shard.rows(len(split))
    return len(_batch_sizes(rows, batch_size))


def _batch_sizes(rows: int, batch_size: int) -> list[int]:
    """Batch sizes of an epoch of ``rows`` rows; a trailing batch of one row is dropped."""
    full, rest = divmod(rows, batch_size)
    return [batch_size] * full + ([rest] if rest >= 2 else [])


def _epoch_batches(
    split: Split, batch_size: int, generator: torch.Generator, shard: Shard | None, device: torch.device
) -> tuple[list[int], Iterator[Inputs]]:
    """Batch sizes and batches of one epoch, in a random order drawn from ``generator``.

    An in-memory split is gathered in permutation order (on ``device``, in chunks of
    :data:`GATHER_CHUNK_BYTES`) and cut into views;
    with ``shard`` (DDP) each rank takes its own slice of the same permutation. A split that is
    not in memory (streamed from disk, larger than RAM) shuffles blocks itself, batch by batch;
    with ``shard`` it must be the rank's own share (:class:`~deepfm.data.shards.StreamedRows`).
    A trailing batch of one row is dropped: BatchNorm cannot train on it.
    """
    if not isinstance(split, Split):
        if shard is not None and not isinstance(split, StreamedRows):
            raise ConfigError("data-parallel training streams each rank's own rows: PreparedData.for_rank")
        sizes = _batch_sizes(len(split), batch_size)
        batches = split.batches(batch_size, generator=generator, shuffle=True)
        return sizes, ((b.ids, b.bags, b.dense, b.label) for b in batches)
    if shard is not None:
        perm = shard.permutation(len(split), generator)
    else:
        perm = torch.randperm(len(split), generator=generator)
    sizes = _batch_sizes(len(perm), batch_size)
    data = on_device(split, device)
    row_bytes = sum(
        t[:1].numel() * t.element_size()
        for t in (data.ids, data.bags, data.dense, data.label)
        if t is not None
    )
    per_chunk = max(1, GATHER_CHUNK_BYTES // max(1, row_bytes * batch_size))  # batches per gather
    return sizes, _gathered(data, perm.to(device, non_blocking=True), sizes, per_chunk)


def _gathered(data: Split, perm: torch.Tensor, sizes: list[int], per_chunk: int) -> Iterator[Inputs]:
    """The batches of ``sizes`` rows of ``data`` in ``perm`` order, gathered ``per_chunk`` batches
    at a time: the same batches as one gather of the whole epoch, without a second copy of the
    split in memory (-250 MiB on a 1M x 39-field data set; MovieLens is one chunk)."""
    start = 0
    for first in range(0, len(sizes), per_chunk):
        chunk = sizes[first : first + per_chunk]
        end = start + sum(chunk)
        part = data.take(perm[start:end])
        start = end
        fields = (part.ids, part.bags, part.dense, part.label)
        yield from zip(*[t.split(chunk) if t is not None else [None] * len(chunk) for t in fields])


@contextlib.contextmanager
def skip_frozen_backward(module: nn.Module, frozen: list[torch.Tensor]) -> Iterator[None]:
    """Within: every submodule of ``module`` whose parameters are all in ``frozen`` (e.g. DeepFM's
    MLP in its FM warm-up) runs on detached inputs with parameters that need no gradient, so
    autograd computes no backward through it at all; its forward (outputs, BatchNorm statistics,
    dropout masks) is unchanged.

    What it changes: the gradient that would flow through the frozen part into the parts that
    train. For DeepFM's warm-up that gradient is exactly zero (the MLP's output layer starts at
    zero and is frozen), so the updates are the same, at a third of the step's matrix products
    on a wide MLP. Not used under DDP, whose reducer expects every parameter's gradient.
    """
    ids = {id(p) for p in frozen}
    chosen: list[str] = []
    for name, sub in module.named_modules():
        params = list(sub.parameters())
        inside = any(name.startswith(c + ".") for c in chosen)
        if params and not inside and name and all(id(p) in ids for p in params):
            chosen.append(name)
    subs = [module.get_submodule(name) for name in chosen]
    hooks = [
        sub.register_forward_pre_hook(
            lambda _, args: tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        )
        for sub in subs
    ]
    params = [p for sub in subs for p in sub.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for p in params:
            p.requires_grad_(True)


def _flush(
    window: list[torch.Tensor], sizes: list[int], steps: int, epoch: int, total: torch.Tensor, samples: int
) -> tuple[torch.Tensor, int]:
    """Check the window's losses are finite and add them, weighted by batch rows, to the sum."""
    if not window:
        return total, samples
    losses = torch.stack(window).double().cpu()
    first = steps - len(window)
    window.clear()
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        step = first + bad + 1
        raise NumericalError(
            f"training loss became {float(losses[bad])} at epoch {epoch}, step {step}; stopped "
            "(lower --lr, or check the data for extreme values)",
            epoch=epoch,
            step=step,
        )
    rows = sizes[first:steps]
    total = total + (losses * torch.tensor(rows, dtype=torch.float64)).sum()
    return total, samples + sum(rows)


def check_weights(module: nn.Module, pos: EpochPosition) -> None:
    """Raise :class:`NumericalError` if any parameter or buffer of ``module`` is NaN/inf."""
    tensors = [t for t in module.state_dict().values() if t.is_floating_point() and t.numel()]
    # min and max are NaN if any element is (aminmax propagates NaN) and +-inf if one is; one pass
    # with no tensor-sized temporary (a float64 sum casts the whole tensor first: 66 vs 7 ms on
    # the Criteo-like table at 1 thread, once per epoch)
    bounds = [torch.stack(torch.aminmax(t)).double() for t in tensors]
    if bounds and not bool(torch.isfinite(torch.cat(bounds)).all()):
        raise NumericalError(
            f"model weights became NaN/inf by epoch {pos.epoch}, step {pos.step}; stopped "
            "(lower --lr, or check the data for extreme values)",
            epoch=pos.epoch,
            step=pos.step,
        )


def _forward_loss(module: nn.Module) -> Callable[..., torch.Tensor]:
    def forward_loss(ids, bags, dense, label):  # noqa: ANN001, ANN202
        return F.binary_cross_entropy_with_logits(module(ids, bags, dense), label)

    return forward_loss

"""Data-parallel training across processes with ``torch.distributed`` and DDP (launched by torchrun).

This module owns everything that differs between one process and many, behind one object,
:class:`DistContext`, which is a no-op when the world size is 1:

- :func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group: gloo for CPU tensors, plus NCCL
  for CUDA tensors when the run asks for ``--device cuda`` (backend ``"cpu:gloo,cuda:nccl"``, so
  CPU-side gathers keep working on GPU runs). Each rank's default CUDA device is its local rank.
- :class:`Shard`: for a training split in memory, every rank draws the *same* epoch permutation
  from the same seeded generator and keeps the strided slice ``perm[rank::world]`` (after dropping
  the last ``n % world`` rows so all ranks run the same number of steps). The union of the ranks'
  k-th batches is then exactly the k-th batch of a single process with batch ``batch_size * world``
  and the same seed. A streamed (larger than memory) or sharded split is instead read as each
  rank's own share from disk (:meth:`deepfm.data.prepared.PreparedData.for_rank`).
- :meth:`DistContext.wrap` puts the module's dense layers in
  :class:`~torch.nn.parallel.DistributedDataParallel` (which broadcasts rank 0's weights at
  construction and averages their gradients every step) and keeps the embedding tables out of it:
  rank 0's tables are broadcast once, and after every backward pass :attr:`DistContext.sync`
  exchanges their gradients as a dense all-reduce or as the touched rows only
  (:mod:`deepfm.training.embedding_sync`, ``--embedding-sync``). :attr:`DistContext.traffic`
  counts the bytes of every collective call of the training steps.
- :meth:`DistContext.predict` scores a split in contiguous per-rank chunks and all-gathers them in
  row order, so AUC is computed over the whole split, equal to a one-process evaluation.
- :meth:`DistContext.sync_buffers` averages BatchNorm running statistics across ranks (DDP runs
  with ``broadcast_buffers=False``: BatchNorm normalises each rank's own batch, as plain BN does,
  and the running statistics used at evaluation time are made identical once per epoch).
- :meth:`DistContext.main_first` (rank 0 runs a block first, e.g. data preparation or a download,
  then the others) and :attr:`DistContext.is_main` (only rank 0 writes files and prints).
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from deepfm.errors import ConfigError, DeepFMError
from deepfm.training.embedding_sync import (
    TableSync,
    Traffic,
    choose,
    counting_allreduce,
    ignore_in_ddp,
    tables_of,
    touched_rows,
)

# Debug hook used by the tests: when set to a folder, every rank saves its own final parameters
# and buffers there as ``rank{R}.pt`` so identical weights across ranks can be checked.
DUMP_ENV = "DEEPFM_DIST_DUMP_DIR"


def env_world_size() -> int:
    """World size announced by the launcher (torchrun sets ``WORLD_SIZE``); 1 without one."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a process started without one (it owns files and trackers)."""
    return os.environ.get("RANK", "0") == "0"


@dataclass(frozen=True)
class Shard:
    """This rank's disjoint share of every epoch's permutation."""

    rank: int = 0
    world: int = 1

    def rows(self, n: int) -> int:
        """Rows per rank and epoch: ``n // world`` (the last ``n % world`` of a permutation are left out)."""
        return n // self.world

    def permutation(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw the epoch's permutation of ``n`` rows (same on every rank) and keep this rank's slice."""
        perm = torch.randperm(n, generator=generator)
        if self.world == 1:
            return perm
        return perm[: self.rows(n) * self.world][self.rank :: self.world]

    def chunk(self, n: int) -> tuple[int, int]:
        """Contiguous ``[start, stop)`` of ``n`` rows scored by this rank at evaluation time."""
        bounds = chunk_bounds(n, self.world)
        return int(bounds[self.rank]), int(bounds[self.rank + 1])


def chunk_bounds(n: int, world: int) -> np.ndarray:
    """Boundaries of ``world`` contiguous chunks of ``n`` rows, sizes differing by at most one."""
    return np.array([0, *np.cumsum([len(c) for c in np.array_split(np.arange(n), world)])])


@dataclass
class DistContext:
    """Rank, world size and the collective helpers of one training process (world 1: all no-ops)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    _dump_dir: str | None = field(default=None, repr=False)
    traffic: Traffic = field(default_factory=Traffic, repr=False)  # bytes of the steps' collectives
    sync: TableSync | None = field(default=None, repr=False)  # after backward: the tables' gradients

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world_size)

    def describe(self, batch_size: int) -> dict[str, Any]:
        """What ``metrics.json`` records about the run's parallelism (with several ranks: how the
        tables were synchronised and the mean bytes per step and rank handed to collectives)."""
        out: dict[str, Any] = {
            "world_size": self.world_size,
            "backend": self.backend,
            "batch_size_per_rank": batch_size,
            "global_batch_size": batch_size * self.world_size,
        }
        if self.enabled:
            out["embedding_sync"] = self.sync.mode if self.sync is not None else None
            out["bytes_per_step"] = self.traffic.per_step()
        return out

    # -- model -----------------------------------------------------------------------------
    def embedding_sync(
        self, requested: str, module: nn.Module, split: Any, batch_size: int, seed: int
    ) -> str:
        """``--embedding-sync`` resolved, the same on every rank: ``auto`` measures the distinct
        rows a batch of ``split`` looks up (the most of any rank) and compares bytes
        (:func:`deepfm.training.embedding_sync.choose`)."""
        if not self.enabled:
            return requested  # one process: nothing to synchronise
        tables = tables_of(module)
        touched = 0
        if requested == "auto" and tables:
            touched = int(self.all_max(float(touched_rows(split, batch_size, seed))))
        return choose(requested, tables, touched, self.world_size)

    def wrap(
        self,
        module: nn.Module,
        seed: int | None = None,
        embedding_sync: str = "dense",
        sparse_update: bool = False,
    ) -> nn.Module:
        """``module`` in DDP when there is more than one rank (weights broadcast from rank 0),
        its embedding tables kept out and synchronised by :attr:`sync` (``embedding_sync``:
        ``dense`` or ``rows``; ``sparse_update``: the optimizer takes row-sparse table gradients).

        With ``seed``, each rank then reseeds torch's global RNG with its own stream so dropout
        masks differ between ranks (as they differ between rows of one big batch).
        """
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        tables = tables_of(module)
        dense_left = ignore_in_ddp(module, tables) if tables else True
        for table in tables:  # DDP broadcasts what it manages; the tables start as rank 0's too
            dist.broadcast(table.weight.detach(), 0)
        if tables:
            self.sync = TableSync(tables, embedding_sync, self.world_size, sparse_update, self.traffic)
        wrapped = module
        if dense_left:
            # BatchNorm running stats are not broadcast before every forward (a collective per
            # step); sync_buffers averages them once per epoch. Newer torch renames the option.
            params = inspect.signature(DistributedDataParallel.__init__).parameters
            no_sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
            wrapped = DistributedDataParallel(
                module, device_ids=[device] if device.type == "cuda" else None, **{no_sync: False}
            )
            wrapped.register_comm_hook(self.traffic, counting_allreduce)
        if seed is not None:
            torch.manual_seed(seed * 1_000_003 + 7919 * (self.rank + 1))
        return wrapped

    @staticmethod
    def unwrap(module: nn.Module) -> nn.Module:
        """The plain module inside a DDP wrapper (for evaluation and checkpoints)."""
        return getattr(module, "module", module)

    @torch.no_grad()
    def sync_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running mean/var) so every rank holds the same."""
        if not self.enabled:
            return
        for buf in self.unwrap(module).buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(self.world_size)

    # -- collectives -------------------------------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (data preparation, a download); the others wait, then run it."""
        if self.enabled and not self.is_main:
            dist.barrier()
        try:
            yield
        finally:
            if self.enabled and self.is_main:
                dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64), e.g. loss totals and sample counts."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def reduce_stats(self, stats: Any) -> Any:
        """An epoch's ``EpochStats`` over all ranks: mean loss, total samples, slowest rank's time."""
        if not self.enabled:
            return stats
        total, samples, warmup = self.all_sum(
            [stats.loss * stats.samples, stats.samples, stats.warmup_samples]
        )
        return dataclasses.replace(
            stats,
            loss=total / max(samples, 1),
            samples=int(samples),
            seconds=self.all_max(stats.seconds),
            warmup_samples=int(warmup),
            warmup_seconds=self.all_max(stats.warmup_seconds),
        )

    def all_max(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (a CPU tensor), stacked in rank order."""
        if not self.enabled:
            return tensor.unsqueeze(0)
        gathered = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.stack(gathered)

    def check_same(self, what: str, values: list[float]) -> None:
        """Raise on every rank when ``values`` differ between ranks (e.g. data sizes)."""
        if not self.enabled:
            return
        mine = torch.tensor(values, dtype=torch.float64)
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise DeepFMError(
                f"ranks disagree on {what}: {[g.tolist() for g in gathered]}; every rank must read "
                "the same data with the same options"
            )

    def check_same_text(self, what: str, text: str) -> None:
        """Raise on every rank when ``text`` (e.g. a fingerprint of the data) differs between ranks."""
        if not self.enabled:
            return
        digest = hashlib.sha256(text.encode()).digest()
        values = [float(int.from_bytes(digest[i : i + 4], "little")) for i in range(0, 32, 4)]
        mine = torch.tensor(values, dtype=torch.float64)
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine)
        differ = [r for r, g in enumerate(gathered) if not torch.equal(g, gathered[0])]
        if differ:
            raise DeepFMError(
                f"ranks disagree on {what}: rank {differ[0]} has other data than rank 0; every rank "
                "must read the same prepared data (the same --prepared folder, or identical copies)"
            )

    def gather_rows(self, part: np.ndarray, n: int) -> np.ndarray:
        """All-gather per-rank contiguous chunks (as from :meth:`Shard.chunk`) into ``n`` rows in order."""
        if not self.enabled:
            return part
        bounds = chunk_bounds(n, self.world_size)
        size = int(np.diff(bounds).max())
        mine = torch.zeros(size, dtype=torch.float64)
        mine[: len(part)] = torch.from_numpy(np.asarray(part, dtype=np.float64))
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine)
        out = np.concatenate([g[: b - a].numpy() for g, a, b in zip(gathered, bounds[:-1], bounds[1:])])
        return out.astype(part.dtype, copy=False)

    def predict(self, predict: Callable[[Any], np.ndarray], split: Any) -> np.ndarray:
        """``predict(split)`` over the whole split: each rank scores its chunk, chunks gathered in order.

        ``split`` is a :class:`~deepfm.data.batching.Split` (or anything sliceable by rows).
        """
        if not self.enabled:
            return predict(split)
        start, stop = self.shard.chunk(len(split))
        rows = split.map(lambda t: t[start:stop]) if hasattr(split, "map") else split[start:stop]
        part = predict(rows)
        return self.gather_rows(part, len(split))

    # -- debugging and shutdown ----------------------------------------------------------------
    def dump_state(self, module: nn.Module, **extra: Any) -> None:
        """Save this rank's parameters and buffers when ``$DEEPFM_DIST_DUMP_DIR`` is set (tests)."""
        if not self._dump_dir:
            return
        os.makedirs(self._dump_dir, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in self.unwrap(module).state_dict().items()}
        torch.save({"state_dict": state, **extra}, os.path.join(self._dump_dir, f"rank{self.rank}.pt"))


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def init_distributed(device: str = "cpu", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun's environment; world size 1 returns a no-op context.

    ``device`` is the run's ``--device``: ``cuda`` adds NCCL for CUDA tensors and makes
    ``cuda:LOCAL_RANK`` this process's default CUDA device (so ``.to("cuda")`` lands on it).
    """
    dump = os.environ.get(DUMP_ENV) or None
    world = env_world_size()
    if world <= 1:
        return DistContext(_dump_dir=dump)
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda")
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s): "
                "use --nproc-per-node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
    if not dist.is_initialized():  # joined once per process; later train() calls reuse the group
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        atexit.register(_destroy)
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        backend=str(dist.get_backend()),
        _dump_dir=dump,
    )

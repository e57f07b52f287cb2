"""Embedding tables kept identical across data-parallel ranks, outside DDP's dense all-reduce.

DDP all-reduces every gradient it manages as a dense tensor: for an embedding table that is the
whole table every step (68 MB for 1M rows x 17 floats), although a batch touches a small share of
its rows. The tables are therefore left out of DDP (:func:`ignore_in_ddp`; the dense layers stay
in it) and, after every backward pass, :class:`TableSync` exchanges their gradients in one of two
ways, chosen by ``--embedding-sync``:

- ``dense``: one ``all_reduce`` of the whole table's gradient (``rows x width x 4`` bytes a rank);
- ``rows``: each rank coalesces its gradient to (row id, gradient row) pairs; the counts are
  all-gathered (8 bytes a rank), then the pairs, padded to the largest count, in one
  ``all_gather`` (``world x max rows x (width x 4 + 8)`` bytes a rank). Every rank sums the pairs
  of all ranks by row in the same order and divides by the world size: the mean gradient DDP
  would have computed, so every rank applies the same update, which equals one process's on
  the global batch. ``all_gather`` works on gloo and NCCL alike (NCCL has no sparse all-reduce).

The optimizer then gets the gradient it expects: dense for ``fused`` / ``adam`` (untouched rows
zero, as one process has them), row-sparse for ``lazy`` (the rows touched on any rank).

``auto`` (:func:`choose`) compares the bytes of both from the table size and the distinct rows
a batch of this run's data looks up (measured on a sample, :func:`touched_rows`): ``rows`` when
its gathered bytes are at most :data:`ROWS_SHARE` of the table's. Every collective's bytes are
counted in a :class:`Traffic` (DDP's through a counting communication hook), which
``metrics.json`` reports per step.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

ROWS_SHARE = 0.5  # auto: rows when the gathered pairs are at most this share of the dense bytes
ID_BYTES = 8  # a row id in the gathered pairs (int64)


class Traffic:
    """Bytes handed to collective calls by the training steps, per kind: for an ``all_reduce``
    the tensor reduced, for an ``all_gather`` the tensor gathered (what each rank receives)."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = defaultdict(int)
        self.steps = 0

    def add(self, kind: str, tensor: torch.Tensor) -> None:
        self.bytes[kind] += tensor.numel() * tensor.element_size()

    def per_step(self) -> dict[str, float]:
        """Mean bytes per training step of each kind, and their ``total``."""
        steps = max(self.steps, 1)
        out = {kind: value / steps for kind, value in sorted(self.bytes.items())}
        return {**out, "total": sum(self.bytes.values()) / steps}


def tables_of(module: nn.Module) -> list[nn.Embedding]:
    """The embedding tables of ``module`` (each once)."""
    found: dict[int, nn.Embedding] = {}
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            found.setdefault(id(m.weight), m)
    return list(found.values())


def ignore_in_ddp(module: nn.Module, tables: list[nn.Embedding]) -> bool:
    """Tell DDP to leave ``tables`` out of its gradient buckets and its start broadcast (call
    before wrapping ``module``); whether any parameter with a gradient is left for DDP."""
    from torch.nn.parallel import DistributedDataParallel

    ids = {id(t.weight) for t in tables}
    names = [name for name, p in module.named_parameters() if id(p) in ids]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
    return any(p.requires_grad and id(p) not in ids for p in module.parameters())


def counting_allreduce(traffic, bucket):  # noqa: ANN001, ANN201 - DDP checks real annotations only
    """DDP communication hook: DDP's own mean all-reduce of a bucket, its bytes counted."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    traffic.add("dense_parameters", bucket.buffer())
    return allreduce_hook(None, bucket)


@torch.no_grad()
def touched_rows(split: Any, batch_size: int, seed: int) -> int:
    """Distinct table rows one training batch of ``split`` looks up (a random batch; streamed
    splits: the first batch of a shuffled epoch)."""
    if hasattr(split, "take"):
        index = torch.randint(
            0, len(split), (min(batch_size, len(split)),), generator=torch.Generator().manual_seed(seed)
        )
        batch = split.take(index)
    else:
        batch = next(iter(split.batches(batch_size, torch.Generator().manual_seed(seed), shuffle=True)))
    ids = [batch.ids.reshape(-1)]
    if batch.bags is not None:
        ids.append(batch.bags.reshape(-1))
    return int(torch.cat(ids).unique().numel())


def dense_bytes(tables: list[nn.Embedding]) -> int:
    return sum(t.weight.numel() * t.weight.element_size() for t in tables)


def rows_bytes(tables: list[nn.Embedding], touched: int, world: int) -> int:
    """Bytes of one step's gathered (id, row) pairs when every rank touches ``touched`` rows."""
    return sum(
        world * min(touched, t.num_embeddings) * (t.weight[0].numel() * t.weight.element_size() + ID_BYTES)
        for t in tables
    )


def choose(requested: str, tables: list[nn.Embedding], touched: int, world: int) -> str:
    """``--embedding-sync``: ``dense`` or ``rows`` as given; ``auto``: ``rows`` when its bytes are
    at most :data:`ROWS_SHARE` of ``dense``'s (large tables, small batches, few ranks)."""
    if requested != "auto":
        return requested
    return "rows" if rows_bytes(tables, touched, world) <= ROWS_SHARE * dense_bytes(tables) else "dense"


class TableSync:
    """After backward, every rank's table gradients replaced by their mean over ranks (see the
    module docstring); ``sparse_update``: as row-sparse gradients (row-wise optimizers)."""

    def __init__(
        self, tables: list[nn.Embedding], mode: str, world: int, sparse_update: bool, traffic: Traffic
    ) -> None:
        if mode not in ("dense", "rows"):
            raise ValueError(f"embedding sync must be dense or rows, got {mode!r}")
        self.tables, self.mode, self.world = tables, mode, world
        self.sparse_update, self.traffic = sparse_update, traffic
        if mode == "rows":
            for table in tables:  # the backward pass emits (row, gradient) pairs, not a dense table
                table.sparse = True

    @torch.no_grad()
    def __call__(self) -> None:
        for table in self.tables:
            weight = table.weight
            if self.mode == "rows":
                ids, values = self._rows(weight)
            else:
                ids, values = self._dense(weight)
            if ids is None:
                weight.grad = values
            elif self.sparse_update:
                weight.grad = torch.sparse_coo_tensor(
                    ids.unsqueeze(0), values, weight.shape, is_coalesced=True, check_invariants=False
                )
            else:
                weight.grad = values.new_zeros(weight.shape).index_copy_(0, ids, values)
        self.traffic.steps += 1

    def _dense(self, weight: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        grad = weight.grad
        if grad is None:
            grad = torch.zeros_like(weight)
        dense = grad.to_dense() if grad.is_sparse else grad.clone()
        dense.div_(self.world)
        dist.all_reduce(dense)
        self.traffic.add("embedding_dense", dense)
        if not self.sparse_update:
            return None, dense
        ids = dense.ne(0).any(1).nonzero().squeeze(1)  # the rows some rank touched
        return ids, dense.index_select(0, ids)

    def _rows(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, values = local_rows(weight)
        width = values.shape[1] * values.element_size()
        count = torch.tensor([len(ids)], dtype=torch.int64, device=weight.device)
        counts = torch.empty(self.world, dtype=torch.int64, device=weight.device)
        _all_gather(counts, count)
        self.traffic.add("embedding_rows", counts)
        sizes = counts.tolist()
        most = max(sizes)
        packed = torch.zeros(most, width + ID_BYTES, dtype=torch.uint8, device=weight.device)
        packed[: len(ids), :width] = values.contiguous().view(torch.uint8).view(len(ids), width)
        packed[: len(ids), width:] = ids.contiguous().view(torch.uint8).view(len(ids), ID_BYTES)
        gathered = torch.empty(self.world * most, width + ID_BYTES, dtype=torch.uint8, device=weight.device)
        _all_gather(gathered, packed)
        self.traffic.add("embedding_rows", gathered)
        keep = torch.cat(
            [torch.arange(r * most, r * most + n, device=weight.device) for r, n in enumerate(sizes)]
        )
        pairs = gathered.index_select(0, keep)
        all_values = pairs[:, :width].contiguous().view(values.dtype).view(len(keep), weight.shape[1])
        all_ids = pairs[:, width:].contiguous().view(torch.int64).view(-1)
        merged = torch.sparse_coo_tensor(
            all_ids.unsqueeze(0), all_values, weight.shape, check_invariants=False
        ).coalesce()
        return merged.indices()[0], merged.values().div_(self.world)


def local_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's gradient of a table as (distinct row ids, gradient rows)."""
    grad = weight.grad
    if grad is None:
        return weight.new_zeros(0, dtype=torch.int64), weight.new_zeros(0, weight.shape[1])
    if grad.is_sparse:
        grad = grad.coalesce()
        return grad.indices()[0], grad.values()
    ids = grad.ne(0).any(1).nonzero().squeeze(1)  # a dense gradient: its non-zero rows
    return ids, grad.index_select(0, ids)


def _all_gather(output: torch.Tensor, tensor: torch.Tensor) -> None:
    """``all_gather`` into one tensor (rank ``r``'s ``tensor`` at ``output[r * len : (r + 1) * len]``)."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, tensor)

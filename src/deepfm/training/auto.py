"""Automatic settings from the work of one training step: ``--threads 0``, ``--precision auto``,
``--optimizer auto``.

A step's work is read off the built model, with no knowledge of its class: every parameter that
is not an embedding table is a dense weight used once per row (Linear and MLP layers), so a step
costs ``6 * batch * dense_weights`` floating-point operations (forward 2, backward 4); embedding
tables cost lookups, not arithmetic. The two workloads of ``benchmarks/throughput.py``:

- MovieLens (2 fields, MLP 16-16, batch 1024): ~1.1k dense weights, **~7 MFLOP a step**: ~30
  kernels on tensors below PyTorch's parallel grain, dominated by per-op overhead; a second thread
  or bf16 casts only add work.
- Criteo-like (39 fields, MLP 400-400-400, batch 4096): ~570k dense weights, **~14 GFLOP a step**:
  GEMM-bound; GEMMs split across cores and run ~5x faster in bfloat16 on CPUs with AVX512-BF16/AMX.

:data:`HEAVY_STEP_FLOPS` separates the two by three orders of magnitude each way. The optimizer
rule compares the table with the rows a batch can touch (see :func:`auto_optimizer`). Measured
numbers: ``benchmarks/README.md`` ("Criteo-like workload").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from deepfm.hardware import bf16_supported

if TYPE_CHECKING:
    from deepfm.config import TrainConfig
    from deepfm.data.features import FeatureMap

HEAVY_STEP_FLOPS = 1e9  # a step above this is GEMM-bound: all cores, bf16 where supported
# full-table (fused) Adam touches every row every step; row-wise (lazy) Adam only the rows of the
# batch, at a higher cost per row (sparse gradient, coalesce, gather/scatter of the moments)
LAZY_TABLE_ROWS_PER_LOOKUP = 5
EVAL_ACTIVATION_BYTES = 64 << 20  # evaluation batches hold at most this much activation memory


def embedding_tables(module: nn.Module) -> list[torch.Tensor]:
    """The weights of every ``nn.Embedding`` in ``module`` (looked up, not multiplied)."""
    return [m.weight for m in module.modules() if isinstance(m, nn.Embedding)]


def step_flops(module: nn.Module, batch_size: int) -> float:
    """Floating-point operations of one training step (forward + backward) on ``batch_size`` rows."""
    tables = {id(t) for t in embedding_tables(module)}
    dense = sum(p.numel() for p in module.parameters() if id(p) not in tables)
    return 6.0 * batch_size * dense


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def auto_threads(module: nn.Module, batch_size: int) -> int:
    """``--threads 0``: for GEMM-bound steps every core this process may use, else 1 (for a step
    of tiny kernels a second thread only adds OpenMP barriers).

    The machine's load is not consulted: the 1-minute load average still counts this process's
    own preprocessing (multi-threaded) a moment earlier, and picked 1 thread on an otherwise idle
    2-core machine, 25k instead of 33k samples/s on the Criteo-like workload. On a machine shared
    with other jobs, pass ``--threads`` (a thread per busy core makes OpenMP's barriers wait for
    descheduled threads: measured up to 40x slower with 2 threads on 2 busy cores).
    """
    return available_cores() if step_flops(module, batch_size) >= HEAVY_STEP_FLOPS else 1


def auto_precision(module: nn.Module, batch_size: int, device: str | torch.device) -> str:
    """``--precision auto``: ``bf16`` for GEMM-bound steps on hardware with native bfloat16,
    ``fp32`` otherwise (for a step of tiny kernels autocast's casts cost more than they save)."""
    heavy = step_flops(module, batch_size) >= HEAVY_STEP_FLOPS
    return "bf16" if heavy and bf16_supported(device) else "fp32"


def auto_optimizer(module: nn.Module, batch_size: int, lookups_per_row: int) -> str:
    """``--optimizer auto``: ``lazy`` (row-wise Adam on the tables) when the tables hold more
    than :data:`LAZY_TABLE_ROWS_PER_LOOKUP` rows per id a batch looks up, else ``fused``.

    A batch touches at most ``batch_size * lookups_per_row`` rows; fused Adam's cost grows with
    the table, lazy Adam's with those lookups.
    """
    rows = sum(t.shape[0] for t in embedding_tables(module))
    lookups = max(1, batch_size * lookups_per_row)
    return "lazy" if rows > LAZY_TABLE_ROWS_PER_LOOKUP * lookups else "fused"


@dataclass(frozen=True)
class Choices:
    """The settings a run trains with, ``auto`` / ``0`` resolved."""

    threads: int
    precision: str
    optimizer: str


def lookups_per_row(feature_map: FeatureMap) -> int:
    """Table rows one data row looks up: one per categorical field, up to ``max_len`` per bag."""
    return len(feature_map.categorical) + sum(max(1, f.max_len) for f in feature_map.multi)


def eval_batch_rows(config: TrainConfig, feature_map: FeatureMap) -> int:
    """Rows per evaluation batch: ``--eval-batch-size``, cut so one batch's activations stay
    under :data:`EVAL_ACTIVATION_BYTES` (predictions do not depend on the batch size).

    Per row, evaluation holds the gathered table rows and the MLP input (``lookups x (1 + D)``
    floats, twice) and two tensors per hidden layer (linear output, normalised output). On the
    Criteo-like workload (39 fields, MLP 400-400-400) a 65,536-row batch held ~0.5 GB at once,
    the peak of the whole run; MovieLens batches stay at 65,536 rows.
    """
    floats = 2 * lookups_per_row(feature_map) * (1 + config.embed_dim) + 2 * sum(config.mlp) + 2
    fits = max(1024, EVAL_ACTIVATION_BYTES // (4 * floats))
    return min(config.eval_batch_size, fits)


def resolve(config: TrainConfig, module: nn.Module, feature_map: FeatureMap) -> Choices:
    """``config``'s threads, precision and optimizer with the automatic values filled in."""
    threads = config.threads or auto_threads(module, config.batch_size)
    precision = config.precision
    if precision == "auto":
        precision = auto_precision(module, config.batch_size, config.device)
    optimizer = config.optimizer
    if optimizer == "auto":
        optimizer = auto_optimizer(module, config.batch_size, lookups_per_row(feature_map))
    return Choices(threads, precision, optimizer)

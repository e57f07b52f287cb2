"""Shared layers, one idea each: the input part (embeddings) and the interaction / dense parts.

``SparseFeatures`` is the only place categorical embeddings live: one table whose column 0 is the
first-order (linear) weight and columns 1..D the field embedding, so a single gather serves the
linear term, the FM term and the MLP input. ``DenseFeatures`` gives each numeric field the same
``1 + D`` vector, scaled by its value. ``Features`` joins both: every model starts with it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class SparseFeatures(nn.Module):
    """Fused table ``[rows, 1 + embed_dim]``: returns first-order sums and field embeddings."""

    def __init__(self, num_rows: int, embed_dim: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.table = nn.Embedding(num_rows, 1 + embed_dim, padding_idx=0)
        with torch.no_grad():
            self.table.weight.normal_(0.0, init_std)
            self.table.weight[:, 0].zero_()
            self.table.weight[0].zero_()

    def forward(self, ids: torch.Tensor, bags: torch.Tensor | None = None) -> torch.Tensor:
        """``ids`` [B, F], ``bags`` [B, S, L] (0 = padding) -> rows [B, F+S, 1+D]."""
        rows = self.table(ids)  # [B, F, 1+D]
        if bags is not None:
            pooled = self.table(bags).sum(2)  # padding row is zero
            counts = (bags > 0).sum(2, keepdim=True).clamp_min(1)
            rows = torch.cat([rows, pooled / counts], dim=1)  # mean-pooled bag = one field
        return rows


class _TableFM(torch.autograd.Function):
    """Gather + first-order sum + FM 2-way term + MLP input, forward and backward in one node.

    For categorical ids only (no bags, no numeric fields): ``rows = table[ids]`` viewed as
    ``[B, F*W]`` (``W = 1 + D``) and ``s = sum_f rows_f`` ``[B, W]`` holds the first-order sum
    (column 0) and ``sum_f e_f`` (columns 1..D), so with ``m`` = 0 on column 0 and 1 elsewhere
    (the kernel stores ``-m`` tiled over the fields)

        out = s[:, 0] + 0.5 * (||s * m||^2 - ||rows * m||^2)        (first order + FM), and
        d out / d rows_f = (s with column 0 set to 1) - rows_f * m.

    Same math as ``Features`` + ``FactorizationMachine``; ~8 kernels each way instead of ~40,
    one autograd node, and the table gradient is built with one ``index_add_`` (dense) or
    handed over as a sparse row gradient (``nn.Embedding(sparse=True)``) for row-wise optimizers.
    """

    @staticmethod
    def forward(ctx, table, ids, padding_idx, sparse, consts):  # noqa: ANN001, ANN205
        neg_mask, col_mask = consts
        batch, fields = ids.shape
        width = table.shape[1]
        flat_ids = ids.reshape(-1)
        rows = table.index_select(0, flat_ids).view(batch, fields * width)
        # field sum: F - 1 adds beat a strided reduction or a tiny GEMM here
        s = rows[:, :width] + rows[:, width : 2 * width] if fields > 1 else rows.clone()
        for f in range(2, fields):
            s += rows[:, f * width : (f + 1) * width]
        out = torch.add(s[:, 0], (s * s) @ col_mask + (rows * rows) @ neg_mask, alpha=0.5)
        emb = rows.view(batch, fields, width)[:, :, 1:].reshape(batch, -1)  # [B, F*D], MLP input
        ctx.save_for_backward(rows, s, flat_ids)
        ctx.consts, ctx.padding_idx, ctx.sparse, ctx.num_rows = consts, padding_idx, sparse, table.shape[0]
        return out, emb

    @staticmethod
    def backward(ctx, grad_out, grad_emb):  # noqa: ANN001, ANN205
        rows, s, flat_ids = ctx.saved_tensors
        neg_mask, _ = ctx.consts
        width = s.shape[1]
        fields = rows.shape[1] // width
        s[:, 0] = 1.0  # s is ours (saved, not used elsewhere); column 0 carries the linear term
        grad_rows = rows * neg_mask  # -1 on embedding columns, 0 on column 0
        grad_rows.view(-1, fields, width).add_(s.unsqueeze(1)).mul_(grad_out.view(-1, 1, 1))
        grad_rows = grad_rows.view(-1, width)
        if grad_emb is not None:
            grad_rows[:, 1:] += grad_emb.reshape(grad_rows.shape[0], -1)
        if ctx.sparse:
            if ctx.padding_idx is not None:
                grad_rows = grad_rows.masked_fill((flat_ids == ctx.padding_idx).unsqueeze(1), 0.0)
            grad_table = torch.sparse_coo_tensor(
                flat_ids.unsqueeze(0), grad_rows, (ctx.num_rows, width), check_invariants=False
            )
        else:
            grad_table = grad_rows.new_zeros(ctx.num_rows, width).index_add_(0, flat_ids, grad_rows)
            if ctx.padding_idx is not None:
                grad_table[ctx.padding_idx] = 0.0
        return grad_table, None, None, None, None


def _table_fm_consts(fields: int, width: int, device: torch.device, dtype: torch.dtype) -> tuple:
    """Constants of :class:`_TableFM` for ``fields`` fields of ``width = 1 + D`` columns."""
    col_mask = torch.ones(width, dtype=dtype, device=device)
    col_mask[0] = 0
    return -col_mask.repeat(fields), col_mask


class DenseFeatures(nn.Module):
    """Numeric fields: each owns a ``1 + D`` vector scaled by its value -> rows [B, K, 1+D]."""

    def __init__(self, num_dense: int, embed_dim: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_dense, 1 + embed_dim) * init_std)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return dense.unsqueeze(-1) * self.weight


class Features(nn.Module):
    """The input layer of every model: ``(ids, bags, dense)`` -> first-order sum [B], embeddings."""

    def __init__(self, num_rows: int, embed_dim: int, num_dense: int = 0) -> None:
        super().__init__()
        self.sparse = SparseFeatures(num_rows, embed_dim)
        self.dense = DenseFeatures(num_dense, embed_dim) if num_dense else None
        self._consts: dict[tuple, tuple] = {}  # constants of the fused kernel, per shape/device

    def forward(
        self, ids: torch.Tensor, bags: torch.Tensor | None = None, dense: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.sparse(ids, bags)
        if dense is not None and self.dense is not None:
            rows = torch.cat([rows, self.dense(dense)], dim=1)
        return rows[..., 0].sum(1), rows[..., 1:]

    def first_order_fm(
        self,
        ids: torch.Tensor,
        bags: torch.Tensor | None,
        dense: torch.Tensor | None,
        fm: FactorizationMachine,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(first-order sum + fm(emb) [B], emb [B, F, D])``: what FM and DeepFM need.

        Training on categorical ids alone takes the fused :class:`_TableFM` kernel; bags, numeric
        fields, eval mode and no-grad take the general path (``forward`` then ``fm``, plain ops
        that export and trace). Both compute the same numbers.
        """
        table = self.sparse.table
        fused = self.training and torch.is_grad_enabled() and ids.dim() == 2
        if not fused or bags is not None or (dense is not None and self.dense is not None):
            linear, emb = self(ids, bags, dense)  # also eval / export: plain traceable ops
            return linear + fm(emb), emb
        weight = table.weight
        key = (ids.shape[1], weight.shape[1], weight.device, weight.dtype)
        consts = self._consts.get(key)
        if consts is None:
            consts = self._consts[key] = _table_fm_consts(
                ids.shape[1], weight.shape[1], weight.device, weight.dtype
            )
        out, emb = _TableFM.apply(weight, ids, table.padding_idx, table.sparse, consts)
        return out, emb.view(ids.shape[0], ids.shape[1], -1)


class FactorizationMachine(nn.Module):
    """FM 2-way term ``0.5 * sum_k((sum_f e_fk)^2 - sum_f e_fk^2)`` -> [B]."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        square_of_sum = emb.sum(1).square()
        sum_of_square = emb.square().sum(1)
        return 0.5 * (square_of_sum - sum_of_square).sum(1)


def keep_mask(shape: tuple[int, ...], p: float) -> torch.Tensor:
    """Dropout's scaled keep mask: float32 ``1 / (1 - p)`` with probability ``1 - p``, else 0.

    Drawn from the default torch generator (seeded by ``torch.manual_seed``), but cheaply:
    ``bernoulli_`` on CPU costs one generator call per element (~0.25 ms for 1024 x 16, the
    largest single cost of a training step here). For ``p = 0.5`` every random bit is a keep
    flag, so one 64-bit draw serves 64 elements; for other ``p`` each 64-bit draw gives four
    16-bit uniforms compared with ``p`` (``p`` is rounded to a multiple of 2**-16).
    """
    n = int(np.prod(shape))
    scale = np.float32(1.0 / (1.0 - p))
    if p == 0.5:
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 63) // 64,), dtype=torch.int64)
        keep = np.unpackbits(words.numpy().view(np.uint8), count=n).astype(np.float32)
    else:
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        uniform = words.numpy().view(np.int16)[:n]
        keep = (uniform >= round(p * 65536) - 32768).astype(np.float32)
    keep *= scale
    return torch.from_numpy(keep).view(shape)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with keep masks from :func:`keep_mask`: the same distribution, ~10x cheaper.

    Each call draws its mask from the default generator at that step, so a run resumed from a
    saved RNG state draws exactly the masks an uninterrupted run would. Other devices use
    ``nn.Dropout``, where ``bernoulli_`` is already fast.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        return x * keep_mask(tuple(x.shape), self.p).to(x.dtype)


class MLP(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout per hidden layer, then a linear output -> [B]."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], dropout: float, batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers.append(nn.Linear(in_dim, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(FastDropout(dropout))
            in_dim = width
        layers.append(nn.Linear(in_dim, 1))
        self.net = nn.Sequential(*layers)

    def zero_output_(self) -> MLP:
        """Zero the output layer's weights, so the MLP starts as a constant (its bias)."""
        with torch.no_grad():
            self.net[-1].weight.zero_()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class CrossNetV2(nn.Module):
    """DCN-V2 cross layers (Wang et al., 2021): ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` -> [B, d]."""

    def __init__(self, dim: int, num_layers: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x

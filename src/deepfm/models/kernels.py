"""Fused training kernels: the hot path of FM / DeepFM on categorical ids, forward and backward
written by hand, so a training step is one autograd node instead of ~30.

Why: a DeepFM step on MovieLens is ~60 tiny kernels on tensors of ~16k elements, so PyTorch's
per-operator and per-graph-node overhead, not arithmetic, sets the speed on CPU. These functions
run the same kernels the modules' plain paths run (``addmm``, ``native_batch_norm`` and its
backward, ...), fewer of them, with no graph in between; the tests compare both paths.

- ``table_fm_forward`` / ``table_fm_backward``: gather + first-order sum + FM 2-way term + MLP input
  from the fused ``[rows, 1 + D]`` table (see ``SparseFeatures``).
- ``mlp_forward`` / ``mlp_backward``: Linear -> BatchNorm -> ReLU -> Dropout layers on the views of
  one flat weight tensor (see ``MLP``), one flat gradient out.
- ``TableFMNode`` (FM), ``MLPNode`` (the MLP of any model) and ``DeepFMNode`` (both plus the bias:
  a whole DeepFM forward) are the autograd Functions built from them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from deepfm.models.layers import MLP

Saved = tuple[torch.Tensor, ...]


# --- gather + first order + FM ------------------------------------------------------------------
def table_fm_consts(fields: int, width: int, device: torch.device, dtype: torch.dtype) -> tuple:
    """``(-m tiled over the fields, m)`` with ``m`` = 0 on column 0 and 1 on the embedding columns."""
    col_mask = torch.ones(width, dtype=dtype, device=device)
    col_mask[0] = 0
    return -col_mask.repeat(fields), col_mask


def table_fm_forward(table: torch.Tensor, ids: torch.Tensor, consts: tuple) -> tuple[torch.Tensor, ...]:
    """``(out [B], emb [B, F*D], saved)`` for ``ids`` [B, F] (categorical ids only).

    ``rows = table[ids]`` viewed as ``[B, F*W]`` (``W = 1 + D``) and ``s = sum_f rows_f`` ``[B, W]``
    hold the first-order sum (column 0) and ``sum_f e_f`` (columns 1..D), so

        out = s[:, 0] + 0.5 * (||s * m||^2 - ||rows * m||^2)        (first order + FM)

    and ``emb`` (the embedding columns of every field) is the MLP input.
    """
    neg_mask, col_mask = consts
    batch, fields = ids.shape
    width = table.shape[1]
    flat_ids = ids.reshape(-1)
    rows = table.index_select(0, flat_ids).view(batch, fields * width)
    # field sum: F - 1 adds beat a strided reduction or a tiny GEMM here
    s = rows[:, :width] + rows[:, width : 2 * width] if fields > 1 else rows.clone()
    for f in range(2, fields):
        s += rows[:, f * width : (f + 1) * width]
    out = torch.addmv(s[:, 0], s * s, col_mask, alpha=0.5).addmv_(rows * rows, neg_mask, alpha=0.5)
    emb = rows.view(batch, fields, width)[:, :, 1:].reshape(batch, -1)
    return out, emb, (rows, s, flat_ids)


def table_fm_backward(
    saved: Saved,
    consts: tuple,
    grad_out: torch.Tensor,
    grad_emb: torch.Tensor | None,
    num_rows: int,
    padding_idx: int | None,
    sparse: bool,
) -> torch.Tensor:
    """Table gradient: ``d out / d rows_f = (s with column 0 set to 1) - rows_f * m``, times
    ``grad_out``, plus ``grad_emb`` on the embedding columns; one ``index_add_`` (dense) or a
    sparse row gradient (``nn.Embedding(sparse=True)``, for row-wise optimizers)."""
    rows, s, flat_ids = saved
    neg_mask, _ = consts
    width = s.shape[1]
    fields = rows.shape[1] // width
    s[:, 0] = 1.0  # s is ours (saved, not used elsewhere); column 0 carries the linear term
    # cat + contiguous in-place ops: broadcasting s over the field dim is ~4x slower on CPU
    grad_rows = torch.cat([s] * fields, 1).addcmul_(rows, neg_mask).mul_(grad_out.view(-1, 1))
    grad_rows = grad_rows.view(-1, width)
    if grad_emb is not None:
        grad_rows[:, 1:] += grad_emb.reshape(grad_rows.shape[0], -1)
    if sparse:
        if padding_idx is not None:
            grad_rows = grad_rows.masked_fill((flat_ids == padding_idx).unsqueeze(1), 0.0)
        return torch.sparse_coo_tensor(
            flat_ids.unsqueeze(0), grad_rows, (num_rows, width), check_invariants=False
        )
    grad_table = grad_rows.new_zeros(num_rows, width).index_add_(0, flat_ids, grad_rows)
    if padding_idx is not None:
        grad_table[padding_idx] = 0.0
    return grad_table


class TableFMNode(torch.autograd.Function):
    """``table_fm_forward`` / ``table_fm_backward`` as one autograd node: ``(out, emb)``."""

    @staticmethod
    def forward(ctx, table, ids, padding_idx, sparse, consts):  # noqa: ANN001, ANN205
        out, emb, saved = table_fm_forward(table, ids, consts)
        ctx.save_for_backward(*saved)
        ctx.consts, ctx.padding_idx, ctx.sparse, ctx.num_rows = consts, padding_idx, sparse, table.shape[0]
        return out, emb

    @staticmethod
    def backward(ctx, grad_out, grad_emb):  # noqa: ANN001, ANN205
        grad_table = table_fm_backward(
            ctx.saved_tensors, ctx.consts, grad_out, grad_emb, ctx.num_rows, ctx.padding_idx, ctx.sparse
        )
        return grad_table, None, None, None, None


# --- MLP -----------------------------------------------------------------------------------------
def mlp_forward(x: torch.Tensor, mlp: MLP, keeps: list) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(z [B], saved)``: per hidden layer ``addmm``, ``native_batch_norm`` (batch statistics;
    running statistics updated in place), ``relu_``, keep-mask ``mul_``; then the output layer."""
    params, means, variances = mlp.kernel_views()
    saved = []
    a = x
    for i in range(len(mlp.hidden)):
        w, b, gamma, beta = params[4 * i : 4 * i + 4]
        h = torch.addmm(b, a, w.t())
        y, mean, invstd = torch.native_batch_norm(
            h, gamma, beta, means[i], variances[i], True, mlp.momentum, mlp.eps
        )
        out = y.relu_()
        if keeps[i] is not None:
            out.mul_(keeps[i])
        saved += [a, h, mean, invstd]
        a = out
    z = torch.addmm(params[-1], a, params[-2].t()).view(-1)
    return z, [a, *saved]


def mlp_backward(
    saved: list[torch.Tensor], mlp: MLP, keeps: list, grad_z: torch.Tensor, need_grad_x: bool
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(grad_x, flat gradient of mlp.weights)``: per layer mask ``mul_``, ``threshold_backward``
    (ReLU), ``native_batch_norm_backward``, two GEMMs and a column sum; one ``cat`` at the end."""
    params = mlp.kernel_views()[0]
    a, *saved = saved
    grad_z = grad_z.reshape(-1, 1)
    grads = [grad_z.sum(0), grad_z.t().mm(a).view(-1)]  # output bias, weight: collected last to first
    grad_a = grad_z.mm(params[-2])
    for i in reversed(range(len(mlp.hidden))):
        inp, h, mean, invstd = saved[4 * i : 4 * i + 4]
        if keeps[i] is not None:
            grad_a.mul_(keeps[i])
        grad_y = torch.ops.aten.threshold_backward(grad_a, a, 0)
        grad_h, grad_gamma, grad_beta = torch.ops.aten.native_batch_norm_backward(
            grad_y, h, params[4 * i + 2], None, None, mean, invstd, True, mlp.eps, [True, True, True]
        )
        grads += [grad_beta, grad_gamma, grad_h.sum(0), grad_h.t().mm(inp).view(-1)]
        if i or need_grad_x:
            grad_a = grad_h.mm(params[4 * i])
        a = inp
    grads.reverse()
    return grad_a if need_grad_x else None, torch.cat(grads)


class MLPNode(torch.autograd.Function):
    """``MLP`` training forward (CPU, BatchNorm) and its backward as one autograd node."""

    @staticmethod
    def forward(ctx, x, weights, keeps, mlp):  # noqa: ANN001, ANN205
        z, saved = mlp_forward(x, mlp, keeps)
        ctx.save_for_backward(*saved)
        ctx.mlp, ctx.keeps = mlp, keeps
        return z

    @staticmethod
    def backward(ctx, grad_z):  # noqa: ANN001, ANN205
        grad_x, grad_weights = mlp_backward(
            list(ctx.saved_tensors), ctx.mlp, ctx.keeps, grad_z, ctx.needs_input_grad[0]
        )
        return grad_x, grad_weights, None, None


# --- DeepFM --------------------------------------------------------------------------------------
class DeepFMNode(torch.autograd.Function):
    """A whole DeepFM training forward on ids: ``bias + first order + FM + MLP(emb)`` -> [B]."""

    @staticmethod
    def forward(ctx, table, weights, bias, ids, keeps, model):  # noqa: ANN001, ANN205
        embedding = model.features.sparse.table
        consts = model.features.consts(ids, table)
        out, emb, table_saved = table_fm_forward(table, ids, consts)
        z, mlp_saved = mlp_forward(emb, model.mlp, keeps)
        z.add_(out).add_(bias)
        ctx.save_for_backward(*table_saved, *mlp_saved)
        ctx.model, ctx.keeps, ctx.consts = model, keeps, consts
        ctx.num_rows, ctx.padding_idx, ctx.sparse = table.shape[0], embedding.padding_idx, embedding.sparse
        return z

    @staticmethod
    def backward(ctx, grad_z):  # noqa: ANN001, ANN205
        saved = ctx.saved_tensors
        grad_emb, grad_weights = mlp_backward(list(saved[3:]), ctx.model.mlp, ctx.keeps, grad_z, True)
        grad_table = table_fm_backward(
            saved[:3], ctx.consts, grad_z, grad_emb, ctx.num_rows, ctx.padding_idx, ctx.sparse
        )
        return grad_table, grad_weights, grad_z.sum(0, keepdim=True), None, None, None

"""Hand-written training kernels: forward and backward of the hot parts of a CTR model.

Why: a DeepFM step on MovieLens is ~60 tiny kernels on tensors of ~16k elements, so PyTorch's
per-operator and per-graph-node overhead, not arithmetic, sets the speed on CPU. These functions
run the kernels autograd would run for the plain modules (``addmm``, ``native_batch_norm`` and
its backward, ``threshold_backward``, one ``index_add_``), fewer of them, with no graph in
between. ``tests/test_fast.py`` checks them against the plain modules (forward, gradients,
optimizer update, BatchNorm statistics, dropout masks).

- ``rows_forward`` / ``rows_backward``: first-order sum (+ FM 2-way term) and the MLP input from
  the ``[B, F, 1 + D]`` rows of the shared input layer.
- ``gather`` / ``scatter``: the rows of categorical ids from the fused table, and the table
  gradient (one ``index_add_``, or a sparse row gradient for row-wise optimizers).
- ``mlp_forward`` / ``mlp_backward``: Linear -> BatchNorm -> ReLU -> Dropout layers (:class:`MLPSpec`).
- ``table_mlp_forward`` / ``table_mlp_backward``: a whole DeepFM / Wide & Deep on ids; with
  ``bce_loss_grad`` and ``assign_grads`` they make a training step without autograd.
- ``TableNode``, ``SparseRowsNode``, ``RowsNode``, ``MLPNode``, ``TableMLPNode``: the autograd
  Functions built from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from deepfm import masks

Saved = tuple[torch.Tensor, ...]


# --- first order + FM over the input rows ---------------------------------------------------------
# Per-shape choices, from 1-thread timings (benchmarks/README.md, "Where a Criteo-like step goes"):
# the field sum as F - 1 slice adds up to 4 fields, one strided reduction above (1024 rows x 8
# fields: 85 vs 129 us; 4096 x 39: 1.3 vs 3.6 ms); the FM gradient broadcast over the fields from
# 2**19 row elements (4096 x 39 x 17: 3.7 vs 5.1 ms; 1024 x 2 x 17: 74 vs 46 us the other way).
FIELD_ADDS_MAX = 4
BROADCAST_MIN_ELEMENTS = 1 << 19


def fm_consts(fields: int, width: int, device: torch.device, dtype: torch.dtype) -> tuple:
    """``(-m tiled over the fields, m)`` with ``m`` = 0 on column 0 and 1 on the embedding columns."""
    col_mask = torch.ones(width, dtype=dtype, device=device)
    col_mask[0] = 0
    return -col_mask.repeat(fields), col_mask


def rows_forward(
    rows: torch.Tensor, fields: int, consts: tuple | None, want_emb: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(out [B], emb [B, F*D] or None, s)`` for ``rows`` [B, F*W] (``W = 1 + D``).

    ``s = sum_f rows_f`` [B, W] holds the first-order sum (column 0) and ``sum_f e_f``, so

        out = s[:, 0] + 0.5 * (||s * m||^2 - ||rows * m||^2)        (first order + FM)

    (without ``consts``: the first-order sum alone), and ``emb`` is the MLP input.
    """
    batch = rows.shape[0]
    width = rows.shape[1] // fields
    if fields > FIELD_ADDS_MAX:
        s = rows.view(batch, fields, width).sum(1)
    else:  # a few fields: F - 1 adds beat a strided reduction or a tiny GEMM
        s = rows[:, :width] + rows[:, width : 2 * width] if fields > 1 else rows.clone()
        for f in range(2, fields):
            s += rows[:, f * width : (f + 1) * width]
    if consts is None:
        out = s[:, 0].clone()
    else:
        neg_mask, col_mask = consts
        out = torch.addmv(s[:, 0], s * s, col_mask, alpha=0.5).addmv_(rows * rows, neg_mask, alpha=0.5)
    emb = rows.view(batch, fields, width)[:, :, 1:].reshape(batch, -1) if want_emb else None
    return out, emb, s


def rows_backward(
    rows: torch.Tensor,
    s: torch.Tensor,
    fields: int,
    consts: tuple | None,
    grad_out: torch.Tensor,
    grad_emb: torch.Tensor | None,
) -> torch.Tensor:
    """Gradient of the rows, ``[B * F, W]``: ``d out / d rows_f = (s with column 0 set to 1) -
    rows_f * m`` (FM) or ``e_0`` (first order only), times ``grad_out``, plus ``grad_emb`` on the
    embedding columns."""
    width = s.shape[1]
    if consts is None:
        grad_rows = rows.new_zeros(rows.shape[0] * fields, width)
        grad_rows[:, 0] = grad_out.repeat_interleave(fields)
    else:
        s[:, 0] = 1.0  # s is ours (saved, not used elsewhere); column 0 carries the linear term
        if rows.numel() >= BROADCAST_MIN_ELEMENTS:  # the same products, broadcast over the fields,
            # with grad_out folded into the [B, 1, W] factors: one pass over the rows, not two
            g = grad_out.view(-1, 1, 1)
            grad_rows = torch.addcmul(s.unsqueeze(1) * g, rows.view(-1, fields, width), consts[0][:width] * g)
            grad_rows = grad_rows.view(-1, width)
        else:  # cat + contiguous in-place ops: broadcasting over a few fields is ~1.6x slower
            grad_rows = torch.cat([s] * fields, 1).addcmul_(rows, consts[0]).mul_(grad_out.view(-1, 1))
            grad_rows = grad_rows.view(-1, width)
    if grad_emb is not None:
        grad_rows[:, 1:] += grad_emb.reshape(grad_rows.shape[0], -1)
    return grad_rows


# --- loss -------------------------------------------------------------------------------------------
def bce_loss_grad(z: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean BCE-with-logits loss, its gradient w.r.t. z)``; the gradient as autograd computes
    it: ``(sigmoid(z) - label) / B``."""
    loss = F.binary_cross_entropy_with_logits(z, label)
    return loss, torch.sigmoid(z).sub_(label).div_(z.shape[0])


def assign_grads(params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """``p.grad = g`` for the parameters that require a gradient (as ``backward`` after
    ``zero_grad(set_to_none=True)`` leaves them)."""
    for p, g in zip(params, grads, strict=True):
        if p.requires_grad:
            p.grad = g


# --- the fused table ------------------------------------------------------------------------------
def gather(table: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows [B, F*W], flat ids)``: the table rows of ``ids`` [B, F]."""
    flat_ids = ids.reshape(-1)
    return table.index_select(0, flat_ids).view(ids.shape[0], -1), flat_ids


def scatter(
    grad_rows: torch.Tensor,
    flat_ids: torch.Tensor,
    embedding: nn.Embedding,
    reuse: TableGrad | None = None,
) -> torch.Tensor:
    """The table gradient: one ``index_add_`` (dense) or a sparse row gradient
    (``nn.Embedding(sparse=True)``, for row-wise optimizers); the padding row gets none. With
    ``reuse``, a dense gradient is built in its tensor (see :class:`TableGrad`)."""
    num_rows, width = embedding.weight.shape
    padding_idx = embedding.padding_idx
    if embedding.sparse:
        if padding_idx is not None:
            grad_rows = grad_rows.masked_fill((flat_ids == padding_idx).unsqueeze(1), 0.0)
        return torch.sparse_coo_tensor(
            flat_ids.unsqueeze(0), grad_rows, (num_rows, width), check_invariants=False
        )
    grad_table = reuse.zeros(embedding.weight) if reuse is not None else grad_rows.new_zeros(num_rows, width)
    add_rows(grad_table, flat_ids, grad_rows)
    if padding_idx is not None:
        grad_table[padding_idx] = 0.0
    return grad_table


def add_rows(table: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> None:
    """``table[ids[i]] += rows[i]`` in the order of ``i`` (the sums ``index_add_`` makes), on one
    thread: ``index_put_(accumulate=True)`` with more threads adds repeated rows atomically in
    an order that changes run to run, and ``index_add_`` with 2 threads ran 6x slower than with
    one (a Criteo-like batch, 160k rows of 17: 108 vs 17 ms; serial ``index_put_``: 8 ms)."""
    threads = torch.get_num_threads()
    if threads > 1 and table.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        table.index_put_((ids,), rows, accumulate=True)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


class TableGrad:
    """One table-sized gradient tensor, zeroed in place and refilled by every training step
    without autograd (:func:`scatter` with ``reuse``); it is the table's ``.grad`` after a step
    and is overwritten by the next one.

    Why: a fresh zero tensor per step is a new allocation of the table's size, which the C
    allocator maps afresh above its threshold (32 MiB: the Criteo-like table is 42 MB), so every
    step paid ~10k page faults, ~17 ms of a ~530 ms step at 1 thread; zeroing the kept tensor
    costs ~5 ms (``benchmarks/README.md``). Not used under autograd, whose gradient accumulation
    takes ownership of the tensor it is given.
    """

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None

    def zeros(self, like: torch.Tensor) -> torch.Tensor:
        """A zero tensor shaped as ``like`` (the table): the kept one, zeroed."""
        t = self.tensor
        if t is None or t.shape != like.shape or t.dtype != like.dtype or t.device != like.device:
            self.tensor = t = torch.zeros_like(like, memory_format=torch.contiguous_format)
            return t
        return t.zero_()


class TableNode(torch.autograd.Function):
    """Gather + first order (+ FM) + MLP input from categorical ids: ``(out, emb)``."""

    @staticmethod
    def forward(ctx, table, ids, embedding, consts, want_emb):  # noqa: ANN001, ANN205
        rows, flat_ids = gather(table, ids)
        out, emb, s = rows_forward(rows, ids.shape[1], consts, want_emb)
        ctx.save_for_backward(rows, s, flat_ids)
        ctx.embedding, ctx.consts, ctx.fields = embedding, consts, ids.shape[1]
        return out, emb

    @staticmethod
    def backward(ctx, grad_out, grad_emb):  # noqa: ANN001, ANN205
        rows, s, flat_ids = ctx.saved_tensors
        grad_rows = rows_backward(rows, s, ctx.fields, ctx.consts, grad_out, grad_emb)
        return scatter(grad_rows, flat_ids, ctx.embedding), None, None, None, None


class SparseRowsNode(torch.autograd.Function):
    """The rows ``[B, F + S, W]`` of categorical ids and mean-pooled multi-valued fields (bags,
    0 = padding) from the fused table: one gather and one table gradient for both (the plain
    path's two ``nn.Embedding`` calls each make a table-sized gradient)."""

    @staticmethod
    def forward(ctx, table, ids, bags, embedding):  # noqa: ANN001, ANN205
        batch, fields = ids.shape
        width = table.shape[1]
        flat_ids = ids.reshape(-1) if bags is None else torch.cat([ids.reshape(-1), bags.reshape(-1)])
        gathered = table.index_select(0, flat_ids)
        rows = gathered[: batch * fields].view(batch, fields, width)
        counts = None
        if bags is not None:
            pooled = gathered[batch * fields :].view(*bags.shape, width).sum(2)  # padding row is zero
            counts = (bags > 0).sum(2, keepdim=True).clamp_min(1)
            rows = torch.cat([rows, pooled / counts], dim=1)
        ctx.save_for_backward(flat_ids, counts)
        ctx.embedding, ctx.fields, ctx.bag_shape = embedding, fields, None if bags is None else bags.shape
        return rows

    @staticmethod
    def backward(ctx, grad_rows):  # noqa: ANN001, ANN205
        flat_ids, counts = ctx.saved_tensors
        batch, _, width = grad_rows.shape
        grad_flat = grad_rows[:, : ctx.fields].reshape(-1, width)
        if ctx.bag_shape is not None:
            per_bag = grad_rows[:, ctx.fields :] / counts
            per_item = per_bag.unsqueeze(2).expand(*ctx.bag_shape, width).reshape(-1, width)
            grad_flat = torch.cat([grad_flat, per_item])
        return scatter(grad_flat, flat_ids, ctx.embedding), None, None, None


class RowsNode(torch.autograd.Function):
    """First order (+ FM) + MLP input from rows ``[B, F, W]`` made by the plain input layer
    (multi-valued or numeric fields): ``(out, emb)``."""

    @staticmethod
    def forward(ctx, rows, consts, want_emb):  # noqa: ANN001, ANN205
        flat = rows.reshape(rows.shape[0], -1)
        out, emb, s = rows_forward(flat, rows.shape[1], consts, want_emb)
        ctx.save_for_backward(flat, s)
        ctx.consts, ctx.shape = consts, rows.shape
        return out, emb

    @staticmethod
    def backward(ctx, grad_out, grad_emb):  # noqa: ANN001, ANN205
        flat, s = ctx.saved_tensors
        grad_rows = rows_backward(flat, s, ctx.shape[1], ctx.consts, grad_out, grad_emb)
        return grad_rows.view(ctx.shape), None, None


# --- MLP --------------------------------------------------------------------------------------------
@dataclass
class MLPSpec:
    """The layers of a plain MLP: per hidden layer a Linear, an optional BatchNorm (running
    statistics, momentum) and a dropout probability; then the output Linear."""

    linears: list[nn.Linear]
    norms: list[nn.BatchNorm1d | None]
    dropouts: list[float]
    output: nn.Linear

    def params(self) -> list[torch.Tensor]:
        """In ``mlp_backward``'s gradient order: per layer Linear weight, bias(, BN scale, shift);
        then the output weight and bias."""
        out: list[torch.Tensor] = []
        for linear, norm in zip(self.linears, self.norms, strict=True):
            out += [linear.weight, linear.bias]
            if norm is not None:
                out += [norm.weight, norm.bias]
        return [*out, self.output.weight, self.output.bias]


def mlp_forward(
    x: torch.Tensor, spec: MLPSpec, keeps: list, params: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(z [B], saved)``: per hidden layer ``addmm``, ``native_batch_norm`` (batch statistics;
    running statistics updated in place), ``relu_``, keep-mask ``mul_``; then the output layer."""
    saved = []
    a = x
    i = 0
    for norm, keep in zip(spec.norms, keeps, strict=True):
        w, b = params[i], params[i + 1]
        h = torch.addmm(b, a, w.t())
        if norm is None:
            out, mean, invstd = h.relu_(), None, None
            i += 2
        else:
            gamma, beta = params[i + 2], params[i + 3]
            y, mean, invstd = torch.native_batch_norm(
                h, gamma, beta, norm.running_mean, norm.running_var, True, norm.momentum, norm.eps
            )
            norm.num_batches_tracked.add_(1)
            out = y.relu_()
            i += 4
        if keep is not None:
            out.mul_(keep)
        saved.append((a, h, mean, invstd))
        a = out
    z = torch.addmm(params[-1], a, params[-2].t()).view(-1)
    return z, [a, *[t for layer in saved for t in layer if t is not None]]


def mlp_backward(
    saved: list[torch.Tensor],
    spec: MLPSpec,
    keeps: list,
    params: list[torch.Tensor],
    grad_z: torch.Tensor,
    need_grad_x: bool,
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """``(grad_x, gradients of params)``: per layer mask ``mul_``, ``threshold_backward``
    (ReLU), ``native_batch_norm_backward``, two GEMMs and a column sum."""
    a, *rest = saved
    layers = []
    for norm in spec.norms:
        take = 2 if norm is None else 4  # (input, h) or (input, h, mean, invstd)
        layers.append(rest[:take])
        rest = rest[take:]
    grad_z = grad_z.reshape(-1, 1)
    grads = [grad_z.sum(0), grad_z.t().mm(a)]  # output bias, weight: collected last to first
    grad_a = _grad_input(grad_z, params[-2], keeps[-1], spec.dropouts[-1]) if keeps else grad_z.mm(params[-2])
    i = len(params) - 2
    for layer in reversed(range(len(spec.norms))):
        norm = spec.norms[layer]
        # ReLU and dropout: a = relu(y) * keep is 0 wherever either cut the unit, so the mask's
        # product is the threshold below plus its kept value, folded into the matrix product
        # that made grad_a (_grad_input): one pass over the activations less per layer
        grad_y = torch.ops.aten.threshold_backward(grad_a, a, 0)
        if norm is None:
            inp, _ = layers[layer]
            grad_h = grad_y
            i -= 2
            grads += [grad_h.sum(0), grad_h.t().mm(inp)]
        else:
            inp, h, mean, invstd = layers[layer]
            i -= 4
            grad_h, grad_gamma, grad_beta = torch.ops.aten.native_batch_norm_backward(
                grad_y, h, params[i + 2], None, None, mean, invstd, True, norm.eps, [True, True, True]
            )
            grads += [grad_beta, grad_gamma, grad_h.sum(0), grad_h.t().mm(inp)]
        if layer:
            grad_a = _grad_input(grad_h, params[i], keeps[layer - 1], spec.dropouts[layer - 1])
        elif need_grad_x:
            grad_a = grad_h.mm(params[i])
        a = inp
    grads.reverse()
    return (grad_a if need_grad_x else None), grads


def _grad_input(
    grad_h: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor | None, p: float
) -> torch.Tensor:
    """``grad_h @ weight`` times the kept value of the dropout before the layer (see
    :func:`deepfm.masks.keep_scale`): the gradient at the kept units (the others are zeroed by
    the ReLU's ``threshold_backward``). The scale goes on the weight (400 x 400 on the
    Criteo-like MLP), not on the product: ``addmm(..., beta=0, alpha=s)`` first fills its
    ``[B, out]`` result from the expanded zero (a ``copy_`` over the activations per layer)."""
    if keep is None:
        return grad_h.mm(weight)
    return grad_h.mm(weight * masks.keep_scale(p))


class MLPNode(torch.autograd.Function):
    """An MLP's training forward (CPU) and its backward as one autograd node -> ``z`` [B]."""

    @staticmethod
    def forward(ctx, x, spec, keeps, *params):  # noqa: ANN001, ANN205
        z, saved = mlp_forward(x, spec, keeps, list(params))
        ctx.save_for_backward(*saved)
        # the parameters are leaves nothing changes before backward: kept as they are (saving
        # them too costs ~1 us each a step)
        ctx.spec, ctx.keeps, ctx.params = spec, keeps, list(params)
        return z

    @staticmethod
    def backward(ctx, grad_z):  # noqa: ANN001, ANN205
        saved = list(ctx.saved_tensors)
        grad_x, grads = mlp_backward(saved, ctx.spec, ctx.keeps, ctx.params, grad_z, ctx.needs_input_grad[0])
        return grad_x, None, None, *grads


def table_mlp_forward(
    table: torch.Tensor,
    bias: torch.Tensor,
    ids: torch.Tensor,
    consts: tuple | None,
    spec: MLPSpec,
    keeps: list,
    params: list[torch.Tensor],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(z [B], saved)``: ``bias + first order (+ FM) + MLP(emb)`` on categorical ``ids``."""
    rows, flat_ids = gather(table, ids)
    out, emb, s = rows_forward(rows, ids.shape[1], consts, True)
    z, mlp_saved = mlp_forward(emb, spec, keeps, params)
    z.add_(out).add_(bias)
    return z, [rows, s, flat_ids, *mlp_saved]


def table_mlp_backward(
    saved: list[torch.Tensor],
    embedding: nn.Embedding,
    consts: tuple | None,
    spec: MLPSpec,
    keeps: list,
    params: list[torch.Tensor],
    grad_z: torch.Tensor,
    mlp: bool = True,
    reuse: TableGrad | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
    """``(table gradient, bias gradient, MLP parameter gradients)``; with ``mlp=False`` (a frozen
    MLP whose input is detached) no backward runs through the MLP and its gradients are ``None``;
    ``reuse``: see :func:`scatter`."""
    rows, s, flat_ids, *mlp_saved = saved
    grad_emb, grads = mlp_backward(mlp_saved, spec, keeps, params, grad_z, True) if mlp else (None, None)
    grad_rows = rows_backward(rows, s, rows.shape[1] // s.shape[1], consts, grad_z, grad_emb)
    return scatter(grad_rows, flat_ids, embedding, reuse), grad_z.sum(0, keepdim=True), grads


class TableMLPNode(torch.autograd.Function):
    """A whole DeepFM (with ``consts``) or Wide & Deep (without) training forward on ids:
    ``bias + first order (+ FM) + MLP(emb)`` -> [B]."""

    @staticmethod
    def forward(ctx, table, bias, ids, embedding, consts, spec, keeps, *params):  # noqa: ANN001, ANN205
        z, saved = table_mlp_forward(table, bias, ids, consts, spec, keeps, list(params))
        ctx.save_for_backward(*saved)
        ctx.embedding, ctx.consts = embedding, consts
        ctx.spec, ctx.keeps, ctx.params = spec, keeps, list(params)  # leaves: see MLPNode
        return z

    @staticmethod
    def backward(ctx, grad_z):  # noqa: ANN001, ANN205
        saved = list(ctx.saved_tensors)
        grad_table, grad_bias, grads = table_mlp_backward(
            saved, ctx.embedding, ctx.consts, ctx.spec, ctx.keeps, ctx.params, grad_z
        )
        return grad_table, grad_bias, None, None, None, None, None, *grads

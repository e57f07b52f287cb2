"""Shared layers, one idea each: the input part (embeddings) and the interaction / dense parts.

``SparseFeatures`` is the only place categorical embeddings live: one table whose column 0 is the
first-order (linear) weight and columns 1..D the field embedding, so a single gather serves the
linear term, the FM term and the MLP input. ``DenseFeatures`` gives each numeric field the same
``1 + D`` vector, scaled by its value. ``Features`` joins both: every model starts with it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from deepfm.models.kernels import MLPNode, TableFMNode, table_fm_consts


class SparseFeatures(nn.Module):
    """Fused table ``[rows, 1 + embed_dim]``: returns first-order sums and field embeddings.

    A bag (multi-valued field) becomes one field: the mean of its rows, or with ``"sum"`` in
    ``bag_pooling`` (one entry per bag; libsvm/libfm fields) their sum, where every element is a
    feature of its own (libFM): its first-order weight counts in full and
    :meth:`Features.bag_pairs` adds the FM pairs inside the bag.
    """

    def __init__(self, num_rows: int, embed_dim: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.bag_pooling: tuple[str, ...] = ()  # per bag: "mean" (default) or "sum"
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
            if "sum" in self.bag_pooling:  # sum-pooled bags divide by 1
                summed = torch.tensor([p == "sum" for p in self.bag_pooling], device=bags.device)
                counts = counts.masked_fill(summed.view(1, -1, 1), 1)
            rows = torch.cat([rows, pooled / counts], dim=1)  # pooled bag = one field
        return rows


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

    def bag_pairs(self, bags: torch.Tensor | None) -> torch.Tensor | float:
        """FM pairs inside sum-pooled bags, ``0.5 * sum_k((sum_i e_ik)^2 - sum_i e_ik^2)`` [B].

        The FM term over fields sees a sum-pooled bag as one vector ``sum_i e_i``, which gives
        every pair of elements from different fields; these are the pairs within a bag, so FM
        over fields plus ``bag_pairs`` is FM over every active element (libFM's definition).
        """
        summed = [j for j, p in enumerate(self.sparse.bag_pooling) if p == "sum"]
        if bags is None or not summed:
            return 0.0
        emb = self.sparse.table(bags[:, summed])[..., 1:]  # [B, S, L, D], padding rows zero
        return 0.5 * (emb.sum(2).square() - emb.square().sum(2)).sum((1, 2))

    def fusable(self, ids: torch.Tensor, bags: torch.Tensor | None, dense: torch.Tensor | None) -> bool:
        """Whether a training step may take the fused kernels (``deepfm.models.kernels``):
        categorical ids only (no bags, no numeric fields), training mode, autograd on."""
        return (
            self.training
            and torch.is_grad_enabled()
            and ids.dim() == 2
            and bags is None
            and (dense is None or self.dense is None)
        )

    def consts(self, ids: torch.Tensor, weight: torch.Tensor) -> tuple:
        """Constants of the fused table kernel for this shape / device, made once."""
        key = (ids.shape[1], weight.shape[1], weight.device, weight.dtype)
        consts = self._consts.get(key)
        if consts is None:
            consts = self._consts[key] = table_fm_consts(*key)
        return consts

    def first_order_fm(
        self,
        ids: torch.Tensor,
        bags: torch.Tensor | None,
        dense: torch.Tensor | None,
        fm: FactorizationMachine,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(first-order sum + fm(emb) [B], emb [B, F, D])``: what FM and DeepFM need.

        Training on categorical ids alone takes the fused :class:`TableFMNode`; bags, numeric
        fields, eval mode and no-grad take the general path (``forward`` then ``fm``, plain ops
        that export and trace). Both compute the same numbers.
        """
        if not self.fusable(ids, bags, dense):
            linear, emb = self(ids, bags, dense)  # also eval / export: plain traceable ops
            return linear + fm(emb) + self.bag_pairs(bags), emb
        table = self.sparse.table
        consts = self.consts(ids, table.weight)
        out, emb = TableFMNode.apply(table.weight, ids, table.padding_idx, table.sparse, consts)
        return out, emb.view(ids.shape[0], ids.shape[1], -1)


class FactorizationMachine(nn.Module):
    """FM 2-way term ``0.5 * sum_k((sum_f e_fk)^2 - sum_f e_fk^2)`` -> [B]."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        square_of_sum = emb.sum(1).square()
        sum_of_square = emb.square().sum(1)
        return 0.5 * (square_of_sum - sum_of_square).sum(1)


def keep_mask(shape: tuple[int, ...], p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dropout's scaled keep mask: ``1 / (1 - p)`` with probability ``1 - p``, else 0.

    Drawn from ``generator`` (default: the global one, seeded by ``torch.manual_seed``), cheaply:
    ``bernoulli_`` on CPU costs one generator call per element (~0.25 ms for 1024 x 16, once the
    largest single cost of a training step here). For ``p = 0.5`` every random bit is a keep
    flag, so one 64-bit draw serves 64 elements, and the mask is ``uint8`` (values 0 and 2: a
    quarter of the memory, and multiplying a float tensor by it gives float). For other ``p``
    each 64-bit draw gives four 16-bit uniforms compared with ``p`` (``p`` is rounded to a
    multiple of 2**-16) and the mask is float32.
    """
    n = math.prod(shape)
    if p == 0.5:
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 63) // 64,), dtype=torch.int64, generator=generator)
        keep = np.unpackbits(words.numpy().view(np.uint8), count=n)
        keep += keep  # 0 / 2
    else:
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, generator=generator)
        uniform = words.numpy().view(np.int16)[:n]
        keep = (uniform >= round(p * 65536) - 32768).astype(np.float32)
        keep *= np.float32(1.0 / (1.0 - p))
    return torch.from_numpy(keep).view(shape)


MASK_POOL_ELEMENTS = 1 << 20  # dropout mask elements drawn at once (1 MiB of uint8 at p = 0.5)


class MLP(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout per hidden layer, then a linear output -> [B].

    Every weight, bias and BatchNorm scale/shift lives in one flat parameter, ``weights``
    (``tensors()`` cuts it into per-layer views; the running statistics are flat buffers the same
    way): the optimizer updates one tensor per step instead of four per layer, and the fused
    training node returns one gradient. Dropout keep masks come from :meth:`keep_masks`.

    Training on CPU with BatchNorm runs :class:`~deepfm.models.kernels.MLPNode` (one autograd node
    with a hand-written backward); everything else (eval, export, other devices, no BatchNorm)
    runs ``plain_forward``: ordinary ``torch.nn.functional`` ops, the same numbers.
    """

    momentum = 0.1  # BatchNorm1d's defaults
    eps = 1e-5

    def __init__(self, in_dim: int, hidden: tuple[int, ...], dropout: float, batch_norm: bool = True):
        super().__init__()
        self.hidden, self.dropout, self.batch_norm = tuple(hidden), float(dropout), batch_norm
        tensors: list[torch.Tensor] = []
        for width in self.hidden:
            linear = nn.Linear(in_dim, width)  # PyTorch's default initialisation
            tensors += [linear.weight, linear.bias]
            if batch_norm:
                tensors += [torch.ones(width), torch.zeros(width)]  # BatchNorm scale, shift
            in_dim = width
        output = nn.Linear(in_dim, 1)
        tensors += [output.weight, output.bias]
        self.shapes = [tuple(t.shape) for t in tensors]
        self.sizes = [t.numel() for t in tensors]
        self.weights = nn.Parameter(torch.cat([t.detach().reshape(-1) for t in tensors]))
        if batch_norm:
            self.register_buffer("running_mean", torch.zeros(sum(self.hidden)))
            self.register_buffer("running_var", torch.ones(sum(self.hidden)))
        self._views: tuple = ()  # (key, views) for the fused node, see ``kernel_views``
        self._stream: tuple[int, int] | None = None  # (epoch mask seed, step), see ``keep_masks``
        self._masks: tuple = ()  # ((seed, batch, block), masks of the block's steps)

    def tensors(self, flat: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Views of ``flat`` (default ``weights``): per hidden layer weight, bias(, BN scale,
        BN shift), then the output weight and bias."""
        parts = (self.weights if flat is None else flat).split(self.sizes)
        return [t.view(s) for t, s in zip(parts, self.shapes, strict=True)]

    def zero_output_(self) -> MLP:
        """Zero the output layer's weights, so the MLP starts as a constant (its bias)."""
        with torch.no_grad():
            self.tensors()[-2].zero_()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keeps = self.keep_masks(x)
        if self.fusable(x):
            return MLPNode.apply(x, self.weights, keeps, self)
        return self.plain_forward(x, keeps)

    def fusable(self, x: torch.Tensor) -> bool:
        """Whether training takes the fused :class:`~deepfm.models.kernels.MLPNode` (CPU, BatchNorm)."""
        return self.training and self.batch_norm and x.device.type == "cpu"

    def keep_masks(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        """This step's dropout keep masks, ``[B, width]`` per hidden layer (``None`` per layer
        outside CPU training); one :func:`keep_mask` draw for all layers.

        Outside a training epoch the masks come from the global generator, one draw per call.
        Within one (:meth:`start_masks`), masks for up to :data:`MASK_POOL_ELEMENTS` elements
        (~32 steps here) are drawn at once from a generator seeded by the epoch's mask seed and
        the step number, so step ``t`` of an epoch gets the same masks in a resumed run as in
        an uninterrupted one, whatever the checkpoint frequency.
        """
        if not self.training or self.dropout == 0 or x.device.type != "cpu" or not self.hidden:
            return [None] * len(self.hidden)
        batch = x.shape[0]
        sizes = [batch * w for w in self.hidden]
        if self._stream is None:
            parts = keep_mask((sum(sizes),), self.dropout).split(sizes)
        else:
            seed, step = self._stream
            self._stream = (seed, step + 1)
            ahead = max(1, MASK_POOL_ELEMENTS // sum(sizes))
            block = (seed, batch, step // ahead)
            if not self._masks or self._masks[0] != block:
                generator = torch.Generator().manual_seed(hash(block) & (2**63 - 1))
                pool = keep_mask((ahead, sum(sizes)), self.dropout, generator)
                self._masks = (block, [row.split(sizes) for row in pool])
            parts = self._masks[1][step % ahead]
        return [k.view(batch, w) for k, w in zip(parts, self.hidden, strict=True)]

    def start_masks(self, seed: int | None, step: int = 0) -> None:
        """Masks of an epoch keyed by ``(seed, step)``, from step ``step`` on; ``None``: back to
        the global generator (see :meth:`keep_masks`)."""
        self._stream = None if seed is None else (seed, step)
        self._masks = ()

    def plain_forward(self, x: torch.Tensor, keeps: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """The same MLP in plain functional ops (traceable, any device)."""
        params = self.tensors()
        keeps = keeps or [None] * len(self.hidden)
        means, variances = self.running_stats()
        step = 4 if self.batch_norm else 2
        for i in range(len(self.hidden)):
            x = F.linear(x, params[step * i], params[step * i + 1])
            if self.batch_norm:
                gamma, beta = params[4 * i + 2], params[4 * i + 3]
                x = F.batch_norm(
                    x, means[i], variances[i], gamma, beta, self.training, self.momentum, self.eps
                )
            x = F.relu(x)
            if keeps[i] is not None:
                x = x * keeps[i]
            elif self.training and self.dropout > 0:
                x = F.dropout(x, self.dropout, training=True)
        return F.linear(x, params[-2], params[-1]).squeeze(1)

    def running_stats(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per hidden layer views of the BatchNorm running mean and variance."""
        if not self.batch_norm:
            return [], []
        return list(self.running_mean.split(self.hidden)), list(self.running_var.split(self.hidden))

    def kernel_views(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """``tensors()`` and ``running_stats()`` made once (outside autograd) and reused while
        the underlying storage stays the same: the fused node's per-step view-making is ~40 us.
        (The cached views keep their storage alive, so an equal address means the same storage.)"""
        key = (self.weights.data_ptr(), self.running_mean.data_ptr(), self.running_var.data_ptr())
        if not self._views or self._views[0] != key:
            with torch.no_grad():
                self._views = (key, (self.tensors(), *self.running_stats()))
        return self._views[1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_views"] = ()  # a copy (deepcopy, pickle) makes its own views of its own weights
        return state


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

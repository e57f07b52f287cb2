"""Shared layers, one idea each: the input part (embeddings) and the interaction / dense parts.

``SparseFeatures`` is the only place categorical embeddings live: one table whose column 0 is the
first-order (linear) weight and columns 1..D the field embedding, so a single gather serves the
linear term, the FM term and the MLP input. ``DenseFeatures`` gives each numeric field the same
``1 + D`` vector, scaled by its value. ``Features`` joins both: every model starts with it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from deepfm import masks


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


class FactorizationMachine(nn.Module):
    """FM 2-way term ``0.5 * sum_k((sum_f e_fk)^2 - sum_f e_fk^2)`` -> [B]."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        square_of_sum = emb.sum(1).square()
        sum_of_square = emb.square().sum(1)
        return 0.5 * (square_of_sum - sum_of_square).sum(1)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU keep masks come from :func:`deepfm.masks.keep`: the same
    distribution, drawn cheaply, and keyed by (epoch seed, step) during training so a resumed run
    draws the same masks (and the fused kernels of ``deepfm.fast`` draw them too)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        return x * masks.keep(tuple(x.shape), self.p, x.dtype)


class MLP(nn.Sequential):
    """Linear -> BatchNorm -> ReLU -> Dropout per hidden layer, then a linear output -> [B].

    Layers are named ``linear{i}``, ``norm{i}``, ``relu{i}``, ``dropout{i}`` and ``output``.
    """

    def __init__(self, in_dim: int, hidden: tuple[int, ...], dropout: float, batch_norm: bool = True):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, width in enumerate(hidden):
            layers[f"linear{i}"] = nn.Linear(in_dim, width)
            if batch_norm:
                layers[f"norm{i}"] = nn.BatchNorm1d(width)
            layers[f"relu{i}"] = nn.ReLU()
            if dropout > 0:
                layers[f"dropout{i}"] = Dropout(dropout)
            in_dim = width
        layers["output"] = nn.Linear(in_dim, 1)
        super().__init__(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze(1)

    def zero_output_(self) -> MLP:
        """Zero the output layer's weights, so the MLP starts as a constant (its bias)."""
        with torch.no_grad():
            self.output.weight.zero_()
        return self


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

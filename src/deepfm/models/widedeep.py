"""Wide & Deep (Cheng et al., 2016): wide = first-order linear over the same sparse features
(no hand-made cross features), deep = MLP over the concatenated field embeddings; logits summed."""

from __future__ import annotations

import torch
from torch import nn

from deepfm.models.base import CTRModel
from deepfm.models.layers import MLP, Features


class WideDeep(CTRModel):
    def __init__(
        self,
        num_rows: int,
        num_fields: int,
        num_dense: int = 0,
        embed_dim: int = 16,
        mlp: tuple[int, ...] = (16, 16),
        dropout: float = 0.5,
        **_: object,
    ) -> None:
        super().__init__()
        self.features = Features(num_rows, embed_dim, num_dense)
        self.mlp = MLP(num_fields * embed_dim, mlp, dropout)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(
        self, ids: torch.Tensor, bags: torch.Tensor | None = None, dense: torch.Tensor | None = None
    ) -> torch.Tensor:
        linear, emb = self.features(ids, bags, dense)
        return self.bias + linear + self.mlp(emb.flatten(1))

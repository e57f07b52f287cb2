"""DCN-V2 (Wang et al., 2021), parallel form: a cross network and an MLP over the concatenated
field embeddings, their outputs combined linearly (cross head + MLP logit) plus the linear term."""

from __future__ import annotations

import torch
from torch import nn

from deepfm.models.base import CTRModel
from deepfm.models.layers import MLP, CrossNetV2, Features


class DCNv2(CTRModel):
    def __init__(
        self,
        num_rows: int,
        num_fields: int,
        num_dense: int = 0,
        embed_dim: int = 16,
        mlp: tuple[int, ...] = (16, 16),
        dropout: float = 0.5,
        cross_layers: int = 3,
        **_: object,
    ) -> None:
        super().__init__()
        dim = num_fields * embed_dim
        self.features = Features(num_rows, embed_dim, num_dense)
        self.cross = CrossNetV2(dim, cross_layers)
        self.cross_head = nn.Linear(dim, 1)
        self.mlp = MLP(dim, mlp, dropout)

    def forward(
        self, ids: torch.Tensor, bags: torch.Tensor | None = None, dense: torch.Tensor | None = None
    ) -> torch.Tensor:
        linear, emb = self.features(ids, bags, dense)
        x0 = emb.flatten(1)
        return linear + self.cross_head(self.cross(x0)).squeeze(1) + self.mlp(x0)

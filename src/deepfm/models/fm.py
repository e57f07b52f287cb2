"""FM: bias + first-order linear term + FM 2-way interactions (DeepFM without the MLP)."""

from __future__ import annotations

import torch
from torch import nn

from deepfm.models.base import CTRModel
from deepfm.models.layers import FactorizationMachine, Features


class FM(CTRModel):
    def __init__(
        self, num_rows: int, num_fields: int, num_dense: int = 0, embed_dim: int = 16, **_: object
    ) -> None:
        super().__init__()
        self.features = Features(num_rows, embed_dim, num_dense)
        self.fm = FactorizationMachine()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(
        self, ids: torch.Tensor, bags: torch.Tensor | None = None, dense: torch.Tensor | None = None
    ) -> torch.Tensor:
        linear, emb = self.features(ids, bags, dense)
        # + the pairs inside sum-pooled (libsvm) bags: FM over every active index, as in libFM
        return self.bias + linear + self.fm(emb) + self.features.bag_pairs(bags)

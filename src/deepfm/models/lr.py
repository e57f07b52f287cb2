"""LR: bias + first-order linear term only (the shared table with no embedding columns)."""

from __future__ import annotations

import torch
from torch import nn

from deepfm.models.base import CTRModel
from deepfm.models.layers import Features


class LR(CTRModel):
    def __init__(self, num_rows: int, num_fields: int, num_dense: int = 0, **_: object) -> None:
        super().__init__()
        self.features = Features(num_rows, 0, num_dense)  # column 0 (linear weight) only
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(
        self, ids: torch.Tensor, bags: torch.Tensor | None = None, dense: torch.Tensor | None = None
    ) -> torch.Tensor:
        linear, _ = self.features(ids, bags, dense)
        return self.bias + linear

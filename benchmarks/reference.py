"""A faithful re-implementation of the reference notebook pipeline, for side-by-side benchmarks.

Per-sample ``Dataset.__getitem__`` + ``DataLoader`` collation, pytorch-fm style layers with
separate linear and embedding tables and per-batch offset addition, ``sigmoid`` + ``BCELoss``.
Also a "plain batched loop": the same reference model fed by tensor-indexed batches, the
obvious first optimisation a user would write. Neither is part of the package.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class RatingsDataset(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class FeaturesLinear(nn.Module):
    def __init__(self, field_dims: np.ndarray) -> None:
        super().__init__()
        self.fc = nn.Embedding(int(sum(field_dims)), 1)
        self.bias = nn.Parameter(torch.zeros((1,)))
        self.register_buffer("offsets", torch.tensor((0, *np.cumsum(field_dims)[:-1]), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sum(self.fc(x + self.offsets), dim=1) + self.bias


class FeaturesEmbedding(nn.Module):
    def __init__(self, field_dims: np.ndarray, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(int(sum(field_dims)), embed_dim)
        self.register_buffer("offsets", torch.tensor((0, *np.cumsum(field_dims)[:-1]), dtype=torch.long))
        nn.init.xavier_uniform_(self.embedding.weight.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x + self.offsets)


class FactorizationMachine(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        square_of_sum = torch.sum(x, dim=1) ** 2
        sum_of_square = torch.sum(x**2, dim=1)
        return 0.5 * torch.sum(square_of_sum - sum_of_square, dim=1, keepdim=True)


class MultiLayerPerceptron(nn.Module):
    def __init__(self, input_dim: int, embed_dims: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for embed_dim in embed_dims:
            layers += [
                nn.Linear(input_dim, embed_dim),
                nn.BatchNorm1d(embed_dim),
                nn.ReLU(),
                nn.Dropout(p=dropout),
            ]
            input_dim = embed_dim
        layers.append(nn.Linear(input_dim, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class ReferenceDeepFM(nn.Module):
    def __init__(self, field_dims: np.ndarray, embed_dim: int = 16, mlp=(16, 16), dropout=0.5):
        super().__init__()
        self.linear = FeaturesLinear(field_dims)
        self.fm = FactorizationMachine()
        self.embedding = FeaturesEmbedding(field_dims, embed_dim)
        self.embed_output_dim = len(field_dims) * embed_dim
        self.mlp = MultiLayerPerceptron(self.embed_output_dim, mlp, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embed_x = self.embedding(x)
        x = self.linear(x) + self.fm(embed_x) + self.mlp(embed_x.view(-1, self.embed_output_dim))
        return torch.sigmoid(x.squeeze(1))


def local_ids(data) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-field label-encoded ids (what the reference notebook feeds) from our prepared split."""
    fmap = data.feature_map
    offsets = np.array([f.offset for f in fmap.categorical])
    dims = np.array([f.size for f in fmap.categorical])
    parts = {name: getattr(data, name) for name in ("train", "valid", "test")}
    return dims, {k: s.ids.numpy() - offsets for k, s in parts.items()}


def train_reference_epoch(model, x, y, batch_size: int, optimizer, generator) -> int:
    """One epoch of the reference loop: DataLoader over a per-sample Dataset, sigmoid + BCELoss."""
    loader = DataLoader(
        RatingsDataset(x, y), batch_size=batch_size, shuffle=True, num_workers=0, generator=generator
    )
    criterion = nn.BCELoss()
    model.train()
    n = 0
    for fields, target in loader:
        y_hat = model(fields)
        loss = criterion(y_hat, target.float())
        model.zero_grad()
        loss.backward()
        optimizer.step()
        n += len(target)
    return n


def train_plain_epoch(model, x: torch.Tensor, y: torch.Tensor, batch_size: int, optimizer, generator) -> int:
    """The same reference model fed by tensor-indexed batches (no DataLoader), BCEWithLogits-free."""
    criterion = nn.BCELoss()
    model.train()
    perm = torch.randperm(len(y), generator=generator)
    for start in range(0, len(y), batch_size):
        idx = perm[start : start + batch_size]
        if len(idx) < 2:
            break
        loss = criterion(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return len(y)


@torch.no_grad()
def predict(model, x: torch.Tensor, batch_size: int = 65536) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()

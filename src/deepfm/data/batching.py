"""Encoded splits held as tensors, and batches gathered from them by tensor indexing.

No per-sample ``__getitem__``: an epoch draws one permutation, gathers the whole split in that
order with one indexing call (or per batch for arrays larger than memory), and yields contiguous
slices, which are views and cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    ids: torch.Tensor  # [B, F] int64 global rows of the categorical fields
    bags: torch.Tensor | None  # [B, S, L] int64 rows of the multi-valued fields (0 = padding)
    dense: torch.Tensor | None  # [B, K] float32 values of the numeric fields
    label: torch.Tensor  # [B] float32 0/1

    @property
    def inputs(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The model's positional inputs ``(ids, bags, dense)``."""
        return self.ids, self.bags, self.dense


@dataclass
class Split:
    """One encoded part of a data set (train, valid or test)."""

    ids: torch.Tensor
    label: torch.Tensor
    bags: torch.Tensor | None = None
    dense: torch.Tensor | None = None

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], label: np.ndarray) -> Split:
        def tensor(name: str) -> torch.Tensor | None:
            value = arrays.get(name)
            return torch.from_numpy(np.ascontiguousarray(value)) if value is not None else None

        return cls(
            ids=tensor("ids"),
            label=torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32)),
            bags=tensor("bags"),
            dense=tensor("dense"),
        )

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Split:
        """A split with ``fn`` applied to every tensor (indexing, slicing, device moves)."""
        return Split(
            fn(self.ids),
            fn(self.label),
            fn(self.bags) if self.bags is not None else None,
            fn(self.dense) if self.dense is not None else None,
        )

    def take(self, index: torch.Tensor) -> Split:
        return self.map(lambda t: t[index])

    def to(self, device: torch.device | str) -> Split:
        return self.map(lambda t: t.to(device))

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        shuffle: bool = False,
    ) -> Iterator[Batch]:
        """Yield batches; shuffled with ``generator`` when ``shuffle``.

        A trailing batch of a single row is dropped when shuffling (BatchNorm cannot train on it).
        """
        data = self.take(torch.randperm(len(self), generator=generator)) if shuffle else self
        n = len(data)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if shuffle and stop - start < 2:
                break
            part = data.map(lambda t, a=start, b=stop: t[a:b])
            yield Batch(part.ids, part.bags, part.dense, part.label)

    def num_batches(self, batch_size: int, shuffle: bool = False) -> int:
        """Batches :meth:`batches` yields."""
        full, rest = divmod(len(self), batch_size)
        return full + (1 if rest >= (2 if shuffle else 1) else 0)

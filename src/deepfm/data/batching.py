"""Encoded splits held as tensors, and batches gathered from them by tensor indexing.

No per-sample ``__getitem__``: an epoch draws one permutation, gathers the whole split in that
order with one indexing call (or per batch for arrays larger than memory), and yields contiguous
slices, which are views and cost nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    ids: torch.Tensor  # [B, F] int64 global rows of the categorical fields
    bags: torch.Tensor | None  # [B, S, L] int64 rows of the multi-valued fields (0 = padding)
    label: torch.Tensor  # [B] float32 0/1


@dataclass
class Split:
    """One encoded part of a data set (train, valid or test)."""

    ids: torch.Tensor
    label: torch.Tensor
    bags: torch.Tensor | None = None

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], label: np.ndarray) -> Split:
        bags = arrays.get("bags")
        return cls(
            ids=torch.from_numpy(np.ascontiguousarray(arrays["ids"])),
            label=torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32)),
            bags=torch.from_numpy(np.ascontiguousarray(bags)) if bags is not None else None,
        )

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def take(self, index: torch.Tensor) -> Split:
        return Split(self.ids[index], self.label[index], self.bags[index] if self.bags is not None else None)

    def to(self, device: torch.device | str) -> Split:
        return Split(
            self.ids.to(device),
            self.label.to(device),
            self.bags.to(device) if self.bags is not None else None,
        )

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
            yield Batch(
                data.ids[start:stop],
                data.bags[start:stop] if data.bags is not None else None,
                data.label[start:stop],
            )

    def num_batches(self, batch_size: int, shuffle: bool = False) -> int:
        n = len(self)
        full, rest = divmod(n, batch_size)
        return full + (1 if rest >= (2 if shuffle else 1) else 0)

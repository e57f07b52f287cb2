"""A split stored as ``.npy`` files on disk, read in shuffled blocks so memory stays bounded.

Same interface as :class:`~deepfm.data.batching.Split` for training and prediction
(``len``, ``label``, ``batches``, ``num_batches``; ``split[a:b]`` is the rows ``a`` to ``b``,
streamed the same way: a data-parallel rank's share to score). An epoch visits blocks of
``block_rows`` consecutive rows in a random order, reads ``window_blocks`` of them at a time with plain file
reads (no mapping, so the process's RSS holds one window, not the file) and shuffles the rows
inside the window. Labels (4 bytes a row) are kept in memory for evaluation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from deepfm.data.batching import Batch


class NpyColumn:
    """Row-range reads of a C-ordered ``.npy`` file without mapping it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = header(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{path} is Fortran-ordered")
        self.shape: tuple[int, ...] = shape
        self.dtype = np.dtype(dtype)
        self.row_items = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1

    def read(self, start: int, stop: int) -> np.ndarray:
        count = (stop - start) * self.row_items
        offset = self.offset + start * self.row_items * self.dtype.itemsize
        data = np.fromfile(self.path, dtype=self.dtype, count=count, offset=offset)
        return data.reshape((stop - start, *self.shape[1:]))


class MemmapSplit:
    """One part (train/valid/test) of a preprocessed data set, streamed from its ``.npy`` files."""

    def __init__(self, folder: Path, part: str, block_rows: int = 1 << 15, window_blocks: int = 8) -> None:
        self.folder = Path(folder)
        self.part = part
        self.block_rows = block_rows
        self.window_blocks = window_blocks
        self.columns: dict[str, NpyColumn] = {}
        for name in ("ids", "bags", "dense"):
            path = self.folder / f"{part}_{name}.npy"
            if path.exists():
                self.columns[name] = NpyColumn(path)
        self.label = torch.from_numpy(np.load(self.folder / f"{part}_label.npy"))
        self.start = 0  # the rows [start, start + len) of the files (a slice of the split)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def __getitem__(self, rows: slice) -> MemmapSplit:
        """The rows ``rows`` (a slice with step 1) of this split, streamed from the same files."""
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("a streamed split is sliced by contiguous rows only")
        part = copy.copy(self)
        part.start = self.start + start
        part.label = self.label[start : max(start, stop)]
        return part

    def num_batches(self, batch_size: int, shuffle: bool = False) -> int:
        full, rest = divmod(len(self), batch_size)
        return full + (1 if rest >= (2 if shuffle else 1) else 0)

    def _read(self, ranges: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        out = {}
        for name, column in self.columns.items():
            parts = [column.read(self.start + a, self.start + b) for a, b in ranges]
            out[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        out["label"] = np.concatenate([self.label.numpy()[a:b] for a, b in ranges])
        return out

    def _windows(self, generator: torch.Generator | None, shuffle: bool) -> Iterator[dict[str, np.ndarray]]:
        n = len(self)
        blocks = [(a, min(a + self.block_rows, n)) for a in range(0, n, self.block_rows)]
        if shuffle:
            order = torch.randperm(len(blocks), generator=generator).tolist()
            blocks = [blocks[i] for i in order]
        for w in range(0, len(blocks), self.window_blocks):
            ranges = blocks[w : w + self.window_blocks]
            window = self._read(sorted(ranges) if not shuffle else ranges)
            if shuffle:
                perm = torch.randperm(len(window["label"]), generator=generator).numpy()
                window = {k: v[perm] for k, v in window.items()}
            yield window

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = False
    ) -> Iterator[Batch]:
        """Batches in file order, or shuffled (block order + rows within a window of blocks)."""
        carry: dict[str, np.ndarray] | None = None
        for window in self._windows(generator, shuffle):
            if carry is not None:
                window = {k: np.concatenate([carry[k], v]) for k, v in window.items()}
            m = len(window["label"])
            full = m - m % batch_size
            for start in range(0, full, batch_size):
                yield batch_of(window, start, start + batch_size)
            carry = {k: v[full:] for k, v in window.items()} if full < m else None
        if carry is not None and len(carry["label"]) >= (2 if shuffle else 1):
            yield batch_of(carry, 0, len(carry["label"]))


def batch_of(window: dict[str, np.ndarray], a: int, b: int) -> Batch:
    """Rows ``a`` to ``b`` of a window of arrays (``ids``, ``bags``, ``dense``, ``label``) as a batch."""

    def tensor(name: str, dtype: torch.dtype) -> torch.Tensor | None:
        value = window.get(name)
        return torch.from_numpy(np.ascontiguousarray(value[a:b])).to(dtype) if value is not None else None

    ids = tensor("ids", torch.int64)
    assert ids is not None
    label = tensor("label", torch.float32)
    assert label is not None
    return Batch(ids, tensor("bags", torch.int64), tensor("dense", torch.float32), label)

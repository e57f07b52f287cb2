"""The training split as N shards in a prepared folder, and one data-parallel rank's rows streamed.

The layout (the contract for every engine that writes a prepared folder):

- shard ``s`` of ``N`` of the training split is the part ``train-SSSSS-of-NNNNN`` (five digits,
  from ``00000``), stored like any part: ``train-00000-of-00004_ids.npy``, ``_bags.npy``,
  ``_dense.npy`` (those the split has) and ``_label.npy``, next to ``valid_*.npy`` / ``test_*.npy``;
  there is no ``train_*.npy`` then;
- row ``k`` (from 0) of the training split, in the order the unsharded ``train_*.npy`` arrays
  would hold it, is row ``k // N`` of shard ``k % N`` (round robin: every shard is a uniform
  sample of the rows, whatever order the input files have, and sizes differ by at most one);
- ``meta.json`` says ``"shards": {"train": {"count": N, "rows": [rows of shard 0, ...]}}``,
  ``"rows": {"train": ...}`` is the total, and ``"files_written"`` lists every shard file with its
  size and checksum, as for every other file.

Reading: with ``W`` ranks, rank ``r`` streams the shards ``s`` with ``s % W == r`` (``N`` must be a
multiple of ``W``), that is the rows ``k`` with ``k % W == r``; other shards are never opened, so
a node needs only its own ranks' shards. :class:`StreamedRows` streams any list of row ranges of
parts in shuffled blocks, as :class:`~deepfm.data.memmap.MemmapSplit` streams one part: memory
holds one window of blocks and the labels, not the rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepfm.data.batching import Batch, Split
from deepfm.data.memmap import MemmapSplit, NpyColumn, batch_of
from deepfm.errors import ConfigError

COLUMNS = ("ids", "bags", "dense", "label")
Source = tuple[str, int, int]  # (part, first row, stop row) of the part's files


def shard_part(part: str, index: int, count: int) -> str:
    """The part name of shard ``index`` of ``count``: ``train-00003-of-00008``."""
    return f"{part}-{index:05d}-of-{count:05d}"


def shard_sizes(rows: int, count: int) -> list[int]:
    """Rows of every shard when ``rows`` rows are dealt round robin to ``count`` shards."""
    return [rows // count + (1 if s < rows % count else 0) for s in range(count)]


def shard_entry(rows: int, count: int) -> dict[str, Any]:
    """``meta.json``'s ``shards.train`` entry."""
    return {"count": count, "rows": shard_sizes(rows, count)}


def deal(values: np.ndarray, first: int, count: int) -> list[np.ndarray]:
    """Training rows ``first, first + 1, ...`` (``values``), per shard, in order: what each
    shard's files get appended (``k`` goes to shard ``k % count``)."""
    return [values[(s - first) % count :: count] for s in range(count)]


def rank_shards(count: int, rank: int, world: int) -> list[int]:
    """The shards rank ``rank`` of ``world`` reads: those ``s`` with ``s % world == rank``."""
    if count % world:
        raise ConfigError(
            f"the prepared training split has {count} shard(s); {world} data-parallel ranks need a "
            f"multiple of {world} (deepfm prepare --shards {world * max(1, count // world)} ...)"
        )
    return list(range(rank, count, world))


def shard_files(meta: dict[str, Any], shards: list[int]) -> set[str]:
    """Names of the files of ``shards`` (of the training split) in a prepared folder."""
    entry = (meta.get("shards") or {}).get("train")
    if not entry:
        return set()
    parts = {shard_part("train", s, entry["count"]) + "_" for s in shards}
    return {name for name in meta.get("files_written", {}) if any(name.startswith(p) for p in parts)}


class StreamedRows:
    """Row ranges of one or more parts of a prepared folder, streamed in shuffled blocks.

    One training epoch yields exactly ``len(self)`` rows (``rows``: e.g. the same count on every
    rank, the few rows beyond it left out that epoch) in batches. The order is drawn from one
    number of the epoch's generator and ``rank``: every rank consumes the shared generator
    alike, draws its own order, and the same seed, world size and epoch give the same batches
    (a resumed run replays them). Columns are opened on first use.
    """

    def __init__(
        self,
        folder: str | Path,
        sources: list[Source],
        rows: int | None = None,
        rank: int = 0,
        total_rows: int | None = None,
        block_rows: int = 1 << 15,
        window_blocks: int = 8,
    ) -> None:
        self.folder = Path(folder)
        self.sources = [s for s in sources if s[2] > s[1]]
        available = sum(b - a for _, a, b in self.sources)
        self.rows = available if rows is None else min(rows, available)
        self.rank = rank
        self.total_rows = available if total_rows is None else total_rows  # of the whole split
        self.block_rows = block_rows
        self.window_blocks = window_blocks
        self.shard_count: int | None = None  # the sources are all shards of one part, in order
        self._columns: dict[str, dict[str, NpyColumn]] = {}
        self._label: torch.Tensor | None = None

    @classmethod
    def sharded(
        cls, folder: str | Path, part: str, sizes: list[int], shards: list[int] | None = None
    ) -> StreamedRows:
        """``shards`` (default all) of ``part``'s ``len(sizes)`` shards."""
        count = len(sizes)
        chosen = range(count) if shards is None else shards
        split = cls(
            folder, [(shard_part(part, s, count), 0, sizes[s]) for s in chosen], total_rows=sum(sizes)
        )
        split.shard_count = count if shards is None else None
        return split

    def __len__(self) -> int:
        return self.rows

    def part_columns(self, part: str) -> dict[str, NpyColumn]:
        """The ``.npy`` columns of ``part`` (``ids``, ``bags``, ``dense`` those it has, ``label``)."""
        if part not in self._columns:
            found = {}
            for name in COLUMNS:
                path = self.folder / f"{part}_{name}.npy"
                if path.exists():
                    found[name] = NpyColumn(path)
            self._columns[part] = found
        return self._columns[part]

    @property
    def columns(self) -> dict[str, NpyColumn]:
        """The first source's columns (their shapes give the batch layout)."""
        return self.part_columns(self.sources[0][0])

    @property
    def label(self) -> torch.Tensor:
        """The labels of every row of the sources (4 bytes a row, kept in memory)."""
        if self._label is None:
            parts = [
                np.load(self.folder / f"{part}_label.npy", mmap_mode="r")[a:b] for part, a, b in self.sources
            ]
            self._label = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts), dtype=np.float32))
        return self._label

    def num_batches(self, batch_size: int, shuffle: bool = False) -> int:
        full, rest = divmod(len(self), batch_size)
        return full + (1 if rest >= (2 if shuffle else 1) else 0)

    def rank_view(self, rank: int, world: int) -> StreamedRows:
        """Rank ``rank`` of ``world``'s rows of this split: its shards when the sources are the
        shards of one part, else a contiguous ``1/world`` of the rows; ``total_rows // world``
        rows an epoch on every rank (equal steps)."""
        per_rank = self.total_rows // world
        if self.shard_count:
            chosen = [self.sources[s] for s in rank_shards(self.shard_count, rank, world)]
        else:
            chosen = _row_range(self.sources, *_chunk(self.total_rows, rank, world))
        view = StreamedRows(
            self.folder, chosen, per_rank, rank, self.total_rows, self.block_rows, self.window_blocks
        )
        return view

    def in_memory(self) -> Split:
        """Every row of the sources in memory, in the split's own row order (shards interleaved
        back round robin), as :func:`~deepfm.data.prepared.load_split` loads an unsharded part."""
        count = len(self.sources)
        arrays: dict[str, np.ndarray] = {}
        for name in COLUMNS:
            pieces = []
            for part, a, b in self.sources:
                path = self.folder / f"{part}_{name}.npy"
                if path.exists():
                    pieces.append(np.load(path, mmap_mode="r")[a:b])
            if len(pieces) != count:
                continue
            out = np.empty((sum(len(p) for p in pieces), *pieces[0].shape[1:]), dtype=pieces[0].dtype)
            for s, piece in enumerate(pieces):
                out[s::count] = piece
            arrays[name] = out.astype(np.int64) if name in ("ids", "bags") else out
        label = arrays.pop("label")
        return Split.from_arrays(arrays, label)

    # -- reading ---------------------------------------------------------------------------------
    def _blocks(self) -> list[tuple[str, int, int]]:
        return [
            (part, a, min(a + self.block_rows, b))
            for part, start, b in self.sources
            for a in range(start, b, self.block_rows)
        ]

    def _read(self, blocks: list[tuple[str, int, int]]) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {}
        for part, a, b in blocks:
            for name, column in self.part_columns(part).items():
                out.setdefault(name, []).append(column.read(a, b))
        return {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in out.items()}

    def _windows(self, generator: torch.Generator | None, shuffle: bool) -> Iterator[dict[str, np.ndarray]]:
        blocks = self._blocks()
        if shuffle:
            # one draw from the shared generator, whatever this rank's number of blocks
            seed = int(torch.randint(0, 2**62, (), generator=generator))
            own = torch.Generator().manual_seed((seed * 1_000_003 + 7919 * (self.rank + 1)) % 2**63)
            blocks = [blocks[i] for i in torch.randperm(len(blocks), generator=own).tolist()]
        for w in range(0, len(blocks), self.window_blocks):
            window = self._read(blocks[w : w + self.window_blocks])
            if shuffle:
                perm = torch.randperm(len(window["label"]), generator=own).numpy()
                window = {k: v[perm] for k, v in window.items()}
            yield window

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = False
    ) -> Iterator[Batch]:
        """``len(self)`` rows in batches of ``batch_size`` (shuffled: blocks, then rows within a
        window of blocks); a last batch of one row is left out when shuffling."""
        left = len(self)
        carry: dict[str, np.ndarray] | None = None
        for window in self._windows(generator, shuffle):
            if carry is not None:
                window = {k: np.concatenate([carry[k], v]) for k, v in window.items()}
            m = min(len(window["label"]), left)
            full = m - m % batch_size
            for start in range(0, full, batch_size):
                yield batch_of(window, start, start + batch_size)
            left -= full
            carry = {k: v[full:m] for k, v in window.items()} if full < m else None
            if left <= 0 or (carry is not None and len(carry["label"]) == left):
                break
        if carry is not None and len(carry["label"]) >= (2 if shuffle else 1):
            yield batch_of(carry, 0, len(carry["label"]))


def rank_view(split: Any, rank: int, world: int) -> Any:
    """Rank ``rank`` of ``world``'s training rows of a streamed split (sharded: its shards;
    one part on disk: a contiguous ``1/world`` of it); an in-memory split is returned as it is
    (every rank then takes its own slice of each epoch's permutation)."""
    if world <= 1 or isinstance(split, Split):
        return split
    if isinstance(split, MemmapSplit):
        split = StreamedRows(split.folder, [(split.part, split.start, split.start + len(split))])
    return split.rank_view(rank, world)


def _chunk(n: int, rank: int, world: int) -> tuple[int, int]:
    return rank * n // world, (rank + 1) * n // world


def _row_range(sources: list[Source], start: int, stop: int) -> list[Source]:
    """The rows ``start`` to ``stop`` of the concatenated ``sources``, as sources."""
    out, offset = [], 0
    for part, a, b in sources:
        lo, hi = max(a, a + start - offset), min(b, a + stop - offset)
        if hi > lo:
            out.append((part, lo, hi))
        offset += b - a
    return out

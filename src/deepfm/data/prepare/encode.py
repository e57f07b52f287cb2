"""Encoding chunks of raw rows with a fitted feature map, and writing them to ``.npy`` files.

:class:`ChunkEncoder` turns a Polars chunk into the model's arrays (``ids`` [N, F] int32/int64
global rows, ``bags`` [N, S, L] with 0 = padding, ``dense`` [N, K] float32): the same arrays
:meth:`deepfm.data.features.FeatureMap.encode` gives for the same raw rows (``tests/test_prepare.py``).
:class:`NpyWriter` appends rows to a ``.npy`` file of known shape with plain writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from deepfm.data import transforms as tf
from deepfm.data.features import FeatureMap
from deepfm.data.hashing import local_rows
from deepfm.data.prepare.tokens import lists, numbers, tokens
from deepfm.data.spec import DatasetSpec


class ChunkEncoder:
    """Vectorised chunk encoder matching :meth:`FeatureMap.encode` on the same raw rows."""

    def __init__(self, spec: DatasetSpec, fmap: FeatureMap) -> None:
        self.spec = spec
        self.fmap = fmap
        self.specs = {f.name: f for f in spec.fields}
        self.lookups: dict[str, Any] = {}
        for f in fmap.fields:
            if f.kind == "numeric" or f.hash_buckets:
                continue
            if f.vocab and isinstance(f.vocab[0], str):
                self.lookups[f.name] = pl.DataFrame(
                    {"value": f.vocab, "local": np.arange(1, len(f.vocab) + 1, dtype=np.int64)}
                )
            else:
                self.lookups[f.name] = pd.Index(f.vocab)
        self.dtype = np.int32 if fmap.num_rows < 2**31 else np.int64

    def local(self, name: str, values: pl.Series) -> np.ndarray:
        """Local rows (1 + vocab position; 0 = OOV) of ``values``."""
        buckets = self.fmap.field(name).hash_buckets
        if buckets:
            return local_rows(values.to_numpy(), buckets)
        lookup = self.lookups[name]
        if isinstance(lookup, pd.Index):
            return (
                lookup.get_indexer(values.to_numpy()) + 1 if len(lookup) else np.zeros(len(values), np.int64)
            )
        frame = pl.DataFrame({"value": values.cast(pl.String)})
        joined = frame.join(lookup, on="value", how="left", maintain_order="left")
        return joined["local"].fill_null(0).to_numpy()

    def encode(self, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        n = frame.height
        cats, seqs, nums = self.fmap.categorical, self.fmap.multi, self.fmap.numerics
        out: dict[str, np.ndarray] = {"ids": np.empty((n, len(cats)), dtype=self.dtype)}
        for j, f in enumerate(cats):
            out["ids"][:, j] = self.local(f.name, tokens(self.specs[f.name], frame, f.transform)) + f.offset
        if seqs:
            width = max(f.max_len for f in seqs)
            bags = np.zeros((n, len(seqs), width), dtype=self.dtype)
            for j, f in enumerate(seqs):
                values = lists(frame, self.specs[f.name]).list.head(f.max_len)
                flat = pl.DataFrame({"v": values}).with_row_index("row").explode("v").drop_nulls("v")
                flat = flat.with_columns(pl.int_range(pl.len()).over("row").alias("pos"))
                rows, pos = flat["row"].to_numpy(), flat["pos"].to_numpy()
                bags[rows, j, pos] = self.local(f.name, flat["v"]) + f.offset
            out["bags"] = bags
        if nums:
            dense = np.empty((n, len(nums)), dtype=np.float32)
            for j, f in enumerate(nums):
                transform = {k: v for k, v in (f.transform or {}).items() if k != "pattern"}
                dense[:, j] = tf.apply(transform, numbers(frame, self.specs[f.name]))
            out["dense"] = dense
        return out


class NpyWriter:
    """Appends rows to a ``.npy`` file of known shape with plain writes.

    Not a memory map: written pages stay in the page cache instead of the process's RSS, so
    memory does not grow with the output size.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any) -> None:
        header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        offset = header.offset
        del header
        self.dtype = np.dtype(dtype)
        self.file = open(path, "r+b")  # noqa: SIM115 - closed in close()
        self.file.seek(offset)

    def write(self, rows: np.ndarray) -> None:
        np.ascontiguousarray(rows, dtype=self.dtype).tofile(self.file)

    def close(self) -> None:
        self.file.close()

"""Feature map: the vocabulary of every field and where it lives in the fused embedding table.

Global index layout of the one shared table (TorchRec's "sparse part"):

* row 0 is padding (always zero, never trained), used to pad multi-valued fields;
* each field owns ``size = len(vocab) + 1`` consecutive rows starting at ``offset``;
  the first of them is the field's out-of-vocabulary (OOV) row, then one row per known value.

Vocabularies are built from the training split only (``min_count`` drops rare values to OOV,
``max_vocab`` keeps the most frequent), so ids never seen in training, at test or predict time,
map to their field's OOV row and never crash. A warm-started run (``--init-from``) extends the
previous run's vocabulary: its values keep their order, new ones are appended (``choose_vocab``).
A hashed field (``hash_buckets: B``) has no vocabulary: it owns ``1 + B`` rows and a value's row
is ``1 + xxh64(text) % B`` (see :mod:`deepfm.data.hashing`).
Vocabularies are fitted by the prepare stage (:mod:`deepfm.data.prepare.stats`); this pandas
encoder serves trained models (predict, evaluate, recommend), vectorised with
``pandas.Index.get_indexer`` (a hash lookup, no Python per row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from deepfm.data.hashing import HASH_NAME
from deepfm.errors import DataError

FieldKind = Literal["categorical", "multi", "numeric"]
OLD_KINDS = {"sequence": "multi"}  # kind names in files written by earlier versions


@dataclass
class Field:
    """One input field.

    ``categorical`` holds one value a row, ``multi`` a list of values (pooled into one vector),
    ``numeric`` a float that scales the field's own embedding vector (no table rows).
    """

    name: str
    kind: FieldKind = "categorical"
    vocab: list[Any] = field(default_factory=list)
    offset: int = 0
    max_len: int = 0  # multi-valued fields: values kept per row (longer lists are cut)
    pooling: str = "mean"  # multi-valued fields: "mean" or "sum"
    transform: dict[str, Any] | None = None  # spec-declared transform (see deepfm.data.transforms)
    hash_buckets: int = 0  # > 0: hashed field, 1 + hash_buckets rows, no vocabulary

    @property
    def size(self) -> int:
        """Rows this field owns in the fused table (numeric fields own none)."""
        if self.kind == "numeric":
            return 0
        return 1 + (self.hash_buckets or len(self.vocab))

    @property
    def source(self) -> str:
        """The raw column this field is read from."""
        return (self.transform or {}).get("column", self.name)

    def values(self, frame: pd.DataFrame) -> Any:
        """This field's raw column, transformed when the field declares a transform."""
        if not self.transform:
            return frame[self.name]
        from deepfm.data.transforms import apply

        return apply(self.transform, frame[self.source])

    def index(self) -> pd.Index:
        """The vocabulary as a hash index, built once (building it costs ~2 ms per 6k values)."""
        cached = self.__dict__.get("_index")
        if cached is None or len(cached) != len(self.vocab):
            cached = self.__dict__["_index"] = pd.Index(self.vocab)
        return cached

    def encode(self, values: pd.Series | np.ndarray, index: pd.Index | None = None) -> np.ndarray:
        """Global row indices of ``values`` (unseen values go to this field's OOV row)."""
        if self.hash_buckets:
            from deepfm.data.hashing import local_rows

            return local_rows(values, self.hash_buckets) + self.offset
        local = (index if index is not None else self.index()).get_indexer(np.asarray(values)) + 1
        return (local + self.offset).astype(np.int64)


@dataclass
class FeatureMap:
    """The ordered fields of a data set plus their offsets in the fused embedding table."""

    fields: list[Field]

    def with_offsets(self) -> FeatureMap:
        offset = 1  # row 0 is padding
        for f in self.fields:
            f.offset = offset
            offset += f.size
        return self

    @property
    def num_rows(self) -> int:
        """Rows of the fused embedding table (padding row included)."""
        return 1 + sum(f.size for f in self.fields)

    @property
    def categorical(self) -> list[Field]:
        return [f for f in self.fields if f.kind == "categorical"]

    @property
    def multi(self) -> list[Field]:
        """The multi-valued fields (bags of values: ``bags`` in batches and model inputs)."""
        return [f for f in self.fields if f.kind == "multi"]

    @property
    def numerics(self) -> list[Field]:
        return [f for f in self.fields if f.kind == "numeric"]

    def field(self, name: str) -> Field:
        """The field called ``name`` (else the first one read from a raw column of that name)."""
        for f in self.fields:
            if f.name == name:
                return f
        for f in self.fields:
            if f.source == name:
                return f
        raise KeyError(name)

    def encode(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Encode raw columns into model inputs.

        ``ids`` [N, F] int64 for categorical fields, ``bags`` [N, S, L] int64 for multi-valued fields
        (0 = padding), ``dense`` [N, K] float32 for numeric fields (missing -> 0).
        """
        missing = sorted({f.source for f in self.fields if f.source not in frame.columns})
        if missing:
            raise DataError(f"missing column(s) {missing}; expected {[f.source for f in self.fields]}")
        n = len(frame)
        out: dict[str, np.ndarray] = {}
        cats = self.categorical
        ids = np.empty((n, len(cats)), dtype=np.int64)
        for j, f in enumerate(cats):
            ids[:, j] = f.encode(f.values(frame))
        out["ids"] = ids
        seqs = self.multi
        if seqs:
            width = max(f.max_len for f in seqs)
            bags = np.zeros((n, len(seqs), width), dtype=np.int64)
            for j, f in enumerate(seqs):
                bags[:, j, :] = _encode_lists(f, pd.Series(f.values(frame)), width)
            out["bags"] = bags
        nums = self.numerics
        if nums:
            dense = np.empty((n, len(nums)), dtype=np.float32)
            for j, f in enumerate(nums):
                column = np.asarray(f.values(frame)) if f.transform else frame[f.name]
                dense[:, j] = pd.to_numeric(pd.Series(column), errors="coerce").to_numpy(np.float32)
            out["dense"] = np.nan_to_num(dense, nan=0.0)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "fields": [
                {
                    "name": f.name,
                    "kind": f.kind,
                    "vocab": [_jsonable(v) for v in f.vocab],
                    "offset": f.offset,
                    "max_len": f.max_len,
                    "pooling": f.pooling,
                    **({"transform": f.transform} if f.transform else {}),
                    **({"hash_buckets": f.hash_buckets, "hash": HASH_NAME} if f.hash_buckets else {}),
                }
                for f in self.fields
            ]
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureMap:
        fields = []
        for raw in data["fields"]:
            raw = dict(raw)
            name = raw.pop("hash", HASH_NAME)
            if name != HASH_NAME:
                field_name = raw.get("name")
                raise DataError(f"field {field_name!r}: unknown hash {name!r} (this deepfm has {HASH_NAME})")
            raw["kind"] = OLD_KINDS.get(raw.get("kind", "categorical"), raw.get("kind", "categorical"))
            fields.append(Field(**raw))
        return cls(fields)


def base_vocab(base: FeatureMap | None, name: str, kind: str) -> list[Any] | None:
    """The vocabulary of field ``name`` in a warm start's ``base`` map (None: no such counted field)."""
    if base is None:
        return None
    try:
        f = base.field(name)
    except KeyError:
        return None
    return list(f.vocab) if f.kind == kind and not f.hash_buckets else None


def choose_vocab(
    values: list[Any],
    counts: np.ndarray,
    min_count: int = 1,
    max_vocab: int = 0,
    base: list[Any] | None = None,
    prune_below: int = 0,
) -> list[Any]:
    """A field's vocabulary from its training ``values`` and their ``counts``.

    Values seen at least ``min_count`` times; with ``max_vocab`` only the most frequent of them
    (ties by value); sorted for stability. With ``base`` (a warm start): the base values first, in
    their order (those seen fewer than ``prune_below`` times dropped when ``prune_below`` > 0),
    then the new values. ``max_vocab`` caps the total: when base and new values together are
    more, the ``max_vocab`` most frequent in the new training data are kept (a base value absent
    from it counts 0; on equal counts a base value wins, then base order, then the new values by
    value), so the cap holds and a frequent new value takes the place of a vanished old one.
    """
    counts = np.asarray(counts)
    keep = counts >= min_count
    kept = [v for v, k in zip(values, keep) if k]
    kept_counts = counts[keep]
    if base is None:
        if max_vocab and len(kept) > max_vocab:
            order = sorted(range(len(kept)), key=lambda i: (-int(kept_counts[i]), _sort_key(kept[i])))
            kept = [kept[i] for i in order[:max_vocab]]
        return sorted(kept, key=_sort_key)
    seen = dict(zip(values, counts.tolist()))
    old = [v for v in base if not prune_below or seen.get(v, 0) >= prune_below]
    known = set(base)
    fresh = [(v, int(c)) for v, c in zip(kept, kept_counts) if v not in known]
    if max_vocab and len(old) + len(fresh) > max_vocab:
        ranked = [(-int(seen.get(v, 0)), 0, i, (0, 0), v) for i, v in enumerate(old)]
        ranked += [(-c, 1, 0, _sort_key(v), v) for v, c in fresh]
        chosen = {r[-1] for r in sorted(ranked, key=lambda r: r[:4])[:max_vocab]}
        old = [v for v in old if v in chosen]
        fresh = [(v, c) for v, c in fresh if v in chosen]
    return old + sorted((v for v, _ in fresh), key=_sort_key)


def _encode_lists(f: Field, column: pd.Series, width: int) -> np.ndarray:
    """Pad/cut each row's list to ``width`` global indices; padding is row 0, unseen values OOV."""
    lists = column.reset_index(drop=True)
    lists = lists.where(lists.map(lambda v: isinstance(v, (list, tuple, np.ndarray))), None)
    flat = lists.explode().dropna()
    rows = flat.index.to_numpy()
    pos = flat.groupby(level=0).cumcount().to_numpy()
    keep = pos < f.max_len
    out = np.zeros((len(column), width), dtype=np.int64)
    out[rows[keep], pos[keep]] = f.encode(flat.to_numpy()[keep])
    return out


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float, np.integer, np.floating)) else (1, str(value))


def _jsonable(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value

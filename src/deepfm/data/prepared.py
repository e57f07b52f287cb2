"""A prepared data set: the feature map, the three encoded parts, side tables and facts about it.

:func:`load_prepared` reads a prepared folder (what the prepare stage writes): parts up to
``IN_MEMORY_BYTES`` are loaded into memory as :class:`~deepfm.data.batching.Split`, larger ones
stream from disk (:class:`~deepfm.data.memmap.MemmapSplit`); a data-parallel rank streams its
own share of a streamed or sharded training split (:mod:`deepfm.data.shards`). :class:`DataFacts`
is what a trained model keeps of its data (``model.pt``'s ``extras``): the spec, the user / item roles, the
recommendation index, hashing and bad-line counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepfm.data.batching import Split
from deepfm.data.features import FeatureMap
from deepfm.data.memmap import MemmapSplit
from deepfm.data.rated import build_rated
from deepfm.data.shards import StreamedRows, rank_view
from deepfm.data.spec import PARTS
from deepfm.data.tables import Tables

IN_MEMORY_BYTES = 1 << 30  # arrays up to this size are loaded into memory; larger ones stream
TABLE_FILE = "table_{key}.parquet"


@dataclass
class DataFacts:
    """Facts about the data a model was trained on; saved in ``model.pt`` as ``extras``.

    ``to_dict`` / ``from_dict`` keep the keys earlier versions wrote (``spec``, ``ranking``,
    ``leave_last``, ``rated``, ``hashing``, ``bad_lines_skipped``, ``ignored_tokens``, ``cache``),
    only those set."""

    spec: dict[str, Any] | None = None  # DatasetSpec.to_dict() of the data set
    ranking: dict[str, str] | None = None  # {"user": field, "item": field}
    leave_last: bool = False  # held-out rows are each user's latest (ranking metrics apply)
    rated: dict[str, Any] | None = None  # what each user rated in training (deepfm.data.rated)
    hashing: dict[str, Any] | None = None  # hashed fields: buckets, distinct values, collisions
    bad_lines_skipped: int | None = None
    ignored_tokens: int | None = None  # libsvm tokens outside every index_range field
    cache: str | None = None  # the prepared folder
    other: dict[str, Any] = field(default_factory=dict)  # keys of a newer version, kept as they are

    @property
    def user(self) -> str | None:
        return (self.rated or {}).get("user") or (self.ranking or {}).get("user")

    @property
    def item(self) -> str | None:
        return (self.rated or {}).get("item") or (self.ranking or {}).get("item")

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "other" and v not in (None, False)}
        return {**out, **self.other}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DataFacts:
        data = dict(data or {})
        known = {k: data.pop(k) for k in list(data) if k in cls.__dataclass_fields__ and k != "other"}
        return cls(**known, other=data)


@dataclass
class PreparedData:
    name: str
    feature_map: FeatureMap
    train: Split | MemmapSplit | StreamedRows
    valid: Split | MemmapSplit
    test: Split | MemmapSplit
    tables: Tables = field(default_factory=dict)
    facts: DataFacts = field(default_factory=DataFacts)

    @property
    def train_rows(self) -> int:
        """Rows of the whole training split (a data-parallel rank may stream only its share)."""
        return int(getattr(self.train, "total_rows", len(self.train)))

    def for_rank(self, rank: int, world: int) -> PreparedData:
        """The data rank ``rank`` of ``world`` trains on: a streamed training split becomes that
        rank's share (:func:`deepfm.data.shards.rank_view`); in memory, every rank keeps it all."""
        train = rank_view(self.train, rank, world)
        if train is self.train:
            return self
        return PreparedData(
            self.name, self.feature_map, train, self.valid, self.test, self.tables, self.facts
        )

    def summary(self) -> dict[str, Any]:
        summary = {
            "dataset": self.name,
            "rows": {"train": self.train_rows, "valid": len(self.valid), "test": len(self.test)},
            "positive_rate_train": float(self.train.label.mean()) if len(self.train) else 0.0,
            "fields": {f.name: f.size for f in self.feature_map.fields},
        }
        if self.facts.hashing:  # hashed fields: buckets, distinct values, collision rate
            summary["hashing"] = self.facts.hashing
        if self.facts.ignored_tokens is not None:  # libsvm: tokens outside every index_range field
            summary["ignored_tokens"] = self.facts.ignored_tokens
        return summary


def load_split(folder: Path, part: str) -> Split:
    arrays = {}
    for name in ("ids", "bags"):
        path = folder / f"{part}_{name}.npy"
        if path.exists():
            arrays[name] = np.load(path).astype(np.int64)
    if (folder / f"{part}_dense.npy").exists():
        arrays["dense"] = np.load(folder / f"{part}_dense.npy")
    return Split.from_arrays(arrays, np.load(folder / f"{part}_label.npy"))


def load_prepared(
    folder: str | Path, in_memory: bool | None = None, rank: int = 0, world: int = 1
) -> PreparedData:
    """The prepared data set in ``folder`` (parts in memory up to ``IN_MEMORY_BYTES``).

    A sharded training split is read back in memory in its own row order when it fits (one
    process), else streamed; with ``world`` > 1 rank ``rank`` streams its own shards, or its
    share of a streamed unsharded split (:meth:`PreparedData.for_rank`)."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    fmap = FeatureMap.from_dict(json.loads((folder / "feature_map.json").read_text()))
    written = meta.get("files_written") or {p.name: {"bytes": p.stat().st_size} for p in folder.glob("*.npy")}
    size = sum(entry["bytes"] for name, entry in written.items() if name.endswith(".npy"))
    load_all = size <= IN_MEMORY_BYTES if in_memory is None else in_memory
    valid, test = (load_split(folder, part) if load_all else MemmapSplit(folder, part) for part in PARTS[1:])
    shards = (meta.get("shards") or {}).get("train")
    if shards:  # opened lazily: a rank reads only its own shards
        train: Split | MemmapSplit | StreamedRows = StreamedRows.sharded(folder, "train", shards["rows"])
        if load_all and world <= 1:
            train = train.in_memory()
    else:
        train = load_split(folder, "train") if load_all else MemmapSplit(folder, "train")
    tables = {key: pd.read_parquet(folder / TABLE_FILE.format(key=key)) for key in meta.get("tables", [])}
    roles = meta.get("roles") or {}
    facts = DataFacts(
        spec=meta["spec"],
        ranking=roles or None,
        leave_last=meta["spec"]["split"]["method"] == "leave_last",
        hashing=meta.get("hashing"),
        bad_lines_skipped=meta["bad_lines_skipped"],
        ignored_tokens=meta.get("ignored_tokens"),
        cache=str(folder),
    )
    if roles.get("user") and roles.get("item") and isinstance(train, Split):  # recommend's index
        facts.rated = build_rated(fmap, train, roles["user"], roles["item"])
    return PreparedData(meta["name"], fmap, train, valid, test, tables, facts).for_rank(rank, world)

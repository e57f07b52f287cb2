"""Built-in data sets and the one pipeline every data set goes through.

``load_raw`` reads a data set into a pandas frame of raw columns plus a 0/1 ``label`` column;
``prepare`` splits it (seeded 80/10/10), fits the feature map on the training part only and
encodes the three parts into tensors. A data set is registered with one :class:`DatasetInfo`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepfm.data.batching import Split
from deepfm.data.features import FeatureMap, FieldKind
from deepfm.data.rated import build_rated
from deepfm.data.split import leave_last_split, random_split
from deepfm.data.tables import Tables, join_tables
from deepfm.errors import ConfigError, DataError


@dataclass
class DataOptions:
    """Options that change what a data set's rows and fields are."""

    features: str = "ids"  # "ids" (the reference) or "all" (side features where a data set has them)
    drop_neutral: bool = False  # MovieLens: drop rating-3 rows instead of labelling them 0
    min_count: int = 1
    on_bad_lines: str = "error"  # streamed (spec) data sets: "error" or "skip" malformed rows
    split: str = "random"  # "random" (80/10/10) or "leave-last" (each user's last row is test)
    max_vocab: int = 0  # keep at most this many values per field, the most frequent (0 = all)
    base: FeatureMap | None = None  # warm start: extend this feature map's vocabularies
    prune_below: int = 0  # warm start: drop base values seen fewer times in the new training data


@dataclass
class RawData:
    """A data set's raw table: field columns plus ``label`` (0/1)."""

    frame: pd.DataFrame
    fields: list[str]
    kinds: dict[str, FieldKind] = field(default_factory=dict)
    tables: Tables = field(default_factory=dict)  # side tables, joined on their key column
    extras: dict[str, Any] = field(default_factory=dict)  # JSON-able facts kept with the model
    transforms: dict[str, dict[str, Any]] = field(default_factory=dict)  # field -> raw-column transform


@dataclass
class DatasetInfo:
    name: str
    description: str
    load: Callable[[Path | None, DataOptions], RawData]
    spec: Callable[[Path | None], Any] | None = None  # a DatasetSpec: streamed + cached instead of load


@dataclass
class PreparedData:
    name: str
    feature_map: FeatureMap
    train: Split
    valid: Split
    test: Split
    tables: Tables = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # checkpointed: plain values and tensors

    def summary(self) -> dict[str, Any]:
        summary = {
            "dataset": self.name,
            "rows": {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)},
            "positive_rate_train": float(self.train.label.mean()) if len(self.train) else 0.0,
            "fields": {f.name: f.size for f in self.feature_map.fields},
        }
        if self.extras.get("hashing"):  # hashed fields: buckets, distinct values, collision rate
            summary["hashing"] = self.extras["hashing"]
        if "ignored_tokens" in self.extras:  # libsvm: tokens outside every index_range field
            summary["ignored_tokens"] = self.extras["ignored_tokens"]
        return summary


REGISTRY: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo) -> DatasetInfo:
    REGISTRY[info.name] = info
    return info


def dataset_names() -> list[str]:
    _load_builtins()
    return sorted(REGISTRY)


def load_raw(name: str, data_dir: str | Path | None, options: DataOptions) -> RawData:
    _load_builtins()
    if name not in REGISTRY:
        raise ConfigError(f"unknown dataset {name!r}; built-in data sets are {sorted(REGISTRY)}")
    return REGISTRY[name].load(Path(data_dir) if data_dir is not None else None, options)


def prepare(
    name: str,
    data_dir: str | Path | None = None,
    options: DataOptions | None = None,
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> PreparedData:
    """Read, split, fit the vocabularies on train and encode all three parts."""
    options = options or DataOptions()
    _load_builtins()
    info = REGISTRY.get(name)
    if info is not None and info.spec is not None:
        from deepfm.data.preprocess import prepare_spec_options

        spec = info.spec(Path(data_dir) if data_dir is not None else None)
        return prepare_spec_options(spec, options, seed)
    raw = load_raw(name, data_dir, options)
    return prepare_raw(name, raw, options, seed, ratios)


def prepare_raw(
    name: str,
    raw: RawData,
    options: DataOptions,
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> PreparedData:
    frame = join_tables(raw.frame, raw.tables)
    if len(frame) < 10:
        raise DataError(f"data set {name!r} has {len(frame)} rows; at least 10 are needed to split")
    extras = dict(raw.extras)
    if options.split == "leave-last":
        for column in ("user_id", "timestamp"):
            if column not in frame.columns:
                raise ConfigError(f"--split leave-last needs {column!r}; data set {name!r} has none")
        parts = leave_last_split(frame["user_id"].to_numpy(), frame["timestamp"].to_numpy(), seed)
        extras.update(leave_last=True, ranking={"user": "user_id", "item": "movie_id"})
    else:
        parts = random_split(len(frame), ratios, seed)
    train_idx, valid_idx, test_idx = parts
    train_frame = frame.iloc[train_idx]
    fmap = FeatureMap.fit(
        train_frame,
        raw.fields,
        raw.kinds,
        min_count=options.min_count,
        max_vocab=options.max_vocab,
        base=options.base,
        prune_below=options.prune_below,
    )
    for field_name, transform in raw.transforms.items():  # e.g. hour <- timestamp, also at predict time
        fmap.field(field_name).transform = transform
    label = frame["label"].to_numpy(dtype=np.float32)

    def encode(idx: np.ndarray) -> Split:
        return Split.from_arrays(fmap.encode(frame.iloc[idx]), label[idx])

    train = encode(train_idx)
    rated = build_rated(fmap, train)  # for `deepfm recommend`: what each user rated in training
    if rated is not None:
        extras["rated"] = rated
    return PreparedData(name, fmap, train, encode(valid_idx), encode(test_idx), raw.tables, extras)


# Modules that register built-in data sets when imported (each calls ``register``).
BUILTIN_MODULES = ("deepfm.data.builtin", "deepfm.data.ctr_datasets")
_BUILTINS_LOADED = False


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        import importlib

        for module in BUILTIN_MODULES:
            importlib.import_module(module)

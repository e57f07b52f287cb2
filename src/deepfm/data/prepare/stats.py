"""Statistics of the training rows and the feature map fitted from them.

One streaming pass counts every field's values on the training rows (merged every few chunks),
keeps a uniform sample of quantile fields and the moments of standardised ones, and the distinct
hashes of hashed fields; :func:`feature_map` turns them into vocabularies (``min_count``,
``max_vocab``, a warm start's base map) and transforms (mean/std, quantile edges).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from deepfm.data import transforms as tf
from deepfm.data.features import FeatureMap, Field, base_vocab, choose_vocab
from deepfm.data.hashing import CollisionStats
from deepfm.data.options import PrepareOptions
from deepfm.data.prepare.rows import Rows
from deepfm.data.prepare.tokens import lists, numbers, tokens
from deepfm.data.readers import BadLines
from deepfm.data.spec import TIME_TRANSFORMS, DatasetSpec, FieldSpec
from deepfm.errors import DataError

SAMPLE_SIZE = 100_000  # values kept per quantile field to find its edges
MERGE_EVERY = 16  # chunks of category counts merged at a time


class Counts:
    """Category counts of one field over the training rows, merged every few chunks."""

    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []
        self.merged: pl.DataFrame | None = None
        self.longest = 0

    def add(self, values: pl.Series) -> None:
        self.frames.append(values.rename("value").value_counts(name="count"))
        if len(self.frames) >= MERGE_EVERY:
            self._merge()

    def _merge(self) -> None:
        frames = ([self.merged] if self.merged is not None else []) + self.frames
        self.frames = []
        if frames:
            self.merged = pl.concat(frames).group_by("value").agg(pl.col("count").sum())

    def vocab(
        self, min_count: int, max_vocab: int = 0, base: list[Any] | None = None, prune: int = 0
    ) -> list[Any]:
        """The field's vocabulary (see :func:`deepfm.data.features.choose_vocab`)."""
        self._merge()
        if self.merged is None:
            return choose_vocab([], np.zeros(0, np.int64), min_count, max_vocab, base, prune)
        merged = self.merged
        if base is None or not (prune or max_vocab):  # only values that can be kept matter (a warm
            # start with a cap or a pruning rule also needs the counts of the base's values)
            merged = merged.filter(pl.col("count") >= min_count)
        values, counts = merged["value"].to_list(), merged["count"].to_numpy()
        return choose_vocab(values, counts, min_count, max_vocab, base, prune)


class Sample:
    """A uniform sample of a numeric field's training values (bottom-k of random keys)."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self.values = np.empty(0)
        self.keys = np.empty(0)

    def add(self, x: np.ndarray) -> None:
        x = x[~np.isnan(x)]
        values = np.concatenate([self.values, x])
        keys = np.concatenate([self.keys, self.rng.random(len(x))])
        if len(values) > self.size:
            keep = np.argpartition(keys, self.size)[: self.size]
            values, keys = values[keep], keys[keep]
        self.values, self.keys = values, keys


@dataclass
class Moments:
    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, x: np.ndarray) -> None:
        x = x[~np.isnan(x)]
        self.n += len(x)
        self.total += float(x.sum())
        self.squares += float(np.square(x).sum())

    def mean_std(self) -> tuple[float, float]:
        if self.n == 0:
            return 0.0, 1.0
        mean = self.total / self.n
        var = max(self.squares / self.n - mean * mean, 0.0)
        return mean, (var**0.5 if var > 1e-24 else 1.0)


@dataclass
class Stats:
    """What pass 1 learned: per-field statistics on the training rows, rows and positives per part."""

    counts: dict[str, Counts] = field(default_factory=dict)
    samples: dict[str, Sample] = field(default_factory=dict)
    moments: dict[str, Moments] = field(default_factory=dict)
    hashed: dict[str, CollisionStats] = field(default_factory=dict)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))
    positives: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))
    ignored_tokens: int = 0  # libsvm tokens outside every index_range (all parts)
    edges: dict[str, list[float]] = field(default_factory=dict)  # quantile edges an engine found itself


def labels(spec: DatasetSpec, frame: pl.DataFrame) -> np.ndarray:
    """0/1 labels of a chunk by the spec's label rule."""
    label = spec.label
    return label.as_rule().holds(frame[label.column].to_numpy()).astype(np.float32)


def collect(rows: Rows, bad: BadLines) -> Stats:
    spec = rows.spec
    fixed = ("quantile", "bucket")  # vocabularies of bucket numbers: nothing to count
    stats = Stats(
        counts={
            f.name: Counts()
            for f in spec.fields
            if f.model_kind != "numeric" and f.transform not in fixed and not f.hash_buckets
        },
        samples={
            f.name: Sample(SAMPLE_SIZE, np.random.default_rng(rows.seed + 1))
            for f in spec.fields
            if f.transform == "quantile"
        },
        moments={f.name: Moments() for f in spec.fields if f.model_kind == "numeric"},
        hashed={f.name: CollisionStats(f.hash_buckets) for f in spec.fields if f.hash_buckets},
    )
    for chunk, parts in rows.stream(bad):
        stats.ignored_tokens += chunk.ignored
        stats.rows += np.bincount(parts, minlength=3)
        y = labels(spec, chunk.frame)
        stats.positives += np.bincount(parts, weights=y, minlength=3).astype(np.int64)
        train = chunk.frame.filter(pl.Series(parts == 0))
        if train.height == 0:
            continue
        for f in spec.fields:
            if f.name in stats.moments:
                stats.moments[f.name].add(numbers(train, f))
            elif f.name in stats.samples:
                stats.samples[f.name].add(numbers(train, f))
            elif f.name in stats.hashed:  # no vocabulary: only the distinct hashes, for the collision rate
                stats.hashed[f.name].add(tokens(f, train).to_numpy())
            elif f.kind == "multi":
                values = lists(train, f)
                counts = stats.counts[f.name]
                counts.longest = max(counts.longest, int(values.list.len().max() or 0))
                counts.add(values.explode().drop_nulls())
            elif f.name in stats.counts:
                stats.counts[f.name].add(tokens(f, train))
    return stats


def check_rows(spec: DatasetSpec, rows: np.ndarray) -> None:
    """At least 10 usable rows, some of them for training (``rows``: per part)."""
    if rows.sum() < 10 or rows[0] == 0:
        raise DataError(
            f"data set {spec.name!r} has {int(rows.sum())} usable rows ({int(rows[0])} for training); "
            "at least 10 are needed"
        )


def vocab_limits(f: FieldSpec, spec: DatasetSpec, options: PrepareOptions) -> tuple[int, int]:
    """A field's ``min_count`` and ``max_vocab`` (0: no cap): its own, the spec's and the options'."""
    min_count = max(f.min_count or spec.min_count, options.min_count)
    max_vocab = min(v for v in (f.max_vocab, options.max_vocab, 1 << 62) if v)
    return min_count, 0 if max_vocab == 1 << 62 else max_vocab


def feature_map(
    spec: DatasetSpec, stats: Stats, options: PrepareOptions, base: FeatureMap | None = None
) -> FeatureMap:
    """Every field's vocabulary and transform, fitted on the training rows' statistics."""
    fields = []
    for f in spec.fields:
        min_count, max_vocab = vocab_limits(f, spec, options)
        old = base_vocab(base, f.name, f.model_kind)
        old_transform = _base_transform(base, f.name)
        pattern = {"pattern": f.pattern} if f.pattern else {}
        if f.hash_buckets:
            transform = {"type": "string", "column": f.source}
            fields.append(Field(f.name, "categorical", [], transform=transform, hash_buckets=f.hash_buckets))
        elif f.model_kind == "numeric":
            mean, std = stats.moments[f.name].mean_std()
            transform = {"type": "standardize", "column": f.source, **pattern, "mean": mean, "std": std}
            if old_transform and old_transform.get("type") == "standardize":
                transform = old_transform  # a warm start keeps what the numbers mean
            fields.append(Field(f.name, "numeric", transform=transform))
        elif f.transform in ("quantile", "bucket"):
            if f.transform == "bucket":
                edges = list(f.edges or [])
            elif f.name in stats.edges:  # found by the engine itself (Spark's approximate quantiles)
                edges = stats.edges[f.name]
            else:
                edges = tf.quantile_edges(stats.samples[f.name].values, f.buckets)
            transform = {"type": f.transform, "column": f.source, **pattern, "edges": list(edges)}
            if old_transform and old_transform.get("type") == f.transform:
                transform = old_transform  # same bucket edges: the old bucket rows stay meaningful
                edges = transform["edges"]
            vocab = [tf.MISSING, *range(len(edges) + 1)]
            fields.append(Field(f.name, "categorical", vocab, transform=transform))
        elif f.kind == "multi":
            counts = stats.counts[f.name]
            max_len = min(f.max_len or counts.longest, counts.longest) or 1
            transform = {"type": "split", "column": f.source, "sep": f.separator}
            vocab = counts.vocab(min_count, max_vocab, old, options.prune_below)
            fields.append(
                Field(f.name, "multi", vocab, max_len=max_len, pooling=f.pooling, transform=transform)
            )
        else:
            transform = {"type": f.transform or "string", "column": f.source, **pattern}
            if f.transform in TIME_TRANSFORMS:
                transform["time_format"] = f.time_format
            vocab = stats.counts[f.name].vocab(min_count, max_vocab, old, options.prune_below)
            fields.append(Field(f.name, "categorical", vocab, transform=transform))
    if base is not None:  # a warm start: the base's fields keep their places (the model's input
        # blocks line up by field name whatever the spec's order), new fields come after them
        place = {g.name: i for i, g in enumerate(base.fields)}
        fields.sort(key=lambda f: place.get(f.name, len(place)))
    return FeatureMap(fields).with_offsets()


def _base_transform(base: FeatureMap | None, name: str) -> dict[str, Any] | None:
    if base is None:
        return None
    try:
        return base.field(name).transform
    except KeyError:
        return None

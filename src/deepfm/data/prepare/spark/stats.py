"""Statistics of the training rows as Spark jobs; the feature map is then fitted from them by the
default engine's own code (:func:`deepfm.data.prepare.stats.feature_map`), so vocabularies,
offsets and transforms follow one rule.

Jobs: rows and positives per part; every counted field's value counts (one aggregation over all
fields, only values reaching the field's ``min_count`` come back to the driver, which must hold
the vocabularies anyway to write ``feature_map.json``); moments of standardised fields and the
longest bag; the distinct hashes of hashed fields (collision report); quantile edges: those of
all training values when they are at most the default engine's sample size (100,000: the default
engine's sample then holds them all, so both give the same edges), else Spark's
``approxQuantile`` with relative error :data:`QUANTILE_ERROR` (the edge at probability ``p`` has a
rank within ``p * n +- QUANTILE_ERROR * n`` of the training values; the default engine's edges
are those of a uniform 100,000-value sample, whose rank error is about ``0.0016 * n``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from deepfm.data import transforms as tf
from deepfm.data.features import choose_vocab
from deepfm.data.options import PrepareOptions
from deepfm.data.prepare.spark.read import Read
from deepfm.data.prepare.spark.tokens import hash_bucket, lists, numbers, tokens, xxh64
from deepfm.data.prepare.stats import SAMPLE_SIZE, Counts, Moments, Stats, vocab_limits
from deepfm.data.spec import DatasetSpec, FieldSpec

QUANTILE_ERROR = 1e-4  # relative rank error of quantile edges (Spark's approxQuantile)
LONG_TOKENS = ("log2bucket", "hour_of_day", "weekday")  # fields whose tokens are numbers


class Counted(Counts):
    """A field's training values that reached its ``min_count``, with their counts."""

    def __init__(self, values: list[Any], counts: list[int], longest: int = 0) -> None:
        super().__init__()
        self.values, self.counts, self.longest = values, np.asarray(counts, dtype=np.int64), longest

    def vocab(
        self, min_count: int, max_vocab: int = 0, base: list[Any] | None = None, prune: int = 0
    ) -> list[Any]:
        keep = self.counts >= min_count
        values = [v for v, k in zip(self.values, keep) if k]
        return choose_vocab(values, self.counts[keep], min_count, max_vocab, base, prune)


def counted_fields(spec: DatasetSpec) -> list[FieldSpec]:
    """Fields with a vocabulary to count (not numeric, not bucketed, not hashed)."""
    return [
        f
        for f in spec.fields
        if f.model_kind != "numeric" and f.transform not in ("quantile", "bucket") and not f.hash_buckets
    ]


def collect(frame: DataFrame, read: Read, options: PrepareOptions) -> tuple[Stats, dict[str, Any]]:
    """What the default engine's pass 1 learns, from ``frame`` (clean rows with ``_part`` and
    ``_y``), and the hashing summary of hashed fields."""
    stats = Stats()
    train = frame.filter(F.col("_part") == 0)
    counts = _summary(frame, read, stats)
    _count_values(train, read, options, stats)
    _quantiles(train, read, stats, counts)
    return stats, _hashing(train, read)


def _summary(frame: DataFrame, read: Read, stats: Stats) -> dict[str, int]:
    """One job: rows and positives per part, ignored libsvm tokens, the moments of standardised
    fields, the longest bag of multi-valued ones and how many training values quantile fields
    have (returned)."""
    spec = read.spec
    part, y = F.col("_part"), F.col("_y")
    trained = part == 0
    aggregates: list[Column] = [F.sum("_ignored").alias("ignored")]
    for p in range(3):
        aggregates += [
            F.count(F.when(part == p, 1)).alias(f"rows{p}"),
            F.sum(F.when(part == p, y)).alias(f"y{p}"),
        ]
    standardized = [f for f in spec.fields if f.model_kind == "numeric"]
    for i, f in enumerate(standardized):
        x = F.when(trained, numbers(read, f))
        aggregates += [F.count(x).alias(f"n{i}"), F.sum(x).alias(f"s{i}"), F.sum(x * x).alias(f"q{i}")]
    multi = [f for f in counted_fields(spec) if f.kind == "multi"]
    for i, f in enumerate(multi):
        aggregates.append(F.max(F.when(trained, F.size(lists(read, f)))).alias(f"m{i}"))
    quantile = [f for f in spec.fields if f.transform == "quantile"]
    for i, f in enumerate(quantile):
        aggregates.append(F.count(F.when(trained, numbers(read, f))).alias(f"c{i}"))
    row = frame.agg(*aggregates).first()
    assert row is not None
    for p in range(3):
        stats.rows[p], stats.positives[p] = int(row[f"rows{p}"]), int(row[f"y{p}"] or 0)
    stats.ignored_tokens = int(row["ignored"] or 0)
    for i, f in enumerate(standardized):
        n, total, squares = int(row[f"n{i}"]), float(row[f"s{i}"] or 0.0), float(row[f"q{i}"] or 0.0)
        stats.moments[f.name] = Moments(n, total, squares)
    for i, f in enumerate(multi):
        stats.counts[f.name] = Counted([], [], int(row[f"m{i}"] or 0))
    return {f.name: int(row[f"c{i}"]) for i, f in enumerate(quantile)}


def _count_values(train: DataFrame, read: Read, options: PrepareOptions, stats: Stats) -> None:
    spec = read.spec
    fields = counted_fields(spec)
    if not fields:
        return
    entries: list[Column] = []
    for i, f in enumerate(fields):
        if f.kind == "multi":
            entries.append(F.transform(lists(read, f), _tagged(i)))
        else:
            value = tokens(read, f).cast("string")
            entries.append(F.array(F.struct(F.lit(i).alias("f"), value.alias("v"))))
    floor = F.element_at(F.array(*[F.lit(vocab_limits(f, spec, options)[0]) for f in fields]), F.col("f") + 1)
    counts = (
        train.select(F.explode(F.concat(*entries)).alias("e"))
        .select("e.f", "e.v")
        .groupBy("f", "v")
        .count()
        .filter(F.col("count") >= floor)
    )
    found: dict[int, tuple[list[Any], list[int]]] = {i: ([], []) for i in range(len(fields))}
    for row in counts.toLocalIterator():
        values, numbers_ = found[row["f"]]
        values.append(int(row["v"]) if fields[row["f"]].transform in LONG_TOKENS else row["v"])
        numbers_.append(row["count"])
    for i, f in enumerate(fields):
        longest = stats.counts[f.name].longest if f.name in stats.counts else 0
        stats.counts[f.name] = Counted(*found[i], longest)


def _tagged(i: int) -> Any:
    """``v -> {f: i, v: v}`` (a closure: Spark reads a lambda's arity)."""
    return lambda v: F.struct(F.lit(i).alias("f"), v.alias("v"))


def _quantiles(train: DataFrame, read: Read, stats: Stats, counts: dict[str, int]) -> None:
    """Quantile edges: of all training values when they are at most the default engine's sample
    size (which then holds them all: the same edges), else Spark's approximate quantiles."""
    by_buckets: dict[tuple[int, bool], list[FieldSpec]] = {}
    for f in read.spec.fields:
        if f.transform == "quantile":
            by_buckets.setdefault((f.buckets, counts[f.name] <= SAMPLE_SIZE), []).append(f)
    for (buckets, whole), group in by_buckets.items():
        values = train.select(*[numbers(read, f).alias(f"x{i}") for i, f in enumerate(group)])
        if whole:
            found = values.collect()
            for i, f in enumerate(group):
                sample = np.array([r[i] for r in found if r[i] is not None], dtype=np.float64)
                stats.edges[f.name] = tf.quantile_edges(sample, buckets)
            continue
        probabilities = [float(p) for p in np.linspace(0, 1, buckets + 1)[1:-1]]
        edges = values.approxQuantile([f"x{i}" for i in range(len(group))], probabilities, QUANTILE_ERROR)
        for f, qs in zip(group, edges):
            stats.edges[f.name] = [float(v) for v in np.unique(np.asarray(qs, dtype=np.float64))]


def _hashing(train: DataFrame, read: Read) -> dict[str, Any]:
    """Per hashed field: buckets, distinct training values (by hash), buckets used, collision rate."""
    fields = [f for f in read.spec.fields if f.hash_buckets]
    if not fields:
        return {}
    entries = []
    for i, f in enumerate(fields):
        assert f.hash_buckets
        h = xxh64(tokens(read, f))
        entries.append(F.struct(F.lit(i).alias("f"), h.alias("h"), hash_bucket(h, f.hash_buckets).alias("b")))
    distinct = train.select(F.explode(F.array(*entries)).alias("e")).select("e.*").distinct()
    found = {
        row["f"]: (row["d"], row["u"])
        for row in distinct.groupBy("f")
        .agg(F.count("h").alias("d"), F.count_distinct("b").alias("u"))
        .collect()
    }
    summary = {}
    for i, f in enumerate(fields):
        assert f.hash_buckets
        d, u = found.get(i, (0, 0))
        summary[f.name] = {
            "buckets": f.hash_buckets,
            "distinct_values": int(d),
            "buckets_used": int(u),
            "collision_rate": 1.0 - u / d if d else 0.0,
        }
    return summary

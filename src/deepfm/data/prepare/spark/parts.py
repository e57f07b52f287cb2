"""The split rules of :mod:`deepfm.data.split` as Spark columns: every row's part (0 train, 1
valid, 2 test), the same as the default engine gives it.

* random: Spark's ``xxhash64(seed, file, row)`` is the rule's hash chain, so ``u`` is computed
  by Spark's own column function (``tests/test_data.py`` holds the chain to the xxhash package);
* files: the part of the file;
* time: the thresholds are NumPy's linear-interpolation quantiles of the time column, computed
  exactly from the two order statistics around each (found with approximate quantiles, then
  counted), so a row's part does not depend on the engine;
* leave_last: each group's latest row (by time, then ``u``) is test, the one before valid, for
  groups of 3 rows or more.
"""

from __future__ import annotations

import math

import numpy as np
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from deepfm.data.prepare.rows import Rows
from deepfm.data.prepare.spark.read import Read
from deepfm.data.spec import PARTS
from deepfm.data.split import SPARK_SEED, linear_quantile

BRACKET_ERROR = 1e-4  # relative rank error of the approximate quantiles that bracket an order statistic


def draw(seed: int) -> Column:
    """``u`` in [0, 1) of every row: ``xxh64(row, xxh64(file, xxh64(seed, 42))) / 2**64``."""
    assert SPARK_SEED == 42  # the seed of Spark's xxhash64, which the rule is built on
    h = F.xxhash64(F.lit(seed).cast("long"), F.col("_file").cast("long"), F.col("_row").cast("long"))
    return F.shiftrightunsigned(h, 11).cast("double") * (1.0 / (1 << 53))


def with_parts(frame: DataFrame, read: Read, rows: Rows) -> DataFrame:
    """``frame`` (clean rows) with ``_part``."""
    split = rows.spec.split
    u = draw(rows.seed)
    if split.method == "files":
        sizes = np.cumsum([len(rows.files[part]) for part in PARTS])
        part = F.when(F.col("_file") < int(sizes[0]), 0).when(F.col("_file") < int(sizes[1]), 1).otherwise(2)
        return frame.withColumn("_part", part)
    if split.method == "leave_last":
        assert split.group is not None and split.time is not None
        group = F.coalesce(read.col(split.group).cast("string"), F.lit(""))
        frame = frame.withColumn("_group", group).withColumn("_u", u)
        latest = Window.partitionBy("_group").orderBy(read.col(split.time).desc(), F.col("_u").desc())
        n = F.count(F.lit(1)).over(Window.partitionBy("_group"))
        rank = F.row_number().over(latest)
        part = F.when((n >= 3) & (rank == 1), 2).when((n >= 3) & (rank == 2), 1).otherwise(0)
        return frame.withColumn("_part", part).drop("_group", "_u")
    if split.method == "time":
        assert split.column is not None
        t = read.col(split.column)
        thresholds = time_thresholds(frame, read.names[split.column], split.ratios)
        if thresholds:
            part = (t >= thresholds[0]).cast("int") + (t >= thresholds[1]).cast("int")
            return frame.withColumn("_part", part)
    r0, r1, _ = split.ratios
    return frame.withColumn("_part", (u >= r0).cast("int") + (u >= r0 + r1).cast("int"))


def time_thresholds(frame: DataFrame, column: str, ratios: tuple[float, float, float]) -> list[float]:
    """``np.quantile(t, r0)`` and ``np.quantile(t, r0 + r1)`` of the time column, exactly."""
    values = frame.select(F.col(column).alias("t")).filter(F.col("t").isNotNull())
    n = values.count()
    if n == 0:
        return []
    r0, r1, _ = ratios
    return [linear_quantile(n, q, lambda ranks: order_statistics(values, n, ranks)) for q in (r0, r0 + r1)]


def order_statistics(values: DataFrame, n: int, ranks: list[int]) -> dict[int, float]:
    """The values at ``ranks`` (0-based) of column ``t``: approximate quantiles bracket them, one
    count finds how many values lie below the bracket, and the bracket's values are sorted here."""
    margin = 3 * BRACKET_ERROR + 1 / n
    lo_p, hi_p = max(min(ranks) / n - margin, 0.0), min((max(ranks) + 1) / n + margin, 1.0)
    lo, hi = -math.inf, math.inf
    probes = [p for p in (lo_p, hi_p) if 0.0 < p < 1.0]
    if probes:
        found = dict(zip(probes, values.approxQuantile("t", probes, BRACKET_ERROR)))
        lo, hi = found.get(lo_p, lo), found.get(hi_p, hi)
    t = F.col("t")
    for low, high in ((lo, hi), (-math.inf, math.inf)):  # the bracket, else (never expected) all values
        inside = (t >= low) & (t <= high)
        row = values.agg(F.sum((t < low).cast("long")).alias("below")).first()
        below = int(row["below"] or 0) if row is not None else 0
        if below > min(ranks):
            continue
        sorted_values = sorted(r["t"] for r in values.filter(inside).collect())
        if below + len(sorted_values) > max(ranks):
            return {r: sorted_values[r - below] for r in ranks}
    raise AssertionError("order statistics out of range")

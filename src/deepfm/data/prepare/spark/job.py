"""The prepare stage as Spark jobs, stage by stage: read + split, statistics, encode + write.

The same steps as the default engine (:func:`deepfm.data.prepare.build`), with the same rules
(the spec's readers, labels, checks, filters, side tables, split rule, vocabularies, transforms)
and the same output folder; the speed of each stage (rows/s) is printed at the end and kept in
``meta.json`` under ``engine``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from deepfm.data.options import PrepareOptions
from deepfm.data.prepare import cache
from deepfm.data.prepare.meta import finish_prepared
from deepfm.data.prepare.rows import Rows
from deepfm.data.prepare.spark.encode import encode
from deepfm.data.prepare.spark.parts import with_parts
from deepfm.data.prepare.spark.read import Read, read_rows
from deepfm.data.prepare.spark.rules import apply_rules, holds, report_bad_rows
from deepfm.data.prepare.spark.stats import QUANTILE_ERROR, collect
from deepfm.data.prepare.spark.tokens import flag_text
from deepfm.data.prepare.spark.write import write_arrays
from deepfm.data.prepare.stats import check_rows, feature_map
from deepfm.data.readers import BadLines
from deepfm.data.spec import DatasetSpec


def run(
    spark: SparkSession,
    spec: DatasetSpec,
    options: PrepareOptions,
    out: Path,
    say: Callable[[str], None],
    shards: int = 0,
) -> None:
    """Prepare ``spec`` into the empty folder ``out`` with Spark jobs (``shards`` > 0: the
    training split as that many shards)."""
    started = time.perf_counter()
    bad = BadLines(options.on_bad_lines)
    rows = Rows.of(spec, cache.seed_of(spec, options), bad)  # side tables: read here, joined by Spark
    say(f"{spec.name}: stage 1/3, reading, checking and splitting the rows")
    read = read_rows(spark, rows)
    checked = apply_rules(read, rows).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        report_bad_rows(checked, rows, bad)
        read = dataclasses.replace(read, frame=checked.filter(F.col("_bad").isNull() & F.col("_keep")))
        read = _join_tables(spark, read, rows)
        y = holds(spec.label.as_rule(), read.col(spec.label.column)).cast("float")
        frame = with_parts(read.frame.withColumn("_y", y), read, rows)
        if spec.split.method == "leave_last":
            frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
        read = dataclasses.replace(read, frame=frame)
        split = time.perf_counter()

        say(f"{spec.name}: stage 2/3, counting categories on the training rows")
        stats, hashing = collect(frame, read, options)
        n = stats.rows
        check_rows(spec, n)
        fmap = feature_map(spec, stats, options)
        counted = time.perf_counter()

        say(f"{spec.name}: stage 3/3, encoding {int(n.sum()):,} rows into {out}")
        encoded, dtype = encode(spark, frame, read, fmap)
        write_arrays(encoded, dtype, fmap, n, out, shards)
    finally:
        checked.unpersist()
        read.frame.unpersist()
    done = time.perf_counter()
    total = int(n.sum())
    stages = {"read_split": split - started, "statistics": counted - split, "encode_write": done - counted}
    speeds = {k: total / s if s > 0 else None for k, s in stages.items()}
    engine = {
        "name": "spark",
        "spark_version": spark.version,
        "master": spark.sparkContext.master,
        "quantile_relative_error": QUANTILE_ERROR,
        "stage_seconds": stages,
        "stage_rows_per_s": speeds,
    }
    seconds = {"count": counted - started, "total": done - started}
    say(
        finish_prepared(
            out,
            rows,
            options,
            fmap,
            n,
            stats.positives,
            bad,
            seconds,
            engine,
            hashing,
            stats.ignored_tokens,
            shards,
        )
    )
    say(
        "spark rows/s: "
        + " | ".join(f"{k.replace('_', ' + ')} {v:,.0f}" for k, v in speeds.items() if v is not None)
    )


def _join_tables(spark: SparkSession, read: Read, rows: Rows) -> Read:
    """Flag fields of the rows' own columns derived, then every side table joined by its key
    (text equality; unknown keys: missing values). Spark broadcasts a small table and
    sort-merge joins a large one."""
    frame, names, numeric = read.frame, dict(read.names), set(read.numeric)
    for f in rows.own_flags:
        names[f.name] = f"c{len(names)}"
        frame = frame.withColumn(names[f.name], flag_text(read, f))
    for table in rows.tables:
        key = table.spec.key
        side = [c for c in table.frame.columns if c != key and c not in names]
        if not side:
            continue
        arrow = table.frame.select(key, *side).to_arrow()
        columns = {}
        for c in [key, *side]:
            column = arrow.column(c)
            if pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
                column = pc.cast(column, pa.string())
            columns[c] = column
        arrow = pa.table(columns)
        for c in side:
            names[c] = f"c{len(names)}"
            if pa.types.is_floating(arrow.column(c).type):
                numeric.add(c)
        renamed = [F.col(f"`{c}`").alias(names[c]) for c in side]
        rows_key = F.coalesce(F.col(names[key]).cast("string"), F.lit(""))
        other = spark.createDataFrame(arrow).select(F.col(f"`{key}`").alias("_side_key"), *renamed)
        frame = frame.join(other, rows_key == other["_side_key"], "left").drop("_side_key")
        text = [F.coalesce(F.col(names[c]), F.lit("")).alias(names[c]) for c in side if c not in numeric]
        if text:
            kept = [c for c in frame.columns if c not in {names[c] for c in side if c not in numeric}]
            frame = frame.select(*kept, *text)
    return dataclasses.replace(read, frame=frame, names=names, numeric=numeric)

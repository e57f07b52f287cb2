"""Every row encoded by the fitted feature map, as Spark columns: the arrays the default engine's
:class:`~deepfm.data.prepare.encode.ChunkEncoder` writes.

A counted field's value finds its row by a join with the field's vocabulary (Spark broadcasts a
small vocabulary and sort-merge joins a large one, so no executor needs every vocabulary in
memory); hashed fields hash (``1 + xxh64 % B``), bucketed fields compute their bucket. Bags are
exploded, joined the same way and gathered back in order, cut at ``max_len`` and padded with 0.
The result: ``_part``, ``_key`` (file and line: the rows' order) and ``ids``, ``bags``, ``dense``,
``label`` as arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from deepfm.data.features import FeatureMap, Field
from deepfm.data.prepare.spark.read import Read
from deepfm.data.prepare.spark.stats import LONG_TOKENS
from deepfm.data.prepare.spark.tokens import hash_bucket, lists, numbers, tokens, xxh64
from deepfm.data.transforms import MISSING

LINE_BITS = 40  # _key = file << 40 | line: lines up to 2**40 per file


def encode(spark: SparkSession, frame: DataFrame, read: Read, fmap: FeatureMap) -> tuple[DataFrame, Any]:
    """``frame`` (clean rows with ``_part`` and ``_y``) as the encoded columns, and their dtype."""
    dtype = np.int32 if fmap.num_rows < 2**31 else np.int64
    kind = "int" if dtype == np.int32 else "long"
    specs = {f.name: f for f in read.spec.fields}
    frame = frame.withColumn("_key", F.shiftleft(F.col("_file").cast("long"), LINE_BITS) + F.col("_line"))
    ids: list[Column] = []
    for j, f in enumerate(fmap.categorical):
        token = tokens(read, specs[f.name], f.transform)
        if f.hash_buckets:
            local = 1 + hash_bucket(xxh64(token), f.hash_buckets)
        elif (f.transform or {}).get("type") in ("quantile", "bucket"):
            local = F.when(token == MISSING, 1).otherwise(token + 2)  # vocab: [MISSING, 0, 1, ...]
        else:
            frame = frame.withColumn(f"_t{j}", token)
            frame = _lookup(spark, frame, f"_t{j}", f, f"_l{j}")
            local = F.coalesce(F.col(f"_l{j}"), F.lit(0))
        ids.append((local + f.offset).cast(kind))
    columns = [F.col("_part"), F.col("_key"), F.array(*ids).alias("ids")]
    multi = fmap.multi
    if multi:
        width = max(f.max_len for f in multi)
        bags = []
        for j, f in enumerate(multi):
            gathered = _bag(spark, frame, lists(read, specs[f.name]), f, kind)
            frame = frame.join(gathered.withColumnRenamed("b", f"_b{j}"), "_key", "left")
            bag = F.coalesce(F.col(f"_b{j}"), F.array().cast(f"array<{kind}>"))
            bags.append(F.concat(bag, F.array_repeat(F.lit(0).cast(kind), width - F.size(bag))))
        columns.append(F.concat(*bags).alias("bags"))
    if fmap.numerics:
        dense = []
        for f in fmap.numerics:
            t = f.transform or {}
            z = (numbers(read, specs[f.name]) - F.lit(t["mean"])) / F.lit(t["std"])
            dense.append(F.coalesce(z, F.lit(0.0)).cast("float"))
        columns.append(F.array(*dense).alias("dense"))
    columns.append(F.col("_y").cast("float").alias("label"))
    return frame.select(*columns), dtype


def _vocabulary(spark: SparkSession, f: Field, value: str, local: str) -> DataFrame:
    """The field's vocabulary as a frame ``value -> local`` (1 + its position)."""
    numeric = (f.transform or {}).get("type") in LONG_TOKENS
    values = pa.array(f.vocab, pa.int64() if numeric else pa.string())
    rows = pa.array(np.arange(1, len(f.vocab) + 1, dtype=np.int32))
    schema = f"{value} {'long' if numeric else 'string'}, {local} int"
    if not len(f.vocab):
        return spark.createDataFrame([], schema)
    return spark.createDataFrame(pa.table({value: values, local: rows}))


def _lookup(spark: SparkSession, frame: DataFrame, token: str, f: Field, local: str) -> DataFrame:
    """``frame`` with ``local``: the local row of column ``token`` in ``f``'s vocabulary (null: OOV)."""
    vocab = _vocabulary(spark, f, f"{token}_v", local)
    joined = frame.join(vocab, F.col(token) == F.col(f"{token}_v"), "left")
    return joined.drop(token, f"{token}_v")


def _bag(spark: SparkSession, frame: DataFrame, values: Column, f: Field, kind: str) -> DataFrame:
    """``_key`` -> ``b``: the global rows of the first ``max_len`` values of each row's bag."""
    exploded = frame.select("_key", F.posexplode(F.slice(values, 1, f.max_len)).alias("_pos", "_v"))
    looked = _lookup(spark, exploded, "_v", f, "_l")
    element = F.struct(F.col("_pos"), (F.coalesce(F.col("_l"), F.lit(0)) + f.offset).cast(kind).alias("g"))
    gathered = looked.groupBy("_key").agg(F.array_sort(F.collect_list(element)).alias("b"))
    return gathered.select("_key", F.transform("b", lambda e: e["g"]).alias("b"))

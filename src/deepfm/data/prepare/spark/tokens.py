"""A field's values as Spark columns: the tokens it counts and encodes, by the spec's rules.

The Spark twin of :mod:`deepfm.data.prepare.tokens` (the default engine's): categorical values
are text (a number holding an integer is its digits, missing is ``""``), numeric-derived tokens
are longs (``log2bucket``, buckets, time parts; missing is :data:`~deepfm.data.transforms.MISSING`),
multi-valued fields are arrays of non-empty text, numbers are doubles (missing: null).
Hashed fields use the xxHash64 of the value's UTF-8 text, seed 0 (:mod:`deepfm.data.hashing`),
computed by the ``xxhash`` package in a vectorised UDF: Spark's own ``xxhash64`` is fixed to seed 42.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
from pyspark.sql import Column
from pyspark.sql import functions as F

from deepfm.data import transforms as tf
from deepfm.data.prepare.spark.read import NUMBER, SPACE, Read
from deepfm.data.spec import FieldSpec


def text(read: Read, column: str) -> Column:
    """A column as the text its values are counted by (see :func:`deepfm.data.prepare.tokens.text`)."""
    c = read.col(column)
    if column not in read.numeric:
        return c
    whole = (F.abs(c) < 2.0**63) & (c == F.floor(c))
    return (
        F.when(c.isNull(), F.lit("")).when(whole, c.cast("long").cast("string")).otherwise(c.cast("string"))
    )


def extracted(read: Read, f: FieldSpec) -> Column:
    """The text of ``f``'s column, or what its ``pattern`` finds in it (no match: null)."""
    s = text(read, f.source)
    if not f.pattern:
        return s
    return F.when(s.rlike(f.pattern), F.regexp_extract(s, tf.one_group(f.pattern), 1))


def numbers(read: Read, f: FieldSpec) -> Column:
    """``f``'s values as doubles (missing, unparsable or NaN: null)."""
    if not f.pattern:
        return read.col(f.source)
    t = F.regexp_replace(extracted(read, f), SPACE, "")
    value = F.when(t.rlike(NUMBER), t.try_cast("double"))
    return F.when(~F.isnan(value), value)


def lists(read: Read, f: FieldSpec) -> Column:
    """A multi-valued field as an array of non-empty strings (a ``flags`` field: the text of its
    derived column, the names of its flags that hold 1)."""
    if read.frame.schema[read.names[f.source]].dataType.typeName() == "array":
        s = read.col(f.source)
    else:
        s = F.split(text(read, f.source), re.escape(f.separator), -1)
    return F.filter(s, lambda v: v != "")


def tokens(read: Read, f: FieldSpec, transform: dict[str, Any] | None = None) -> Column:
    """Categorical tokens of ``f``: text, or longs for numeric-derived ones; ``transform``: the
    fitted one (quantile edges) once the feature map exists."""
    if f.kind == "categorical" and f.transform is None:
        if f.pattern:
            return F.coalesce(extracted(read, f), F.lit(""))
        if read.frame.schema[read.names[f.source]].dataType.typeName() == "array":  # libfm field
            return F.coalesce(F.get(read.col(f.source), 0), F.lit(""))
        return text(read, f.source)
    x = numbers(read, f)
    missing = F.lit(tf.MISSING).cast("long")
    if f.transform == "log2bucket":
        ln = F.log(x)
        out = F.when(x > 2, F.floor(ln * ln)).otherwise(F.floor(x)).cast("long")
    elif f.transform in ("quantile", "bucket"):
        edges = (transform or {}).get("edges", []) if f.transform == "quantile" else f.edges or []
        out = bucket(x, edges)
    else:
        out = time_part(x, f.transform or "", f.time_format)
    return F.when(x.isNull(), missing).otherwise(out)


def bucket(x: Column, edges: list[float]) -> Column:
    """``searchsorted(edges, x, side="right")``: how many edges are <= x."""
    count = F.lit(0).cast("long")
    for e in edges:
        count = count + (x >= float(e)).cast("long")
    return count


def _fdiv(a: Column, b: int) -> Column:
    """Floor division of longs (NumPy's ``//``)."""
    return ((a - F.pmod(a, F.lit(b))) / b).cast("long")


def time_part(x: Column, part: str, time_format: str) -> Column:
    """Hour of day or weekday (Monday = 0) of unix seconds or ``YYMMDDHH`` numbers
    (:func:`deepfm.data.transforms.time_part`)."""
    v = x.cast("long")
    if time_format == "unix":
        seconds = v
    else:
        yy, mm = _fdiv(v, 1_000_000), F.pmod(_fdiv(v, 10_000), F.lit(100))
        dd, hh = F.pmod(_fdiv(v, 100), F.lit(100)), F.pmod(v, F.lit(100))
        seconds = _days_from_civil(2000 + yy, mm, dd) * 86400 + hh * 3600
    if part == "hour_of_day":
        return F.pmod(_fdiv(seconds, 3600), F.lit(24))
    return F.pmod(_fdiv(seconds, 86400) + 3, F.lit(7))


def _days_from_civil(y: Column, m: Column, d: Column) -> Column:
    y = y - (m <= 2).cast("long")
    era = _fdiv(y, 400)
    yoe = y - era * 400
    doy = _fdiv(153 * (m + F.when(m > 2, -3).otherwise(9)) + 2, 5) + d - 1
    doe = yoe * 365 + _fdiv(yoe, 4) - _fdiv(yoe, 100) + doy
    return era * 146097 + doe - 719468


def flag_text(read: Read, f: FieldSpec) -> Column:
    """A ``flags`` field of the rows' own columns as text: the names of its columns holding a
    non-zero number, joined by its separator (:func:`deepfm.data.prepare.tokens.flag_lists`)."""
    assert f.flags
    members = []
    for c in f.flags:
        value = read.col(c) if c in read.numeric else read.col(c).try_cast("double")
        members.append(F.when(F.coalesce(value, F.lit(0.0)) != 0, F.lit(c)))
    return F.concat_ws(f.separator, *members)


def xxh64(values: Column) -> Column:
    """xxHash64 (seed 0) of each value's UTF-8 text as a signed long (a vectorised UDF that
    hashes each distinct value of a batch once; executors need only pandas, NumPy and xxhash)."""
    return F.pandas_udf(_xxh64_batch, "long")(values)  # type: ignore[call-overload]


def _xxh64_batch(values: pd.Series) -> pd.Series:
    import numpy as np
    import xxhash

    codes, uniques = pd.factorize(values, sort=False)
    digest = xxhash.xxh64_intdigest
    table = np.fromiter(
        (digest(str(u).encode("utf-8")) for u in uniques), dtype=np.uint64, count=len(uniques)
    )
    return pd.Series(table[codes].view(np.int64) if len(codes) else np.zeros(0, np.int64))


def hash_bucket(h: Column, buckets: int) -> Column:
    """``h`` (a signed long holding an unsigned 64-bit hash) modulo ``buckets``, unsigned."""
    wrap = (1 << 64) % buckets  # what the sign bit adds to the unsigned value, modulo buckets
    return F.pmod(F.pmod(h, F.lit(buckets)) + F.when(h < 0, F.lit(wrap)).otherwise(F.lit(0)), F.lit(buckets))

"""Input files as one Spark DataFrame: every row with its file and line number, the columns the
spec reads (text, or parsed numbers), and the first problem that makes it a bad row when read.

The twin of :mod:`deepfm.data.readers` for the Spark engine, with the same rules: csv/tsv lines
are cut at the separator (quotes as RFC 4180; several-character separators unquoted), numeric
columns are parsed (``""`` is missing; text that is not a number, ``inf`` or beyond float32's range
makes a bad row), libsvm/libfm lines become a label and lists of feature indices, parquet
columns are cast. Line numbers come from Spark's own file splits: one counting job finds how
many lines each split of each file holds, so the line of a row is its split's first line plus
its place in the split, whatever the cluster.

A row's problem (``_bad``) is a struct ``phase, kind, column, text, number, count`` that
:mod:`.rules` turns into the default engine's message.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from deepfm.data.prepare.rows import Rows
from deepfm.data.readers import F32_MAX, column_names, separator
from deepfm.data.spec import POSITION, RANGE, DatasetSpec
from deepfm.errors import ConfigError, DataError

# The numbers Polars' float parser takes (the default engine's): decimal, exponent, inf, nan.
NUMBER = r"^[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|(?i:inf|infinity|nan))$"
NAN = r"^[+-]?(?i:nan)$"
INTEGER = r"^[+-]?\d+$"
SPACE = r"(?U)^\s+|\s+$"  # what Polars' strip_chars removes (Unicode white space)
READ = 100  # the phase of problems found while reading (see :mod:`.rules`)
ENCODINGS = {"utf-8": None, "ascii": None, "iso8859-1": "ISO-8859-1"}  # Python codec -> Spark's decode
QUOTE = '"'


@dataclass
class Read:
    """The rows of a spec's input files: ``frame`` holds ``_file`` (int), ``_line`` (1-based
    line, or row of a parquet file), ``_row`` (the data row number of the split rule), ``_bad``
    and one column per name in ``names`` (spec column -> Spark-safe column ``cN``)."""

    spec: DatasetSpec
    frame: DataFrame
    names: dict[str, str]
    numeric: set[str]

    def col(self, name: str) -> Column:
        return F.col(self.names[name])


def problem(
    phase: int,
    kind: str,
    column: str | Column | None = None,
    text: Column | None = None,
    number: Column | None = None,
    count: Column | None = None,
) -> Column:
    """A bad row's problem (see the module docstring)."""
    as_col = lambda v, t: v.cast(t) if isinstance(v, Column) else F.lit(v).cast(t)  # noqa: E731
    return F.struct(
        F.lit(phase).alias("phase"),
        F.lit(kind).alias("kind"),
        as_col(column, "string").alias("column"),
        as_col(text, "string").alias("text"),
        as_col(number, "double").alias("number"),
        as_col(count, "int").alias("count"),
    )


def first_problem(*candidates: tuple[Column, Column]) -> Column:
    """The first ``(condition, problem)`` whose condition holds (null: none)."""
    return F.coalesce(*(F.when(condition, p) for condition, p in candidates)) if candidates else F.lit(None)


def parse_number(text: Column) -> tuple[Column, Column, Column]:
    """``text`` as a double the way the default engine parses it: (value, is it not a number,
    is it inf or beyond float32). White space is stripped; ``""`` is missing (null); ``nan`` is NaN."""
    t = F.regexp_replace(text, SPACE, "")
    empty = t.isNull() | (t == "")
    ok = t.rlike(NUMBER)
    nan = t.rlike(NAN)
    infinite = t.rlike(r"(?i)inf")
    value = (
        F.when(empty | ~ok, F.lit(None).cast("double"))
        .when(nan, F.lit(float("nan")))
        .when(infinite, F.when(t.startswith("-"), F.lit(float("-inf"))).otherwise(F.lit(float("inf"))))
        .otherwise(t.try_cast("double"))
    )
    too_big = ok & ~nan & (F.abs(value) > F32_MAX)
    return value, ~empty & ~ok, too_big


def read_rows(spark: SparkSession, rows: Rows) -> Read:
    """Every input file of ``rows.spec`` as one frame (see :class:`Read`)."""
    spec = rows.spec
    names = {c: f"c{i}" for i, c in enumerate(rows.columns)}
    numeric = rows.numeric & set(rows.columns)
    files = list(enumerate(rows.paths))
    if spec.input.format == "parquet":
        frames = [_parquet(spark, spec, i, path, rows.columns, names, numeric) for i, path in files]
        return Read(spec, reduce(DataFrame.unionByName, frames), names, numeric)
    lines = _numbered_lines(spark, files, spec)
    if spec.input.format in ("csv", "tsv"):
        return Read(spec, _text_table(lines, spec, files, rows.columns, names, numeric), names, numeric)
    return Read(spec, _svm(lines, spec, rows.columns, names), names, numeric)


def spark_path(path: Path) -> str:
    """A local (or shared) file as Spark reads it: absolute, ``file://``, glob characters escaped."""
    return "file://" + re.sub(r"([\\\[\]{}*?])", r"\\\1", str(Path(path).resolve()))


def _numbered_lines(spark: SparkSession, files: list[tuple[int, Path]], spec: DatasetSpec) -> DataFrame:
    """``value`` (the line's text), ``_file`` and ``_line`` of every line of every file.

    Spark reads a file in splits (``_metadata.file_block_start``); within one task the rows of a
    split get consecutive ids. One job counts each split's lines; a row's line is then the lines
    of the file's earlier splits, plus one, plus its id minus its split's first id.
    """
    encoding = _spark_encoding(spec.input.encoding, spec.source)
    frames = [
        spark.read.text(spark_path(path)).select(
            "value", F.lit(i).alias("_file"), F.col("_metadata.file_block_start").alias("_block")
        )
        for i, path in files
    ]
    lines = reduce(DataFrame.unionAll, frames).withColumn("_id", F.monotonically_increasing_id())
    blocks = lines.groupBy("_file", "_block").agg(F.count("*").alias("n"), F.min("_id").alias("first"))
    bases, before = [], {}
    for b in sorted(blocks.collect(), key=lambda r: (r["_file"], r["_block"])):
        seen = before.get(b["_file"], 0)
        bases.append((b["_file"], b["_block"], seen + 1 - b["first"]))
        before[b["_file"]] = seen + b["n"]
    base = spark.createDataFrame(bases or [(0, 0, 0)], "_file int, _block long, _base long")
    numbered = lines.join(F.broadcast(base), ["_file", "_block"]).select(
        "value", "_file", (F.col("_id") + F.col("_base")).alias("_line")
    )
    value = F.col("value")
    if encoding is not None:  # the line's bytes, decoded (Spark keeps a text file's bytes as read)
        value = F.decode(value.cast("binary"), encoding)
    else:  # a UTF-8 byte-order mark is not part of the first value
        value = F.when(F.col("_line") == 1, F.regexp_replace(value, "^\ufeff", "")).otherwise(value)
    return numbered.withColumn("value", value)


def _spark_encoding(encoding: str, source: str) -> str | None:
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise ConfigError(f"{source}: input.encoding: unknown text encoding {encoding!r}") from None
    if name not in ENCODINGS:
        raise ConfigError(
            f"{source}: input.encoding: the spark engine reads utf-8, ascii and latin-1 (iso-8859-1) "
            f"text, got {encoding!r}; use --engine polars, or convert the files to utf-8"
        )
    return ENCODINGS[name]


def _require_columns(columns: list[str], names: list[str], path: Path, source: str) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise ConfigError(
            f"{source}: column(s) {missing} not in {path} (its columns are {names}); "
            "check the spec's fields, label and input.columns"
        )


def _text_table(
    lines: DataFrame,
    spec: DatasetSpec,
    files: list[tuple[int, Path]],
    columns: list[str],
    names: dict[str, str],
    numeric: set[str],
) -> DataFrame:
    """csv/tsv lines cut into the needed columns (each file by its own header's names)."""
    sep = separator(spec.input)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, path in files:
        header = column_names(path, spec.input)
        _require_columns(columns, header, path, spec.source)
        groups.setdefault(tuple(header), []).append(i)
    if spec.input.header:
        lines = lines.filter(F.col("_line") > 1)
    value = F.col("value")
    cells: dict[str, list[tuple[Column, Column]]] = {c: [] for c in columns}
    wrong: list[tuple[Column, Column]] = []
    parsed = []
    for g, (header, members) in enumerate(groups.items()):
        mine = F.col("_file").isin(members) if len(groups) > 1 else F.lit(True)
        n = len(header)
        if len(sep) > 1:  # several characters ("::"): read unquoted, as the default engine does
            tokens = F.split(value, re.escape(sep), -1)
            bad, found = F.size(tokens) != n, F.size(tokens)
            for c in columns:
                cells[c].append((mine, F.get(tokens, header.index(c))))
        else:
            schema = ", ".join(f"`c{k}` STRING" for k in range(n)) + ", `_corrupt` STRING"
            options = {
                "sep": sep,
                "quote": QUOTE,
                "escape": QUOTE,
                "mode": "PERMISSIVE",
                "columnNameOfCorruptRecord": "_corrupt",
            }
            parsed.append(F.from_csv(value, schema, options).alias(f"_p{g}"))
            record = F.col(f"_p{g}")
            bad = record["_corrupt"].isNotNull() | ((value == "") & F.lit(n > 1))
            outside = re.escape(sep) + r'(?=(?:[^"]*"[^"]*")*[^"]*$)'  # a separator outside quotes
            found = F.size(F.split(value, outside, -1))
            for c in columns:
                cells[c].append((mine, record[f"c{header.index(c)}"]))
        wrong.append((mine & bad, problem(READ, "columns", None, None, F.lit(n), found)))
    frame = lines.select("*", *parsed) if parsed else lines
    raws = [
        F.coalesce(*(F.when(mine, cell) for mine, cell in cells[c])).alias(f"_r{i}")
        for i, c in enumerate(columns)
    ]
    row = F.col("_line") - (1 if spec.input.header else 0)
    frame = frame.select("_file", "_line", row.alias("_row"), first_problem(*wrong).alias("_wrong"), *raws)
    return _typed(frame, columns, names, numeric)


def _typed(frame: DataFrame, columns: list[str], names: dict[str, str], text_numeric: set[str]) -> DataFrame:
    """``frame`` (``_file``, ``_line``, ``_row``, ``_wrong``: a problem or null, ``_r{i}``: the
    text of ``columns[i]``) with the columns typed: those in ``text_numeric`` parsed as numbers
    (a problem for text that is not a number or too big), the others text (missing: ``""``).

    Done in a few stacked projections (stripped text, its form, its value, then the checks):
    each expression is built once, which keeps Spark's plans small for wide files."""
    parsed = [i for i, c in enumerate(columns) if c in text_numeric]
    r, s = (lambda i: F.col(f"_r{i}")), (lambda i: F.col(f"_s{i}"))  # noqa: E731
    frame = frame.select("*", *[F.regexp_replace(r(i), SPACE, "").alias(f"_s{i}") for i in parsed])
    frame = frame.select(
        "*",
        *[s(i).rlike(NUMBER).alias(f"_ok{i}") for i in parsed],
        *[s(i).rlike(NAN).alias(f"_nan{i}") for i in parsed],
    )
    values = []
    for i in parsed:
        ok, nan = F.col(f"_ok{i}"), F.col(f"_nan{i}")
        infinite = F.when(s(i).startswith("-"), F.lit(float("-inf"))).otherwise(F.lit(float("inf")))
        value = (
            F.when(s(i).isNull() | (s(i) == "") | ~ok, F.lit(None).cast("double"))
            .when(nan, F.lit(float("nan")))
            .when(s(i).rlike("(?i)inf"), infinite)
            .otherwise(s(i).try_cast("double"))
        )
        values.append(value.alias(f"_x{i}"))
    frame = frame.select("*", *values)
    problems: list[tuple[Column, Column]] = [(F.col("_wrong").isNotNull(), F.col("_wrong"))]
    out = []
    for i, c in enumerate(columns):
        if i in parsed:
            ok, x = F.col(f"_ok{i}"), F.col(f"_x{i}")
            problems.append((s(i).isNotNull() & (s(i) != "") & ~ok, problem(READ, "not_number", c, r(i))))
            too_big = ok & ~F.col(f"_nan{i}") & (F.abs(x) > F32_MAX)
            problems.append((too_big, problem(READ, "too_big", c, r(i))))
            out.append(x.alias(names[c]))
        elif frame.schema[f"_r{i}"].dataType.typeName() != "string":  # a parquet number
            out.append(r(i).alias(names[c]))
        else:
            out.append(F.coalesce(r(i), F.lit("")).alias(names[c]))
    return frame.select(
        "_file",
        "_line",
        "_row",
        first_problem(*problems).alias("_bad"),
        F.lit(0).alias("_ignored"),
        *out,
    )


def _svm(lines: DataFrame, spec: DatasetSpec, columns: list[str], names: dict[str, str]) -> DataFrame:
    """libsvm ``label idx:val ...`` / libfm ``label field:idx:val ...`` lines (see
    :func:`deepfm.data.readers._read_svm`): ``label``, list ``features``, ``@N``, ``features[lo:hi]``
    (libsvm), or one list column per field number (libfm). Tokens with value 0 are dropped."""
    libsvm = spec.input.format == "libsvm"
    width = 2 if libsvm else 3
    tokens = F.filter(F.split(F.col("value"), r"\s+", -1), lambda t: t != "")
    first = F.get(tokens, 0)  # get: null past the end (getItem fails under ANSI mode)
    label, _, _ = parse_number(first)
    label = F.when(first.rlike(r"^\S+$"), label)
    rest = F.slice(tokens, 2, 1 << 30)

    def parse(t: Column, pos: Column) -> Column:
        p = F.split(t, ":", -1)
        number, not_number, _ = parse_number(F.element_at(p, -1))
        good = (F.size(p) == width) & ~not_number & number.isNotNull()
        return F.struct(t.alias("t"), p.alias("p"), pos.alias("pos"), number.alias("v"), good.alias("ok"))

    frame = lines.select(
        "_file", "_line", "value", F.transform(rest, parse).alias("_t"), label.alias("_label")
    )
    toks = F.col("_t")
    wrong = F.filter(toks, lambda x: ~x["ok"])
    kept = F.filter(toks, lambda x: x["ok"] & (x["v"] != 0))
    problems = [
        (F.col("_label").isNull(), problem(READ, "svm_label", "label", F.coalesce(first, F.lit("")))),
        (F.size(wrong) > 0, problem(READ, "svm_token", "features", F.get(wrong, 0)["t"], None, F.lit(0))),
    ]
    out = [F.col("_label").alias(names["label"])]
    ranges = spec.index_ranges()
    spans = [(c, int(m[1]), int(m[2])) for c in columns if (m := RANGE.fullmatch(c))]
    for c in columns:
        if c == "label":
            continue
        if not libsvm:
            column = F.transform(F.filter(kept, _in_field(c)), lambda x: x["p"][1])
        elif c == "features":
            column = F.transform(kept, lambda x: x["p"][0])
        elif POSITION.fullmatch(c):
            at = F.filter(kept, _at_position(int(c[1:])))
            column = F.coalesce(F.get(at, 0)["p"][0], F.lit(""))
        elif (m := RANGE.fullmatch(c)) is not None:
            lo, hi = int(m[1]), int(m[2])
            inside = F.transform(F.filter(kept, _in_range(lo, hi)), lambda x: x["p"][0])
            f = ranges.get(c)
            if f is None or f.kind == "multi":
                column = inside
            else:
                many = F.size(inside) > 1
                shown = F.array_join(F.slice(inside, 1, 3), ", ")
                text = F.concat(shown, F.when(F.size(inside) > 3, F.lit(", ...")).otherwise(F.lit("")))
                info = F.concat_ws("|", F.lit(str(lo)), F.lit(str(hi)), text)
                problems.append((many, problem(READ, "svm_range", f.name, info, None, F.size(inside))))
                column = F.coalesce(F.get(inside, 0), F.lit(""))
        else:  # a column a libsvm line does not have: missing everywhere
            column = F.array().cast("array<string>")
        out.append(column.alias(names[c]))
    ignored = F.lit(0)
    if spans:
        claimed = lambda x: reduce(lambda a, b: a | b, (_inside(x, lo, hi) for _, lo, hi in spans))  # noqa: E731
        ignored = F.size(F.filter(kept, lambda x: ~claimed(x)))
    return frame.select(
        "_file",
        "_line",
        F.col("_line").alias("_row"),
        first_problem(*problems).alias("_bad"),
        ignored.alias("_ignored"),
        *out,
    )


# Spark's higher-order functions read a lambda's arity, so the constants go in by closures.
def _in_field(field: str) -> Any:
    return lambda x: x["p"][0] == field


def _at_position(position: int) -> Any:
    return lambda x: x["pos"] == position


def _in_range(lo: int, hi: int) -> Any:
    return lambda x: _inside(x, lo, hi)


def _inside(x: Column, lo: int, hi: int) -> Column:
    index = F.when(x["p"][0].rlike(INTEGER), x["p"][0].try_cast("long"))
    return F.coalesce((index >= lo) & (index < hi), F.lit(False))


def _parquet(
    spark: SparkSession,
    spec: DatasetSpec,
    number: int,
    path: Path,
    columns: list[str],
    names: dict[str, str],
    numeric: set[str],
) -> DataFrame:
    """One parquet file: numeric columns as doubles (text ones parsed), the others as text."""
    try:
        schema = pq.ParquetFile(path).schema_arrow
    except Exception as exc:
        raise DataError(f"not a readable parquet file ({exc})", path) from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ConfigError(
            f"{spec.source}: column(s) {missing} not in {path} (its columns are {schema.names})"
        )
    frame = spark.read.parquet(spark_path(path))
    types = dict(frame.dtypes)
    raws, text_numeric, big = [], set(), []
    for i, c in enumerate(columns):
        raw = F.col(f"`{c}`")
        if c in numeric and types[c] == "string":
            text_numeric.add(c)
        elif c in numeric:
            raw = raw.cast("double")
            big.append(
                (~F.isnan(raw) & (F.abs(raw) > F32_MAX), problem(READ, "too_big_number", c, None, raw))
            )
        else:
            raw = raw.cast("string")
        raws.append(raw.alias(f"_r{i}"))
    line = F.col("_metadata.row_index") + 1
    frame = frame.select(
        F.lit(number).alias("_file"),
        line.alias("_line"),
        line.alias("_row"),
        first_problem(*big).alias("_wrong"),
        *raws,
    )
    return _typed(frame, columns, names, text_numeric)

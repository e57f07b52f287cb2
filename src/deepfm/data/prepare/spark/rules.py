"""Labels, checks and filters on the Spark rows, and bad rows reported as the default engine does.

Problems are ranked by phase, as the default engine meets them in a chunk: 100 reading (column
count, numbers, libsvm tokens), 200 + k a missing label (k = 0) or split time, 300 a NaN label,
400 a label that is not 0/1 without a declared rule (always an error), 500 + k a broken
``checks`` rule number k. The first bad row (by file, phase, line) stops the run with the default
engine's message; with ``--on-bad-lines skip`` bad rows are counted and the first five kept as
examples.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import Column, DataFrame, Row
from pyspark.sql import functions as F

from deepfm.data.prepare.rows import Rows
from deepfm.data.prepare.spark.read import READ, Read, first_problem, problem
from deepfm.data.readers import F32_MAX, BadLines
from deepfm.data.rules import Rule
from deepfm.data.validate import allowed_labels, check_label_values
from deepfm.errors import DataError

MISSING, LABEL_NAN, LABEL_VALUE, CHECK = 200, 300, 400, 500
EXAMPLES = 5  # bad rows kept as examples (as BadLines keeps)


def holds(rule: Rule, value: Column) -> Column:
    """Where ``rule`` holds; a missing (null or NaN) value never satisfies it, except ``!=``
    (numpy's NaN semantics: Spark alone would order NaN above every number)."""
    x = F.when(~F.isnan(value), value)
    compared = {
        ">": x > rule.value,
        ">=": x >= rule.value,
        "<": x < rule.value,
        "<=": x <= rule.value,
        "==": x == rule.value,
        "!=": x != rule.value,
    }[rule.op]
    return F.coalesce(compared, F.lit(rule.op == "!="))


def apply_rules(read: Read, rows: Rows) -> DataFrame:
    """``read.frame`` with every row's first problem in ``_bad`` and ``_keep`` (the ``filter``
    rules hold); NaN numbers become missing (null) once the label has been checked."""
    spec = rows.spec
    label = spec.label.column
    candidates: list[tuple[Column, Column]] = [(F.col("_bad").isNotNull(), F.col("_bad"))]
    for k, column in enumerate((label, spec.split.column, spec.split.time)):
        if column and column in read.names:
            candidates.append((read.col(column).isNull(), problem(MISSING + k, "missing", column)))
    y = read.col(label)
    candidates.append((F.isnan(y), problem(LABEL_NAN, "label_nan", label, None, y)))
    if not spec.label.declared:
        allowed = list(allowed_labels(spec.input.format))
        candidates.append((~y.isin(allowed), problem(LABEL_VALUE, "label_value", label, None, y)))
    for k, rule in enumerate(spec.checks):
        value = read.col(rule.column)
        broken = problem(CHECK + k, "check", rule.column, F.lit(str(rule)), value)
        candidates.append((~holds(rule, value), broken))
    keep = F.lit(True)
    for rule in spec.filter:
        keep = keep & holds(rule, read.col(rule.column))
    numbers = [
        F.when(~F.isnan(read.col(c)), read.col(c)).alias(read.names[c]) for c in read.numeric if c != label
    ]
    others = [c for c in read.frame.columns if c not in {read.names[c] for c in read.numeric if c != label}]
    frame = read.frame.select(*others, *numbers)
    return frame.select(
        *[c for c in frame.columns if c != "_bad"],
        first_problem(*candidates).alias("_bad"),
        keep.alias("_keep"),
    )


def report_bad_rows(frame: DataFrame, rows: Rows, bad: BadLines) -> None:
    """Raise for the first bad row (or the first label that is not 0/1), or count them (skip).

    One job finds how many rows are bad, the first of them and the first label error; a second
    one, only when rows are skipped, their first examples."""
    problem_ = F.col("_bad")
    first = F.when(  # a struct is never null: only bad rows may be the first
        problem_.isNotNull(), F.struct(F.col("_file"), problem_["phase"], F.col("_line"), problem_.alias("p"))
    )
    label = F.when(
        problem_["kind"] == "label_value", F.struct(F.col("_file"), F.col("_line"), problem_.alias("p"))
    )
    found = frame.agg(
        F.count(problem_).alias("n"), F.min(first).alias("first"), F.min(label).alias("label")
    ).first()
    if found is None or not found["n"]:
        return
    if bad.mode == "error":
        _raise(found["first"], rows, bad)
    if found["label"] is not None:  # an error even when bad rows are skipped
        _raise(found["label"], rows, bad)
    order = [F.col("_file"), problem_["phase"], F.col("_line")]
    for row in frame.filter(problem_.isNotNull()).orderBy(*order).limit(EXAMPLES).collect():
        message, column = message_of(row["_bad"], rows)
        bad.found(message, rows.paths[row["_file"]], int(row["_line"]), column)
    bad.count += found["n"] - min(found["n"], EXAMPLES)


def _raise(row: Row, rows: Rows, bad: BadLines) -> None:
    p = row["p"]
    path, line = rows.paths[row["_file"]], int(row["_line"])
    if p["kind"] == "label_value":
        spec = rows.spec
        check_label_values(np.array([p["number"]]), p["column"], spec.input.format, path, np.array([line]))
    message, column = message_of(p, rows)
    bad.found(message, path, line, column)
    raise DataError(message, path, line, column)  # not reached: found() raises in error mode


def message_of(p: Row, rows: Rows) -> tuple[str, str | None]:
    """The default engine's message of a problem, and the column it names."""
    kind, column, text, number, count = p["kind"], p["column"], p["text"], p["number"], p["count"]
    big = f"is not a finite number within +-{F32_MAX:.3g}"
    if kind == "columns":
        return f"expected {int(number)} columns, found {count}", None
    if kind in ("not_number", "svm_label"):
        return f"{text!r} is not a number", column
    if kind == "too_big":
        return f"{text!r} {big}", column
    if kind == "too_big_number":
        return f"{number!r} {big}", column
    if kind == "svm_token":
        want = "idx:value" if rows.spec.input.format == "libsvm" else "field:idx:value"
        return f"{text!r} is not {want}", column
    if kind == "svm_range":
        lo, hi, shown = text.split("|", 2)
        return (
            f"{count} tokens in index_range [{lo}, {hi}) (indices {shown}); a categorical "
            "field takes at most one per row (kind: multi makes a bag)"
        ), column
    if kind == "missing":
        return f"missing {column}", column
    if kind == "label_nan":
        return f"label {number!r} is not a number", column
    if kind == "check":
        shown = "missing" if number is None or number != number else f"{number:g}"
        return f"{shown} breaks the check '{text}'", column
    raise AssertionError(f"unknown problem {kind!r} (phase {p['phase']}, reading is phase {READ})")

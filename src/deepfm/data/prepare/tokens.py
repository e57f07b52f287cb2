"""A field's values in a Polars chunk: the tokens it counts and encodes, by the spec's rules.

The vectorised twin of :func:`deepfm.data.transforms.apply` (which a trained model uses on pandas
frames and records); ``tests/test_prepare.py`` holds the two to the same tokens for every field
kind. Categorical values are text (missing = ``""``); numeric-derived tokens are int64;
multi-valued fields are lists of non-empty text values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from deepfm.data import transforms as tf
from deepfm.data.spec import FieldSpec


def text(frame: pl.DataFrame, column: str) -> pl.Series:
    """A column as the text its values are counted by: the one value-to-token rule
    (:func:`deepfm.data.transforms.polars_text`; a float holding an integer is its digits, a
    boolean ``true`` / ``false``, missing is ``""``)."""
    return tf.polars_text(frame[column])


def extracted(frame: pl.DataFrame, f: FieldSpec) -> pl.Series:
    """The text of ``f``'s column, or what its ``pattern`` finds in it (no match: null)."""
    s = text(frame, f.source)
    return s.str.extract(tf.one_group(f.pattern), 1) if f.pattern else s


def numbers(frame: pl.DataFrame, f: FieldSpec) -> np.ndarray:
    """float64 values of ``f``'s column (missing or unparsable: NaN)."""
    s = extracted(frame, f) if f.pattern else frame[f.source]
    return s.cast(pl.Float64, strict=False).fill_null(float("nan")).to_numpy()


def lists(frame: pl.DataFrame, f: FieldSpec) -> pl.Series:
    """A multi-valued column as lists of non-empty strings."""
    s = frame[f.source]
    if s.dtype != pl.List(pl.String):
        s = text(frame, f.source).str.split(f.separator)
    return s.list.eval(pl.element().filter(pl.element() != ""))


def tokens(f: FieldSpec, frame: pl.DataFrame, transform: dict[str, Any] | None = None) -> pl.Series:
    """Categorical tokens of field ``f`` (text, or int64 for numeric-derived ones); ``transform``:
    the fitted one (quantile edges) once the feature map exists."""
    if f.kind == "categorical" and f.transform is None:
        if f.pattern:
            return extracted(frame, f).fill_null("")
        s = frame[f.source]
        if s.dtype == pl.List(pl.String):  # libfm field used as a single value
            return s.list.first().fill_null("")
        return text(frame, f.source)
    x = numbers(frame, f)
    if f.transform == "log2bucket":
        out = tf.log2bucket(x)
    elif f.transform == "quantile":
        out = tf.quantile_buckets(x, (transform or {}).get("edges", []))
    elif f.transform == "bucket":
        out = tf.quantile_buckets(x, f.edges or [])
    else:
        out = tf.time_part(x, f.transform or "", f.time_format)
    return pl.Series(f.name, out)


def flag_lists(frame: pl.DataFrame, f: FieldSpec) -> pl.Series:
    """A ``flags`` field as text: the names of its columns holding a non-zero number, ``|``-joined."""
    assert f.flags
    members = [
        pl.when(pl.col(c).cast(pl.Float64, strict=False).fill_null(0) != 0).then(pl.lit(c)).otherwise(None)
        for c in f.flags
    ]
    return frame.select(
        pl.concat_list(members).list.drop_nulls().list.join(f.separator).alias(f.name)
    ).to_series()


def derive(frame: pl.DataFrame, fields: list[FieldSpec]) -> pl.DataFrame:
    """``frame`` with the column of every ``flags`` field whose columns it holds (``f.name``)."""
    derived = [flag_lists(frame, f) for f in fields if f.flags and all(c in frame.columns for c in f.flags)]
    return frame.with_columns(derived) if derived else frame

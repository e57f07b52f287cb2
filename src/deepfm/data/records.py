"""Raw records a trained model accepts: which columns a caller must send, and their preparation.

A trained model's feature map lists its fields; fields that a side table supplies (MovieLens movie
genres, user age, ...) are looked up by the table's key column, so a caller sends the key instead.
:func:`raw_columns` derives that schema (used for error messages, the CSV reader and the HTTP
request model); :func:`prepare_records` checks a frame against it, coerces id columns to the
vocabulary's type (``"42"`` matches the id ``42``), and joins the side tables.
:func:`records_frame` turns a list of JSON-like records into a frame first, refusing values of the
wrong shape (a list where one value belongs, an object, ...) with the record number and field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from deepfm.data.features import FeatureMap, Field, FieldKind
from deepfm.data.tables import Tables, join_tables
from deepfm.errors import DataError

ValueType = Literal["int", "float", "str", "any"]


@dataclass(frozen=True)
class RawColumn:
    """One column a raw record must carry: its name, field kind and the type of its values."""

    name: str
    kind: FieldKind
    dtype: ValueType


def raw_columns(feature_map: FeatureMap, tables: Tables | None = None) -> list[RawColumn]:
    """The columns a caller sends: every field not supplied by a side table, plus the tables' keys."""
    tables = tables or {}
    supplied = {c: key for key, t in tables.items() for c in t.columns if c != key}
    fields = {f.name: f for f in feature_map.fields}
    out: dict[str, RawColumn] = {}
    for f in feature_map.fields:
        key = supplied.get(f.name)
        if key is None:
            out.setdefault(f.name, RawColumn(f.name, f.kind, _field_type(f)))
        elif key not in out:
            if key in fields:
                out[key] = RawColumn(key, fields[key].kind, _field_type(fields[key]))
            else:
                out[key] = RawColumn(key, "categorical", _series_type(tables[key][key]))
    # keys come before the side fields they replace, in field order
    return list(out.values())


def prepare_records(
    frame: pd.DataFrame, feature_map: FeatureMap, tables: Tables | None = None
) -> pd.DataFrame:
    """Check ``frame`` has the raw columns, coerce id types and join side tables (returns a copy)."""
    tables = tables or {}
    columns = raw_columns(feature_map, tables)
    missing = [c.name for c in columns if c.name not in frame.columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; a record needs {[c.name for c in columns]}"
            + (f" (side features come from the model's tables keyed by {sorted(tables)})" if tables else "")
        )
    frame = frame.copy(deep=False)  # new columns only; the caller's frame is never changed
    for c in columns:
        if c.kind == "categorical":
            values = frame[c.name]
            coerced = coerce(values, c.dtype)
            if coerced is not values:
                frame[c.name] = coerced
    return join_tables(frame, tables)


def coerce(values: pd.Series, dtype: ValueType) -> pd.Series:
    """Make ids comparable with a vocabulary of ``dtype`` (values that cannot be go to OOV)."""
    if dtype in ("int", "float") and not pd.api.types.is_numeric_dtype(values):
        return pd.to_numeric(values, errors="coerce")
    if dtype == "str" and not (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)):
        return values.astype(str).where(values.notna(), None)
    return values


def coerce_value(value: Any, dtype: ValueType) -> Any:
    """One id (e.g. a command-line ``--user``) in the vocabulary's type; ``ValueError`` if impossible."""
    if dtype == "int":
        number = float(value)
        if not number.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return int(number)
    if dtype == "float":
        return float(value)
    if dtype == "str":
        return str(value)
    return value


def _field_type(f: Field) -> ValueType:
    if f.kind == "numeric":
        return "float"
    if f.hash_buckets:  # hashed as text: read "007" as "007", not 7
        return "str"
    return INFERRED.get(f.index().inferred_type, "any")  # the cached vocabulary index: no scan


INFERRED: dict[str, ValueType] = {
    "integer": "int",
    "floating": "float",
    "mixed-integer-float": "float",
    "string": "str",
}


def _series_type(values: pd.Series) -> ValueType:
    return INFERRED.get(pd.api.types.infer_dtype(values, skipna=True), "any")


SCALARS = (str, bytes, int, float, bool, np.generic, type(None))


def records_frame(records: pd.DataFrame | list[Any], feature_map: FeatureMap) -> pd.DataFrame:
    """A DataFrame of ``records`` whose field columns hold values the feature map can encode."""
    if isinstance(records, pd.DataFrame):
        frame = records
    else:
        if not isinstance(records, (list, tuple)):
            raise DataError(f"records must be a list of objects (field: value), got {type(records).__name__}")
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise DataError(f"record {i} is a {type(record).__name__}, expected an object (field: value)")
        frame = pd.DataFrame.from_records(list(records), columns=_columns(records))
    for f in feature_map.fields:
        if f.name not in frame.columns or frame[f.name].dtype != object:
            continue
        column = frame[f.name]
        if f.kind == "sequence":
            ok = column.map(lambda v: v is None or _is_list_of_scalars(v))
            expected = "a list of values (or null)"
        else:
            ok = column.map(lambda v: isinstance(v, SCALARS))
            expected = "a single value (string, number or null)"
        if not ok.all():
            i = int(np.flatnonzero(~ok.to_numpy(dtype=bool))[0])
            got = type(column.iloc[i]).__name__
            raise DataError(f"record {i}: expected {expected}, got a {got}", field=f.name)
    return frame


def _columns(records: list[Any] | tuple[Any, ...]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(str(k) for k in record))
    return list(seen)


def _is_list_of_scalars(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(v, SCALARS) for v in value)

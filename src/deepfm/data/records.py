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

import datetime
import decimal
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from deepfm.data.features import FeatureMap, Field, FieldKind
from deepfm.data.tables import Tables, join_tables
from deepfm.data.transforms import series_text, token_text
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
        key = supplied.get(f.source)
        if key is None and _reads_number(f):
            out.setdefault(f.source, RawColumn(f.source, "numeric", "float"))  # e.g. a log2bucket count
        elif key is None:  # a transformed field reads its source column (hour <- timestamp)
            out.setdefault(f.source, RawColumn(f.source, f.kind, _field_type(f)))
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
    """Make ids comparable with a vocabulary of ``dtype`` by :func:`id_value`'s rule (vectorised)."""
    if dtype in ("int", "float"):
        if pd.api.types.is_bool_dtype(values):
            return pd.Series(np.nan, index=values.index)
        if pd.api.types.is_numeric_dtype(values):
            return values
        return values.map(lambda v: id_value(v, dtype)).astype(float)
    if dtype == "str":  # every dtype by the one value-to-token rule (nulls -> "")
        return pd.Series(series_text(values), index=values.index, dtype=object)
    return values


def id_value(value: Any, dtype: ValueType) -> Any:
    """The one id rule of every entry point: ``value`` in the vocabulary's type, or ``None`` (OOV).

    Numeric vocabularies take numbers and numeric strings (``"42"`` is ``42``); anything else
    (``"abc"``, ``1.5`` for an integer id, NaN, null, true) is an unknown id. String vocabularies
    take strings, and numbers as their text (``42`` is ``"42"``). An unknown id scores as the
    field's out-of-vocabulary row; it is never an error. Text vocabularies (every field read by
    the prepare stage) take any value by :func:`~deepfm.data.transforms.token_text`, the text it
    was counted by in training (``6.0`` is ``"6"``, missing is ``""``).
    """
    if dtype == "str":
        return token_text(value) if isinstance(value, SCALARS) else None
    if value is None or isinstance(value, (bool, np.bool_)):
        return None
    if dtype in ("int", "float"):
        if isinstance(value, (int, float, np.integer, np.floating)):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond any float: no id can match it
                return None
        elif isinstance(value, str):
            number = _parse_float(value)
        else:
            return None
        if number != number:  # NaN
            return None
        if dtype == "int" and number.is_integer() and abs(number) < 2**63:
            return int(number)
        return number
    return value


def coerce_value(value: Any, dtype: ValueType) -> Any:
    """One id (e.g. a command-line ``--user``) by :func:`id_value`'s rule; ``None`` = unknown."""
    return id_value(value, dtype)


F32_MAX = float(np.finfo(np.float32).max)  # a numeric input beyond this overflows the model's float32


def _parse_float(text: str) -> float:
    """A number written as text (ASCII, as ``pandas.to_numeric`` reads it); NaN if it is not one."""
    text = text.strip()
    if not text or not text.isascii() or "_" in text:
        return float("nan")
    try:
        return float(text)
    except ValueError:
        return float("nan")


def number_value(value: Any) -> float:
    """The one numeric-input rule: null / ``""`` / NaN = missing (NaN); a finite number within
    float32's range, or numeric text, is the value; anything else raises ``ValueError`` saying why."""
    if value is None:
        return float("nan")
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        try:
            x = float(value)
        except OverflowError:
            x = math.inf  # reported below as out of range
    elif isinstance(value, str):
        if not value.strip():
            return float("nan")
        x = _parse_float(value)
        if x != x and value.strip().lower() not in ("nan", "+nan", "-nan"):
            raise ValueError(f"{_short(value)} is not a number")
    else:
        raise ValueError(f"expected a number, got a {type(value).__name__}")
    if x != x:
        return x
    if not math.isfinite(x) or abs(x) > F32_MAX:
        raise ValueError(f"{_short(value)} is not a finite number within +-{F32_MAX:.3g}")
    return x


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def numeric_sources(feature_map: FeatureMap) -> set[str]:
    """Raw columns read as numbers: numeric fields and fields with a numeric transform (a field
    whose ``pattern`` finds its value in text reads text)."""
    return {f.source for f in feature_map.fields if _reads_number(f)}


NUMBER_TRANSFORMS = ("log2bucket", "quantile", "bucket", "standardize", "hour_of_day", "weekday")


def _reads_number(f: Field) -> bool:
    transform = f.transform or {}
    if transform.get("pattern"):
        return False
    return f.kind == "numeric" or transform.get("type") in NUMBER_TRANSFORMS


def check_numbers(frame: pd.DataFrame, feature_map: FeatureMap) -> None:
    """:func:`number_value`'s rule over a frame's numeric columns (vectorised); DataError names the
    first bad record and field."""
    for column in sorted(numeric_sources(feature_map)):
        if column not in frame.columns:
            continue
        values = frame[column]
        if pd.api.types.is_bool_dtype(values):
            bad = np.ones(len(values), dtype=bool)
        elif pd.api.types.is_numeric_dtype(values):
            x = values.to_numpy(dtype=np.float64, na_value=np.nan)
            with np.errstate(invalid="ignore"):
                bad = np.isinf(x) | (np.abs(x) > F32_MAX)
        else:
            bad = values.map(_bad_number).to_numpy(dtype=bool)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            value = values.iloc[i]
            try:
                number_value(value.item() if isinstance(value, np.generic) else value)
                reason = f"{_short(value)} is not a number"
            except ValueError as exc:
                reason = str(exc)
            raise DataError(f"record {i}: {reason}", field=column)


def _bad_number(value: Any) -> bool:
    try:
        number_value(value.item() if isinstance(value, np.generic) else value)
    except ValueError:
        return True
    return False


def _field_type(f: Field) -> ValueType:
    if f.kind == "numeric":
        return "float"
    if f.hash_buckets:  # hashed as text: read "007" as "007", not 7
        return "str"
    if (f.transform or {}).get("pattern"):  # its pattern searches the value's text ("Up (2009)")
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


SCALARS = (
    str,
    bytes,
    int,
    float,
    bool,
    np.generic,
    decimal.Decimal,
    datetime.date,  # (datetime.datetime, pandas.Timestamp too)
    datetime.time,
    datetime.timedelta,
    type(pd.NA),
    type(pd.NaT),
    type(None),
)


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
        if f.source not in frame.columns or frame[f.source].dtype != object:
            continue
        column = frame[f.source]
        if f.kind == "multi" and (f.transform or {}).get("type") == "split":  # "a|b" or a list
            ok = column.map(
                lambda v: _is_list_of_scalars(v) or (isinstance(v, SCALARS) and not isinstance(v, bool))
            )
            expected = "a list of values, or text to split (or null)"
        elif f.kind == "multi":
            ok = column.map(lambda v: v is None or _is_list_of_scalars(v))
            expected = "a list of values (or null)"
        else:
            ok = column.map(lambda v: isinstance(v, SCALARS))
            expected = "a single value (string, number or null)"
        if not ok.all():
            i = int(np.flatnonzero(~ok.to_numpy(dtype=bool))[0])
            got = type(column.iloc[i]).__name__
            raise DataError(f"record {i}: expected {expected}, got a {got}", field=f.source)
    check_numbers(frame, feature_map)
    return frame


def _columns(records: list[Any] | tuple[Any, ...]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(str(k) for k in record))
    return list(seen)


def _is_list_of_scalars(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(v, SCALARS) for v in value)

"""The serving fast path: JSON records (dicts) -> model inputs, one precompiled step per field.

:meth:`TrainedModel.predict` goes through pandas (records frame, coercion, table join,
``FeatureMap.encode``), which costs about a millisecond per call whatever the batch size. The
HTTP server calls :class:`RecordEncoder` instead: built once per model, it holds a dict from each
raw id to its global embedding row per field, the side tables already encoded per key (plus the
row an unknown key gets), and groups numeric transforms so that one NumPy call handles a column
of the whole batch. It applies the same rules (:func:`~deepfm.data.records.id_value` for ids,
:func:`~deepfm.data.records.number_value` for numeric inputs, the same transforms), and
``tests/test_serving.py`` checks that it encodes exactly like the pandas path (hypothesis).

Errors are :class:`RecordError` naming the record number and field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from deepfm.data import transforms as tf
from deepfm.data.features import FeatureMap, Field
from deepfm.data.records import (
    INFERRED,
    NUMBER_TRANSFORMS,
    RawColumn,
    ValueType,
    id_value,
    number_value,
    raw_columns,
)
from deepfm.data.tables import Tables
from deepfm.errors import DataError

SCALARS = (str, int, float, bool, type(None))


class RecordError(DataError):
    """A bad record: ``record`` (0-based position in the request) and ``field`` say where."""

    def __init__(
        self, message: str, record: int | None, field: str | None, kind: str = "value_error"
    ) -> None:
        self.record = record
        self.kind = kind
        where = f"record {record}: " if record is not None else ""
        super().__init__(f"{where}{message}", field=field)


class RecordEncoder:
    """Encodes a list of raw records (dicts of JSON values) the way ``FeatureMap.encode`` does."""

    def __init__(self, feature_map: FeatureMap, tables: Tables | None = None) -> None:
        tables = tables or {}
        self.fmap = feature_map
        self.columns: list[RawColumn] = raw_columns(feature_map, tables)
        supplied = {c: key for key, t in tables.items() for c in t.columns if c != key}
        self.side_columns = set(supplied)
        cats, seqs, nums = feature_map.categorical, feature_map.multi, feature_map.numerics
        self.shape = (len(cats), len(seqs), max((f.max_len for f in seqs), default=0), len(nums))
        slot = {f.name: ("ids", j) for j, f in enumerate(cats)}
        slot |= {f.name: ("bags", j) for j, f in enumerate(seqs)}
        slot |= {f.name: ("dense", j) for j, f in enumerate(nums)}
        self.steps: list[Callable[[list[dict[str, Any]], dict[str, np.ndarray]], None]] = []
        required: dict[str, None] = {}
        log2: list[tuple[str, Field, int]] = []  # grouped: one NumPy call for all of them
        by_key: dict[str, list[Field]] = {}
        for f in feature_map.fields:
            key = supplied.get(f.source)
            if key is not None:
                by_key.setdefault(key, []).append(f)
                continue
            required[f.source] = None
            kind, j = slot[f.name]
            t = (f.transform or {}).get("type")
            if t == "log2bucket" and not (f.transform or {}).get("pattern"):
                log2.append((f.source, f, j))
            elif kind == "ids":
                self.steps.append(self._categorical(f, j))
            elif kind == "bags":
                self.steps.append(self._multi(f, j))
            else:
                self.steps.append(self._numeric(f, j))
        if log2:
            self.steps.append(self._log2buckets(log2))
        for key, fields in by_key.items():
            required[key] = None
            self.steps.append(self._side(key, tables[key], fields, slot))
        self.required = list(required)

    # ------------------------------------------------------------------ per-request work

    def encode(self, records: Any) -> dict[str, np.ndarray]:
        """``ids`` / ``bags`` / ``dense`` arrays of ``records``; :class:`RecordError` if one is bad."""
        if not isinstance(records, list):
            raise RecordError(
                f"expected a list of records, got {_json_type(records)}", None, None, "list_type"
            )
        n = len(records)
        n_ids, n_seqs, width, n_dense = self.shape
        out = {"ids": np.empty((n, n_ids), dtype=np.int64)}
        if n_seqs:
            out["bags"] = np.zeros((n, n_seqs, width), dtype=np.int64)
        if n_dense:
            out["dense"] = np.empty((n, n_dense), dtype=np.float32)
        try:
            for step in self.steps:
                step(records, out)
        except (KeyError, TypeError, IndexError):  # a record that is not an object, or lacks a field
            self._check_shape(records)
            raise
        return out

    def _check_shape(self, records: list[Any]) -> None:
        """Raise :class:`RecordError` for the first record that is not an object with every field."""
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                kind = "model_attributes_type"
                raise RecordError(f"expected an object (field: value), got {_json_type(r)}", i, None, kind)
            for c in self.required:
                if c not in r:
                    raise RecordError("field required", i, c, "missing")

    def uses_side_columns(self, records: list[dict[str, Any]]) -> bool:
        """Whether a record carries a column a side table supplies (the caller's value then wins)."""
        return bool(self.side_columns) and any(not self.side_columns.isdisjoint(r) for r in records)

    # ------------------------------------------------------------------ compiled steps

    def _categorical(self, f: Field, j: int) -> Callable[..., None]:
        if f.hash_buckets:  # no vocabulary: the field's own hash of each value's text
            return self._hashed(f, j)
        name, lookup, oov = f.source, _lookup(f), f.offset
        t = (f.transform or {}).get("type")
        if t is None:
            key = _id_key(_dtype(f))

            get = lookup.get
            dtype = _dtype(f)
            direct = (int, float) if dtype in ("int", "float") else (str,) if dtype == "str" else ()

            def step(records: list[dict[str, Any]], out: dict[str, np.ndarray]) -> None:
                try:
                    values = [r[name] for r in records]
                    out["ids"][:, j] = [
                        get(v, oov) if type(v) in direct else get(key(v), oov) for v in values
                    ]
                except TypeError:  # an unhashable value: find and name it
                    _check_scalars(records, name)
                    raise

            return step
        if t == "string":

            def text(v: Any) -> str:
                if type(v) is str:
                    return v
                if not isinstance(v, SCALARS):
                    raise TypeError(v)
                return tf.token_text(v)

            def step(records: list[dict[str, Any]], out: dict[str, np.ndarray]) -> None:
                try:
                    out["ids"][:, j] = [lookup.get(text(r[name]), oov) for r in records]
                except TypeError:
                    _check_scalars(records, name)
                    raise

            return step
        if t not in NUMBER_TRANSFORMS:
            raise ValueError(f"unknown transform {t!r}")
        transform = f.transform or {}
        read = _texts if transform.get("pattern") else _numbers  # a pattern reads the value's text

        def step(records: list[dict[str, Any]], out: dict[str, np.ndarray]) -> None:
            tokens = tf.apply(transform, read(records, name)).tolist()
            column = out["ids"][:, j]
            for i, token in enumerate(tokens):
                column[i] = lookup.get(token, oov)

        return step

    def _hashed(self, f: Field, j: int) -> Callable[..., None]:
        name = f.source

        def step(records: list[dict[str, Any]], out: dict[str, np.ndarray]) -> None:
            values = [r[name] for r in records]
            if not all(isinstance(v, SCALARS) for v in values):
                _check_scalars(records, name)
            out["ids"][:, j] = f.encode(pd.Series(values, dtype=object))

        return step

    def _log2buckets(self, fields: list[tuple[str, Field, int]]) -> Callable[..., None]:
        names = [source for source, _, _ in fields]
        lookups = [(_lookup(f), f.offset, j) for _, f, j in fields]

        def step(records: list[dict[str, Any]], out: dict[str, np.ndarray]) -> None:
            x = np.empty((len(records), len(names)))
            for k, name in enumerate(names):
                x[:, k] = _numbers(records, name)
            tokens = tf.log2bucket(x).T.tolist()
            ids = out["ids"]
            for (lookup, oov, j), column in zip(lookups, tokens):
                ids[:, j] = [lookup.get(t, oov) for t in column]

        return step

    def _multi(self, f: Field, j: int) -> Callable[..., None]:
        name, lookup, oov, max_len = f.source, _lookup(f), f.offset, f.max_len
        transform = f.transform or {}
        sep = transform.get("sep") if transform.get("type") == "split" else None

        def step(records: list[dict[str, Any]], out: dict[str, np.ndarray]) -> None:
            bags = out["bags"]
            for i, r in enumerate(records):
                v = r[name]
                if isinstance(v, list):
                    if not all(isinstance(p, SCALARS) for p in v):
                        raise RecordError("expected a list of values, got a nested value", i, name)
                    parts = (
                        [str(p) for p in v] if sep is not None else [p for p in v if p is not None and p == p]
                    )
                elif v is None:
                    parts = []
                elif sep is not None and isinstance(v, SCALARS) and not isinstance(v, bool):
                    parts = [] if v != v else [p for p in str(v).split(sep) if p]
                else:
                    raise RecordError(f"expected a list of values (or null), got {_json_type(v)}", i, name)
                for k, p in enumerate(parts[:max_len]):
                    bags[i, j, k] = lookup.get(p, oov)

        return step

    def _numeric(self, f: Field, j: int) -> Callable[..., None]:
        name, transform = f.source, f.transform
        read = _texts if (transform or {}).get("pattern") else _numbers  # a pattern reads the value's text

        def step(records: list[dict[str, Any]], out: dict[str, np.ndarray]) -> None:
            x = read(records, name)
            if transform:
                out["dense"][:, j] = tf.apply(transform, x)
            else:
                out["dense"][:, j] = np.nan_to_num(x.astype(np.float32), nan=0.0)

        return step

    def _side(
        self, key: str, table: pd.DataFrame, fields: list[Field], slot: dict[str, Any]
    ) -> Callable[..., None]:
        """Encode the table's side fields once per key (and once for an unknown key)."""
        table = table.drop_duplicates(key).reset_index(drop=True)
        unknown = table.iloc[:0].reindex([len(table)])  # what a left join gives an unknown key
        frame = pd.concat([table, unknown], ignore_index=True)
        encoded = FeatureMap(fields).encode(frame)
        sub = {"ids": 0, "bags": 0, "dense": 0}
        places: list[tuple[str, int, int]] = []  # (array, column in the full inputs, in ``encoded``)
        for f in fields:
            kind, j = slot[f.name]
            places.append((kind, j, sub[kind]))
            sub[kind] += 1
        dtype = next(c.dtype for c in self.columns if c.name == key)
        id_key = _id_key(dtype)
        rows = {id_value(v, dtype): i for i, v in enumerate(table[key].tolist())}
        rows.pop(None, None)
        missing_row = len(table)

        def step(records: list[dict[str, Any]], out: dict[str, np.ndarray]) -> None:
            try:
                picks = [rows.get(id_key(r[key]), missing_row) for r in records]
            except TypeError:
                _check_scalars(records, key)
                raise
            for kind, j, k in places:
                values = encoded[kind][picks, k]
                if kind == "bags":
                    out["bags"][:, j, : values.shape[1]] = values
                else:
                    out[kind][:, j] = values

        return step


def _id_key(dtype: ValueType) -> Callable[[Any], Any]:
    """:func:`id_value` for ``dtype``, with the common types first; ``TypeError`` for a non-scalar.

    An int or float looks itself up in a numeric vocabulary (``6.0`` finds ``6``, ``1.5`` and NaN
    find nothing: OOV); a string in a string vocabulary.
    """
    if dtype in ("int", "float"):

        def key(v: Any) -> Any:
            t = type(v)
            if t is int or t is float:
                return v
            if not isinstance(v, SCALARS):
                raise TypeError(v)
            return id_value(v, dtype)

    elif dtype == "str":

        def key(v: Any) -> Any:
            if type(v) is str:
                return v
            if not isinstance(v, SCALARS):
                raise TypeError(v)
            return id_value(v, dtype)

    else:

        def key(v: Any) -> Any:
            if not isinstance(v, SCALARS):
                raise TypeError(v)
            return None if type(v) is bool else v

    return key


def _check_scalars(records: list[dict[str, Any]], name: str) -> None:
    for i, r in enumerate(records):
        if not isinstance(r[name], SCALARS):
            raise RecordError(f"expected a single value, got {_json_type(r[name])}", i, name)


def _lookup(f: Field) -> dict[Any, int]:
    """Raw value (or token) -> global embedding row of field ``f``."""
    return {v.item() if isinstance(v, np.generic) else v: f.offset + 1 + i for i, v in enumerate(f.vocab)}


def _dtype(f: Field) -> ValueType:
    return INFERRED.get(f.index().inferred_type, "any")


def _texts(records: list[dict[str, Any]], name: str) -> pd.Series:
    """A column of scalar values (for a field whose ``pattern`` reads their text)."""
    values = [r[name] for r in records]
    for i, v in enumerate(values):
        if not isinstance(v, SCALARS):
            raise RecordError(
                f"expected a single value (string, number or null), got {_json_type(v)}", i, name
            )
    return pd.Series(values, dtype=object)


def _numbers(records: list[dict[str, Any]], name: str) -> np.ndarray:
    out = np.empty(len(records))
    for i, r in enumerate(records):
        v = r[name]
        try:
            out[i] = number_value(v) if type(v) is not float else _finite(v)
        except ValueError as exc:
            raise RecordError(str(exc), i, name) from None
    return out


def _finite(x: float) -> float:
    return x if x != x or abs(x) <= 3.4028234663852886e38 else number_value(x)


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"

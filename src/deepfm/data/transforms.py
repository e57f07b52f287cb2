"""Column transforms declared by dataset specs, applied the same way in preprocessing and predict.

A transform is a JSON-able dict kept on its :class:`~deepfm.data.features.Field` (so it travels in
``feature_map.json`` and in checkpoints): ``{"type": ..., "column": source column, ...statistics}``.
Each maps a raw column to what the field encodes:

* ``string``: categorical values as text, missing -> ``""`` (its own category);
* ``log2bucket``: Criteo's rule, ``floor(ln(x)^2)`` for ``x > 2`` else ``floor(x)`` -> int token;
* ``quantile``: bucket number among the training quantile ``edges`` -> int token;
* ``bucket``: bucket number among the spec's declared ``edges`` -> int token;
* ``standardize``: ``(x - mean) / std`` -> a dense float (missing -> 0, the mean);
* ``hour_of_day`` / ``weekday``: from ``YYMMDDHH`` integers (Avazu) or unix seconds -> int token;
* ``split``: a multi-valued cell cut at ``sep`` -> a list of strings (empty parts dropped).

Any of them may carry a ``pattern``: a regular expression searched in the raw value's text first;
its group (or the whole match) is the value transformed, no match is a missing value.

Missing numeric inputs become the token :data:`MISSING`, a category of its own.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

MISSING = -(2**62)  # token of a missing numeric input (JSON-safe, never a real bucket)


def to_float(values: Any) -> np.ndarray:
    """float64 array; missing or unparsable -> NaN."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return values.astype(np.float64, copy=False)
    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=object))
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def log2bucket(x: np.ndarray) -> np.ndarray:
    """Criteo's integer-feature rule: ``floor(ln(x)^2)`` for ``x > 2``, else ``floor(x)``."""
    out = np.full(x.shape, MISSING, dtype=np.int64)
    present = ~np.isnan(x)
    v = x[present]
    big = v > 2
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(big, np.floor(np.log(np.where(big, v, 3.0)) ** 2), np.floor(v))
    out[present] = v.astype(np.int64)
    return out


def quantile_buckets(x: np.ndarray, edges: list[float]) -> np.ndarray:
    out = np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="right").astype(np.int64)
    out[np.isnan(x)] = MISSING
    return out


def quantile_edges(sample: np.ndarray, buckets: int) -> list[float]:
    """Distinct inner edges at the ``buckets`` quantiles of a (training) sample."""
    sample = sample[~np.isnan(sample)]
    if len(sample) == 0:
        return []
    qs = np.quantile(sample, np.linspace(0, 1, buckets + 1)[1:-1])
    return [float(v) for v in np.unique(qs)]


def time_part(x: np.ndarray, part: str, time_format: str) -> np.ndarray:
    out = np.full(x.shape, MISSING, dtype=np.int64)
    present = ~np.isnan(x)
    v = x[present].astype(np.int64)
    if time_format == "unix":
        seconds = v
    else:  # yymmddhh
        yy, mm, dd, hh = v // 1_000_000, v // 10_000 % 100, v // 100 % 100, v % 100
        days = _days_from_civil(2000 + yy, mm, dd)
        seconds = days * 86400 + hh * 3600
    if part == "hour_of_day":
        out[present] = seconds // 3600 % 24
    else:  # weekday, Monday = 0 (1970-01-01 was a Thursday)
        out[present] = (seconds // 86400 + 3) % 7
    return out


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (vectorised; H. Hinnant's algorithm)."""
    y = y - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def token_text(value: Any) -> str:
    """The one value-to-token rule of text-valued categorical fields, in training (the prepare
    stage's Polars casts give the same text), ``predict``, the server and evaluation: missing
    (None, NaN) -> ``""``; booleans -> ``"true"`` / ``"false"``; integers, and floats holding an
    integer, -> its digits (``6.0`` is ``"6"``); other floats -> their shortest text; else ``str``."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        x = float(value)
        if x != x:
            return ""
        if x.is_integer() and abs(x) < 2**63:
            return str(int(x))
        return re.sub(r"e([+-])0+(\d)", r"e\1\2", repr(x))  # 2.5e-07 -> 2.5e-7, as Polars writes it
    return value if isinstance(value, str) else str(value)


def strings(values: Any) -> np.ndarray:
    """Categorical values as text by :func:`token_text` (object array); missing -> ``""``."""
    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=object))
    if pd.api.types.is_string_dtype(series) and not series.isna().any():
        return series.astype(str).to_numpy(dtype=object)
    return np.asarray([token_text(v) if v is not pd.NA else "" for v in series.tolist()], dtype=object)


def split_lists(values: Any, sep: str) -> pd.Series:
    """Lists of non-empty strings; list cells (libsvm/libfm records) pass through as text."""
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)

    def cut(v: Any) -> list[str]:
        if isinstance(v, (list, tuple, np.ndarray)):
            return [str(p) for p in v]
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return []
        return [p for p in str(v).split(sep) if p]

    return series.map(cut)


def one_group(pattern: str) -> str:
    """``pattern`` with exactly one group: the whole match when it has none."""
    return pattern if re.compile(pattern).groups else f"({pattern})"


def extract(values: Any, pattern: str) -> pd.Series:
    """The first group of ``pattern`` searched in each value's text; no match (or missing) -> None."""
    text = pd.Series(strings(values), dtype=object)
    out = text.str.extract(one_group(pattern), expand=False)
    return out.astype(object).where(out.notna(), None)


def apply(transform: dict[str, Any], values: Any) -> Any:
    """Apply ``transform`` to a raw column (pandas Series or array)."""
    kind = transform["type"]
    if transform.get("pattern"):
        values = extract(values, transform["pattern"])
    if kind == "string":
        return strings(values)
    if kind == "split":
        return split_lists(values, transform["sep"])
    x = to_float(values)
    if kind == "log2bucket":
        return log2bucket(x)
    if kind in ("quantile", "bucket"):
        return quantile_buckets(x, transform["edges"])
    if kind == "standardize":
        z = (x - transform["mean"]) / transform["std"]
        return np.nan_to_num(z, nan=0.0).astype(np.float32)
    if kind in ("hour_of_day", "weekday"):
        return time_part(x, kind, transform.get("time_format", "yymmddhh"))
    raise ValueError(f"unknown transform {kind!r}")

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

import datetime
import decimal
import re
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

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


TOKEN_RULE = (
    "a categorical value's token is its text: missing (null, NaN, NaT) -> ''; a boolean -> 'true' / "
    "'false'; an integer, or a float holding one (below 2^63), -> its digits ('6.0' -> '6'); any "
    "other float -> its shortest text in its own precision (float32: 0.1 -> '0.1'; exponent "
    "without leading zeros: '2.5e-7'); a decimal -> as a float; a date -> 'YYYY-MM-DD'; a "
    "date-time -> 'YYYY-MM-DDTHH:MM:SS', then '.' and the fraction of a second without trailing "
    "zeros when it has one, and for a time-zone-aware value converted to UTC, '+00:00'; a time of "
    "day -> 'HH:MM:SS' (fraction as for date-times); a duration -> its seconds as a float; "
    "a category -> its value's token; text -> itself"
)


def token_text(value: Any) -> str:
    """The one value-to-token rule of categorical fields (:data:`TOKEN_RULE`), in training (the
    prepare stage reads every column through :func:`polars_text`), ``predict`` and evaluation
    (:func:`series_text`), the server (JSON values) and hashed fields (the text hashed)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _float_text(value)
    if isinstance(value, decimal.Decimal):
        return "" if value.is_nan() else _float_text(float(value))
    if isinstance(value, (datetime.datetime, np.datetime64)):
        return _datetime_text(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, datetime.time):
        return value.replace(microsecond=0).isoformat() + _fraction(value.microsecond * 1000)
    if isinstance(value, (datetime.timedelta, np.timedelta64)):
        td = pd.Timedelta(value)
        return "" if td is pd.NaT else _float_text(td.value / 1e9)
    return str(value)


def _float_text(value: float | np.floating) -> str:
    x = float(value)
    if x != x:
        return ""
    if x.is_integer() and abs(x) < 2**63:
        return str(int(x))
    text = str(value) if isinstance(value, np.float32) else repr(x)  # shortest in its precision
    return re.sub(r"e([+-])0+(\d)", r"e\1\2", text)  # 2.5e-07 -> 2.5e-7


def _fraction(nanoseconds: int) -> str:
    return "." + f"{nanoseconds:09d}".rstrip("0") if nanoseconds else ""


def _datetime_text(value: datetime.datetime | np.datetime64) -> str:
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            return ""
        value = pd.Timestamp(value)
    suffix = ""
    if value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        suffix = "+00:00"
    nanoseconds = value.microsecond * 1000 + (value.nanosecond if isinstance(value, pd.Timestamp) else 0)
    return value.replace(microsecond=0).isoformat(timespec="seconds") + _fraction(nanoseconds) + suffix


def series_text(values: Any) -> np.ndarray:
    """:func:`token_text` of every value of a pandas Series (any dtype: numpy, nullable, pyarrow,
    categorical, object) as an object array; each distinct value is converted once."""
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    if series.dtype == object:
        if pd.api.types.infer_dtype(series, skipna=False) == "string":
            return series.to_numpy(dtype=object)
        seen: dict[tuple[type, Any], str] = {}
        out = []
        for v in series.tolist():
            try:
                key = (type(v), v)
                text = seen.get(key)
                if text is None:
                    text = seen[key] = token_text(v)
            except TypeError:  # unhashable: a list where one value belongs (records check it first)
                text = token_text(v)
            out.append(text)
        return np.asarray(out, dtype=object)
    dtype = series.dtype
    if isinstance(dtype, pd.ArrowDtype) and str(dtype.pyarrow_dtype) in ("float", "halffloat"):
        series = series.astype(np.float32)  # keep its precision: float32 text is float32's shortest
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    if getattr(uniques, "dtype", None) == np.float32:  # iterated as numpy float32, not float
        uniques = np.asarray(uniques, dtype=np.float32)
    texts = np.asarray([token_text(v) for v in uniques] + [""], dtype=object)
    return texts[codes]


def polars_text(s: pl.Series) -> pl.Series:
    """The Polars twin of :func:`series_text`: a column as the tokens :func:`token_text` gives, by
    dtype (vectorised; floats that hold no integer go through :func:`token_text` once per
    distinct value). ``tests/test_token_rule.py`` holds the two together for every dtype."""
    dtype = s.dtype
    name = s.name
    if dtype == pl.String:
        return s.fill_null("")
    if dtype == pl.Null:
        return pl.Series(name, [""] * len(s), dtype=pl.String)
    if dtype == pl.Boolean:
        return _select(
            s,
            pl.when(pl.col(name).is_null())
            .then(pl.lit(""))
            .when(pl.col(name))
            .then(pl.lit("true"))
            .otherwise(pl.lit("false")),
        )
    if dtype.is_integer():
        return s.cast(pl.String).fill_null("")
    if dtype.is_float() or dtype == pl.Decimal:
        return _float_series(s if dtype.is_float() else s.cast(pl.Float64))
    if dtype == pl.Date:
        return s.dt.strftime("%Y-%m-%d").fill_null("")
    if dtype == pl.Datetime:
        suffix = ""
        if getattr(dtype, "time_zone", None):
            s = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            suffix = "+00:00"
        return _with_fraction(s, "%Y-%m-%dT%H:%M:%S", suffix)
    if dtype == pl.Time:
        return _with_fraction(s, "%H:%M:%S", "")
    if dtype == pl.Duration:
        return _float_series(s.dt.total_nanoseconds().cast(pl.Float64) / 1e9).alias(name)
    if dtype in (pl.Categorical, pl.Enum):
        return s.cast(pl.String).fill_null("")
    if dtype == pl.Object:
        return pl.Series(name, [token_text(v) for v in s.to_list()], dtype=pl.String)
    return s.cast(pl.String, strict=False).fill_null("")


def _select(s: pl.Series, expr: pl.Expr) -> pl.Series:
    return s.to_frame().select(expr.alias(s.name)).to_series()


def _with_fraction(s: pl.Series, fmt: str, suffix: str) -> pl.Series:
    col = pl.col(s.name)
    nanos = col.dt.nanosecond()
    fraction = (
        pl.when(nanos != 0)
        .then(pl.lit(".") + nanos.cast(pl.String).str.zfill(9).str.strip_chars_end("0"))
        .otherwise(pl.lit(""))
    )
    text = col.dt.strftime(fmt) + fraction + pl.lit(suffix)
    return _select(s, pl.when(col.is_null()).then(pl.lit("")).otherwise(text))


def _float_series(s: pl.Series) -> pl.Series:
    col = pl.col(s.name)
    whole = col.is_finite() & (col == col.round(0)) & (col.abs() < 2.0**63)
    missing = col.is_null() | col.is_nan()
    other = s.filter(~(s.is_null() | s.is_nan()) & ~(s.is_finite() & (s == s.round(0)) & (s.abs() < 2.0**63)))
    other = other.unique()
    values = other.to_list()
    if s.dtype == pl.Float32:
        texts = [token_text(np.float32(v)) for v in values]
    else:
        texts = [token_text(float(v)) for v in values]
    rest = (
        col.replace_strict(values, texts, default=None, return_dtype=pl.String)
        if values
        else pl.lit(None, pl.String)
    )
    expr = (
        pl.when(missing).then(pl.lit("")).when(whole).then(col.cast(pl.Int64, strict=False).cast(pl.String))
    )
    return _select(s, expr.otherwise(rest))


def strings(values: Any) -> np.ndarray:
    """Categorical values as text by :func:`token_text` (object array); missing -> ``""``."""
    return series_text(values)


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

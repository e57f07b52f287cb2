"""Reading files in the layout a model was trained on, for ``deepfm predict`` and ``deepfm evaluate``.

A layout says how a file's rows become raw records (and labels):

* ``records``: CSV/TSV with a header (pandas' C parser; a malformed line is reported by number),
  Parquet or JSON Lines (one object a line), by suffix (the ``predict`` default); id columns whose
  vocabulary holds strings are read as strings, so ids such as zip codes keep leading zeros;
* ``movielens-1m``: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), label rating > 3;
* ``movielens-100k``: ``u.data`` (tab-separated user, item, rating, timestamp), label rating > 3;
* ``spec``: the model's own dataset spec (format, header, columns, separator, label rule), e.g. a
  headerless Criteo TSV for a model trained with ``--dataset criteo``.

``auto`` (the default) reads Parquet / JSON Lines files as records, and a text file as records when
its first line names every column the model needs, else in the model's own layout.
"""

from __future__ import annotations

import io
import json
import operator
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepfm.data.records import raw_columns
from deepfm.errors import ConfigError, DataError

LAYOUTS = ("auto", "records", "movielens-1m", "movielens-100k", "spec")
OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


def model_layout(model: Any) -> str | None:
    """The layout of the data ``model`` was trained on, or None (records only)."""
    spec = model.extras.get("spec")
    if isinstance(spec, dict) and spec.get("input", {}).get("format") in ("csv", "tsv", "libsvm", "libfm"):
        return "spec"
    if model.config.dataset in ("movielens-1m", "movielens-100k") and not model.config.spec and not spec:
        return model.config.dataset
    return None


def choose_layout(model: Any, path: Path, layout: str = "auto") -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"--format must be one of {list(LAYOUTS)}, got {layout!r}")
    if layout != "auto":
        if layout == "spec" and not isinstance(model.extras.get("spec"), dict):
            raise ConfigError("--format spec: this model was not trained from a dataset spec")
        return layout
    own = model_layout(model)
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if own is None or suffix in (".parquet", ".pq", ".jsonl", ".ndjson", ".json"):
        return "records"
    if own.startswith("movielens") and suffix not in (".dat", ".data", ""):
        return "records"  # ratings.dat / u.data; a .csv of records reports its missing columns
    return "records" if _header_has(path, model) else own


def _header_has(path: Path, model: Any) -> bool:
    """Whether the first line of a text file names every raw column ``model`` needs."""
    try:
        if path.suffix == ".gz":
            import gzip

            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
                first = f.readline()
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                first = f.readline()
    except OSError as exc:
        raise DataError(f"cannot be read ({exc.strerror or exc})", path) from None
    sep = "\t" if "\t" in first else ","
    names = {n.strip().strip('"') for n in first.rstrip("\r\n").split(sep)}
    return all(c.name in names for c in raw_columns(model.feature_map, model.tables))


def read_layout(model: Any, path: str | Path, layout: str = "auto") -> pd.DataFrame:
    """The raw records of ``path`` (every column the layout has, labels included when present)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    chosen = choose_layout(model, path, layout)
    if chosen == "records":
        return read_records(path, model)
    if chosen == "movielens-1m":
        from deepfm.data.movielens import read_ratings

        return read_ratings(path)
    if chosen == "movielens-100k":
        from deepfm.data.movielens import read_ratings_100k

        return read_ratings_100k(path)
    return _read_spec_file(model, path)


def _read_spec_file(model: Any, path: Path) -> pd.DataFrame:
    from deepfm.data.readers import BadLines, read_chunks
    from deepfm.data.spec import spec_from_dict

    stored = dict(model.extras["spec"])
    label = stored.get("label")
    if isinstance(label, dict) and "op" in label:  # DatasetSpec.to_dict() form
        stored["label"] = f"{label['column']} {label['op']} {label['value']}"
    stored["split"] = {"method": "random"}  # reading a file does not split it
    spec = spec_from_dict(stored, source=f"{path} (the model's spec layout)")
    numeric = {spec.label.column}
    numeric |= {
        f.source for f in spec.fields if f.kind == "numeric" or f.transform in ("hour_of_day", "weekday")
    }
    columns = list(dict.fromkeys([spec.label.column, *(f.source for f in spec.fields)]))
    if spec.input.format in ("csv", "tsv"):
        names = spec.input.columns
        if not spec.input.header and names:
            columns = [c for c in columns if c in names]
    chunks = [
        c.frame
        for c in read_chunks(
            path, spec.input, columns, numeric, BadLines("error"), spec.source, spec.index_ranges()
        )
    ]
    if not chunks:
        raise DataError("file holds no rows", path)
    import polars as pl

    return pl.concat(chunks).to_pandas()


CSV = (".csv", ".tsv", ".txt")
PARQUET = (".parquet", ".pq")
JSONL = (".jsonl", ".ndjson", ".json")
FORMATS = "CSV (.csv/.tsv), Parquet (.parquet) or JSON Lines (.jsonl/.ndjson)"


def read_records(path: str | Path, model: Any = None) -> pd.DataFrame:
    """Raw records from ``path``; string-typed columns of ``model`` are read as strings."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    suffix = path.suffix.lower()
    strings = {}
    if model is not None:
        strings = {c.name: str for c in raw_columns(model.feature_map, model.tables) if c.dtype == "str"}
    if suffix in CSV:
        return _read_csv(path, strings, "\t" if suffix == ".tsv" else ",")
    if suffix in PARQUET:
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a foreign or truncated file
            raise DataError(f"not a readable Parquet file ({exc})", path) from None
    if suffix in JSONL:
        return _read_jsonl(path)
    raise DataError(f"unknown input format {suffix!r}; use {FORMATS}", path)


def _read_csv(path: Path, strings: dict[str, type], sep: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=sep, dtype=strings or None, engine="c")
    except pd.errors.EmptyDataError:
        raise DataError("file is empty (expected a header line of column names)", path) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path) from None
    except (pd.errors.ParserError, ValueError) as exc:
        message = str(exc).replace("Error tokenizing data. C error: ", "").strip()
        line = re.search(r"\bline (\d+)", message)
        row = re.search(r"\brow (\d+)", message)
        number = int(line.group(1)) if line else int(row.group(1)) + 1 if row else None
        raise DataError(f"malformed CSV: {message}", path, number) from None


def _read_jsonl(path: Path) -> pd.DataFrame:
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise DataError("file is empty (expected one JSON object a line)", path)
    try:
        return pd.read_json(io.StringIO(text), lines=True, dtype=False)
    except ValueError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):  # find and report the bad line
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg}, column {exc.colno})", path, number) from None
        if not isinstance(value, dict):
            raise DataError(f"expected a JSON object, found {type(value).__name__}", path, number)
    raise DataError("could not be read as JSON Lines", path)


def label_rule(model: Any) -> tuple[str, str, float]:
    """``(column, op, value)``: how the model's training data made a 0/1 label."""
    spec = model.extras.get("spec")
    if isinstance(spec, dict) and isinstance(spec.get("label"), dict):
        label = spec["label"]
        return label.get("column", "label"), label.get("op", ">"), float(label.get("value", 0.0))
    if model.config.dataset.startswith("movielens") and not spec:
        return "rating", ">", 3.0
    return "label", ">", 0.0


def parse_label(text: str) -> tuple[str, str, float]:
    """``"clicked"`` or ``"rating > 3"`` -> ``(column, op, value)`` (a bare column: value > 0)."""
    from deepfm.data.spec import spec_from_dict

    spec = spec_from_dict(
        {"input": {"files": ["-"], "format": "parquet"}, "label": text, "fields": ["x"]}, source="--label"
    )
    return spec.label.column, spec.label.op, spec.label.value


def labels_of(frame: pd.DataFrame, rule: tuple[str, str, float], source: str = "") -> np.ndarray:
    """0/1 labels of ``frame`` by ``rule``; rows without a label are an error naming the column."""
    column, op, value = rule
    where = f"{source}: " if source else ""
    if column not in frame.columns and column != "label" and "label" in frame.columns:
        column, op, value = "label", ">", 0.0  # records that already carry 0/1 labels
    if column not in frame.columns:
        raise DataError(f"{where}no label column {column!r} (columns: {list(frame.columns)}); use --label")
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    missing = np.isnan(values)
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataError(
            f"{where}record {row}: label column {column!r} is missing or not a number", field=column
        )
    return OPS[op](values, value).astype(np.float32)


def read_labelled(
    model: Any, paths: list[str | Path], layout: str = "auto", label: str | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """Records and 0/1 labels of every file in ``paths``, read in the model's layout."""
    rule = parse_label(label) if label else label_rule(model)
    frames, labels = [], []
    for path in paths:
        frame = read_layout(model, path, layout)
        if model.config.drop_neutral and "rating" in frame.columns and rule[0] == "rating":
            frame = frame[frame["rating"] != 3].reset_index(drop=True)
        labels.append(labels_of(frame, rule, str(path)))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), np.concatenate(labels)

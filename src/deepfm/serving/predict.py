"""Batch prediction from files: read raw records, score them, write ``probability`` beside them.

Readers: ``.csv`` (pandas' C parser; a malformed line is reported by number), ``.parquet`` and
``.jsonl`` / ``.ndjson`` (one JSON object a line). Id columns whose vocabulary holds strings are
read as strings, so ids such as zip codes keep their leading zeros.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from deepfm.data.records import raw_columns
from deepfm.errors import DataError
from deepfm.training.checkpoint import TrainedModel
from deepfm.training.io import atomic_write

CSV = (".csv", ".tsv", ".txt")
PARQUET = (".parquet", ".pq")
JSONL = (".jsonl", ".ndjson", ".json")
FORMATS = "CSV (.csv/.tsv), Parquet (.parquet) or JSON Lines (.jsonl/.ndjson)"


def read_records(path: str | Path, model: TrainedModel | None = None) -> pd.DataFrame:
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


def write_scores(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` atomically as CSV, or Parquet / JSON Lines by the suffix of ``path``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PARQUET:
        return atomic_write(path, lambda f: frame.to_parquet(f, index=False))
    if suffix in JSONL:
        text = frame.to_json(orient="records", lines=True)
        return atomic_write(path, lambda f: f.write(text.encode()))
    sep = "\t" if suffix == ".tsv" else ","
    text = frame.to_csv(index=False, sep=sep)
    return atomic_write(path, lambda f: f.write(text.encode()))


def predict_file(
    model: TrainedModel, source: str | Path, output: str | Path, layout: str = "auto"
) -> pd.DataFrame:
    """Score every record of ``source``; writes the records plus a ``probability`` column.

    ``layout`` (see :mod:`deepfm.data.layouts`): ``auto`` reads records files by suffix and files
    in the model's training layout (ratings.dat, a headerless Criteo TSV, ...) as such.
    """
    from deepfm.data.layouts import read_layout

    check_output(output)
    frame = read_layout(model, source, layout)
    try:
        probs = model.predict(frame)
    except DataError as exc:
        if exc.path is None:  # a missing column: name the file it is missing from
            raise DataError(exc.reason, source, exc.line, exc.field) from None
        raise
    scored = frame.assign(probability=np.asarray(probs, dtype=np.float64))
    write_scores(scored, output)
    return scored


def check_output(output: str | Path) -> None:
    """A one-line error, before any work, for an output path that cannot be a file."""
    path = Path(output)
    if str(output).endswith(("/", "\\")) or path.is_dir():
        raise DataError(f"is a folder; give a file name such as {path / 'scores.csv'}", output)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise DataError(f"{parent} is a file, not a folder", output)


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

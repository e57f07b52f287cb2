"""Reading files in the layout a model was trained on, for ``deepfm predict`` and ``deepfm evaluate``.

A layout says how a file's rows become raw records (and labels):

* ``records``: CSV/TSV with a header (pandas' C parser; a malformed line is reported by number),
  Parquet or JSON Lines (one object a line), by suffix (the ``predict`` default); id columns whose
  vocabulary holds strings are read as strings, so ids such as zip codes keep leading zeros;
* ``spec``: the model's own dataset spec (format, header, columns, separator, label rule), e.g.
  ``ratings.dat`` for a MovieLens model or a headerless Criteo TSV for a ``--dataset criteo`` one;
* ``movielens-1m`` / ``movielens-100k``: that built-in data set's ratings file (``ratings.dat``,
  ``u.data``), whatever the model was trained on.

``auto`` (the default) reads Parquet / JSON Lines files as records, and a text file as records when
its first line names every column the model needs, else in the model's own layout. Labels follow
the training data's rule (``rating > 3``), and its row filter (``--drop-neutral``) applies.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from deepfm.data.catalog import template
from deepfm.data.options import LAYOUT_DATASETS as BUILT_IN
from deepfm.data.options import LAYOUTS, PrepareOptions
from deepfm.data.prepare.rows import field_sources, reads_number
from deepfm.data.readers import BadLines, read_chunks
from deepfm.data.records import raw_columns
from deepfm.data.rules import Rule, parse_rule
from deepfm.data.spec import DatasetSpec, spec_from_dict
from deepfm.errors import ConfigError, DataError

TEXT_FORMATS = ("csv", "tsv", "libsvm", "libfm")


def model_spec(model: Any) -> DatasetSpec | None:
    """The spec that declared ``model``'s data (models of built-in MovieLens written before specs
    were kept: that data set's spec), or None."""
    stored = model.facts.spec
    if isinstance(stored, dict):
        stored = {**stored, "split": {"method": "random"}}  # reading a file does not split it
        if not stored.get("input", {}).get("files"):  # a split by files: the file read is the input
            stored["input"] = {**stored.get("input", {}), "files": ["<file read>"]}
        return spec_from_dict(stored, source="the model's spec layout")
    config = model.config
    if config.dataset in BUILT_IN and not config.spec:
        options = PrepareOptions(dataset=config.dataset, drop_neutral=config.drop_neutral)
        return spec_from_dict(template(config.dataset, options), source=config.dataset)
    return None


def model_layout(model: Any) -> str | None:
    """The layout of the data ``model`` was trained on, or None (records only)."""
    spec = model_spec(model)
    return "spec" if spec is not None and spec.input.format in TEXT_FORMATS else None


def choose_layout(model: Any, path: Path, layout: str = "auto") -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"--format must be one of {list(LAYOUTS)}, got {layout!r}")
    if layout != "auto":
        if layout == "spec" and model_spec(model) is None:
            raise ConfigError("--format spec: this model was not trained from a dataset spec")
        return layout
    own = model_layout(model)
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if own is None or suffix in (".parquet", ".pq", ".jsonl", ".ndjson", ".json"):
        return "records"
    spec = model_spec(model)
    if spec is not None and spec.input.separator and len(spec.input.separator) > 1 and suffix == ".csv":
        return "records"  # a ratings.dat-style model and a .csv of records: it reports missing columns
    names = _header_names(path)
    if all(c.name in names for c in raw_columns(model.feature_map, model.tables)):
        return "records"
    joined = len(names) == 1 and any(sep in name for name in names for sep in ",;|\t")
    if spec is not None and spec.input.header and not joined and spec.label.column not in names:
        return "records"  # a headed file without labels: it reports the feature columns missing
    return own


def _header_names(path: Path) -> set[str]:
    """The names on the first line of a text file (split at a tab, else at commas)."""
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
    return {n.strip().strip('"') for n in first.rstrip("\r\n").split(sep)}


def layout_spec(model: Any, layout: str) -> DatasetSpec:
    """The spec whose input section reads a file of ``layout`` (``spec`` or a built-in's name)."""
    if layout in BUILT_IN:
        return spec_from_dict(template(layout, PrepareOptions(dataset=layout)), source=layout)
    spec = model_spec(model)
    assert spec is not None
    return spec


def read_layout(model: Any, path: str | Path, layout: str = "auto") -> pd.DataFrame:
    """The raw records of ``path`` (every column the layout has, labels included when present)."""
    path = checked_file(path)
    chosen = choose_layout(model, path, layout)
    if chosen == "records":
        return read_records(path, model)
    return read_spec_file(layout_spec(model, chosen), path)


def checked_file(path: str | Path) -> Path:
    """``path`` if it is a regular file, else a one-line error saying what it is."""
    path = Path(path)
    if path.is_dir():
        raise DataError("is a folder, not a file", path)
    if path.exists() and not path.is_file():
        raise DataError("is not a regular file (a FIFO, socket or device); give a data file", path)
    if not path.is_file():
        raise DataError("file not found", path)
    return path


def read_spec_file(spec: DatasetSpec, path: Path) -> pd.DataFrame:
    """The rows of ``path`` as ``spec``'s input declares them: its label, rule columns and the
    columns its fields read from the rows (side tables' columns come from the model)."""
    numeric = {spec.label.column, *(r.column for r in [*spec.filter, *spec.checks])}
    columns = [spec.label.column, *(r.column for r in [*spec.filter, *spec.checks])]
    for f in spec.fields:
        for source in field_sources(f):
            if spec.table_of(source) is None:
                columns.append(source)
                if reads_number(f):
                    numeric.add(source)
    columns += [t.key for t in spec.tables]
    columns = list(dict.fromkeys(columns))
    if spec.input.format in ("csv", "tsv") and not spec.input.header and spec.input.columns:
        columns = [c for c in columns if c in spec.input.columns]
    chunks = [
        c.frame
        for c in read_chunks(
            path, spec.input, columns, numeric, BadLines("error"), spec.source, spec.index_ranges()
        )
    ]
    if not chunks:
        raise DataError("file holds no rows", path)
    return whole_numbers_as_integers(pl.concat(chunks).to_pandas())


def whole_numbers_as_integers(frame: pd.DataFrame) -> pd.DataFrame:
    """Numeric columns whose values are all whole numbers as integers with gaps (pandas
    ``Int64``), so that rows written back out read ``1,,0,55`` as in the file, not ``1.0,,0.0,55.0``
    (numbers read from text become floats to hold the blanks); the model scores them the same."""
    for name in frame.columns:
        column = frame[name]
        if column.dtype.kind == "f":
            values = column.dropna().to_numpy()
            if (
                np.isfinite(values).all()
                and (values == np.round(values)).all()
                and (abs(values) < 2**53).all()
            ):
                frame[name] = column.astype("Int64")
    return frame


CSV = (".csv", ".tsv", ".txt")
PARQUET = (".parquet", ".pq")
JSONL = (".jsonl", ".ndjson", ".json")
FORMATS = "CSV (.csv/.tsv), Parquet (.parquet) or JSON Lines (.jsonl/.ndjson)"


def read_records(path: str | Path, model: Any = None) -> pd.DataFrame:
    """Raw records from ``path``; string-typed columns of ``model`` are read as strings."""
    path = checked_file(path)
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


def label_rule(model: Any) -> Rule:
    """How the model's training data made a 0/1 label (``label > 0`` when it declared none)."""
    spec = model_spec(model)
    return spec.label.as_rule() if spec is not None else Rule("label", ">", 0.0)


def row_filter(model: Any) -> list[Rule]:
    """The training data's row filter (e.g. ``rating != 3`` with ``--drop-neutral``)."""
    spec = model_spec(model)
    return list(spec.filter) if spec is not None else []


def parse_label(text: str) -> Rule:
    """``"clicked"`` or ``"rating > 3"`` -> a rule (a bare column: value > 0)."""
    if re.fullmatch(r"[A-Za-z_][\w.-]*", text.strip()):
        return Rule(text.strip(), ">", 0.0)
    try:
        return parse_rule(text)
    except ValueError as exc:
        raise ConfigError(f"--label: {exc}") from None


def labels_of(frame: pd.DataFrame, rule: Rule, source: str = "") -> np.ndarray:
    """0/1 labels of ``frame`` by ``rule``; rows without a label are an error naming the column."""
    where = f"{source}: " if source else ""
    if rule.column not in frame.columns and rule.column != "label" and "label" in frame.columns:
        rule = Rule("label", ">", 0.0)  # records that already carry 0/1 labels
    if rule.column not in frame.columns:
        raise DataError(
            f"{where}no label column {rule.column!r} (columns: {list(frame.columns)}); use --label"
        )
    values = pd.to_numeric(frame[rule.column], errors="coerce").to_numpy(dtype=np.float64)
    missing = np.isnan(values)
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataError(
            f"{where}record {row}: label column {rule.column!r} is missing or not a number", field=rule.column
        )
    return rule.holds(values).astype(np.float32)


def filtered(frame: pd.DataFrame, rules: list[Rule]) -> pd.DataFrame:
    """The rows of ``frame`` for which every rule holds (rules on absent columns are skipped)."""
    keep = np.ones(len(frame), dtype=bool)
    for rule in rules:
        if rule.column in frame.columns:
            keep &= rule.holds(pd.to_numeric(frame[rule.column], errors="coerce").to_numpy(dtype=np.float64))
    return frame if keep.all() else frame[keep].reset_index(drop=True)


def read_labelled(
    model: Any, paths: list[str | Path], layout: str = "auto", label: str | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """Records and 0/1 labels of every file in ``paths``, read in the model's layout."""
    rule = parse_label(label) if label else label_rule(model)
    frames, labels = [], []
    for path in paths:
        frame = filtered(read_layout(model, path, layout), row_filter(model))
        labels.append(labels_of(frame, rule, str(path)))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), np.concatenate(labels)

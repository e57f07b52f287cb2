"""The rows of a spec, streamed: read, checked, filtered, joined with side tables, split.

:meth:`Rows.stream` yields chunks of the input files (see :mod:`deepfm.data.readers`) with the
part of every row (0 train, 1 valid, 2 test) by the split rules of :mod:`deepfm.data.split`. In
order: rows without a label (or split time) are bad rows; labels are checked (0/1 unless the spec
declares a rule); rows breaking a ``checks`` rule are bad rows; rows failing a ``filter`` rule are
dropped; the side tables are joined on their keys. Bad rows raise, or are skipped and counted
(``--on-bad-lines``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from deepfm.data.prepare.tokens import derive
from deepfm.data.readers import BadLines, Chunk, read_chunks
from deepfm.data.spec import PARTS, TIME_TRANSFORMS, DatasetSpec, FieldSpec, TableSpec
from deepfm.data.split import leave_last_parts, random_parts, row_uniforms
from deepfm.data.transforms import polars_text
from deepfm.data.validate import check_label_values
from deepfm.errors import DataError


def field_sources(f: FieldSpec) -> list[str]:
    """The raw columns a field reads (several for a field of ``flags`` columns)."""
    return list(f.flags) if f.flags else [f.source]


def reads_number(f: FieldSpec) -> bool:
    """Whether a field's column is read as a number (numeric kinds and time parts, no pattern)."""
    return f.pattern is None and not f.flags and (f.kind == "numeric" or f.transform in TIME_TRANSFORMS)


@dataclass
class SideTable:
    """A side table read into memory: its key column (text) and the columns fields read."""

    spec: TableSpec
    frame: pl.DataFrame

    @classmethod
    def read(
        cls,
        table: TableSpec,
        paths: list[Path],
        numeric: set[str],
        bad: BadLines,
        source: str,
        flags: list[FieldSpec],
    ) -> SideTable:
        """Read a table's files; ``flags``: fields of its flag columns, derived here."""
        frames = [
            derive(c.frame, flags)
            for path in paths
            for c in read_chunks(path, table.input, table.input.columns, numeric, bad, source)
        ]
        if not frames:
            raise DataError(f"side table keyed by {table.key!r} has no rows", paths[0] if paths else None)
        frame = pl.concat(frames, how="vertical_relaxed")
        frame = frame.with_columns(polars_text(frame[table.key])).unique(
            table.key, keep="first", maintain_order=True
        )
        return cls(table, frame)

    def join(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with this table's columns (those it lacks) by its key; unknown keys: missing."""
        side = [c for c in self.frame.columns if c != self.spec.key and c not in frame.columns]
        if not side or self.spec.key not in frame.columns:
            return frame
        joined = frame.with_columns(polars_text(frame[self.spec.key]).alias("__key__")).join(
            self.frame.select(pl.col(self.spec.key).alias("__key__"), *side),
            on="__key__",
            how="left",
            maintain_order="left",
        )
        text = [c for c in side if self.frame.schema[c] == pl.String]
        return joined.drop("__key__").with_columns([pl.col(c).fill_null("") for c in text])


@dataclass
class Rows:
    """What the passes read of a spec's input, and how its rows are split."""

    spec: DatasetSpec
    files: dict[str, list[Path]]  # part ("all", or train/valid/test for a files split) -> paths
    seed: int
    columns: list[str]  # columns read from the input files
    numeric: set[str]  # of those, the ones parsed as numbers
    tables: list[SideTable] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)  # time split
    assigned: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # leave_last

    @classmethod
    def of(cls, spec: DatasetSpec, seed: int, bad: BadLines) -> Rows:
        files = spec.input_files()
        rules = [*spec.filter, *spec.checks]
        numeric = {spec.label.column, *(r.column for r in rules)}
        columns = [spec.label.column, *(r.column for r in rules), *(t.key for t in spec.tables)]
        table_numeric: dict[str, set[str]] = {t.key: set() for t in spec.tables}
        for f in spec.fields:
            for source in field_sources(f):
                table = spec.table_of(source)
                if table is not None:
                    if reads_number(f):
                        table_numeric[table.key].add(source)
                    continue
                columns.append(source)
                if reads_number(f):
                    numeric.add(source)
        split = spec.split
        if split.method == "time":
            assert split.column is not None
            columns.append(split.column)
            numeric.add(split.column)
        if split.method == "leave_last":
            assert split.group is not None and split.time is not None
            columns += [split.group, split.time]
            numeric.add(split.time)
        tables_files = spec.table_files()
        tables = []
        for t in spec.tables:
            flags = [f for f in spec.fields if f.flags and spec.table_of(f.flags[0]) is t]
            tables.append(
                SideTable.read(t, tables_files[t.key], table_numeric[t.key], bad, spec.source, flags)
            )
        return cls(spec, files, seed, list(dict.fromkeys(columns)), numeric, tables)

    @property
    def own_flags(self) -> list[FieldSpec]:
        """``flags`` fields of the rows' own columns (derived on every chunk)."""
        return [f for f in self.spec.fields if f.flags and self.spec.table_of(f.flags[0]) is None]

    @property
    def paths(self) -> list[Path]:
        """Every input file, in order (a row's file number is its position here)."""
        return [p for paths in self.files.values() for p in paths]

    def stream(
        self, bad: BadLines, columns: list[str] | None = None, join: bool = True
    ) -> Iterator[tuple[Chunk, np.ndarray]]:
        """Chunks (checked, filtered, joined) with the part (0 train, 1 valid, 2 test) of each row."""
        columns = columns or self.columns
        spec, split = self.spec, self.spec.split
        label = spec.label.column
        numbers = {str(p): i for i, p in enumerate(self.paths)}
        for part_name, paths in self.files.items():
            for path in paths:
                for chunk in read_chunks(
                    path,
                    spec.input,
                    columns,
                    self.numeric & set(columns),
                    bad,
                    spec.source,
                    spec.index_ranges(),
                ):
                    chunk = _drop_missing(
                        chunk, [c for c in (label, split.column, split.time) if c in columns], bad
                    )
                    if label in columns:
                        chunk = _check_labels(spec, chunk, bad)
                    chunk = _checks(spec, chunk, bad)
                    chunk = _filter(spec, chunk)
                    if chunk.frame.height == 0:
                        continue
                    if join:
                        frame = derive(chunk.frame, self.own_flags)
                        for table in self.tables:
                            frame = table.join(frame)
                        chunk = replace(chunk, frame=frame)
                    yield chunk, self.parts(chunk, part_name, numbers[str(path)])

    def parts(self, chunk: Chunk, part_name: str, file_number: int) -> np.ndarray:
        split = self.spec.split
        n = chunk.frame.height
        if split.method == "files":
            return np.full(n, PARTS.index(part_name), dtype=np.int8)
        if split.method == "leave_last":
            return _assigned_parts(self.assigned.get(str(chunk.path)), chunk.lines)
        if split.method == "time" and self.thresholds:
            t = chunk.frame[split.column].to_numpy()
            return np.searchsorted(self.thresholds, t, side="right").astype(np.int8)
        return random_parts(row_uniforms(self.seed, file_number, self.row_numbers(chunk)), split.ratios)

    def row_numbers(self, chunk: Chunk) -> np.ndarray:
        """1-based data row numbers of a chunk's rows: their line numbers after a header line, so a
        file with a header, one without and a Parquet copy number their rows alike."""
        header = self.spec.input.format in ("csv", "tsv") and self.spec.input.header
        return chunk.lines - 1 if header else chunk.lines

    def find_time_thresholds(self) -> None:
        """Pass 0 of a time split: the time quantiles at the train and train + valid ratios."""
        split = self.spec.split
        assert split.column is not None
        # every column read: a row that is bad in any of them is not prepared, so has no say
        times = [c.frame[split.column].to_numpy() for c, _ in self.stream(BadLines("skip"), join=False)]
        t = np.concatenate(times) if times else np.zeros(0)
        r0, r1, _ = split.ratios
        self.thresholds = [float(np.quantile(t, r0)), float(np.quantile(t, r0 + r1))] if len(t) else []

    def hold_out_last(self) -> None:
        """Pass 0 of a leave_last split: each group's latest row -> test, the one before -> valid."""
        split = self.spec.split
        assert split.group is not None and split.time is not None
        numbers = {str(p): i for i, p in enumerate(self.paths)}
        files, lines, groups, times, ties = [], [], [], [], []
        for chunk, _ in self.stream(BadLines("skip"), join=False):  # the rows prepared, as above
            number = numbers[str(chunk.path)]
            files.append(np.full(chunk.frame.height, number, dtype=np.int64))
            lines.append(chunk.lines)
            groups.append(chunk.frame[split.group].cast(pl.String).fill_null("").to_numpy())
            times.append(chunk.frame[split.time].to_numpy())
            ties.append(row_uniforms(self.seed, number, self.row_numbers(chunk)))
        if not lines:
            return
        file, line = np.concatenate(files), np.concatenate(lines)
        parts = leave_last_parts(np.concatenate(groups), np.concatenate(times), np.concatenate(ties))
        for i, path in enumerate(self.paths):
            mine = file == i
            order = np.argsort(line[mine], kind="stable")
            self.assigned[str(path)] = (line[mine][order], parts[mine][order])


def _assigned_parts(assigned: tuple[np.ndarray, np.ndarray] | None, lines: np.ndarray) -> np.ndarray:
    """The parts pass 0 gave these lines (rows it did not see: train)."""
    if assigned is None or len(assigned[0]) == 0:
        return np.zeros(len(lines), dtype=np.int8)
    known, parts = assigned
    at = np.minimum(np.searchsorted(known, lines), len(known) - 1)
    return np.where(known[at] == lines, parts[at], 0).astype(np.int8)


def _keep(chunk: Chunk, keep: np.ndarray) -> Chunk:
    if keep.all():
        return chunk
    return replace(chunk, frame=chunk.frame.filter(pl.Series(keep)), lines=chunk.lines[keep])


def _drop_missing(chunk: Chunk, columns: list[str], bad: BadLines) -> Chunk:
    """Rows without a label (or split time) are bad rows."""
    frame = chunk.frame
    missing = np.zeros(frame.height, dtype=bool)
    for column in columns:
        null = frame[column].is_null().to_numpy()
        for r in np.nonzero(null & ~missing)[0].tolist():
            bad.found(f"missing {column}", chunk.path, int(chunk.lines[r]), column)
        missing |= null
    return _keep(chunk, ~missing)


def _check_labels(spec: DatasetSpec, chunk: Chunk, bad: BadLines) -> Chunk:
    """NaN labels are bad rows; without a declared rule, a label other than 0/1 is an error."""
    column = spec.label.column
    y = chunk.frame[column].cast(pl.Float64).to_numpy()
    nan = np.isnan(y)
    for r in np.nonzero(nan)[0].tolist():
        bad.found(
            f"label {chunk.frame[column][r]!r} is not a number", chunk.path, int(chunk.lines[r]), column
        )
    chunk = _keep(chunk, ~nan)
    if not spec.label.declared:
        check_label_values(y[~nan], column, spec.input.format, chunk.path, chunk.lines)
    return chunk


def _checks(spec: DatasetSpec, chunk: Chunk, bad: BadLines) -> Chunk:
    """Rows that break a ``checks`` rule (or have no number for it) are bad rows."""
    if not spec.checks:
        return chunk
    broken = np.zeros(chunk.frame.height, dtype=bool)
    for rule in spec.checks:
        values = chunk.frame[rule.column].cast(pl.Float64).to_numpy()
        fails = ~rule.holds(values) & ~broken
        for r in np.nonzero(fails)[0].tolist():
            value = values[r]
            shown = "missing" if np.isnan(value) else f"{value:g}"
            bad.found(f"{shown} breaks the check '{rule}'", chunk.path, int(chunk.lines[r]), rule.column)
        broken |= fails
    return _keep(chunk, ~broken)


def _filter(spec: DatasetSpec, chunk: Chunk) -> Chunk:
    """Only rows for which every ``filter`` rule holds."""
    if not spec.filter:
        return chunk
    keep = np.ones(chunk.frame.height, dtype=bool)
    for rule in spec.filter:
        keep &= rule.holds(chunk.frame[rule.column].cast(pl.Float64).to_numpy())
    return _keep(chunk, keep)

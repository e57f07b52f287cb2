"""Streaming readers: csv/tsv (optionally gzipped), parquet and libsvm/libfm files in chunks.

Every reader yields :class:`Chunk` s of a bounded number of rows as Polars frames holding only the
needed columns: numeric columns as ``Float64`` (missing = null), the others as text (missing =
``""``) or, for libsvm/libfm feature columns, lists of feature indices. Each row keeps its
1-based line number (row number for parquet), so a bad row is reported as file, line and column.

Bad rows (wrong number of columns, unparsable number, missing label) raise :class:`DataError`
with ``on_bad_lines="error"``; with ``"skip"`` they are dropped and counted in :class:`BadLines`.
"""

from __future__ import annotations

import bisect
import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from deepfm.data.spec import RANGE, FieldSpec, InputSpec
from deepfm.data.transforms import polars_text
from deepfm.errors import ConfigError, DataError, brief

BLOCK_BYTES = 16 << 20  # csv text parsed per chunk
PARQUET_ROWS = 65536
TEXT_COLUMN = "__text__"
F32_MAX = float(np.finfo(np.float32).max)  # numeric inputs beyond this overflow the model's float32


@dataclass
class Chunk:
    frame: pl.DataFrame
    path: Path
    lines: np.ndarray  # int64, 1-based line (row) number of each row in ``path``
    ignored: int = 0  # libsvm with index_range fields: tokens of these rows outside every range


@dataclass
class BadLines:
    """What to do with bad rows, and how many were skipped (with the first few examples)."""

    mode: str = "error"
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def found(self, message: str, path: Path, line: int | None, column: str | None) -> None:
        if self.mode == "error":
            raise DataError(f"{message} (use --on-bad-lines skip to drop bad rows)", path, line, column)
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(str(DataError(message, path, line, column)))


def read_chunks(
    path: Path,
    spec: InputSpec,
    columns: list[str],
    numeric: set[str],
    bad: BadLines,
    source: str = "spec",
    ranges: dict[str, FieldSpec] | None = None,
) -> Iterator[Chunk]:
    """Stream ``path`` as chunks holding ``columns`` (those in ``numeric`` parsed as floats).

    ``ranges`` (libsvm): the ``index_range`` fields by their column ``features[lo:hi]``; a row
    with two tokens in the range of a single-valued one is a bad row naming that field.

    The one error path of every reader and decompressor: whatever a damaged file makes the
    libraries raise (a truncated ``.gz``, a bad CRC, a plain file named ``.gz``, corrupt parquet
    pages, bytes that are not UTF-8) becomes a one-line :class:`DataError` naming the file.
    """
    try:
        if spec.format in ("csv", "tsv"):
            yield from _read_text_table(path, spec, columns, numeric, bad, source)
        elif spec.format == "parquet":
            yield from _read_parquet(path, columns, numeric, bad, source)
        else:
            yield from _read_svm(path, spec.format, columns, bad, ranges or {})
    except READ_ERRORS as exc:
        raise DataError(f"cannot read: {describe(exc)}", path) from None


READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes gzip.BadGzipFile and pyarrow's IOError
    EOFError,  # a truncated gzip stream
    zlib.error,
    UnicodeError,
    pa.ArrowException,
    pl.exceptions.PolarsError,
)


def describe(exc: BaseException) -> str:
    """One line saying what is wrong with a file, from a reader's or decompressor's exception."""
    text = brief(exc, 200)
    if isinstance(exc, EOFError) or "end-of-stream" in text:
        return f"the file is truncated ({text})"
    if isinstance(exc, gzip.BadGzipFile) or "gzip" in text.lower() or isinstance(exc, zlib.error):
        return f"not a valid gzip file ({text})"
    return text


class _Separated(io.RawIOBase):
    """A text file's bytes with a several-character separator (``::``) replaced by one byte that
    text never holds (``\x1f``, the unit separator), so Arrow's CSV reader can read it.

    Arrow reads one-character delimiters only; lines keep their numbers (newlines are untouched).
    A UTF-8 byte-order mark at the start is dropped."""

    UNIT = b"\x1f"

    def __init__(self, path: Path, separator: bytes) -> None:
        self.file = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
        self.separator = separator
        self.pending = b""  # a tail that may be the start of a separator
        self.out = b""
        self.first = True

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.out:
            block = self.file.read(1 << 20)
            if self.first:
                block, self.first = block.removeprefix(b"\xef\xbb\xbf"), False
            data = (self.pending + block).replace(self.separator, self.UNIT)
            self.pending = b""
            if block:  # keep back a tail that a following block could complete into a separator
                keep = next(
                    (k for k in range(len(self.separator) - 1, 0, -1) if data.endswith(self.separator[:k])), 0
                )
                if keep:
                    data, self.pending = data[:-keep], data[-keep:]
            self.out = data
            if not block:
                break
        n = min(len(buffer), len(self.out))
        buffer[:n] = self.out[:n]
        self.out = self.out[n:]
        return n

    def close(self) -> None:
        self.file.close()
        super().close()


def _open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"  # a byte-order mark is not part of the first value
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, errors="replace", newline="")
    return open(path, encoding=encoding, errors="replace", newline="")


def column_names(path: Path, spec: InputSpec) -> list[str]:
    """The columns of a csv/tsv file: its header line's names, else the spec's ``columns``."""
    if not spec.header:
        return list(spec.columns)
    with _open_text(path, spec.encoding) as f:
        header = f.readline().rstrip("\r\n").removeprefix("\ufeff")  # a UTF-8 byte-order mark
    return [n.strip().strip('"') for n in header.split(separator(spec))]


def separator(spec: InputSpec) -> str:
    """A csv/tsv file's separator: the spec's, else "," (csv) or a tab (tsv)."""
    return spec.separator or ("\t" if spec.format == "tsv" else ",")


def _read_text_table(
    path: Path, spec: InputSpec, columns: list[str], numeric: set[str], bad: BadLines, source: str
) -> Iterator[Chunk]:
    sep = separator(spec)
    names = column_names(path, spec)
    first_line = 2 if spec.header else 1
    missing = [c for c in columns if c not in names]
    if missing and spec.header and names == [""]:
        raise DataError("the file is empty (no header line naming the columns)", path)
    if missing and spec.header and len(names) == 1:
        other = next((s for s in (",", "\t", ";", "|") if s != sep and s in names[0]), None)
        if other is not None:
            raise DataError(
                f"the header is one column {names[0]!r}: the columns look separated by {other!r}, "
                f"not {sep!r}; set input.separator in the spec (or convert the file)",
                path,
            )
    if missing:
        raise ConfigError(
            f"{source}: column(s) {missing} not in {path} (its columns are {names}); "
            "check the spec's fields, label and input.columns"
        )
    invalid: list[int] = []  # line numbers of rows with the wrong number of columns
    pending: list[tuple[int, str | None, str]] = []  # their problems, not reported yet

    def on_invalid(row: pacsv.InvalidRow) -> str:  # must not raise: it is called from C++
        number = row.number if row.number is not None else -1
        bisect.insort(invalid, number)
        pending.append((number, None, f"expected {row.expected_columns} columns, found {row.actual_columns}"))
        return "skip"

    def report(problems: list[tuple[int, str | None, str]], upto: float) -> None:
        """Report ``problems`` and the pending invalid rows up to line ``upto``, in line order."""
        due = [p for p in pending if p[0] <= upto]
        pending[:] = [p for p in pending if p[0] > upto]
        for line, column, message in sorted(problems + due, key=lambda p: p[0]):
            bad.found(message, path, line, column)

    several = len(sep) > 1  # e.g. "::": read through _Separated, unquoted
    opened = _open_csv(
        path,
        _Separated(path, sep.encode(spec.encoding)) if several else None,
        read_options=pacsv.ReadOptions(
            use_threads=False,
            block_size=BLOCK_BYTES,
            column_names=names,
            skip_rows=1 if spec.header else 0,
            encoding=spec.encoding,
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=_Separated.UNIT.decode() if several else sep,
            quote_char=False if several else '"',
            invalid_row_handler=on_invalid,
            ignore_empty_lines=False,
        ),
        convert_options=pacsv.ConvertOptions(
            include_columns=columns, column_types={c: pa.string() for c in columns}
        ),
    )
    kept = 0
    for batch in opened:
        n = batch.num_rows
        lines = _line_numbers(first_line + kept, n, invalid)
        kept += n
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        chunk, problems = _parse_numeric(Chunk(frame, path, lines), numeric)
        report(problems, lines[-1] if n else 0)
        if chunk.frame.height:
            yield chunk
    report([], float("inf"))


def _open_csv(path: Path, source: io.RawIOBase | None = None, **options: Any) -> Iterator[pa.RecordBatch]:
    """Batches of a csv reader of ``path`` (or of ``source``, a stream of its bytes); parse
    failures (e.g. an unterminated quote) become DataError naming ``path``."""
    try:
        reader = pacsv.open_csv(source if source is not None else str(path), **options)
        while True:
            try:
                yield reader.read_next_batch()
            except StopIteration:
                return
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise DataError("file is empty", path) from None
        raise DataError(f"cannot parse: {exc}", path) from None


def _line_numbers(start: int, n: int, invalid: list[int]) -> np.ndarray:
    """Lines of ``n`` consecutive kept rows, the first of which would be ``start`` with no skips.

    Rows skipped for having the wrong number of columns (``invalid``, sorted) shift later rows.
    """
    base = start + np.arange(n, dtype=np.int64)
    if not invalid:
        return base
    skips = np.asarray(invalid, dtype=np.int64)
    lines = base.copy()
    while True:  # converges in at most len(invalid) rounds; usually one
        shifted = base + np.searchsorted(skips, lines, side="right")
        if np.array_equal(shifted, lines):
            return lines
        lines = shifted


Problem = tuple[int, "str | None", str]  # line, column, message


def _too_big(x: pl.Expr) -> pl.Expr:
    """Infinite or beyond float32's range (NaN is a missing value, not too big)."""
    return (x.abs() > F32_MAX) & x.is_not_nan()


def _parse_numeric(chunk: Chunk, numeric: set[str]) -> tuple[Chunk, list[Problem]]:
    """Parse the ``numeric`` text columns; rows with unparsable values ("" = missing) are dropped
    and returned as problems."""
    problems: list[Problem] = []
    frame = chunk.frame
    text_numeric = [c for c in frame.columns if c in numeric and frame.schema[c] == pl.String]
    if text_numeric:
        frame = frame.with_columns(
            [
                pl.col(c).str.strip_chars().cast(pl.Float64, strict=False).alias(f"__num_{c}")
                for c in text_numeric
            ]
        )
        frame = frame.with_columns(
            [
                (
                    (
                        pl.col(f"__num_{c}").is_null()
                        & pl.col(c).is_not_null()
                        & (pl.col(c).str.strip_chars() != "")
                    )
                    | _too_big(pl.col(f"__num_{c}"))  # inf, or beyond float32: names the row
                )
                .fill_null(False)
                .alias(f"__bad_{c}")
                for c in text_numeric
            ]
        ).with_columns([pl.col(f"__num_{c}").alias(c) for c in text_numeric])
        frame = frame.drop([f"__num_{c}" for c in text_numeric])
        flags = frame.select([f"__bad_{c}" for c in text_numeric]).to_numpy()
        frame = frame.drop([f"__bad_{c}" for c in text_numeric])
        rows, cols = np.nonzero(flags)
        if len(rows):
            # report in file order; each bad row once, at its first bad column
            first = {}
            for r, c in zip(rows.tolist(), cols.tolist()):
                first.setdefault(r, c)
            text = chunk.frame
            for r, c in sorted(first.items()):
                column = text_numeric[c]
                value = text[column][r]
                number = frame[column][r]
                reason = (
                    "is not a number" if number is None else f"is not a finite number within +-{F32_MAX:.3g}"
                )
                problems.append((int(chunk.lines[r]), column, f"{value!r} {reason}"))
            keep = np.ones(frame.height, dtype=bool)
            keep[list(first)] = False
            frame = frame.filter(pl.Series(keep))
            chunk = Chunk(frame, chunk.path, chunk.lines[keep])
    typed = [
        c for c in frame.columns if c in numeric and c not in text_numeric and frame.schema[c].is_float()
    ]
    if typed:  # parquet floats: inf or beyond float32 names the row as well
        flags = frame.select([_too_big(pl.col(c)).fill_null(False) for c in typed]).to_numpy()
        rows, cols = np.nonzero(flags)
        if len(rows):
            first: dict[int, int] = {}
            for r, c in zip(rows.tolist(), cols.tolist()):
                first.setdefault(r, c)
            for r, c in sorted(first.items()):
                value = frame[typed[c]][r]
                message = f"{value!r} is not a finite number within +-{F32_MAX:.3g}"
                problems.append((int(chunk.lines[r]), typed[c], message))
            keep = np.ones(frame.height, dtype=bool)
            keep[list(first)] = False
            frame = frame.filter(pl.Series(keep))
            chunk = Chunk(frame, chunk.path, chunk.lines[keep])
            problems.sort(key=lambda p: p[0])
    fill = [
        pl.col(c).fill_null("") for c in frame.columns if c not in numeric and frame.schema[c] == pl.String
    ]
    if fill:
        frame = frame.with_columns(fill)
    return Chunk(frame, chunk.path, chunk.lines), problems


def _read_parquet(
    path: Path, columns: list[str], numeric: set[str], bad: BadLines, source: str
) -> Iterator[Chunk]:
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable parquet file ({exc})", path) from None
    names = file.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ConfigError(f"{source}: column(s) {missing} not in {path} (its columns are {names})")
    start = 1
    for batch in file.iter_batches(batch_size=PARQUET_ROWS, columns=columns):
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        casts = []
        for c in columns:
            dtype = frame.schema[c]
            if c in numeric and dtype.is_numeric():
                casts.append(pl.col(c).cast(pl.Float64))
            elif c not in numeric and dtype != pl.String and not isinstance(dtype, pl.List):
                casts.append(polars_text(frame[c]))  # the one value-to-token rule, by dtype
            elif c not in numeric and dtype != pl.String:
                casts.append(pl.col(c).cast(pl.String))
        if casts:
            frame = frame.with_columns(casts)
        lines = np.arange(start, start + frame.height, dtype=np.int64)
        start += frame.height
        chunk, problems = _parse_numeric(Chunk(frame, path, lines), numeric)
        for line, column, message in problems:
            bad.found(message, path, line, column)
        if chunk.frame.height:
            yield chunk


def _read_svm(
    path: Path, fmt: str, columns: list[str], bad: BadLines, ranges: dict[str, FieldSpec]
) -> Iterator[Chunk]:
    """libsvm ``label idx:val ...`` -> ``label`` + list column ``features`` (and ``@N``: the
    N-th token's index alone, for fixed-width rows read as fields; ``features[lo:hi]``: the
    indices ``lo <= i < hi``, a list for a multi field, else the one index as text);
    libfm ``label field:idx:val ...`` -> ``label`` + one list column per field number.

    Features with value 0 are dropped; other values are ignored (binary features).
    """
    reader = _open_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False, block_size=BLOCK_BYTES, column_names=[TEXT_COLUMN]),
        parse_options=pacsv.ParseOptions(
            delimiter="\x1e", quote_char=False, escape_char=False, ignore_empty_lines=False
        ),
        convert_options=pacsv.ConvertOptions(column_types={TEXT_COLUMN: pa.string()}),
    )
    parts = 2 if fmt == "libsvm" else 3
    start = 1
    for batch in reader:
        n = batch.num_rows
        lines = np.arange(start, start + n, dtype=np.int64)
        start += n
        text = pl.from_arrow(batch)
        assert isinstance(text, pl.DataFrame)
        tokens = text.select(pl.col(TEXT_COLUMN).fill_null("").str.extract_all(r"\S+").alias("t"))
        frame = tokens.select(
            pl.col("t").list.first().cast(pl.Float64, strict=False).alias("label"),
            pl.int_range(pl.len(), dtype=pl.Int64).alias("row"),
        )
        bad_rows: dict[int, tuple[str, str]] = {}
        for r in np.nonzero(frame["label"].is_null().to_numpy())[0].tolist():
            first = tokens["t"][r]
            bad_rows[r] = ("label", f"{first[0] if len(first) else ''!r} is not a number")
        feats = (
            tokens.with_row_index("row")
            .select("row", pl.col("t").list.slice(1))
            .explode("t")
            .drop_nulls("t")
            .with_columns(pl.int_range(pl.len()).over("row").alias("pos"))  # token position: "@N"
            .with_columns(pl.col("t").str.split(":").alias("p"))
            .with_columns(pl.col("p").list.len().alias("n"), pl.col("p").list.last().alias("v"))
        )
        feats = feats.with_columns(pl.col("row").cast(pl.Int64), pl.col("v").cast(pl.Float64, strict=False))
        wrong = feats.filter((pl.col("n") != parts) | pl.col("v").is_null())
        for r, t in zip(wrong["row"].to_list(), wrong["t"].to_list()):
            if r not in bad_rows:
                want = "idx:value" if parts == 2 else "field:idx:value"
                bad_rows[r] = ("features", f"{t!r} is not {want}")
        feats = feats.filter((pl.col("n") == parts) & pl.col("v").is_not_null() & (pl.col("v") != 0))
        outside = np.zeros(0, dtype=np.int64)  # rows of the tokens outside every index range
        if fmt == "libsvm":
            lists = feats.group_by("row").agg(pl.col("p").list.get(0).alias("features"))
            frame = frame.join(lists, on="row", how="left", maintain_order="left")
            for column in columns:  # "@N": the N-th token alone (fixed-width rows as fields)
                if column.startswith("@") and column[1:].isdigit():
                    at = feats.filter(pl.col("pos") == int(column[1:]))
                    lists = at.group_by("row").agg(pl.col("p").list.get(0).alias(column))
                    frame = frame.join(lists, on="row", how="left", maintain_order="left")
            frame, outside = _index_ranges(feats, frame, columns, ranges, bad_rows)
        else:
            feats = feats.with_columns(
                pl.col("p").list.get(0).alias("field"), pl.col("p").list.get(1).alias("idx")
            )
            for column in columns:
                if column == "label":
                    continue
                lists = (
                    feats.filter(pl.col("field") == column).group_by("row").agg(pl.col("idx").alias(column))
                )
                frame = frame.join(lists, on="row", how="left", maintain_order="left")
        for r in sorted(bad_rows):
            column, message = bad_rows[r]
            bad.found(message, path, int(lines[r]), column)
        keep = np.ones(n, dtype=bool)
        keep[list(bad_rows)] = False
        wanted = [c for c in columns if c in frame.columns or c == "label"]
        for c in columns:
            if c not in frame.columns:
                frame = frame.with_columns(pl.lit(None, dtype=pl.List(pl.String)).alias(c))
        frame = frame.filter(pl.Series(keep)).select(list(dict.fromkeys(["label", *wanted, *columns])))
        empty = {pl.String: pl.lit("")}  # a single-valued index range: text, missing = ""
        frame = frame.with_columns(
            [
                pl.col(c).fill_null(empty.get(frame.schema[c], pl.lit([], dtype=pl.List(pl.String))))
                for c in columns
                if c != "label"
            ]
        )
        if frame.height:
            yield Chunk(frame.select(columns), path, lines[keep], int(keep[outside].sum()))


def _index_ranges(
    feats: pl.DataFrame,
    frame: pl.DataFrame,
    columns: list[str],
    ranges: dict[str, FieldSpec],
    bad_rows: dict[int, tuple[str, str]],
) -> tuple[pl.DataFrame, np.ndarray]:
    """Join the ``features[lo:hi]`` columns of one libsvm chunk onto ``frame``.

    A single-valued range with two or more tokens in a row makes that row bad (``bad_rows``,
    naming the field). Returns the frame and the row of every token outside all the ranges
    (an index that is not an integer is outside them all); no ranges: no such tokens.
    """
    spans = [(c, int(m[1]), int(m[2])) for c in columns if (m := RANGE.fullmatch(c))]
    if not spans:
        return frame, np.zeros(0, dtype=np.int64)
    feats = feats.with_columns(
        pl.col("p").list.get(0).alias("i"),
        pl.col("p").list.get(0).cast(pl.Int64, strict=False).alias("idx"),
    )
    claimed = pl.lit(False)
    for column, lo, hi in spans:
        inside = pl.col("idx").is_between(lo, hi, closed="left").fill_null(False)
        claimed = claimed | inside
        lists = feats.filter(inside).group_by("row").agg(pl.col("i").alias(column))
        field = ranges.get(column)
        if field is None or field.kind == "multi":
            frame = frame.join(lists, on="row", how="left", maintain_order="left")
            continue
        many = lists.filter(pl.col(column).list.len() > 1).sort("row")
        for r, tokens in zip(many["row"].to_list(), many[column].to_list()):
            shown = ", ".join(tokens[:3]) + (", ..." if len(tokens) > 3 else "")
            message = (
                f"{len(tokens)} tokens in index_range [{lo}, {hi}) (indices {shown}); a categorical "
                "field takes at most one per row (kind: multi makes a bag)"
            )
            bad_rows.setdefault(r, (field.name, message))
        frame = frame.join(
            lists.select("row", pl.col(column).list.first()), on="row", how="left", maintain_order="left"
        )
    outside = feats.filter(~claimed)["row"].to_numpy().astype(np.int64)
    return frame, outside

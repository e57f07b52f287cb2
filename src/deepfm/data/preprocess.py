"""Out-of-core preprocessing of a :class:`DatasetSpec` into a cached folder of ``.npy`` arrays.

Two streaming passes over the input, chunk by chunk (see :mod:`deepfm.data.readers`):

1. assign every row to train / valid / test (seeded random draw, time thresholds, or its file),
   count the categories of every field on the training rows, and gather numeric statistics
   (a uniform sample for quantile edges, sums for standardisation);
2. encode every row with the resulting :class:`FeatureMap` into preallocated ``.npy`` files
   (``{part}_ids.npy`` int32/int64, ``_bags``, ``_dense`` float32, ``_label`` float32).

The folder (``feature_map.json``, ``meta.json`` and the arrays) lives under
``cache_dir()/prepared/NAME-KEY`` where KEY hashes the spec, the run options and every input
file's path, size and mtime. It is written to a temporary folder and renamed, so an interrupted
run never leaves a folder that a later run trusts; a second run with the same key reads nothing
but the cache. Small results are loaded into memory; larger ones stream from disk
(:class:`~deepfm.data.memmap.MemmapSplit`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from deepfm.data import transforms as tf
from deepfm.data.batching import Split
from deepfm.data.download import cache_dir
from deepfm.data.features import FeatureMap, Field, base_vocab, choose_vocab
from deepfm.data.hashing import CollisionStats, local_rows
from deepfm.data.memmap import MemmapSplit
from deepfm.data.readers import BadLines, Chunk, read_chunks
from deepfm.data.spec import PARTS, DatasetSpec, FieldSpec
from deepfm.data.validate import check_label_values
from deepfm.errors import ConfigError, DataError

CACHE_VERSION = 2  # 2: meta.json records every file's size and checksum
IN_MEMORY_BYTES = 1 << 30  # arrays up to this size are loaded into memory; larger ones stream
SAMPLE_SIZE = 100_000  # values kept per quantile field to find its edges
MERGE_EVERY = 16  # chunks of category counts merged at a time


@dataclass
class PrepareOptions:
    min_count: int = 1  # floor on every field's min_count (the --min-count option)
    on_bad_lines: str = "error"
    seed: int = 0  # the random split's seed when the spec does not fix one
    progress: bool = True
    max_vocab: int = 0  # cap on every field's vocabulary (the --max-vocab option; 0 = none)
    base: FeatureMap | None = None  # warm start (--init-from): extend this map's vocabularies
    prune_below: int = 0  # warm start: drop base values seen fewer times in the new training rows


def prepare_spec(spec: DatasetSpec, options: PrepareOptions, in_memory: bool | None = None) -> Any:
    """Preprocess ``spec`` (or reuse its cache) and return a ``PreparedData``."""
    from deepfm.data.datasets import PreparedData

    folder = preprocess(spec, options)
    meta = json.loads((folder / "meta.json").read_text())
    fmap = FeatureMap.from_dict(json.loads((folder / "feature_map.json").read_text()))
    size = sum(p.stat().st_size for p in folder.glob("*.npy"))
    load_all = size <= IN_MEMORY_BYTES if in_memory is None else in_memory
    parts = [_load_split(folder, part) if load_all else MemmapSplit(folder, part) for part in PARTS]
    extras: dict[str, Any] = {
        "spec": meta["spec"],
        "bad_lines_skipped": meta["bad_lines_skipped"],
        "cache": str(folder),
    }
    if spec.split.method == "leave_last":  # ranking metrics: each user's held-out item
        others = [f.name for f in spec.fields if f.model_kind == "categorical" and f.name != spec.split.group]
        extras.update(
            leave_last=True, ranking={"user": spec.split.group, "item": spec.split.item or others[0]}
        )
    if meta.get("hashing"):
        extras["hashing"] = meta["hashing"]
    if "ignored_tokens" in meta:  # libsvm index_range fields: tokens outside every range
        extras["ignored_tokens"] = meta["ignored_tokens"]
    return PreparedData(spec.name, fmap, *parts, tables={}, extras=extras)


def prepare_spec_options(spec: DatasetSpec, options: Any, seed: int) -> Any:
    """``prepare_spec`` with the run's :class:`~deepfm.data.datasets.DataOptions`."""
    if getattr(options, "split", "random") != "random":
        raise ConfigError(
            f"--split {options.split} is for the built-in MovieLens data; {spec.name} is declared by a spec, "
            "whose split says it: split: {method: leave_last, group: user_id, time: timestamp}"
        )
    prepare = PrepareOptions(
        options.min_count,
        options.on_bad_lines,
        seed,
        max_vocab=getattr(options, "max_vocab", 0),
        base=getattr(options, "base", None),
        prune_below=getattr(options, "prune_below", 0),
    )
    return prepare_spec(spec, prepare)


def prepare_spec_file(path: str | Path, options: Any, seed: int) -> Any:
    """Load a spec file and prepare it (the ``--spec`` option)."""
    from deepfm.data.spec import load_spec

    return prepare_spec_options(load_spec(path), options, seed)


def _load_split(folder: Path, part: str) -> Split:
    arrays = {}
    for name in ("ids", "bags"):
        path = folder / f"{part}_{name}.npy"
        if path.exists():
            arrays[name] = np.load(path).astype(np.int64)
    if (folder / f"{part}_dense.npy").exists():
        arrays["dense"] = np.load(folder / f"{part}_dense.npy")
    return Split.from_arrays(arrays, np.load(folder / f"{part}_label.npy"))


def cache_key(spec: DatasetSpec, files: dict[str, list[Path]], options: PrepareOptions) -> str:
    stamp = {
        "version": CACHE_VERSION,
        "spec": spec.to_dict(),
        "min_count": options.min_count,
        "on_bad_lines": options.on_bad_lines,
        "seed": spec.split.seed if spec.split.seed is not None else options.seed,
        "max_vocab": options.max_vocab,
        "prune_below": options.prune_below,
        "base": _fingerprint(options.base.to_dict()) if options.base is not None else None,
        "files": {
            part: [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
            for part, paths in files.items()
        },
    }
    return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def preprocess(spec: DatasetSpec, options: PrepareOptions) -> Path:
    """The cache folder of ``spec``, built first if it does not exist yet."""
    files = spec.input_files()
    slug = re.sub(r"[^\w.-]+", "_", spec.name)
    folder = cache_dir() / "prepared" / f"{slug}-{cache_key(spec, files, options)}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_builds(folder.parent)
    if folder.exists():
        problem = verify_cache(folder)
        if problem is None:
            _say(options, f"{spec.name}: using preprocessed cache {folder}")
            return folder
        print(
            f"{spec.name}: cache {folder} is damaged ({problem}); rebuilding it", file=sys.stderr, flush=True
        )
        shutil.rmtree(folder, ignore_errors=True)
    # the builder's pid in the name: a later run removes the folder once that process is gone
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-{os.getpid()}-", dir=folder.parent))
    try:
        _build(spec, files, options, tmp)
        if folder.exists():  # built concurrently by another run, or a stale folder without meta
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


_BUILD = re.compile(r"^\..+-[0-9a-f]{16}-(?:(\d+)-)?[^-]+$")  # .NAME-KEY-PID-RANDOM (older: no PID)
STALE_SECONDS = 24 * 3600  # an old-style temporary folder (no PID) older than this is abandoned
DIGEST_WHOLE = 256 << 20  # files up to this size are checksummed whole; larger: first + last MiBs
DIGEST_PART = 4 << 20


def clean_stale_builds(prepared: Path) -> list[Path]:
    """Remove temporary build folders (``.NAME-KEY-PID-xxxx``) of runs that are gone (killed)."""
    from deepfm.io import pid_alive

    removed = []
    for path in prepared.iterdir() if prepared.is_dir() else []:
        match = _BUILD.match(path.name)
        if not match or not path.is_dir():
            continue
        pid = match.group(1)
        gone = not pid_alive(int(pid)) if pid else time.time() - path.stat().st_mtime > STALE_SECONDS
        if gone:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def file_digest(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of ``path`` (of its first and last 4 MiB when it is over 256 MiB)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= DIGEST_WHOLE:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            method = "sha256"
        else:
            digest.update(f.read(DIGEST_PART))
            f.seek(size - DIGEST_PART)
            digest.update(f.read(DIGEST_PART))
            method = "sha256-first-last-4MiB"
    return {"bytes": size, method: digest.hexdigest()}


def verify_cache(folder: Path) -> str | None:
    """``None`` when ``folder`` holds every file ``meta.json`` lists, with its size and checksum;
    otherwise what is wrong (a missing or unreadable meta.json, a missing / truncated / changed file)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        files = meta["files_written"]
        assert isinstance(files, dict) and files
    except FileNotFoundError:
        return "no meta.json"
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return "meta.json is unreadable or has no file list"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("bytes"):
            return f"{name} has {path.stat().st_size:,} bytes, expected {expected.get('bytes'):,}"
        if file_digest(path) != expected:
            return f"{name} does not match its checksum"
    return None


def _say(options: PrepareOptions, message: str) -> None:
    if options.progress:
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- row streaming


@dataclass
class _Plan:
    """What the passes read: columns (numeric ones parsed as floats) and how rows are split."""

    spec: DatasetSpec
    files: dict[str, list[Path]]
    seed: int
    columns: list[str]
    numeric: set[str]
    thresholds: list[float] = field(default_factory=list)  # time split
    assigned: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # leave_last

    @classmethod
    def of(cls, spec: DatasetSpec, files: dict[str, list[Path]], seed: int) -> _Plan:
        numeric = {spec.label.column}
        columns = [spec.label.column]
        for f in spec.fields:
            columns.append(f.source)
            if f.kind == "numeric" or f.transform in tf_time():
                numeric.add(f.source)
        if spec.split.method == "time":
            assert spec.split.column is not None
            columns.append(spec.split.column)
            numeric.add(spec.split.column)
        if spec.split.method == "leave_last":
            assert spec.split.group is not None and spec.split.time is not None
            columns += [spec.split.group, spec.split.time]
            numeric.add(spec.split.time)
        return cls(spec, files, seed, list(dict.fromkeys(columns)), numeric)

    def stream(self, bad: BadLines, columns: list[str] | None = None) -> Iterator[tuple[Chunk, np.ndarray]]:
        """Chunks with the part (0 train, 1 valid, 2 test) of each row; bad rows handled."""
        columns = columns or self.columns
        rng = np.random.default_rng(self.seed)
        label = self.spec.label.column
        split = self.spec.split
        for part_name, paths in self.files.items():
            for path in paths:
                for chunk in read_chunks(
                    path,
                    self.spec.input,
                    columns,
                    self.numeric & set(columns),
                    bad,
                    self.spec.source,
                    self.spec.index_ranges(),
                ):
                    chunk = _drop_missing(chunk, [c for c in (label, split.column) if c in columns], bad)
                    if label in columns:
                        chunk = _check_labels(self.spec, chunk, bad)
                    n = chunk.frame.height
                    if split.method == "files":
                        parts = np.full(n, PARTS.index(part_name), dtype=np.int8)
                    elif split.method == "leave_last":
                        parts = _assigned_parts(self.assigned.get(str(path)), chunk.lines)
                    elif split.method == "time" and self.thresholds:
                        t = chunk.frame[split.column].to_numpy()
                        parts = np.searchsorted(self.thresholds, t, side="right").astype(np.int8)
                    else:
                        u = rng.random(n)
                        r0, r1, _ = split.ratios
                        parts = (u >= r0).astype(np.int8) + (u >= r0 + r1).astype(np.int8)
                    yield chunk, parts


def _assigned_parts(assigned: tuple[np.ndarray, np.ndarray] | None, lines: np.ndarray) -> np.ndarray:
    """The parts pass 0 gave these lines (rows it did not see: train)."""
    if assigned is None or len(assigned[0]) == 0:
        return np.zeros(len(lines), dtype=np.int8)
    known, parts = assigned
    at = np.minimum(np.searchsorted(known, lines), len(known) - 1)
    return np.where(known[at] == lines, parts[at], 0).astype(np.int8)


def _leave_last(plan: _Plan, seed: int) -> None:
    """Pass 0 of a leave_last split: each group's latest row -> test, the one before -> valid."""
    from deepfm.data.split import leave_last_split

    split = plan.spec.split
    assert split.group is not None and split.time is not None
    paths, lines, groups, times = [], [], [], []
    for chunk, _ in plan.stream(BadLines("skip"), [split.group, split.time, plan.spec.label.column]):
        paths.append(np.full(chunk.frame.height, len(paths), dtype=np.int64))
        paths[-1][:] = _path_index(plan, chunk.path)
        lines.append(chunk.lines)
        groups.append(chunk.frame[split.group].cast(pl.String).fill_null("").to_numpy())
        times.append(chunk.frame[split.time].to_numpy())
    if not lines:
        return
    p, line = np.concatenate(paths), np.concatenate(lines)
    parts = np.zeros(len(line), dtype=np.int8)
    train, valid, test = leave_last_split(np.concatenate(groups), np.concatenate(times), seed)
    parts[valid], parts[test] = 1, 2
    files = [str(f) for paths_ in plan.files.values() for f in paths_]
    for i, name in enumerate(files):
        mine = p == i
        order = np.argsort(line[mine], kind="stable")
        plan.assigned[name] = (line[mine][order], parts[mine][order])


def _path_index(plan: _Plan, path: Path) -> int:
    files = [str(f) for paths in plan.files.values() for f in paths]
    return files.index(str(path))


def tf_time() -> tuple[str, ...]:
    return ("hour_of_day", "weekday")


def _drop_missing(chunk: Chunk, columns: list[str], bad: BadLines) -> Chunk:
    """Rows without a label (or time) are bad rows."""
    frame = chunk.frame
    missing = np.zeros(frame.height, dtype=bool)
    for column in columns:
        null = frame[column].is_null().to_numpy()
        for r in np.nonzero(null & ~missing)[0].tolist():
            bad.found(f"missing {column}", chunk.path, int(chunk.lines[r]), column)
        missing |= null
    if not missing.any():
        return chunk
    return replace(chunk, frame=frame.filter(pl.Series(~missing)), lines=chunk.lines[~missing])


def _check_labels(spec: DatasetSpec, chunk: Chunk, bad: BadLines) -> Chunk:
    """NaN labels are bad rows; without a declared rule, a label other than 0/1 is an error."""
    column = spec.label.column
    y = chunk.frame[column].cast(pl.Float64).to_numpy()
    nan = np.isnan(y)
    for r in np.nonzero(nan)[0].tolist():
        bad.found(
            f"label {chunk.frame[column][r]!r} is not a number", chunk.path, int(chunk.lines[r]), column
        )
    if nan.any():
        chunk = replace(chunk, frame=chunk.frame.filter(pl.Series(~nan)), lines=chunk.lines[~nan])
        y = y[~nan]
    if not spec.label.declared:
        check_label_values(y, column, spec.input.format, chunk.path, chunk.lines)
    return chunk


# --------------------------------------------------------------------------- pass 1: statistics


class _Counts:
    """Category counts of one field over the training rows, merged every few chunks."""

    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []
        self.merged: pl.DataFrame | None = None
        self.longest = 0

    def add(self, values: pl.Series) -> None:
        self.frames.append(values.rename("value").value_counts(name="count"))
        if len(self.frames) >= MERGE_EVERY:
            self._merge()

    def _merge(self) -> None:
        frames = ([self.merged] if self.merged is not None else []) + self.frames
        self.frames = []
        if frames:
            self.merged = pl.concat(frames).group_by("value").agg(pl.col("count").sum())

    def vocab(
        self, min_count: int, max_vocab: int = 0, base: list[Any] | None = None, prune: int = 0
    ) -> list[Any]:
        """The field's vocabulary (see :func:`deepfm.data.features.choose_vocab`)."""
        self._merge()
        if self.merged is None:
            return choose_vocab([], np.zeros(0, np.int64), min_count, max_vocab, base, prune)
        merged = self.merged
        if base is None or not prune:  # only values that can be kept matter
            merged = merged.filter(pl.col("count") >= min_count)
        values, counts = merged["value"].to_list(), merged["count"].to_numpy()
        return choose_vocab(values, counts, min_count, max_vocab, base, prune)


class _Sample:
    """A uniform sample of a numeric field's training values (bottom-k of random keys)."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self.values = np.empty(0)
        self.keys = np.empty(0)

    def add(self, x: np.ndarray) -> None:
        x = x[~np.isnan(x)]
        values = np.concatenate([self.values, x])
        keys = np.concatenate([self.keys, self.rng.random(len(x))])
        if len(values) > self.size:
            keep = np.argpartition(keys, self.size)[: self.size]
            values, keys = values[keep], keys[keep]
        self.values, self.keys = values, keys


@dataclass
class _Moments:
    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, x: np.ndarray) -> None:
        x = x[~np.isnan(x)]
        self.n += len(x)
        self.total += float(x.sum())
        self.squares += float(np.square(x).sum())

    def mean_std(self) -> tuple[float, float]:
        if self.n == 0:
            return 0.0, 1.0
        mean = self.total / self.n
        var = max(self.squares / self.n - mean * mean, 0.0)
        return mean, (var**0.5 if var > 1e-24 else 1.0)


def _numbers(frame: pl.DataFrame, column: str) -> np.ndarray:
    return frame[column].cast(pl.Float64).to_numpy()


def _text(frame: pl.DataFrame, column: str) -> pl.Series:
    s = frame[column]
    return s if s.dtype == pl.String else s.cast(pl.String).fill_null("")


def _lists(frame: pl.DataFrame, f: FieldSpec) -> pl.Series:
    """A multi-valued column as lists of non-empty strings."""
    s = frame[f.source]
    if s.dtype != pl.List(pl.String):
        s = _text(frame, f.source).str.split(f.separator)
    return s.list.eval(pl.element().filter(pl.element() != ""))


def _tokens(f: FieldSpec, frame: pl.DataFrame, transform: dict[str, Any] | None = None) -> pl.Series:
    """Categorical tokens of field ``f`` (text, or int64 for numeric-derived ones)."""
    if f.kind == "categorical" and f.transform is None:
        s = frame[f.source]
        if s.dtype == pl.List(pl.String):  # libfm field used as a single value
            return s.list.first().fill_null("")
        return _text(frame, f.source)
    x = _numbers(frame, f.source)
    if f.transform == "log2bucket":
        out = tf.log2bucket(x)
    elif f.transform == "quantile":
        out = tf.quantile_buckets(x, (transform or {}).get("edges", []))
    else:
        out = tf.time_part(x, f.transform or "", f.time_format)
    return pl.Series(f.name, out)


def _collect_stats(plan: _Plan, options: PrepareOptions, bad: BadLines) -> dict[str, Any]:
    spec = plan.spec
    counts = {
        f.name: _Counts()
        for f in spec.fields
        if f.model_kind != "numeric" and f.transform != "quantile" and not f.hash_buckets
    }
    hashed = {f.name: CollisionStats(f.hash_buckets) for f in spec.fields if f.hash_buckets}
    samples = {
        f.name: _Sample(SAMPLE_SIZE, np.random.default_rng(plan.seed + 1))
        for f in spec.fields
        if f.transform == "quantile"
    }
    moments = {f.name: _Moments() for f in spec.fields if f.model_kind == "numeric"}
    rows = np.zeros(3, dtype=np.int64)
    positives = np.zeros(3, dtype=np.int64)
    ignored = 0  # libsvm tokens outside every index_range (all parts)
    for chunk, parts in plan.stream(bad):
        ignored += chunk.ignored
        rows += np.bincount(parts, minlength=3)
        y = _labels(spec, chunk.frame)
        positives += np.bincount(parts, weights=y, minlength=3).astype(np.int64)
        train = chunk.frame.filter(pl.Series(parts == 0))
        if train.height == 0:
            continue
        for f in spec.fields:
            if f.name in moments:
                moments[f.name].add(_numbers(train, f.source))
            elif f.name in samples:
                samples[f.name].add(_numbers(train, f.source))
            elif f.name in hashed:  # no vocabulary: only the distinct hashes, for the collision rate
                hashed[f.name].add(_tokens(f, train).to_numpy())
            elif f.kind == "multi":
                lists = _lists(train, f)
                counts[f.name].longest = max(counts[f.name].longest, int(lists.list.len().max() or 0))
                counts[f.name].add(lists.explode().drop_nulls())
            else:
                counts[f.name].add(_tokens(f, train))
    return {
        "counts": counts,
        "samples": samples,
        "moments": moments,
        "hashed": hashed,
        "rows": rows,
        "positives": positives,
        "ignored_tokens": ignored,
    }


def _labels(spec: DatasetSpec, frame: pl.DataFrame) -> np.ndarray:
    v = frame[spec.label.column].to_numpy()
    op, t = spec.label.op, spec.label.value
    ops = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal}
    ops |= {"==": np.equal, "!=": np.not_equal}
    return ops[op](v, t).astype(np.float32)


def _feature_map(spec: DatasetSpec, stats: dict[str, Any], options: PrepareOptions) -> FeatureMap:
    fields = []
    base = options.base
    for f in spec.fields:
        min_count = max(f.min_count or spec.min_count, options.min_count)
        max_vocab = min(v for v in (f.max_vocab, options.max_vocab, 1 << 62) if v)
        max_vocab = 0 if max_vocab == 1 << 62 else max_vocab
        old = base_vocab(base, f.name, f.model_kind)
        old_transform = _base_transform(base, f.name)
        if f.hash_buckets:
            transform = {"type": "string", "column": f.source}
            fields.append(Field(f.name, "categorical", [], transform=transform, hash_buckets=f.hash_buckets))
        elif f.model_kind == "numeric":
            mean, std = stats["moments"][f.name].mean_std()
            transform = {"type": "standardize", "column": f.source, "mean": mean, "std": std}
            if old_transform and old_transform.get("type") == "standardize":
                transform = old_transform  # a warm start keeps what the numbers mean
            fields.append(Field(f.name, "numeric", transform=transform))
        elif f.transform == "quantile":
            edges = tf.quantile_edges(stats["samples"][f.name].values, f.buckets)
            transform = {"type": "quantile", "column": f.source, "edges": edges}
            if old_transform and old_transform.get("type") == "quantile":
                transform = old_transform  # same bucket edges: the old bucket rows stay meaningful
                edges = transform["edges"]
            vocab = [tf.MISSING, *range(len(edges) + 1)]
            fields.append(Field(f.name, "categorical", vocab, transform=transform))
        elif f.kind == "multi":
            counts = stats["counts"][f.name]
            max_len = min(f.max_len or counts.longest, counts.longest) or 1
            transform = {"type": "split", "column": f.source, "sep": f.separator}
            fields.append(
                Field(
                    f.name,
                    "sequence",
                    counts.vocab(min_count, max_vocab, old, options.prune_below),
                    max_len=max_len,
                    pooling=f.pooling,
                    transform=transform,
                )
            )
        else:
            transform = {"type": f.transform or "string", "column": f.source}
            if f.transform in tf_time():
                transform["time_format"] = f.time_format
            vocab = stats["counts"][f.name].vocab(min_count, max_vocab, old, options.prune_below)
            fields.append(Field(f.name, "categorical", vocab, transform=transform))
    return FeatureMap(fields).with_offsets()


def _base_transform(base: FeatureMap | None, name: str) -> dict[str, Any] | None:
    if base is None:
        return None
    try:
        return base.field(name).transform
    except KeyError:
        return None


# --------------------------------------------------------------------------- pass 2: encoding


class _Encoder:
    """Vectorised chunk encoder matching :meth:`FeatureMap.encode` on the same raw rows."""

    def __init__(self, spec: DatasetSpec, fmap: FeatureMap) -> None:
        self.spec = spec
        self.fmap = fmap
        self.specs = {f.name: f for f in spec.fields}
        self.lookups: dict[str, Any] = {}
        for f in fmap.fields:
            if f.kind == "numeric" or f.hash_buckets:
                continue
            if f.vocab and isinstance(f.vocab[0], str):
                self.lookups[f.name] = pl.DataFrame(
                    {"value": f.vocab, "local": np.arange(1, len(f.vocab) + 1, dtype=np.int64)}
                )
            else:
                self.lookups[f.name] = pd.Index(f.vocab)
        self.dtype = np.int32 if fmap.num_rows < 2**31 else np.int64

    def local(self, name: str, values: pl.Series) -> np.ndarray:
        """Local rows (1 + vocab position; 0 = OOV) of ``values``."""
        buckets = self.fmap.field(name).hash_buckets
        if buckets:
            return local_rows(values.to_numpy(), buckets)
        lookup = self.lookups[name]
        if isinstance(lookup, pd.Index):
            return (
                lookup.get_indexer(values.to_numpy()) + 1 if len(lookup) else np.zeros(len(values), np.int64)
            )
        frame = pl.DataFrame({"value": values.cast(pl.String)})
        joined = frame.join(lookup, on="value", how="left", maintain_order="left")
        return joined["local"].fill_null(0).to_numpy()

    def encode(self, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        n = frame.height
        cats, seqs, nums = self.fmap.categorical, self.fmap.sequences, self.fmap.numerics
        out: dict[str, np.ndarray] = {"ids": np.empty((n, len(cats)), dtype=self.dtype)}
        for j, f in enumerate(cats):
            out["ids"][:, j] = self.local(f.name, _tokens(self.specs[f.name], frame, f.transform)) + f.offset
        if seqs:
            width = max(f.max_len for f in seqs)
            bags = np.zeros((n, len(seqs), width), dtype=self.dtype)
            for j, f in enumerate(seqs):
                lists = _lists(frame, self.specs[f.name]).list.head(f.max_len)
                flat = pl.DataFrame({"v": lists}).with_row_index("row").explode("v").drop_nulls("v")
                flat = flat.with_columns(pl.int_range(pl.len()).over("row").alias("pos"))
                rows, pos = flat["row"].to_numpy(), flat["pos"].to_numpy()
                bags[rows, j, pos] = self.local(f.name, flat["v"]) + f.offset
            out["bags"] = bags
        if nums:
            dense = np.empty((n, len(nums)), dtype=np.float32)
            for j, f in enumerate(nums):
                dense[:, j] = tf.apply(f.transform or {}, _numbers(frame, f.source))
            out["dense"] = dense
        return out


class _NpyWriter:
    """Appends rows to a ``.npy`` file of known shape with plain writes.

    Not a memory map: written pages stay in the page cache instead of the process's RSS, so
    memory does not grow with the output size.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any) -> None:
        header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        offset = header.offset
        del header
        self.dtype = np.dtype(dtype)
        self.file = open(path, "r+b")  # noqa: SIM115 - closed in close()
        self.file.seek(offset)

    def write(self, rows: np.ndarray) -> None:
        np.ascontiguousarray(rows, dtype=self.dtype).tofile(self.file)

    def close(self) -> None:
        self.file.close()


def _build(spec: DatasetSpec, files: dict[str, list[Path]], options: PrepareOptions, out: Path) -> None:
    started = time.perf_counter()
    seed = spec.split.seed if spec.split.seed is not None else options.seed
    plan = _Plan.of(spec, files, seed)
    if spec.split.method == "time":
        assert spec.split.column is not None
        _say(options, f"{spec.name}: pass 0/2, finding the time split")
        times = [
            c.frame[spec.split.column].to_numpy()
            for c, _ in plan.stream(BadLines("skip"), [spec.split.column, spec.label.column])
        ]
        t = np.concatenate(times) if times else np.zeros(0)
        r0, r1, _ = spec.split.ratios
        plan.thresholds = [float(np.quantile(t, r0)), float(np.quantile(t, r0 + r1))] if len(t) else []

    if spec.split.method == "leave_last":
        _say(options, f"{spec.name}: pass 0/2, holding out each {spec.split.group}'s latest rows")
        _leave_last(plan, seed)

    _say(options, f"{spec.name}: pass 1/2, counting categories on the training rows")
    bad = BadLines(options.on_bad_lines)
    stats = _collect_stats(plan, options, bad)
    rows = stats["rows"]
    if rows.sum() < 10 or rows[0] == 0:
        raise DataError(
            f"data set {spec.name!r} has {int(rows.sum())} usable rows ({int(rows[0])} for "
            "training); at least 10 are needed"
        )
    fmap = _feature_map(spec, stats, options)
    counted = time.perf_counter()

    _say(options, f"{spec.name}: pass 2/2, encoding {int(rows.sum()):,} rows into {out}")
    encoder = _Encoder(spec, fmap)
    seqs = fmap.sequences
    width = max((f.max_len for f in seqs), default=0)
    arrays: dict[str, list[_NpyWriter]] = {}
    for p, part in enumerate(PARTS):
        n = int(rows[p])
        cols = {
            "ids": ((n, len(fmap.categorical)), encoder.dtype),
            "label": ((n,), np.float32),
        }
        if seqs:
            cols["bags"] = ((n, len(seqs), width), encoder.dtype)
        if fmap.numerics:
            cols["dense"] = ((n, len(fmap.numerics)), np.float32)
        for name, (shape, dtype) in cols.items():
            arrays.setdefault(name, []).append(_NpyWriter(out / f"{part}_{name}.npy", shape, dtype))
    cursor = np.zeros(3, dtype=np.int64)
    for chunk, parts in plan.stream(BadLines("skip")):
        encoded = encoder.encode(chunk.frame)
        encoded["label"] = _labels(spec, chunk.frame)
        for p in range(3):
            mask = parts == p
            m = int(mask.sum())
            if m == 0:
                continue
            if cursor[p] + m > rows[p]:
                raise DataError("input files changed during preprocessing; run again", chunk.path)
            for name, value in encoded.items():
                arrays[name][p].write(value[mask])
            cursor[p] += m
    if not np.array_equal(cursor, rows):
        raise DataError("input files changed during preprocessing; run again")
    for column in arrays.values():
        for writer in column:
            writer.close()
    seconds = time.perf_counter() - started
    (out / "feature_map.json").write_text(json.dumps(fmap.to_dict()))
    meta = {
        "name": spec.name,
        "spec": spec.to_dict(),
        "rows": {part: int(rows[p]) for p, part in enumerate(PARTS)},
        "positives": {part: int(stats["positives"][p]) for p, part in enumerate(PARTS)},
        "bad_lines_skipped": bad.count,
        "bad_line_examples": bad.examples,
        "files": {part: [str(p) for p in paths] for part, paths in files.items()},
        "seconds": {"count": counted - started, "total": seconds},
        "rows_per_s": float(rows.sum() / seconds) if seconds > 0 else None,
    }
    hashing = {name: h.summary() for name, h in stats["hashed"].items()}
    if hashing:
        meta["hashing"] = hashing
    if spec.index_ranges():
        meta["ignored_tokens"] = stats["ignored_tokens"]
    meta["files_written"] = {p.name: file_digest(p) for p in sorted(out.iterdir()) if p.name != "meta.json"}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    skipped = f", skipped {bad.count:,} bad rows (first: {bad.examples[0]})" if bad.count else ""
    if stats["ignored_tokens"]:
        skipped += f", ignored {stats['ignored_tokens']:,} tokens outside every index_range"
    _say(options, f"{spec.name}: preprocessed {int(rows.sum()):,} rows in {seconds:.1f}s{skipped}")

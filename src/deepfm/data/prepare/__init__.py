"""The prepare stage: raw files -> spec -> split -> statistics + feature map -> encoded arrays.

Every data set goes through it, built-in ones as the specs of :mod:`deepfm.data.catalog`:

0. a leave-last or time split first finds each group's latest rows or the time thresholds;
1. one streaming pass counts every field's values on the training rows (:mod:`.stats`) and fits
   the feature map;
2. a second pass encodes every row into preallocated ``.npy`` files (:mod:`.encode`).

The result is a prepared folder (``feature_map.json``, ``meta.json``, ``{part}_{ids,bags,dense,
label}.npy``, ``table_KEY.parquet`` per side table), cached by a key of everything that changes it
(:mod:`.cache`): a second run with the same key reads nothing but the cache. ``deepfm prepare
--shards N`` writes the training split as N shards instead (:mod:`deepfm.data.shards`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deepfm.data import cache_cap
from deepfm.data.catalog import dataset_spec
from deepfm.data.features import FeatureMap
from deepfm.data.options import EngineOptions, PrepareOptions
from deepfm.data.prepare import cache
from deepfm.data.prepare.encode import ChunkEncoder, NpyWriter
from deepfm.data.prepare.meta import finish_prepared
from deepfm.data.prepare.rows import Rows
from deepfm.data.prepare.stats import check_rows, collect, feature_map, labels
from deepfm.data.prepared import PreparedData, load_prepared
from deepfm.data.readers import BadLines
from deepfm.data.shards import deal, rank_shards, shard_files, shard_part, shard_sizes
from deepfm.data.spec import PARTS, DatasetSpec
from deepfm.errors import ConfigError, DataError


def prepare(
    options: PrepareOptions,
    base: FeatureMap | None = None,
    progress: bool = True,
    in_memory: bool | None = None,
) -> PreparedData:
    """The data set ``options`` name, prepared (or read from the cache). ``base``: a warm start's
    feature map, whose vocabularies the new ones extend."""
    return prepare_spec(dataset_spec(options), options, base, progress, in_memory)


def prepare_spec(
    spec: DatasetSpec,
    options: PrepareOptions,
    base: FeatureMap | None = None,
    progress: bool = True,
    in_memory: bool | None = None,
) -> PreparedData:
    return load_prepared(prepared_folder(spec, options, base, progress), in_memory)


def write_prepared(
    spec: DatasetSpec,
    options: PrepareOptions,
    out: str | Path,
    base: FeatureMap | None = None,
    progress: bool = True,
    shards: int = 0,
    engine: EngineOptions | None = None,
) -> Path:
    """Prepare ``spec`` into the folder ``out`` (``deepfm prepare``): written whole, then renamed.
    ``shards`` > 0: the training split as that many shards (:mod:`deepfm.data.shards`).
    ``engine``: which engine prepares it (default: this process, Polars); both write the same."""
    out = Path(out)
    if shards < 0:
        raise ConfigError(f"--shards must be >= 1, got {shards}")
    engine = engine or EngineOptions()
    problems = engine.problems()
    if problems:
        raise ConfigError("; ".join(problems))
    if engine.engine == "spark" and base is not None:
        raise ConfigError("a warm start's vocabulary needs --engine polars (--engine spark prepares anew)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder; give a new one (or remove it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-{os.getpid()}-", dir=out.parent))
    try:
        if engine.engine == "spark":
            from deepfm.data.prepare import spark

            spark.build(spec, options, tmp, engine, progress, shards)
        else:
            build(spec, options, tmp, base, progress, shards)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def open_prepared(
    folder: str | Path, in_memory: bool | None = None, rank: int = 0, world: int = 1
) -> PreparedData:
    """A folder written by ``deepfm prepare`` (or a cache folder), checked: its format version and
    every file's size and checksum; a problem is a one-line error naming the folder.

    ``rank`` of ``world`` data-parallel ranks: the training rows that rank streams (see
    :func:`~deepfm.data.prepared.load_prepared`); shards other ranks read are neither checked nor
    opened, so a node may hold only its own ranks' shards."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("no prepared data here (expected a folder written by 'deepfm prepare')", folder)
    problem = cache.verify(folder, skip=others_shards(folder, rank, world))
    if problem is not None:
        raise DataError(f"not usable prepared data: {problem}; prepare it again (deepfm prepare)", folder)
    return load_prepared(folder, in_memory, rank, world)


def others_shards(folder: Path, rank: int, world: int) -> set[str]:
    """Files of the training shards that rank ``rank`` of ``world`` does not read."""
    if world <= 1:
        return set()
    try:
        meta = json.loads((folder / "meta.json").read_text())
        count = int(meta["shards"]["train"]["count"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()  # no shards (or no readable meta.json: verify says so)
    mine = set(rank_shards(count, rank, world))
    return shard_files(meta, [s for s in range(count) if s not in mine])


def prepared_folder(
    spec: DatasetSpec, options: PrepareOptions, base: FeatureMap | None = None, progress: bool = True
) -> Path:
    """The cache folder of ``spec`` prepared with ``options``, built first if it does not exist;
    marked as used, then the cache is held to its size cap (:mod:`deepfm.data.cache_cap`)."""
    folder = cache.cache_folder(spec, options, base)
    _build_or_reuse(spec, options, base, progress, folder)
    cache_cap.mark_used(folder)
    cache_cap.enforce_cap()
    return folder


def _build_or_reuse(
    spec: DatasetSpec, options: PrepareOptions, base: FeatureMap | None, progress: bool, folder: Path
) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    cache.clean_stale_builds(folder.parent)
    if folder.exists():
        problem = cache.verify(folder)
        if problem is None:
            _say(progress, f"{spec.name}: using prepared data {folder}")
            return
        print(
            f"{spec.name}: cache {folder} is damaged ({problem}); rebuilding it", file=sys.stderr, flush=True
        )
        shutil.rmtree(folder, ignore_errors=True)
    # the builder's pid in the name: a later run removes the folder once that process is gone
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-{os.getpid()}-", dir=folder.parent))
    try:
        build(spec, options, tmp, base, progress)
        if folder.exists():  # built concurrently by another run, or a stale folder without meta
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build(
    spec: DatasetSpec,
    options: PrepareOptions,
    out: Path,
    base: FeatureMap | None = None,
    progress: bool = True,
    shards: int = 0,
) -> None:
    """Prepare ``spec`` into the empty folder ``out`` (``shards`` > 0: the training split as that
    many shards)."""
    started = time.perf_counter()
    bad = BadLines(options.on_bad_lines)
    rows = Rows.of(spec, cache.seed_of(spec, options), bad)
    if spec.split.method == "time":
        _say(progress, f"{spec.name}: pass 0/2, finding the time split")
        rows.find_time_thresholds()
    if spec.split.method == "leave_last":
        _say(progress, f"{spec.name}: pass 0/2, holding out each {spec.split.group}'s latest rows")
        rows.hold_out_last()

    _say(progress, f"{spec.name}: pass 1/2, counting categories on the training rows")
    stats = collect(rows, bad)
    n = stats.rows
    check_rows(spec, n)
    fmap = feature_map(spec, stats, options, base)
    counted = time.perf_counter()

    _say(progress, f"{spec.name}: pass 2/2, encoding {int(n.sum()):,} rows into {out}")
    _encode(rows, fmap, stats.rows, out, shards)
    seconds = {"count": counted - started, "total": time.perf_counter() - started}
    hashing = {name: h.summary() for name, h in stats.hashed.items()}
    summary = finish_prepared(
        out,
        rows,
        options,
        fmap,
        n,
        stats.positives,
        bad,
        seconds,
        {"name": "polars"},
        hashing,
        stats.ignored_tokens,
        shards,
    )
    _say(progress, summary)


def _encode(rows: Rows, fmap: FeatureMap, counts: np.ndarray, out: Path, shards: int = 0) -> None:
    """Pass 2: every row encoded into its part's ``.npy`` files (rows skipped as bad in pass 1
    are skipped again); ``shards`` > 0: the training rows dealt round robin to that many shards."""
    encoder = ChunkEncoder(rows.spec, fmap)
    seqs = fmap.multi
    width = max((f.max_len for f in seqs), default=0)
    # per part (train, valid, test), per column: one writer, or one per shard of the training split
    writers: dict[str, list[list[NpyWriter]]] = {}
    for p, part in enumerate(PARTS):
        files = [(part, int(counts[p]))]
        if p == 0 and shards:
            sizes = shard_sizes(int(counts[p]), shards)
            files = [(shard_part(part, s, shards), m) for s, m in enumerate(sizes)]
        shapes = {"ids": ((len(fmap.categorical),), encoder.dtype), "label": ((), np.float32)}
        if seqs:
            shapes["bags"] = ((len(seqs), width), encoder.dtype)
        if fmap.numerics:
            shapes["dense"] = ((len(fmap.numerics),), np.float32)
        for name, (shape, dtype) in shapes.items():
            writers.setdefault(name, []).append(
                [NpyWriter(out / f"{stem}_{name}.npy", (m, *shape), dtype) for stem, m in files]
            )
    cursor = np.zeros(3, dtype=np.int64)
    for chunk, parts in rows.stream(BadLines("skip")):
        encoded = encoder.encode(chunk.frame)
        encoded["label"] = labels(rows.spec, chunk.frame)
        for p in range(3):
            mask = parts == p
            m = int(mask.sum())
            if m == 0:
                continue
            if cursor[p] + m > counts[p]:
                raise DataError("input files changed during preparation; run again", chunk.path)
            for name, value in encoded.items():
                files = writers[name][p]
                if len(files) == 1:
                    files[0].write(value[mask])
                else:  # training row k goes to shard k % shards
                    for writer, rows_of_shard in zip(files, deal(value[mask], int(cursor[p]), len(files))):
                        writer.write(rows_of_shard)
            cursor[p] += m
    if not np.array_equal(cursor, counts):
        raise DataError("input files changed during preparation; run again")
    for column in writers.values():
        for files in column:
            for writer in files:
                writer.close()


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


__all__ = [
    "PrepareOptions",
    "PreparedData",
    "build",
    "open_prepared",
    "prepare",
    "prepare_spec",
    "prepared_folder",
    "write_prepared",
]

"""``meta.json``, the summary of a prepared folder, and the folder's last files, written the same
way by every engine (:func:`finish_prepared`).

It holds what was prepared (the spec, the options, rows and positives per part, bad rows,
hashing and ignored-token counts), how (the engine and its speed) and ``files_written``: the
size and checksum of every other file, checked by :func:`deepfm.data.prepare.cache.verify`.
Nothing else in a prepared folder says which engine wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from deepfm.data.features import FeatureMap
from deepfm.data.options import PrepareOptions
from deepfm.data.prepare import cache
from deepfm.data.prepare.rows import Rows
from deepfm.data.prepared import TABLE_FILE
from deepfm.data.readers import BadLines
from deepfm.data.shards import shard_entry
from deepfm.data.spec import PARTS, DatasetSpec


def write_meta(
    out: Path,
    spec: DatasetSpec,
    options: PrepareOptions,
    rows: np.ndarray,
    positives: np.ndarray,
    bad: BadLines,
    files: dict[str, list[Path]],
    tables: list[str],
    seconds: dict[str, float],
    engine: dict[str, Any],
    hashing: dict[str, Any] | None = None,
    ignored_tokens: int | None = None,
    shards: int = 0,
) -> dict[str, Any]:
    """Write ``out/meta.json`` (after every other file of ``out``) and return it."""
    user, item = spec.user_item()
    total = seconds["total"]
    meta: dict[str, Any] = {
        "format_version": cache.FORMAT_VERSION,
        "name": spec.name,
        "spec": spec.to_dict(),
        "options": options.to_dict(),
        "rows": {part: int(rows[p]) for p, part in enumerate(PARTS)},
        **({"shards": {"train": shard_entry(int(rows[0]), shards)}} if shards else {}),
        "positives": {part: int(positives[p]) for p, part in enumerate(PARTS)},
        "bad_lines_skipped": bad.count,
        "bad_line_examples": bad.examples,
        "files": {part: [str(p) for p in paths] for part, paths in files.items()},
        "tables": tables,
        "roles": {k: v for k, v in (("user", user), ("item", item)) if v},
        "seconds": seconds,
        "rows_per_s": float(rows.sum() / total) if total > 0 else None,
        "engine": engine,
    }
    if hashing:
        meta["hashing"] = hashing
    if spec.index_ranges():
        meta["ignored_tokens"] = ignored_tokens or 0
    meta["files_written"] = {
        p.name: cache.file_digest(p) for p in sorted(out.iterdir()) if p.name != "meta.json"
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def finish_prepared(
    out: Path,
    rows: Rows,
    options: PrepareOptions,
    fmap: FeatureMap,
    counts: np.ndarray,
    positives: np.ndarray,
    bad: BadLines,
    seconds: dict[str, float],
    engine: dict[str, Any],
    hashing: dict[str, Any] | None = None,
    ignored_tokens: int | None = None,
    shards: int = 0,
) -> str:
    """The last files of a prepared folder whose arrays are written: the side tables,
    ``feature_map.json``, then ``meta.json``; returns the one-line summary to print."""
    for table in rows.tables:
        table.frame.write_parquet(out / TABLE_FILE.format(key=table.spec.key))
    (out / "feature_map.json").write_text(json.dumps(fmap.to_dict()))
    tables = [t.spec.key for t in rows.tables]
    write_meta(
        out,
        rows.spec,
        options,
        counts,
        positives,
        bad,
        rows.files,
        tables,
        seconds,
        engine,
        hashing,
        ignored_tokens,
        shards,
    )
    skipped = f", skipped {bad.count:,} bad rows (first: {bad.examples[0]})" if bad.count else ""
    if ignored_tokens:
        skipped += f", ignored {ignored_tokens:,} tokens outside every index_range"
    return f"{rows.spec.name}: prepared {int(counts.sum()):,} rows in {seconds['total']:.1f}s{skipped}"

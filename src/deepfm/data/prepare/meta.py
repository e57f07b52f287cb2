"""``meta.json``, the summary of a prepared folder, written last by every engine.

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

from deepfm.data.options import PrepareOptions
from deepfm.data.prepare import cache
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

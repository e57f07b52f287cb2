"""Prepared folders in the cache: named by a key, written whole or not at all, checked when reused.

A prepared data set lives under ``cache_dir()/prepared/NAME-KEY`` where KEY hashes the spec, every
option that changes the prepared data (:class:`~deepfm.data.options.PrepareOptions`), a warm
start's base vocabulary and every input file's path, size and mtime. It is built in a temporary
folder (``.NAME-KEY-PID-xxxx``) renamed into place, so an interrupted run never leaves a folder a
later run trusts; ``meta.json`` lists every file with its size and checksum, checked on reuse.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from deepfm.data.download import cache_dir
from deepfm.data.features import FeatureMap
from deepfm.data.options import PrepareOptions
from deepfm.data.spec import DatasetSpec
from deepfm.io import pid_alive

# 3: the random split is a seeded hash of (file, line); side tables, filters and checks
# 4: the training split may be written as shards (meta.json "shards"; deepfm.data.shards)
FORMAT_VERSION = 4
READABLE_VERSIONS = (3, 4)  # a version-3 folder is a version-4 folder without shards
_BUILD = re.compile(r"^\..+-[0-9a-f]{16}-(?:(\d+)-)?[^-]+$")  # .NAME-KEY-PID-RANDOM (older: no PID)
STALE_SECONDS = 24 * 3600  # an old-style temporary folder (no PID) older than this is abandoned
DIGEST_WHOLE = 256 << 20  # files up to this size are checksummed whole; larger: first + last MiBs
DIGEST_PART = 4 << 20


def cache_key(spec: DatasetSpec, options: PrepareOptions, base: FeatureMap | None = None) -> str:
    files = {**spec.input_files(), **{f"table:{k}": v for k, v in spec.table_files().items()}}
    stamp = {
        "version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "min_count": options.min_count,
        "max_vocab": options.max_vocab,
        "on_bad_lines": options.on_bad_lines,
        "seed": seed_of(spec, options),
        "prune_below": options.prune_below,
        "base": fingerprint(base.to_dict()) if base is not None else None,
        "files": {
            part: [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
            for part, paths in files.items()
        },
    }
    return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]


def seed_of(spec: DatasetSpec, options: PrepareOptions) -> int:
    """The split's seed: the spec's own, else the run's ``--seed``."""
    return spec.split.seed if spec.split.seed is not None else options.seed


def fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_folder(spec: DatasetSpec, options: PrepareOptions, base: FeatureMap | None = None) -> Path:
    slug = re.sub(r"[^\w.-]+", "_", spec.name)
    return cache_dir() / "prepared" / f"{slug}-{cache_key(spec, options, base)}"


def clean_stale_builds(prepared: Path) -> list[Path]:
    """Remove temporary build folders (``.NAME-KEY-PID-xxxx``) of runs that are gone (killed)."""
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


def verify(folder: Path, skip: set[str] | frozenset[str] = frozenset()) -> str | None:
    """``None`` when ``folder`` holds every file ``meta.json`` lists, with its size and checksum;
    otherwise what is wrong (a missing or unreadable meta.json, a missing / truncated / changed file).
    Files named in ``skip`` (shards another data-parallel rank reads) are not checked."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        files = meta["files_written"]
        assert isinstance(files, dict) and files
    except FileNotFoundError:
        return "no meta.json"
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return "meta.json is unreadable or has no file list"
    if meta.get("format_version") not in READABLE_VERSIONS:
        version = meta.get("format_version", 2)
        readable = " and ".join(map(str, READABLE_VERSIONS))
        return f"written in prepared-data format {version}, this deepfm reads {readable}"
    for name, expected in files.items():
        if name in skip:
            continue
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("bytes"):
            return f"{name} has {path.stat().st_size:,} bytes, expected {expected.get('bytes'):,}"
        if file_digest(path) != expected:
            return f"{name} does not match its checksum"
    return None

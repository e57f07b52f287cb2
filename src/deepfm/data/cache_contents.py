"""What the cache folder holds (``$DEEPFM_CACHE``, default ``~/.cache/deepfm``), and removing it.

Entries: prepared data sets (``prepared/NAME-KEY``), frames written by ``deepfm.fit``
(``frames/HASH.parquet``) and downloads (everything else at the top: archives and their unpacked
folders). An entry's age is the time since anything in it was last written; every entry is
rebuilt or downloaded again on the next run that needs it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from deepfm.data.download import cache_dir

KINDS = {"prepared": "prepared", "frames": "frame"}


@dataclass(frozen=True)
class Entry:
    kind: str  # prepared, frame or download
    path: Path
    size: int  # bytes
    modified: float  # newest modification time in the entry (seconds since the epoch)

    def age_days(self, now: float | None = None) -> float:
        return ((time.time() if now is None else now) - self.modified) / 86400


def _measure(path: Path, kind: str) -> tuple[int, float]:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    # a frame keeps a fixed modification time (its cache key): when it was written is its ctime
    stamp = (lambda s: s.st_ctime) if kind == "frame" else (lambda s: s.st_mtime)
    newest = max((stamp(s) for s in stats), default=path.stat().st_mtime)
    return sum(s.st_size for s in stats), newest


def entries(root: Path | None = None) -> list[Entry]:
    """Every entry of the cache folder, largest first."""
    root = cache_dir() if root is None else root
    found = []
    if not root.is_dir():
        return found
    for top in sorted(root.iterdir()):
        if top.name in KINDS and top.is_dir():
            for path in sorted(top.iterdir()):
                found.append(Entry(KINDS[top.name], path, *_measure(path, KINDS[top.name])))
        else:
            found.append(Entry("download", top, *_measure(top, "download")))
    return sorted(found, key=lambda e: -e.size)


def remove(entry: Entry) -> None:
    if entry.path.is_dir():
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        entry.path.unlink(missing_ok=True)

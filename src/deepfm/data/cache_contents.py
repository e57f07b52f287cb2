"""What the cache folder holds (``$DEEPFM_CACHE``, default ``~/.cache/deepfm``), and removing it.

Entries: prepared data sets (``prepared/NAME-KEY``), frames and specs written by ``deepfm.fit``
(``frames/HASH.parquet``, ``specs/HASH``) and downloads (everything else at the top: archives and
their unpacked folders). An entry's age is the time since it was last used: its marker's
modification time under ``.used/`` (:mod:`deepfm.data.cache_cap` writes it), or, for an entry
without one, since it was last written. Every entry is rebuilt or downloaded again on the next
run that needs it.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from deepfm.data.download import cache_dir
from deepfm.io import pid_alive

KINDS = {"prepared": "prepared", "frames": "frame", "specs": "spec"}
MARKERS = ".used"  # one marker file per used entry, at the same relative path
# what is being written: a folder ".NAME-PID-RANDOM" (prepared data, an unpacked download) or a
# file ".NAME.PID-RANDOM.tmp" (deepfm.io.atomic_write), named by the process writing it
_BUILDING = re.compile(r"^\.(?:.+-(\d+)-[^-.]+|.+\.(\d+)-[^.]+\.tmp)$")


@dataclass(frozen=True)
class Entry:
    kind: str  # prepared, frame, spec or download
    path: Path
    size: int  # bytes
    modified: float  # newest modification time in the entry (seconds since the epoch)
    used: float  # last use: the marker's modification time (``modified`` when it has none)

    def age_days(self, now: float | None = None) -> float:
        """Days since the entry was last used."""
        return ((time.time() if now is None else now) - self.used) / 86400

    def writer(self) -> int | None:
        """The process still writing this entry (its name says which), else ``None``: a finished
        entry, or the leftover of a writer that is gone (killed mid-write)."""
        match = _BUILDING.match(self.path.name)
        if match is None:
            return None
        pid = int(match.group(1) or match.group(2))
        return pid if pid_alive(pid) else None


def marker_of(path: Path, root: Path | None = None) -> Path | None:
    """The file whose modification time records when ``path`` (an entry) was last used; ``None``
    when ``path`` is not inside the cache folder."""
    root = (cache_dir() if root is None else root).resolve()
    try:
        relative = Path(path).resolve().relative_to(root)
    except ValueError:
        return None
    return root / MARKERS / relative


def _last_used(path: Path, root: Path, modified: float) -> float:
    marker = marker_of(path, root)
    try:
        return marker.stat().st_mtime if marker is not None else modified
    except OSError:
        return modified


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
        if top.name == MARKERS:
            continue
        if top.name in KINDS and top.is_dir():
            for path in sorted(top.iterdir()):
                found.append(_entry(KINDS[top.name], path, root))
        else:
            found.append(_entry("download", top, root))
    return sorted(found, key=lambda e: -e.size)


def _entry(kind: str, path: Path, root: Path) -> Entry:
    size, modified = _measure(path, kind)
    return Entry(kind, path, size, modified, _last_used(path, root, modified))


def remove(entry: Entry) -> None:
    if entry.path.is_dir():
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        entry.path.unlink(missing_ok=True)
    marker = marker_of(entry.path)
    if marker is not None:
        marker.unlink(missing_ok=True)

"""The cache folder's size cap: least-recently-used entries are removed once it holds more.

The cap is ``$DEEPFM_CACHE_MAX`` (``20GB``, ``500MB``, ``1.5G``; ``off`` for none), default
:data:`DEFAULT_CAP` (20 GB). Every use of an entry (a prepared data set read or built, a frame
written by ``deepfm.fit``, a download unpacked or found) is recorded by :func:`mark_used`, as the
modification time of a marker file under ``.used/`` (the entry itself is left untouched: a
frame's or a download's modification time is part of a prepared data set's cache key).
:func:`enforce_cap` then removes the least recently used entries until the folder fits, and says
so on stderr. It never removes an entry this process has used (the current run's data), one used
in the last :data:`RECENT_SECONDS` (another run may be reading it) or a folder being built
(names starting with a dot); when those alone are over the cap it says so and keeps them.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from deepfm.data.cache_contents import Entry, entries, marker_of, remove
from deepfm.data.download import cache_dir
from deepfm.errors import ConfigError

ENV = "DEEPFM_CACHE_MAX"
DEFAULT_CAP = 20 * 1000**3
RECENT_SECONDS = 3600
UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)

_in_use: set[Path] = set()  # the entries this process has used


def cap_bytes() -> int | None:
    """The cap in bytes from ``$DEEPFM_CACHE_MAX`` (default 20 GB); ``None``: no cap."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return DEFAULT_CAP
    if text.lower() in ("off", "none", "no"):
        return None
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"${ENV}={text!r} is not a size: write e.g. 20GB, 500MB, 1.5G, or off for no cap")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def mark_used(path: Path) -> None:
    """Record that ``path`` (an entry of the cache folder) is used now, by this process."""
    path = Path(path)
    _in_use.add(path.resolve())
    marker = marker_of(path)
    if marker is None:
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    now = time.time()
    os.utime(marker, (now, now))


def enforce_cap(now: float | None = None) -> list[Entry]:
    """Remove least-recently-used entries until the cache folder fits its cap; the removed ones."""
    cap = cap_bytes()
    if cap is None:
        return []
    found = entries()
    total = sum(e.size for e in found)
    if total <= cap:
        return []
    now = time.time() if now is None else now
    removed = []
    for entry in sorted(found, key=lambda e: e.used):
        if total <= cap:
            break
        if not evictable(entry, now):
            continue
        remove(entry)
        total -= entry.size
        removed.append(entry)
        say(
            f"deepfm cache: removed {entry.kind} {entry.path} ({size_text(entry.size)}, last used "
            f"{entry.age_days(now):.1f} days ago) to keep {cache_dir()} under {size_text(cap)} (${ENV})"
        )
    if total > cap:
        say(
            f"deepfm cache: {cache_dir()} holds {size_text(total)}, over its {size_text(cap)} cap "
            f"(${ENV}); the rest is in use"
        )
    return removed


def evictable(entry: Entry, now: float) -> bool:
    return (
        not entry.path.name.startswith(".")
        and entry.path.resolve() not in _in_use
        and now - entry.used > RECENT_SECONDS
    )


def size_text(n: float) -> str:
    """``n`` bytes as ``512 B``, ``5.0 KB``, ``1.2 GB`` (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)

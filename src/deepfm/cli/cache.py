"""``deepfm cache``: list the cache folder's entries with sizes and ages (since last use), or
clear them; the summary states the size cap (``$DEEPFM_CACHE_MAX``)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "cache",
        help="list or clear the cache folder (prepared data, fit's frames, downloads)",
        description="List what the cache folder ($DEEPFM_CACHE, default ~/.cache/deepfm) holds: "
        "prepared data sets, frames written by deepfm.fit and downloads, with sizes and the days "
        "since each was last used. Runs keep the folder under a size cap ($DEEPFM_CACHE_MAX, e.g. "
        "20GB, 500MB or off; default 20GB) by removing the least recently used entries, never "
        "those in use. Anything removed is rebuilt (or downloaded) by the next run that needs it. "
        "--clear keeps what a running process is still writing (and removes what a killed one "
        "left half written); entries a running training reads are not tracked across processes: "
        "do not clear while a run is training.",
    )
    p.add_argument("--clear", action="store_true", help="remove the listed entries")
    p.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="DAYS",
        help="only entries not used for more than DAYS days",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepfm.data.cache_cap import ENV, cap_bytes, size_text
    from deepfm.data.cache_contents import entries, remove
    from deepfm.data.download import cache_dir
    from deepfm.errors import ConfigError

    if args.older_than is not None and args.older_than < 0:
        raise ConfigError(f"--older-than must be >= 0 days, got {args.older_than:g}")
    cap = cap_bytes()
    chosen = [e for e in entries() if args.older_than is None or e.age_days() > args.older_than]
    counted, kept = [], []  # listed (or removed); kept: still being written
    for e in chosen:
        writer = e.writer() if args.clear else None
        note = f"  (being written by process {writer}: kept)" if writer else ""
        print(f"{e.kind:9} {size_text(e.size):>9}  {e.age_days():6.1f} days  {e.path}{note}")
        (kept if writer else counted).append(e)
        if args.clear and not writer:
            remove(e)
    total = sum(e.size for e in counted)
    verb = "removed" if args.clear else "in"
    limit = "no size cap" if cap is None else f"size cap {size_text(cap)}"
    busy = f"; {len(kept)} kept: still being written" if kept else ""
    print(
        f"{len(counted)} entr{'y' if len(counted) == 1 else 'ies'}, {size_text(total)} {verb} {cache_dir()} "
        f"({limit}, ${ENV}){busy}"
    )
    return 0

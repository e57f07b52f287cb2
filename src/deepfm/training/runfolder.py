"""A run folder is one unit: one run at a time (a lock), one run's outputs, a run id.

* ``DIR/.lock`` holds the training process's pid while it runs, under an exclusive ``flock``: a
  second process training into the same ``--out`` is refused (``ConfigError``: exit status 2)
  while the first is alive; the kernel drops the lock when its holder dies, so a lock file left
  by a killed run is simply taken over.
* A fresh run (not ``--resume``) replaces the previous run's outputs, but only once it has one of
  its own: the previous ``model.pt``, ``metrics.json``, ``state.pt``, ... stay untouched while the
  new run reads its data, starts its trackers and trains up to its first saved state or model
  (:meth:`RunFolder.replace_previous`, called by every write of the run). A run that fails before
  that (a bad line, a spec typo, a batch too large, NaN in epoch 1, an unreachable tracker) leaves
  the previous run whole; once it has written, every output in the folder is the new run's, so
  ``metrics.json``, ``model.pt``, ``history.csv``, ``state.pt`` and ``learning_curve.png`` always
  describe the same run. ``--resume`` keeps them.
* Each run gets a run id (kept across ``--resume``), written with the data fingerprint into
  ``metrics.json``, ``model.pt`` and ``state.pt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from deepfm.errors import ConfigError
from deepfm.io import ensure_folder, write_bytes

LOCK_FILE = ".lock"
# Every file a run writes into its folder (a fresh run removes the previous run's).
OUTPUTS = (
    "metrics.json",
    "model.pt",
    "history.csv",
    "state.pt",
    "learning_curve.png",
    "test_predictions.parquet",
)


def new_run_id() -> str:
    """``YYYYmmdd-HHMMSS-xxxxxx``: sortable by start time, unique."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


class RunFolder:
    """Context manager holding ``DIR/.lock`` for one training process (rank 0 only under DDP)."""

    def __init__(self, out: str | Path, writer: bool = True) -> None:
        self.out = Path(out)
        self.writer = writer
        self.run_id = new_run_id()
        self.data_fingerprint: str | None = None
        self._fd: int | None = None
        self._created = False
        self._replaced = False  # the previous run's outputs are gone (or there were none to keep)
        self.files: dict[str, bytes] = {}  # written with the run's first output (deepfm.fit's spec)

    def __enter__(self) -> RunFolder:
        self._created = not self.out.exists()
        ensure_folder(self.out, "--out")  # a file in the way, read-only: one line, before any work
        if self.writer:
            self._acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
        if self._created and self.writer and exc[0] is not None:
            # a run that failed before writing anything (a data error, say) leaves no --out behind
            leftovers = [p for p in self.out.iterdir() if p.name != LOCK_FILE]
            if not leftovers:
                (self.out / LOCK_FILE).unlink(missing_ok=True)
                self.out.rmdir()

    def _acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): run without the lock
            return
        path = self.out / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot create the run lock {path} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            who = f"process {holder[0]}" if holder else "another process"
            raise ConfigError(
                f"{self.out} is in use: {who} is training into it ({path}); wait for it to finish "
                "or choose another --out"
            ) from None
        os.ftruncate(fd, 0)  # a stale pid from a dead holder is replaced
        os.pwrite(fd, f"{os.getpid()} {self.run_id}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def keep_previous(self) -> None:
        """A resumed run: the outputs in the folder are its own, nothing is replaced."""
        self._replaced = True

    def replace_previous(self, written: str) -> list[str]:
        """Called after the run wrote its output ``written`` (atomically, so a kill leaves either
        file whole): the first time, remove every other output of the previous run and write
        :attr:`files`. Later calls do nothing. Returns the names removed."""
        removed: list[str] = []
        if self._replaced or not self.writer:
            return removed
        self._replaced = True
        for name in OUTPUTS:
            path = self.out / name
            if name != written and path.is_file():
                path.unlink()
                removed.append(name)
        for name, content in self.files.items():
            write_bytes(self.out / name, content)
        return removed

    def adopt(self, run: dict[str, Any] | None) -> None:
        """Keep the run id of a resumed run (stored in its ``state.pt``)."""
        if run and run.get("id"):
            self.run_id = str(run["id"])

    @property
    def info(self) -> dict[str, Any]:
        """``{"id": ..., "data_fingerprint": ...}``: written into model.pt, state.pt, metrics.json."""
        return {"id": self.run_id, "data_fingerprint": self.data_fingerprint}


def data_fingerprint(data: Any) -> str:
    """A short hash of the prepared data: its feature map, split sizes and encoded contents.

    A prepared folder is identified by the checksums of its arrays (``meta.json``), so the same
    data prepared from files in another folder has the same fingerprint; data held only in
    memory by its tensors.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(data.feature_map.to_dict(), sort_keys=True, default=str).encode())
    folder = data.facts.cache
    for split in (data.train, data.valid, data.test):
        digest.update(str(getattr(split, "total_rows", len(split))).encode())  # a rank's share: all rows
        if folder is None:
            for name in ("ids", "bags", "dense", "label"):
                tensor = getattr(split, name, None)
                if tensor is not None:
                    digest.update(tensor.contiguous().numpy().tobytes())
    if folder is not None:
        written = json.loads((Path(folder) / "meta.json").read_text())["files_written"]
        digest.update(
            json.dumps({k: v for k, v in written.items() if k.endswith(".npy")}, sort_keys=True).encode()
        )
    return digest.hexdigest()[:16]

"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file and rename it to ``path`` once complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def ensure_folder(path: str | Path, what: str) -> Path:
    """Create the folder ``path`` (and its parents) and check that files can be written in it;
    a ``ConfigError`` naming ``what`` (``--out``, ``--tensorboard``, ...) and the reason otherwise:
    a file in the way, a read-only file system, no permission."""
    from deepfm.errors import ConfigError

    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"is under {parent}, which is a file"
            raise ConfigError(f"{what} {path} {where}; give a folder")
        if parent.exists():
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".deepfm-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Strict JSON (RFC 8259): a NaN or infinity anywhere in ``data`` is a ``ValueError``, never
    ``NaN`` in the file; callers write ``None`` (null) for an undefined number (:func:`finite`)."""
    text = json.dumps(data, indent=2, allow_nan=False, default=_default) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by ``None``, recursively."""
    if isinstance(value, float) or (hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


TMP_SUFFIX = ".tmp"
_TMP = re.compile(r"^\..+\.(\d+)-[^.]+\.tmp$")  # .NAME.PID-RANDOM.tmp, written by atomic_write


def clean_temporary_files(folder: str | Path) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write` in ``folder`` whose writer is gone
    (killed mid-write); a file of a live process is kept. Returns the removed paths."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TMP.match(path.name)
        if match and path.is_file() and not pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_bytes(path: str | Path, content: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(content))


def _default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def is_torch_archive(path: str | Path) -> bool:
    """Whether ``path`` starts like a file ``torch.save`` writes (a zip archive), so that another
    file is named as such instead of by torch's long message about ``weights_only``."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return True  # let torch.load report it


def load_torch_payload(
    path: Path, what: str, fmt: str, newest: int, version_name: str, device: str = "cpu"
) -> dict[str, Any]:
    """The dict a deepfm file of format ``fmt`` holds (``model.pt``, ``state.pt``), at a version
    from 1 to ``newest``, loaded with ``weights_only`` (no pickled code runs); a foreign,
    truncated or damaged file, or one from a newer deepfm, is a one-line ``CheckpointError``
    naming ``path`` as a ``what`` and its ``version_name``."""
    import torch  # not at the top: the light CLI paths import this module without torch

    from deepfm.errors import CheckpointError, brief

    if not is_torch_archive(path):
        raise CheckpointError(f"{path} is not a {what} (not a PyTorch file)")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated, foreign or corrupt file
        raise CheckpointError(f"{path} is not a readable {what} ({brief(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise CheckpointError(f"{path} is not a {what}")
    version = payload.get("version")
    if type(version) is not int or version < 1:  # bool is an int in Python: refuse True as 1
        raise CheckpointError(f"{path} is damaged ({version_name} {version!r}, expected 1 to {newest})")
    if version > newest:
        raise CheckpointError(f"{path} was written by a newer deepfm ({version_name} {version})")
    return payload

"""Fetching the public data sets once into a cache folder, checksum-verified.

The cache folder is ``$DEEPFM_CACHE`` when set, else ``~/.cache/deepfm``. Downloads go to a
temporary file that is renamed only after its SHA-256 matched, and archives are unpacked into a
temporary folder renamed into place, so an interrupted download is never trusted later.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from deepfm.errors import DownloadError


@dataclass(frozen=True)
class Archive:
    """A data set archive published at a fixed address."""

    name: str  # folder name inside the cache once unpacked
    url: str
    sha256: str
    size: int  # bytes, for the progress bar and the offline message


ARCHIVES = {
    "movielens-1m": Archive(
        "ml-1m",
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        5_917_549,
    ),
    "movielens-100k": Archive(
        "ml-100k",
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        4_924_029,
    ),
}


def cache_dir() -> Path:
    """The folder where downloads and preprocessed arrays are kept."""
    env = os.environ.get("DEEPFM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deepfm"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(dataset: str, marker: str) -> Path:
    """Return the unpacked folder of ``dataset``, downloading it on first use.

    ``marker`` is a file that must exist inside the unpacked folder (e.g. ``ratings.dat``).
    """
    archive = ARCHIVES[dataset]
    root = cache_dir()
    target = root / archive.name
    if (target / marker).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    zip_path = root / f"{archive.name}.zip"
    if not zip_path.exists() or sha256_of(zip_path) != archive.sha256:
        _download(archive, zip_path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}-{os.getpid()}-", dir=root))  # see cache_contents
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp)
        inner = tmp / archive.name
        src = inner if inner.is_dir() else tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(src, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not (target / marker).exists():
        raise DownloadError(f"{zip_path} unpacked but has no {marker}; delete it and try again")
    return target


def _download(archive: Archive, dest: Path) -> None:
    from tqdm import tqdm

    tmp = dest.with_suffix(".part")
    try:
        request = urllib.request.Request(archive.url, headers={"User-Agent": "deepfm"})
        with urllib.request.urlopen(request, timeout=60) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or archive.size)
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {archive.name}") as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        raise DownloadError(
            f"could not download {archive.url} ({exc}). On an offline machine, download it "
            f"elsewhere and either put it at {dest} or unzip it and pass --data-dir to the "
            f"folder holding its files"
        ) from None
    got = sha256_of(tmp)
    if got != archive.sha256:
        tmp.unlink(missing_ok=True)
        raise DownloadError(
            f"{archive.url} downloaded with SHA-256 {got}, expected {archive.sha256}; "
            "the file is corrupt or changed upstream"
        )
    os.replace(tmp, dest)

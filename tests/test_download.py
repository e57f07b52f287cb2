"""Download path, exercised offline with file:// archives (tests never touch the network)."""

import hashlib
import zipfile

import pytest

from deepfm.data import download
from deepfm.errors import DownloadError


@pytest.fixture
def archive(tmp_path, monkeypatch):
    src = tmp_path / "src" / "ml-1m.zip"
    src.parent.mkdir()
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", "1::2::5::978300760\n")
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))
    fake = download.Archive("ml-1m", src.as_uri(), sha, src.stat().st_size)
    monkeypatch.setitem(download.ARCHIVES, "movielens-1m", fake)
    return fake


def test_fetch_verifies_unpacks_and_reuses_the_cache(archive, tmp_path):
    folder = download.fetch("movielens-1m", "ratings.dat")
    assert folder == tmp_path / "cache" / "ml-1m"
    assert (folder / "ratings.dat").read_text().startswith("1::2::5")
    (tmp_path / "src" / "ml-1m.zip").unlink()  # a second call must not download again
    assert download.fetch("movielens-1m", "ratings.dat") == folder


def test_checksum_mismatch_is_refused_and_nothing_is_kept(archive, tmp_path, monkeypatch):
    bad = download.Archive("ml-1m", archive.url, "0" * 64, archive.size)
    monkeypatch.setitem(download.ARCHIVES, "movielens-1m", bad)
    with pytest.raises(DownloadError, match="expected 0000"):
        download.fetch("movielens-1m", "ratings.dat")
    assert not list((tmp_path / "cache").glob("*.zip")) and not (tmp_path / "cache" / "ml-1m").exists()


def test_unreachable_address_says_what_to_do(archive, tmp_path, monkeypatch):
    gone = download.Archive("ml-1m", (tmp_path / "missing.zip").as_uri(), archive.sha256, 1)
    monkeypatch.setitem(download.ARCHIVES, "movielens-1m", gone)
    with pytest.raises(DownloadError) as err:
        download.fetch("movielens-1m", "ratings.dat")
    message = str(err.value)
    assert "could not download" in message and "--data-dir" in message
    assert str(tmp_path / "cache" / "ml-1m.zip") in message

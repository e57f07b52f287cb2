"""``deepfm cache``: the cache folder's entries with sizes and ages; --clear, --older-than; the
size cap ($DEEPFM_CACHE_MAX) removing the least recently used entries, never those in use."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from deepfm.api import frame_file
from deepfm.cli.main import main
from deepfm.data import cache_cap
from deepfm.data.cache_contents import entries, marker_of
from deepfm.data.options import PrepareOptions
from deepfm.data.prepare import prepare
from deepfm.errors import ConfigError


def test_cache_lists_clears_and_keeps_recent_entries(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))
    frame = frame_file(pd.DataFrame({"a": range(100), "label": [0, 1] * 50}))  # what deepfm.fit writes
    old = tmp_path / "cache" / "prepared" / "clicks-0123"
    old.mkdir(parents=True)
    (old / "ids.npy").write_bytes(b"x" * 5000)
    month_ago = time.time() - 30 * 86400
    os.utime(old / "ids.npy", (month_ago, month_ago))
    (tmp_path / "cache" / "ml-1m.zip").write_bytes(b"z" * 1200)

    assert main(["cache"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[-1]: line.split()[0] for line in lines[:-1]}
    assert listed == {
        str(old): "prepared",
        str(frame): "frame",
        str(tmp_path / "cache" / "ml-1m.zip"): "download",
    }
    assert "5.0 KB" in lines[0] and "30.0 days" in lines[0]  # largest first, with its age
    total = 5000 + 1200 + frame.stat().st_size
    cap = "(size cap 20.0 GB, $DEEPFM_CACHE_MAX)"  # the default
    assert lines[-1] == f"3 entries, {total / 1000:.1f} KB in {tmp_path / 'cache'} {cap}"

    assert main(["cache", "--clear", "--older-than", "7"]) == 0  # only the month-old entry
    assert not old.exists() and frame.exists() and (tmp_path / "cache" / "ml-1m.zip").exists()
    assert capsys.readouterr().out.splitlines()[-1].startswith("1 entry, 5.0 KB removed")
    assert main(["cache", "--clear"]) == 0
    assert not frame.exists() and main(["cache"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("0 entries, 0 B in")
    assert main(["cache", "--older-than", "-1"]) == 2
    assert "--older-than must be >= 0" in capsys.readouterr().err


def _plant(root, name, size, days_ago, now):
    """An entry of ``size`` bytes last used ``days_ago`` days before ``now``."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if "." in path.name:
        path.write_bytes(b"x" * size)
    else:
        path.mkdir()
        (path / "data.npy").write_bytes(b"x" * size)
    then = now - days_ago * 86400
    for p in [path, *path.rglob("*")]:
        os.utime(p, (then, then))
    marker = marker_of(path, root)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    os.utime(marker, (then, then))
    return path


def test_cache_cap_removes_the_least_recently_used_and_keeps_what_the_run_uses(tmp_path, monkeypatch, capsys):
    root = tmp_path / "cache"
    monkeypatch.setenv("DEEPFM_CACHE", str(root))
    monkeypatch.setattr(cache_cap, "_in_use", set())
    now = time.time()
    oldest = _plant(root, "prepared/clicks-aaaa", 4000, 40, now)
    frame = _plant(root, "frames/0123.parquet", 3000, 30, now)
    download = _plant(root, "ml-100k", 2000, 20, now)
    recent = _plant(root, "prepared/clicks-bbbb", 1000, 2, now)
    (tmp_path / "clicks.csv").write_text("a,label\n" + "".join(f"{i % 7},{i % 2}\n" for i in range(200)))
    spec = tmp_path / "clicks.yaml"  # the run's own data: prepared now, into the same cache
    spec.write_text("name: clicks\ninput: {files: [clicks.csv], format: csv}\nlabel: label\nfields: [a]\n")
    monkeypatch.setenv("DEEPFM_CACHE_MAX", "off")
    used = Path(prepare(PrepareOptions(spec=str(spec)), progress=False).facts.cache)  # marked in use
    built = sum(e.size for e in entries() if e.path == used)
    monkeypatch.setenv("DEEPFM_CACHE_MAX", str(built + 1000 + 2000 + 100))
    capsys.readouterr()

    # 10,000 planted bytes + the run's folder over a cap that fits the run, the recent and the download
    removed = cache_cap.enforce_cap(now=now)
    assert [e.path for e in removed] == [oldest, frame]  # least recently used first, until it fits
    assert used.is_dir() and recent.is_dir() and download.is_dir()
    assert not oldest.exists() and not frame.exists() and not marker_of(oldest, root).exists()
    log = capsys.readouterr().err.splitlines()
    assert log[0].startswith(f"deepfm cache: removed prepared {oldest} (4.0 KB, last used 40.0 days ago)")
    assert log[1].startswith(f"deepfm cache: removed frame {frame} (3.0 KB, last used 30.0 days ago)")
    assert len(log) == 2

    # a cap below what the run uses: every other entry goes, the run's folder stays, and it says so
    monkeypatch.setenv("DEEPFM_CACHE_MAX", "1KB")
    cache_cap.enforce_cap(now=now + 7 * 86400)
    assert [e.path for e in entries()] == [used]
    assert "over its 1.0 KB cap ($DEEPFM_CACHE_MAX); the rest is in use" in capsys.readouterr().err


def test_cache_cap_spares_entries_used_in_the_last_hour_and_reads_sizes(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("DEEPFM_CACHE", str(root))
    monkeypatch.setattr(cache_cap, "_in_use", set())
    now = time.time()
    other_run = _plant(root, "prepared/other-cccc", 5000, 0.01, now)  # used 15 minutes ago
    monkeypatch.setenv("DEEPFM_CACHE_MAX", "0")
    assert cache_cap.enforce_cap(now=now) == [] and other_run.is_dir()
    assert [e.path for e in cache_cap.enforce_cap(now=now + 2 * 3600)] == [other_run]
    for text, size in [("20GB", 20 * 10**9), ("500 MB", 5 * 10**8), ("1.5G", 15 * 10**8), ("2kib", 2000)]:
        monkeypatch.setenv("DEEPFM_CACHE_MAX", text)
        assert cache_cap.cap_bytes() == size
    monkeypatch.setenv("DEEPFM_CACHE_MAX", "off")
    assert cache_cap.cap_bytes() is None
    monkeypatch.delenv("DEEPFM_CACHE_MAX")
    assert cache_cap.cap_bytes() == cache_cap.DEFAULT_CAP
    monkeypatch.setenv("DEEPFM_CACHE_MAX", "lots")
    with pytest.raises(ConfigError, match=r"\$DEEPFM_CACHE_MAX='lots' is not a size"):
        cache_cap.cap_bytes()
    assert main(["cache"]) == 2


def test_clear_keeps_what_a_running_process_writes_and_removes_a_killed_ones_leftovers(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs
    prepared = tmp_path / "cache" / "prepared"
    live = prepared / f".clicks-0123-{os.getpid()}-ab_cd12x"  # this process is writing it
    dead = prepared / f".clicks-0456-{gone.pid}-zz9y8x7w"  # its writer was killed
    half_zip = tmp_path / "cache" / f".ml-1m.zip.{os.getpid()}-k3j4h5g6.tmp"  # a download under way
    for folder in (live, dead):
        folder.mkdir(parents=True)
        (folder / "train_ids.npy").write_bytes(b"x" * 100)
    half_zip.write_bytes(b"z" * 10)
    done = prepared / "clicks-0789"
    done.mkdir()
    (done / "train_ids.npy").write_bytes(b"x" * 100)

    assert main(["cache", "--clear"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert live.exists() and half_zip.exists() and not dead.exists() and not done.exists()
    kept = [line for line in lines if "being written by process" in line]
    assert len(kept) == 2 and all(str(os.getpid()) in line for line in kept)
    assert lines[-1].startswith("2 entries, 200 B removed")
    assert lines[-1].endswith("; 2 kept: still being written")

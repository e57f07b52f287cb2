"""``deepfm cache``: the cache folder's entries with sizes and ages; --clear, --older-than."""

from __future__ import annotations

import os
import time

import pandas as pd

from deepfm.api import frame_file
from deepfm.cli.main import main


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
    assert lines[-1] == f"3 entries, {total / 1000:.1f} KB in {tmp_path / 'cache'}"

    assert main(["cache", "--clear", "--older-than", "7"]) == 0  # only the month-old entry
    assert not old.exists() and frame.exists() and (tmp_path / "cache" / "ml-1m.zip").exists()
    assert capsys.readouterr().out.splitlines()[-1].startswith("1 entry, 5.0 KB removed")
    assert main(["cache", "--clear"]) == 0
    assert not frame.exists() and main(["cache"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("0 entries, 0 B in")
    assert main(["cache", "--older-than", "-1"]) == 2
    assert "--older-than must be >= 0" in capsys.readouterr().err

"""``deepfm prepare`` writes a prepared folder once; ``deepfm train --prepared DIR`` trains on it."""

from __future__ import annotations

import json

from deepfm.cli.main import main


def test_prepare_once_then_train_gives_what_training_from_the_files_gives(tiny_ml, tmp_path, capsys):
    folder = tmp_path / "prepared"
    assert (
        main(["prepare", "--data-dir", str(tiny_ml), "--out", str(folder), "--seed", "3", "--no-progress"])
        == 0
    )
    assert {"feature_map.json", "meta.json", "train_ids.npy", "test_label.npy"} <= {
        p.name for p in folder.iterdir()
    }
    common = ["--epochs", "2", "--threads", "1", "--no-progress", "--seed", "3"]
    assert main(["train", "--prepared", str(folder), *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["train", "--data-dir", str(tiny_ml), *common, "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in "ab")
    assert a["test_auc"] == b["test_auc"] and a["data_fingerprint"] == b["data_fingerprint"]
    assert a["config"]["prepared"] == str(folder)
    capsys.readouterr()

    # the folder is not overwritten, options that would change it are refused, damage is named
    assert main(["prepare", "--data-dir", str(tiny_ml), "--out", str(folder), "--no-progress"]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    args = ["train", "--prepared", str(folder), "--out", str(tmp_path / "c"), "--no-progress"]
    assert main([*args, "--min-count", "3"]) == 2
    assert "holds data prepared with its own options; drop --min-count" in capsys.readouterr().err
    with open(folder / "train_ids.npy", "r+b") as f:
        f.seek(200)
        f.write(b"\x07")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(folder) in err and "train_ids.npy does not match its checksum" in err


def test_prepare_a_spec_once_plain_or_sharded_trains_as_the_spec_does(tmp_path):
    """A declared data set (a categorical, numeric and multi-valued field): trained from the spec,
    from its prepared folder, and from a folder whose training split is 3 shards, the same AUC."""
    from test_specs import csv_spec

    spec = str(csv_spec(tmp_path))
    assert main(["prepare", "--spec", spec, "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    assert (
        main(["prepare", "--spec", spec, "--out", str(tmp_path / "s"), "--shards", "3", "--no-progress"]) == 0
    )
    common = ["--epochs", "1", "--threads", "1", "--no-progress", "--batch-size", "256", "--model", "fm"]
    runs = {
        "spec": ["--spec", spec],
        "prepared": ["--prepared", str(tmp_path / "p")],
        "sharded": ["--prepared", str(tmp_path / "s")],
    }
    metrics = {}
    for name, source in runs.items():
        assert main(["train", *source, *common, "--out", str(tmp_path / f"run-{name}")]) == 0
        metrics[name] = json.loads((tmp_path / f"run-{name}" / "metrics.json").read_text())
    aucs = {name: m["test_auc"] for name, m in metrics.items()}
    assert aucs["spec"] == aucs["prepared"] == aucs["sharded"] and aucs["spec"] > 0.6, aucs
    assert metrics["sharded"]["data"]["rows"] == metrics["spec"]["data"]["rows"]


def test_engine_options_and_a_missing_pyspark_are_one_line_errors(tiny_ml, tmp_path, capsys, monkeypatch):
    base = ["prepare", "--data-dir", str(tiny_ml), "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a"), "--master", "local[2]"]) == 2
    assert "--master and --conf are options of --engine spark" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--engine", "spark", "--conf", "nokey"]) == 2
    assert "--conf takes key=value" in capsys.readouterr().err

    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "pyspark" else find_spec(n, *a)
    )
    assert main([*base, "--out", str(tmp_path / "c"), "--engine", "spark"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'deepfm[spark]'" in err
    assert not (tmp_path / "c").exists()


def test_local_spark_gets_a_heap_sized_to_the_machine_and_a_cluster_keeps_its_own(monkeypatch):
    import os

    from deepfm.data.prepare.spark import session

    gib = 1 << 30
    monkeypatch.setattr(os, "sysconf", lambda k: {"SC_PAGE_SIZE": 4096}.get(k, 24 * gib // 4096))
    assert session._local_memory("local[2]") == {"spark.driver.memory": "6g"}
    assert session._local_memory("local") == {"spark.driver.memory": "6g"}
    assert session._local_memory("spark://head:7077") == {}
    assert session._local_memory("local-cluster[2,1,1024]") == {}  # executors have their own heap
    monkeypatch.setattr(os, "sysconf", lambda k: {"SC_PAGE_SIZE": 4096}.get(k, 256 * gib // 4096))
    assert session._local_memory("local[*]") == {"spark.driver.memory": "8g"}
    monkeypatch.setattr(os, "sysconf", lambda k: {"SC_PAGE_SIZE": 4096}.get(k, 2 * gib // 4096))
    assert session._local_memory("local[*]") == {"spark.driver.memory": "1g"}

"""An exported model scores raw records: the encoder in docs/serving.md, which reads nothing but the
exported feature_map.json and side tables, feeds the ONNX file through onnxruntime and matches
``deepfm predict`` on the same raw file, for every kind of field."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import deepfm
from deepfm.cli.main import main
from deepfm.data.transforms import MISSING
from deepfm.training.run import load_data

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("xxhash")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "serving.md"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))


def docs_encoder() -> dict:
    """The reference encoder of docs/serving.md, run as written."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    code = next(b for b in blocks if "def encode(records, doc, tables)" in b)
    scope: dict = {}
    exec(compile(code, str(DOCS), "exec"), scope)
    return scope


def write_data(folder: Path, n: int = 2400, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 60, n)
    price = rng.gamma(2.0, 25.0, n).round(2)
    clicks = rng.integers(0, 400, n).astype(float)
    frame = pd.DataFrame(
        {
            "click": (rng.random(n) < 1 / (1 + np.exp(-(users % 3 - 1) - price / 100 + 0.5))).astype(int),
            "user": [f"{u:03d}" for u in users],  # text ids with leading zeros
            "price": np.where(rng.random(n) < 0.1, np.nan, price),
            "clicks": np.where(rng.random(n) < 0.1, np.nan, clicks),
            "age": rng.integers(15, 70, n),
            "tags": ["|".join(rng.choice(list("abcde"), k, replace=False)) for k in rng.integers(0, 4, n)],
            "ip": [f"10.0.{rng.integers(0, 9)}.{rng.integers(0, 300)}" for _ in range(n)],
            "hour": [14102100 + 100 * rng.integers(0, 9) + rng.integers(0, 24) for _ in range(n)],
            "url": [rng.choice(["https://a.com/x", "http://b.org/", "c.net/y", ""]) for _ in range(n)],
            "title": [rng.choice(["Up (2009)", "Heat (1995)", "Alien (1979)", "Untitled"]) for _ in range(n)],
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    for part, rows in (("train", slice(0, n * 8 // 10)), ("valid", slice(n * 8 // 10, n * 9 // 10))):
        frame.iloc[rows].to_csv(folder / f"{part}.csv", index=False)
    test = frame.iloc[n * 9 // 10 :].copy()
    odd = test.iloc[:4].copy()  # values training never saw, and missing ones
    odd["user"] = ["999", "", "007", "abc"]
    odd["price"] = [np.nan, 0.0, 1e4, 3.5]
    odd["clicks"] = [np.nan, 0.0, 2.0, 1e6]
    odd["tags"] = ["", "z|a", "a|b|c|d|e|f", "e"]
    odd["hour"] = [14010100, 14123123, 14102100, 14102523]
    odd["url"] = ["ftp://x", "https://new.io/", "", "http://a.com"]
    pd.concat([test, odd]).to_csv(folder / "test.csv", index=False)
    segments = pd.DataFrame(
        {
            "user": [f"{u:03d}" for u in range(0, 70, 1) if u != 5],  # 005 has no row: missing values
            "segment": [["gold", "silver", ""][u % 3] for u in range(0, 70) if u != 5],
            "income": [float(u * 1000) if u % 7 else np.nan for u in range(0, 70) if u != 5],
        }
    )
    segments.to_csv(folder / "users.csv", index=False)
    spec = {
        "name": "every-kind",
        "input": {"format": "csv"},
        "label": "click",
        "tables": [
            {"key": "user", "input": {"files": ["users.csv"], "format": "csv", "columns": list(segments)}}
        ],
        "fields": [
            "user",
            "segment",
            {"name": "income", "kind": "numeric"},
            {"name": "price_z", "column": "price", "kind": "numeric", "transform": "standardize"},
            {"name": "price_q", "column": "price", "kind": "numeric", "transform": "quantile", "buckets": 5},
            {"name": "clicks", "kind": "numeric", "transform": "log2bucket"},
            {"name": "age", "kind": "numeric", "transform": "bucket", "edges": [18, 25, 35, 45]},
            {"name": "tags", "kind": "multi", "separator": "|", "max_len": 3},
            {"name": "ip", "hash_buckets": 50},
            {"name": "hour_of_day", "column": "hour", "transform": "hour_of_day"},
            {"name": "weekday", "column": "hour", "transform": "weekday"},
            {"name": "domain", "column": "url", "pattern": "^https?://([^/]+)"},
            {
                "name": "year",
                "column": "title",
                "pattern": r"\((\d{4})\)",
                "kind": "numeric",
                "transform": "bucket",
                "edges": [1980, 2000],
            },
        ],
        "split": {"method": "files", "files": {p: [f"{p}.csv"] for p in ("train", "valid", "test")}},
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def test_exported_onnx_scores_raw_records_like_predict_for_every_field_kind(tmp_path):
    folder = write_data(tmp_path / "data")
    run = tmp_path / "run"
    argv = ["train", "--spec", str(folder / "spec.yaml"), "--out", str(run), "--epochs", "2"]
    assert main([*argv, "--batch-size", "256", "--no-progress", "--threads", "1"]) == 0
    assert main(["predict", "--model", str(run), "--input", str(folder / "test.csv"),
                 "--output", str(tmp_path / "scored.csv")]) == 0  # fmt: skip
    predicted = pd.read_csv(tmp_path / "scored.csv")["probability"].to_numpy()
    model = deepfm.load(run)  # predict reads the raw file as training read it (the prepared test part)
    trained = model.predict_split(load_data(model.config).test)
    np.testing.assert_allclose(predicted[: len(trained)], trained, rtol=0, atol=1e-6)
    export = tmp_path / "export"
    assert main(["export", "--model", str(run), "--format", "onnx", "--out", str(export / "m.onnx")]) == 0

    doc = json.loads((export / "feature_map.json").read_text())
    rules = {r["name"]: r for r in doc["fields"]}
    assert [r["name"] for r in doc["fields"]] == [f["name"] for f in doc["feature_map"]["fields"]]
    kinds = {name: (r["input"], r["read"], (r.get("transform") or {}).get("type"), r.get("lookup"))
             for name, r in rules.items()}  # fmt: skip
    assert kinds == {
        "user": ("ids", "text", None, "vocab"),
        "segment": ("ids", "text", None, "vocab"),
        "income": ("dense", "number", "standardize", None),
        "price_z": ("dense", "number", "standardize", None),
        "price_q": ("ids", "number", "quantile", "vocab"),
        "clicks": ("ids", "number", "log2bucket", "vocab"),
        "age": ("ids", "number", "bucket", "vocab"),
        "tags": ("bags", "list", None, "vocab"),
        "ip": ("ids", "text", None, "hash"),
        "hour_of_day": ("ids", "number", "hour_of_day", "vocab"),
        "weekday": ("ids", "number", "weekday", "vocab"),
        "domain": ("ids", "text", None, "vocab"),
        "year": ("ids", "number", "bucket", "vocab"),
    }
    assert rules["segment"]["table"] == rules["income"]["table"] == "user"
    assert rules["price_z"]["rule"].startswith("dense = (x - ") and "missing -> 0" in rules["price_z"]["rule"]
    assert MISSING in doc["feature_map"]["fields"][4]["vocab"]  # the missing token, explained:
    assert rules["price_q"]["missing_token"] == MISSING and "(-2**62)" in rules["price_q"]["rule"]
    assert sorted(doc["read"]) == ["integer", "list", "number", "text"]

    # another runtime: the raw CSV as text, the side table from the exported CSV, the docs' encoder
    encoder = docs_encoder()
    with open(folder / "test.csv", newline="") as f:
        records = list(csv.DictReader(f))
    tables = {}
    for table in doc["tables"]:
        with open(export / table["file"], newline="") as f:
            tables[table["key"]] = {row[table["key"]]: row for row in csv.DictReader(f)}
    arrays = encoder["encode"](records, doc, tables)
    session = ort.InferenceSession(str(export / "m.onnx"), providers=["CPUExecutionProvider"])
    exported = session.run(None, {i.name: arrays[i.name] for i in session.get_inputs()})[0]
    assert len(exported) == len(predicted) == 244
    np.testing.assert_allclose(exported, predicted, rtol=0, atol=1e-5)
    assert np.ptp(predicted) > 0.05  # a model that tells the records apart

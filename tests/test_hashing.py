"""Feature hashing (``hash_buckets``) and ``--max-vocab``: one hash in train, predict, serve and export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import fit_map

import deepfm
from deepfm.cli.main import main
from deepfm.config import TrainConfig
from deepfm.data.features import choose_vocab
from deepfm.data.hashing import HASH_NAME, local_rows
from deepfm.data.spec import spec_from_dict
from deepfm.errors import ConfigError
from deepfm.training.run import load_data, train

xxhash = pytest.importorskip("xxhash")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))


def write_clicks(folder: Path, n: int = 6000, seed: int = 0) -> Path:
    """Clicks driven by ``device_ip`` (3,000 values, some with leading zeros) and ``site``."""
    rng = np.random.default_rng(seed)
    ips = rng.integers(0, 3000, n)
    sites = rng.integers(0, 40, n)
    ip_bias, site_bias = rng.normal(0, 1.5, 3000), rng.normal(0, 1, 40)
    logit = ip_bias[ips] + site_bias[sites]
    frame = pd.DataFrame(
        {
            "click": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int),
            "device_ip": [f"{i:05d}" for i in ips],  # "00042": text, not the number 42
            "site": [f"s{s}" for s in sites],
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    frame.iloc[: n * 4 // 5].to_csv(folder / "train.csv", index=False)
    frame.iloc[n * 4 // 5 : n * 9 // 10].to_csv(folder / "valid.csv", index=False)
    frame.iloc[n * 9 // 10 :].to_csv(folder / "test.csv", index=False)
    spec = {
        "name": "hashed-clicks",
        "input": {"format": "csv"},
        "label": "click",
        "fields": [{"name": "device_ip", "hash_buckets": 1000}, {"name": "site", "max_vocab": 30}],
        "split": {"method": "files", "files": {p: [f"{p}.csv"] for p in ("train", "valid", "test")}},
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    return folder


def test_the_hash_is_xxh64_of_the_utf8_text_seed_0():
    """The documented recipe, for other languages: row = offset + 1 + xxh64(text, seed 0) % buckets."""
    assert xxhash.xxh64_intdigest(b"") == 0xEF46DB3751D8E999  # the reference test vector
    values = ["00042", "a1b2", "", "é", None]
    expected = [1 + xxhash.xxh64_intdigest((v or "").encode("utf-8"), seed=0) % 97 for v in values]
    assert local_rows(values, 97).tolist() == expected
    assert local_rows(pd.Series([42, 7]), 97).tolist() == local_rows(["42", "7"], 97).tolist()


def test_hashed_spec_trains_predicts_serves_and_exports_with_identical_scores(tmp_path):
    pytest.importorskip("onnxruntime")
    from fastapi.testclient import TestClient

    from deepfm.serving.app import create_app
    from deepfm.serving.export import export_model

    folder = write_clicks(tmp_path / "clicks")
    config = TrainConfig(
        spec=str(folder / "spec.yaml"), out=str(tmp_path / "run"), epochs=3, batch_size=256, lr=0.01
    )
    config.progress, config.threads = False, 1
    metrics = train(config, echo=lambda *_: None)
    assert metrics["test_auc"] > 0.65  # the planted device_ip signal is learned through the buckets
    train_ips = pd.read_csv(folder / "train.csv", dtype=str)["device_ip"]
    stats = metrics["data"]["hashing"]["device_ip"]
    used = len(set(local_rows(train_ips.unique(), 1000).tolist()))
    assert stats["distinct_values"] == train_ips.nunique() and stats["buckets_used"] == used
    assert stats["collision_rate"] == pytest.approx(1 - used / train_ips.nunique())
    assert metrics["data"]["fields"] == {"device_ip": 1001, "site": 31}  # 1 + buckets; 1 + max_vocab

    # 1. training: the streamed encoder's arrays of the test file
    model = deepfm.load(tmp_path / "run")
    trained = model.predict_split(load_data(config).test)
    # 2. predict: the command line on the raw test file
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(folder / "test.csv"),
                 "--output", str(tmp_path / "scored.csv")]) == 0  # fmt: skip
    predicted = pd.read_csv(tmp_path / "scored.csv")["probability"].to_numpy()
    # 3. serve: the HTTP API
    records = pd.read_csv(folder / "test.csv", dtype=str)[["device_ip", "site"]].to_dict("records")
    with TestClient(create_app(model, max_batch=10_000)) as client:
        response = client.post("/predict", json=records)
    assert response.status_code == 200, response.text
    served = np.asarray(response.json()["probabilities"])
    # 4. export: ONNX, fed ids encoded from feature_map.json alone, as another runtime would
    import onnxruntime as ort

    export_model(model, "onnx", tmp_path / "export" / "model.onnx")
    doc = json.loads((tmp_path / "export" / "feature_map.json").read_text())
    ids = np.stack([_encode_like_another_runtime(f, records) for f in doc["feature_map"]["fields"]], 1)
    session = ort.InferenceSession(
        str(tmp_path / "export" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    exported = session.run(None, {"ids": ids})[0]

    assert len(trained) == len(records) == 600
    np.testing.assert_allclose(predicted, trained, rtol=0, atol=1e-6)
    np.testing.assert_allclose(served, trained, rtol=0, atol=1e-6)
    np.testing.assert_allclose(exported, trained, rtol=0, atol=1e-6)


def _encode_like_another_runtime(field: dict, records: list[dict]) -> np.ndarray:
    """Global rows from the exported feature map only (no deepfm code): hash or vocabulary lookup."""
    values = [r[field["name"]] for r in records]
    if field.get("hash_buckets"):
        assert field["hash"] == HASH_NAME == "xxh64-utf8-seed0"
        digests = [xxhash.xxh64_intdigest(v.encode("utf-8"), seed=0) for v in values]
        return np.array([field["offset"] + 1 + d % field["hash_buckets"] for d in digests], dtype=np.int64)
    position = {v: i for i, v in enumerate(field["vocab"])}
    return np.array([field["offset"] + 1 + position.get(v, -1) for v in values], dtype=np.int64)


def test_max_vocab_keeps_the_most_frequent_values():
    values, counts = ["a", "b", "c", "d", "e"], np.array([5, 9, 1, 9, 3])
    assert choose_vocab(values, counts, max_vocab=3) == ["a", "b", "d"]
    assert choose_vocab(values, counts, min_count=4, max_vocab=10) == ["a", "b", "d"]
    # a warm start: the cap holds on base + new values, the most frequent in the new data kept
    assert choose_vocab(values, counts, max_vocab=3, base=["c", "z"]) == ["a", "b", "d"]
    frame = pd.DataFrame({"site": list("aabbbbc"), "label": [0] * 7})
    assert fit_map(frame, ["site"], max_vocab=2).field("site").vocab == ["a", "b"]


def test_max_vocab_option_applies_to_builtin_and_spec_data(tmp_path, tiny_ml):
    config = TrainConfig(data_dir=str(tiny_ml), max_vocab=50)
    fmap = load_data(config).feature_map
    assert [f.size for f in fmap.fields] == [51, 51]
    folder = write_clicks(tmp_path / "clicks")
    data = load_data(TrainConfig(spec=str(folder / "spec.yaml"), max_vocab=10))
    assert data.feature_map.field("site").size == 11  # the smaller of the spec's 30 and --max-vocab 10
    assert data.feature_map.field("device_ip").size == 1001  # hashed: no vocabulary to cap


@pytest.mark.parametrize(
    "field, needle",
    [
        ({"name": "x", "hash_buckets": 0}, "must be >= 1"),
        ({"name": "x", "kind": "numeric", "hash_buckets": 10}, "only a categorical field"),
        ({"name": "x", "hash_buckets": 10, "min_count": 2}, "has no vocabulary"),
        ({"name": "x", "max_vocab": 0}, "must be >= 1"),
    ],
)
def test_spec_errors_for_hashing_and_max_vocab(field, needle):
    spec = {"input": {"files": ["a.csv"]}, "label": "y", "fields": [field]}
    with pytest.raises(ConfigError, match=needle):
        spec_from_dict(spec, source="s.yaml")

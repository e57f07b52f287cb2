"""The HTTP server under bad input: streamed body limit, lone surrogates on a keep-alive
connection, non-finite numbers, missing numeric values, and the one id rule shared with
``TrainedModel.predict`` (the server's encoder must encode exactly like the pandas path)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import write_movielens
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deepfm
from deepfm.artifact.trained import TrainedModel
from deepfm.cli.main import main
from deepfm.data.records import prepare_records, records_frame
from deepfm.errors import DataError
from deepfm.serving.app import create_app
from deepfm.serving.encoder import RecordEncoder, RecordError

FIELDS = [
    {"name": "user"},
    {"name": "price", "kind": "numeric", "transform": "standardize"},
    {"name": "price_q", "column": "price", "kind": "numeric", "transform": "quantile", "buckets": 5},
    {"name": "I12", "kind": "numeric", "transform": "log2bucket"},
    {"name": "tags", "kind": "multi", "separator": "|", "max_len": 3},
]


@pytest.fixture(scope="module")
def spec_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A DeepFM on a spec with standardize, quantile, log2bucket (I12, half missing) and multi."""
    root = tmp_path_factory.mktemp("spec-serving")
    rng = np.random.default_rng(0)
    n = 2000
    frame = pd.DataFrame(
        {
            "click": rng.integers(0, 2, n),
            "user": [f"u{u}" for u in rng.integers(0, 30, n)],
            "price": np.round(rng.lognormal(2, 1, n), 3),
            "I12": np.where(rng.random(n) < 0.5, np.nan, rng.integers(0, 100, n)),
            "tags": ["|".join(f"t{t}" for t in rng.choice(6, size=2, replace=False)) for _ in range(n)],
        }
    )
    frame.to_csv(root / "clicks.csv", index=False)
    spec = {"name": "clicks", "input": {"files": ["clicks.csv"]}, "label": "click", "fields": FIELDS}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    args = ["train", "--spec", str(root / "spec.yaml"), "--out", str(root / "run"), "--epochs", "1"]
    env_cache = root / "cache"
    import os

    old = os.environ.get("DEEPFM_CACHE")
    os.environ["DEEPFM_CACHE"] = str(env_cache)
    try:
        assert main([*args, "--no-progress"]) == 0
    finally:
        if old is None:
            os.environ.pop("DEEPFM_CACHE", None)
        else:
            os.environ["DEEPFM_CACHE"] = old
    return deepfm.load(str(root / "run"))


@pytest.fixture(scope="module")
def ml_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    root = tmp_path_factory.mktemp("ml-serving")
    write_movielens(root / "ml" / "ratings.dat", n=4000)
    args = ["train", "--data-dir", str(root / "ml"), "--out", str(root / "run"), "--epochs", "1"]
    assert main([*args, "--no-progress"]) == 0
    return deepfm.load(str(root / "run"))


def pandas_inputs(model: TrainedModel, records: list[dict]) -> dict[str, np.ndarray]:
    """What ``TrainedModel.predict`` feeds the network (the reference path)."""
    frame = prepare_records(records_frame(records, model.feature_map), model.feature_map, model.tables)
    return model.feature_map.encode(frame)


def assert_same_inputs(model: TrainedModel, records: list[dict]) -> None:
    fast = RecordEncoder(model.feature_map, model.tables).encode(records)
    slow = pandas_inputs(model, records)
    assert sorted(fast) == sorted(slow)
    for name in fast:
        np.testing.assert_array_equal(fast[name], slow[name], err_msg=name)


# ---- the encoder is the pandas path, faster ------------------------------------------------------

IDS = st.one_of(
    st.integers(-5, 40),
    st.sampled_from([2**63, 10**30, 10**400, -(10**400)]),  # beyond int64 and beyond any float
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["u1", "u7", "abc", "", " 3 ", "1.0", "7", "nan", "1_0"]),
    st.none(),
)
NUMBERS = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.integers(-100, 10**6),
    st.sampled_from(["", " ", "3.5", " 12 ", "1e3"]),
    st.none(),
)
TAGS = st.one_of(
    st.none(), st.text(alphabet="t0123456|", max_size=12), st.lists(st.sampled_from(["t0", "t3", "x"]))
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.fixed_dictionaries({"user": IDS, "price": NUMBERS, "I12": NUMBERS, "tags": TAGS}),
        min_size=1,
        max_size=6,
    )
)
def test_encoder_encodes_spec_records_like_the_pandas_path(spec_model, records):
    assert_same_inputs(spec_model, records)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.fixed_dictionaries({"user_id": IDS, "movie_id": IDS}), min_size=1, max_size=6))
def test_encoder_encodes_ids_like_the_pandas_path(ml_model, records):
    assert_same_inputs(ml_model, records)


@pytest.mark.parametrize(
    "value", [float("inf"), -float("inf"), 1e308, -1e39, 10**400, "1e308", "Infinity", "abc", True]
)
def test_non_finite_or_overflowing_numbers_are_errors_naming_the_field_everywhere(spec_model, value):
    record = {"user": "u1", "price": 3.0, "I12": 5, "tags": "t1"}
    with pytest.raises(RecordError, match="record 1") as fast:
        RecordEncoder(spec_model.feature_map).encode([record, {**record, "price": value}])
    assert fast.value.field == "price"
    with pytest.raises(DataError, match="record 1") as slow:
        spec_model.predict([record, {**record, "price": value}])
    assert slow.value.field == "price"


# ---- HTTP ----------------------------------------------------------------------------------------


def test_missing_numeric_value_in_a_log2bucket_field_is_accepted(spec_model):
    """Issue 14: ``{"I12": null}`` or ``""`` is the missing category, as in training and predict."""
    from fastapi.testclient import TestClient

    records = [
        {"user": "u1", "price": 3.0, "I12": None, "tags": "t1|t2"},
        {"user": "u2", "price": "", "I12": "", "tags": ["t3"]},
        {"user": "u3", "price": 1.5, "I12": 40, "tags": None},
    ]
    with TestClient(create_app(spec_model)) as client:
        reply = client.post("/predict", json=records)
        assert reply.status_code == 200, reply.text
        np.testing.assert_allclose(reply.json()["probabilities"], spec_model.predict(records), rtol=1e-6)
        for bad in (1e308, "1e39", "abc"):  # finite JSON that overflows float32, or not a number
            reply = client.post("/predict", json=[records[0], {**records[2], "price": bad}])
            assert reply.status_code == 422, reply.text
            assert reply.json()["detail"][0]["loc"] == ["body", 1, "price"]
        for bad in (b"Infinity", b"NaN", b"1e400"):  # not strict JSON
            body = b'[{"user": "u1", "price": ' + bad + b', "I12": 1, "tags": null}]'
            reply = client.post("/predict", content=body, headers={"content-type": "application/json"})
            assert reply.status_code == 422 and reply.json()["detail"][0]["type"] == "json_invalid"


def test_one_id_rule_server_python_and_cli_agree(ml_model, tmp_path):
    """``"abc"``, ``1.5``, null and a numeric string: unknown ids are the OOV row everywhere."""
    from fastapi.testclient import TestClient

    records = [
        {"user_id": "abc", "movie_id": 1},
        {"user_id": 1.5, "movie_id": 2},
        {"user_id": None, "movie_id": 3},
        {"user_id": "2", "movie_id": "3"},
        {"user_id": 10**9, "movie_id": 4},
    ]
    python = ml_model.predict(records)
    oov = ml_model.predict([{"user_id": 10**9, "movie_id": m} for m in (1, 2, 3)])
    np.testing.assert_allclose(python[:3], oov, rtol=1e-6)
    np.testing.assert_allclose(python[3], ml_model.predict([{"user_id": 2, "movie_id": 3}])[0], rtol=1e-6)
    with TestClient(create_app(ml_model)) as client:
        served = client.post("/predict", json=records).json()["probabilities"]
    np.testing.assert_allclose(served, python, rtol=1e-6)
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = tmp_path / "out.csv"
    assert main(["predict", "--model", _run_dir(ml_model), "--input", str(source), "--output", str(out)]) == 0
    np.testing.assert_allclose(pd.read_csv(out)["probability"], python, rtol=1e-6)


def _run_dir(model: TrainedModel) -> str:
    path = Path(model.config.out)
    return str(path)


class LiveServer:
    """uvicorn in a thread, bound to a free 127.0.0.1 port (port 0)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def live(ml_model) -> Iterator[LiveServer]:
    with LiveServer(create_app(ml_model, max_batch=100, max_bytes=100_000)) as server:
        yield server


def test_lone_surrogate_is_422_and_the_connection_stays_usable(live):
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    headers = {"content-type": "application/json"}
    connection.request("POST", "/predict", body=b'[{"user_id": "\\ud800", "movie_id": 1}]', headers=headers)
    reply = connection.getresponse()
    detail = json.loads(reply.read())["detail"]
    assert reply.status == 422 and detail[0]["type"] == "json_invalid"
    connection.request("POST", "/predict", body=b'[{"user_id": 1, "movie_id": 1}]', headers=headers)
    reply = connection.getresponse()
    assert reply.status == 200 and len(json.loads(reply.read())["probabilities"]) == 1
    connection.request("GET", "/recommend?user=%ED%A0%80&k=2")  # a surrogate's UTF-8 bytes in a query
    reply = connection.getresponse()
    assert reply.status < 500
    reply.read()
    connection.request("GET", "/health")
    assert connection.getresponse().status == 200
    connection.close()


def test_chunked_body_is_refused_once_it_passes_the_limit(live):
    import httpx

    sent = 0

    def body() -> Iterator[bytes]:  # 50 MB if the server kept reading; it stops after 100 kB
        nonlocal sent
        yield b'[{"user_id": 1, "movie_id": 2, "pad": "'
        for _ in range(800):
            sent += 65536
            yield b"x" * 65536
        yield b'"}]'

    with httpx.Client(timeout=60) as client:
        try:
            reply = client.post(f"http://127.0.0.1:{live.port}/predict", content=body())
            assert reply.status_code == 413 and "over the limit of 100,000" in reply.json()["detail"]
        except httpx.HTTPError:  # the server may close the connection while the client still sends
            pass
        assert sent < 800 * 65536  # the client was stopped well before sending everything
        assert client.get(f"http://127.0.0.1:{live.port}/health").status_code == 200
        ok = client.post(f"http://127.0.0.1:{live.port}/predict", json=[{"user_id": 1, "movie_id": 2}])
        assert ok.status_code == 200

"""A numeric value accepted by the range check but so far outside the training values that the
model's float32 arithmetic overflows is refused everywhere alike, never a NaN probability."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

import deepfm
from deepfm.cli.main import main
from deepfm.errors import DataError
from deepfm.serving.app import create_app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> object:
    root = tmp_path_factory.mktemp("overflow")
    rng = np.random.default_rng(0)
    n = 800
    user = rng.integers(0, 20, n)
    frame = pd.DataFrame(
        {
            "click": (rng.random(n) < 0.3 + 0.4 * (user % 2)).astype(int),
            "user": [f"u{u}" for u in user],
            "price": np.round(rng.lognormal(1, 1, n), 3),
        }
    )
    frame.to_csv(root / "clicks.csv", index=False)
    fields = [{"name": "user"}, {"name": "price", "kind": "numeric", "transform": "standardize"}]
    spec = {"name": "clicks", "input": {"files": ["clicks.csv"]}, "label": "click", "fields": fields}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    argv = ["train", "--spec", str(root / "spec.yaml"), "--out", str(root / "run"), "--epochs", "1"]
    assert main([*argv, "--batch-size", "64", "--no-progress", "--threads", "1"]) == 0
    return root


RECORDS = [{"user": "u1", "price": 3.0}, {"user": "u2", "price": 1e30}]


def test_python_predict_and_evaluate_refuse_naming_record_and_field(model_dir):
    model = deepfm.load(model_dir / "run")
    assert np.isfinite(model.predict(RECORDS[:1])).all()
    with pytest.raises(DataError, match=r"record 1: 1e\+30 is too far outside the training values") as info:
        model.predict(RECORDS)
    assert info.value.field == "price"
    with pytest.raises(DataError, match="record 1") as info:
        model.evaluate(pd.DataFrame(RECORDS).assign(click=[0, 1]))
    assert info.value.field == "price"


def test_the_server_answers_422_naming_record_and_field(model_dir):
    from fastapi.testclient import TestClient

    with TestClient(create_app(deepfm.load(model_dir / "run"))) as client:
        reply = client.post("/predict", json=RECORDS)
        assert reply.status_code == 422, reply.text
        assert reply.json()["detail"][0]["loc"] == ["body", 1, "price"]
        assert client.post("/predict", json=RECORDS[:1]).status_code == 200


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_the_cli_exits_2_with_one_line(model_dir, tmp_path, capsys, command):
    path = tmp_path / "records.csv"
    pd.DataFrame(RECORDS).assign(click=[0, 1]).to_csv(path, index=False)
    argv = [command, "--model", str(model_dir / "run"), "--input", str(path)]
    if command == "predict":
        argv += ["--output", str(tmp_path / "scores.csv")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1 and "record 1" in err and "'price'" in err, err
    assert not (tmp_path / "scores.csv").exists()

"""``deepfm.fit`` on a DataFrame checks it like a spec and names the frame, row and column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import deepfm
from deepfm.errors import ConfigError, DataError
from deepfm.training.runfolder import RunFolder


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))


def frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 20, n)
    return pd.DataFrame(
        {"label": (rng.random(n) < 0.3 + 0.4 * (user % 2)).astype(int), "user": user, "price": rng.random(n)}
    )


def fit(data: pd.DataFrame, out, **options):
    options = {"epochs": 1, "batch_size": 64, "progress": False, "echo": lambda *_: None, **options}
    return deepfm.fit(data, out=out, **options)


@pytest.mark.parametrize("value", [2, 0.5, -1, 1e-9])
def test_a_label_column_by_name_must_be_0_1(tmp_path, value):
    data = frame().astype({"label": float})
    data.loc[7, "label"] = value
    with pytest.raises(DataError) as info:
        fit(data, tmp_path / "run")
    message = str(info.value)
    assert message.startswith("data, row 7, column 'label': label ") and "is not 0/1" in message, message
    assert ".parquet" not in message and "label='label > 0'" in message
    model = fit(data, tmp_path / "run", label="label > 0")  # the declared rule thresholds as asked
    assert model.facts.spec["label"]["op"] == ">"


def test_errors_name_the_frame_row_and_column_not_a_cached_file(tmp_path):
    data = frame()
    data["price"] = data["price"].astype(object)
    data.loc[5, "price"] = "abc"  # text in a numeric column
    with pytest.raises(DataError, match=r"^data, row 5, column 'price': 'abc' is not a number") as info:
        fit(data, tmp_path / "run", fields=["user", {"name": "price", "kind": "numeric"}])
    assert "parquet" not in str(info.value) and "on_bad_lines='skip'" in str(info.value)
    valid = frame(seed=1).set_index(pd.Index([f"r{i}" for i in range(400)]))
    valid.loc["r3", "label"] = 3
    with pytest.raises(DataError, match=r"^valid, row 3 \(index 'r3'\), column 'label': label 3"):
        fit(frame(), tmp_path / "run", valid=valid)


def test_a_mixed_type_column_is_read_by_the_token_rule(tmp_path):
    data = frame()
    data["user"] = data["user"].astype(object)
    data.loc[3, "user"] = "abc"  # ints and text in one column
    model = fit(data, tmp_path / "run")
    assert "abc" in model.feature_map.field("user").vocab and "7" in model.feature_map.field("user").vocab
    assert model.predict(data.iloc[:5]).shape == (5,)


def test_duplicate_column_names_are_refused(tmp_path):
    data = frame()
    data.columns = ["label", "user", "user"]
    with pytest.raises(ConfigError, match=r"duplicate column names \['user'\]"):
        fit(data, tmp_path / "run")


def test_fit_into_a_locked_folder_writes_nothing(tmp_path):
    out = tmp_path / "run"
    with RunFolder(out):  # another training holds the folder
        with pytest.raises(ConfigError, match="is in use"):
            fit(frame(), out)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    model = fit(frame(), out)  # free again: spec.yaml is written with the run's outputs
    assert (out / "spec.yaml").exists() and model.config.spec.endswith("spec.yaml")

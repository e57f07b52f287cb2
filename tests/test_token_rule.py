"""One value-to-token rule for every dtype: training (the prepare stage reads Parquet through
Polars), ``predict`` and ``evaluate`` (pandas), the server (JSON) and hashed fields agree."""

from __future__ import annotations

import datetime
import decimal
import json

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deepfm
from deepfm.data import transforms
from deepfm.data.prepared import load_prepared
from deepfm.data.records import prepare_records, records_frame
from deepfm.data.transforms import token_text
from deepfm.serving.encoder import RecordEncoder


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))


def every_dtype(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """One column per dtype a user's frame may hold, each with missing values where it can."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 4, n)
    null = rng.random(n) < 0.1
    day = (
        pd.Timestamp("2024-03-01 08:30:00")
        + pd.to_timedelta(k, unit="D")
        + pd.to_timedelta(k * 250, unit="ms")
    )
    floats = np.array([0.5, 2.0, 1e-05, 2.5e-7])[k]
    frame = pd.DataFrame(
        {
            "flag": k % 2 == 0,
            "flag_na": pd.array(np.where(null, None, k % 2 == 0), dtype="boolean"),
            "flag_arrow": pd.array(np.where(null, None, k % 2 == 0), dtype="bool[pyarrow]"),
            "when": pd.Series(day).mask(null),
            "when_tz": pd.Series(day).dt.tz_localize("Europe/Paris").mask(null),
            "when_arrow": pd.Series(day, dtype=pd.ArrowDtype(pa.timestamp("us"))).mask(null),
            "date_arrow": pd.Series(day.date, dtype=pd.ArrowDtype(pa.date32())).mask(null),
            "span": pd.Series(pd.to_timedelta(k * 90, unit="s")).mask(null),
            "count": k.astype(np.int64),
            "count_na": pd.array(np.where(null, None, k), dtype="Int64"),
            "count_arrow": pd.array(np.where(null, None, k), dtype="int64[pyarrow]"),
            "small": k.astype(np.uint8),
            "whole": np.where(null, np.nan, k.astype(float)),
            "frac": np.where(null, np.nan, floats),
            "frac32": floats.astype(np.float32) + np.float32(0.1),
            "frac_arrow": pd.array(np.where(null, None, floats), dtype="double[pyarrow]"),
            "price": pd.Series(
                [decimal.Decimal("1.50"), decimal.Decimal("2"), None, decimal.Decimal("0.25")]
            )[k]
            .reset_index(drop=True)
            .astype(pd.ArrowDtype(pa.decimal128(6, 2))),
            "colour": pd.Categorical(np.where(null, None, np.array(["red", "green", "blue", "red"])[k])),
            "size": pd.Categorical(np.array([1, 2, 3, 1])[k]),
            "name": pd.Series(np.array(["a", "b", "c", "d"], dtype=object)[k]).mask(null),
            "name_str": pd.array(np.where(null, None, np.array(["a", "b", "c", "d"])[k]), dtype="string"),
            "name_arrow": pd.array(
                np.where(null, None, np.array(["a", "b", "c", "d"])[k]), dtype="string[pyarrow]"
            ),
        }
    )
    frame["label"] = (rng.random(n) < np.where(k % 2 == 0, 0.8, 0.2)).astype(int)
    return frame


def encoded_by_predict(model, frame: pd.DataFrame) -> np.ndarray:
    fmap = model.feature_map
    return fmap.encode(prepare_records(records_frame(frame, fmap), fmap, model.tables))["ids"]


def test_fit_then_predict_on_the_same_frame_encode_every_dtype_alike(tmp_path):
    frame = every_dtype()
    model = deepfm.fit(
        frame,
        valid=frame,
        out=tmp_path / "run",
        epochs=1,
        batch_size=64,
        echo=lambda *_: None,
        progress=False,
    )
    trained = load_prepared(model.facts.cache).train  # the training rows, in the frame's order
    ids = encoded_by_predict(model, frame)
    for j, f in enumerate(model.feature_map.categorical):
        got, want = ids[:, j], np.asarray(trained.ids[:, j])
        assert (got == want).all(), (f.name, f.vocab, frame[f.name].head(8).tolist())
        assert (got != f.offset).all(), f.name  # every value seen in training has its own row
    train_probs = model.predict_split(trained)
    assert np.allclose(model.predict(frame), train_probs, atol=1e-6)
    # records of Python scalars (a float32 column widens to float64 in to_dict: another value)
    records = pd.DataFrame.from_records(frame.drop(columns="frac32").to_dict("records"))
    records_ids = encoded_by_predict(model, records.assign(frac32=frame["frac32"]))
    assert (records_ids == np.asarray(trained.ids)).all()


def test_the_server_and_hashed_fields_use_the_same_rule(tmp_path):
    frame = every_dtype()[["flag", "count", "whole", "frac", "name", "label"]]
    frame["uid"] = frame["flag"]
    fields = ["flag", "count", "whole", "frac", "name", {"name": "uid", "hash_buckets": 1000}]
    model = deepfm.fit(
        frame,
        fields=fields,
        out=tmp_path / "run",
        epochs=1,
        batch_size=64,
        echo=lambda *_: None,
        progress=False,
    )
    records = json.loads(frame.drop(columns="label").to_json(orient="records"))  # JSON values
    served = RecordEncoder(model.feature_map, model.tables).encode(records)["ids"]
    assert (served == encoded_by_predict(model, pd.DataFrame(records))).all()
    assert (served == encoded_by_predict(model, frame)).all()
    hashed = model.feature_map.field("uid")
    assert served[0, -1] == hashed.encode(pd.Series(["true" if frame["uid"][0] else "false"]))[0]


def test_export_writes_the_rule_beside_the_graph(tmp_path):
    frame = every_dtype()[["flag", "name", "label"]]
    model = deepfm.fit(
        frame, out=tmp_path / "run", epochs=1, batch_size=64, echo=lambda *_: None, progress=False
    )
    from deepfm.serving.export import export_model

    out = export_model(model, "torchscript", tmp_path / "model.ts")
    doc = json.loads((out.parent / "feature_map.json").read_text())
    assert doc["token_rule"] == transforms.TOKEN_RULE


@pytest.mark.parametrize(
    "value, text",
    [
        (True, "true"),
        (np.bool_(False), "false"),
        (None, ""),
        (float("nan"), ""),
        (pd.NA, ""),
        (pd.NaT, ""),
        (6, "6"),
        (6.0, "6"),
        (np.float32(0.1), "0.1"),
        (2.5e-7, "2.5e-7"),
        (1e-05, "1e-5"),
        (decimal.Decimal("1.50"), "1.5"),
        (datetime.date(2024, 3, 1), "2024-03-01"),
        (datetime.datetime(2024, 3, 1, 8, 30), "2024-03-01T08:30:00"),
        (pd.Timestamp("2024-03-01 08:30:00.250"), "2024-03-01T08:30:00.25"),
        (pd.Timestamp("2024-03-01 09:30", tz="Europe/Paris"), "2024-03-01T08:30:00+00:00"),
        (np.datetime64("2024-03-01T08:30:00.000000001"), "2024-03-01T08:30:00.000000001"),
        (datetime.time(8, 30, 0, 500000), "08:30:00.5"),
        (datetime.timedelta(seconds=90), "90"),
        ("x", "x"),
    ],
)
def test_token_text_examples(value, text):
    assert token_text(value) == text
    assert transforms.series_text(pd.Series([value], dtype=object))[0] == text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=20), st.booleans())
def test_polars_and_pandas_give_every_float_the_same_text(values, single):
    dtype = np.float32 if single else np.float64
    with np.errstate(over="ignore"):
        array = np.asarray(values, dtype=np.float64).astype(dtype)
    polars, pandas = transforms.polars_text(pl.Series("x", array)), transforms.series_text(pd.Series(array))
    assert polars.to_list() == pandas.tolist()

"""Fuzzing (hypothesis) of every reader: a correct parse or a DeepFMError, never a crash or hang.

Readers: MovieLens ``ratings.dat`` read by the prepare stage (its ``::`` input and rating
checks, against an independent reference parser), the whole ``prepare`` stage on fuzzed ratings,
``--config`` YAML files, config values, ``model.pt`` and ``state.pt`` files, and raw records
given to ``TrainedModel.predict``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fuzzing import (
    COUNTS,
    FUZZ_EXAMPLES,
    delimited_files,
    fuzz_settings,
    ints,
    odd_values,
    parse_or_error,
    write_bytes,
)
from hypothesis import given
from hypothesis import strategies as st

from deepfm.artifact.trained import load_model
from deepfm.config import TrainConfig, load_yaml
from deepfm.data.catalog import dataset_spec
from deepfm.data.catalog.movielens import RATINGS
from deepfm.data.options import PrepareOptions
from deepfm.data.prepare import prepare
from deepfm.data.prepare.rows import Rows
from deepfm.data.readers import BadLines
from deepfm.errors import CheckpointError, ConfigError, DataError
from deepfm.training.early_stopping import EarlyStopping
from deepfm.training.state import TrainingState, read_state, resume_config

INT64_MAX = 2**63 - 1


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    """With DEEPFM_FUZZ_REPORT=FILE, write how many examples each reader was called with."""
    yield
    target = os.environ.get("DEEPFM_FUZZ_REPORT")
    if target:
        Path(target).write_text(json.dumps(dict(COUNTS), indent=2) + "\n")


rating_files = delimited_files(
    fields=[ints(0, 7000), ints(0, 4000), ints(1, 5), ints(9 * 10**8, 10**9 + 10**7)], sep=b"::"
)
F32_MAX = float(np.finfo(np.float32).max)
UNIT = b"\x1f"  # the reader reads "::" as this byte (Arrow's CSV reader takes one-byte separators)


def reference_ratings(data: bytes) -> tuple[list[tuple[str, str, float, float]], set[int]] | None:
    """The rows of a file and the numbers of its bad lines, or None (not UTF-8, or no lines).

    A line is four ``::``-separated values (an empty line is one empty value); the rating a number
    in 1..5, the timestamp a number (or empty: missing) within float32's range; ids are text. A
    leading byte-order mark is dropped."""
    data = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    try:
        data.decode()
    except UnicodeDecodeError:
        return None
    lines = re.split(rb"\r\n|\r|\n", data)  # any line ending, a bare CR too
    if lines and lines[-1] == b"":
        lines = lines[:-1]  # the newline that ends the last line
    rows, bad = [], set()
    for number, line in enumerate(lines, start=1):
        parts = line.replace(b"::", UNIT).split(UNIT)
        rating, stamp = (_number(parts[2]), _number(parts[3])) if len(parts) == 4 else (None, None)
        if (
            rating is None or not 1 <= rating <= 5 or stamp is None or stamp == stamp and abs(stamp) > F32_MAX
        ):  # nan is not in 1..5 either
            bad.add(number)
        else:
            rows.append((parts[0].decode(), parts[1].decode(), rating, stamp))
    return (rows, bad) if lines else None


def _number(text: bytes) -> float | None:
    """A number as the reader parses one (an empty value is missing: NaN); None if not a number."""
    text = text.strip()
    if not text:
        return float("nan")
    if not re.fullmatch(rb"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)", text, re.I):
        return None
    return float(text)


def read_ratings(path: Path) -> pd.DataFrame:
    """``ratings.dat`` as the prepare stage reads it: the MovieLens spec's input and checks."""
    rows = Rows.of(dataset_spec(PrepareOptions(data_dir=str(path.parent))), 0, BadLines("error"))
    rows.numeric.add("timestamp")  # (a time field reads it as a number; ids-only does not read it)
    frames = [c.frame for c, _ in rows.stream(BadLines("error"), RATINGS, join=False)]
    return pd.concat([f.to_pandas() for f in frames], ignore_index=True) if frames else pd.DataFrame()


@fuzz_settings(FUZZ_EXAMPLES * 4)
@given(data=rating_files)
def test_ratings_reader_parses_correctly_or_names_a_bad_line(tmp_path, data):
    path = write_bytes(tmp_path, data, "ratings.dat")
    frame, error = parse_or_error(read_ratings, path, name="read_ratings")
    expected = reference_ratings(data)
    if expected is not None and not expected[1]:
        assert error is None, f"valid file refused: {error}"
        got = frame[RATINGS].to_numpy().tolist() if len(frame) else []
        assert len(got) == len(expected[0])
        for row, want in zip(got, expected[0]):
            assert row[:2] == list(want[:2])
            np.testing.assert_array_equal(np.array(row[2:], dtype=float), np.array(want[2:], dtype=float))
    else:
        assert frame is None, f"invalid file accepted (reference: bad lines {expected and expected[1]})"
        assert isinstance(error, DataError) and error.path == str(path), error
        if expected is not None and error.line is not None:  # text: a bad line is named
            assert error.line in expected[1], f"{error} (reference: bad lines {sorted(expected[1])})"


@fuzz_settings(max(FUZZ_EXAMPLES // 6, 20))
@given(data=rating_files, seed=st.integers(0, 3))
def test_prepare_pipeline_on_fuzzed_ratings_never_crashes(tmp_path, data, seed):
    write_bytes(tmp_path, data, "ratings.dat")
    options = PrepareOptions(data_dir=str(tmp_path), seed=seed)
    prepared, error = parse_or_error(prepare, options, progress=False, name="prepare")
    if error is None:
        rows = sum(len(s) for s in (prepared.train, prepared.valid, prepared.test))
        assert rows == len(read_ratings(tmp_path / "ratings.dat")) >= 10
        for split in (prepared.train, prepared.valid, prepared.test):  # (a part may be empty)
            assert split.ids.dtype == torch.int64 and (len(split) == 0 or int(split.ids.min()) >= 1)
            assert int(split.ids.max()) < prepared.feature_map.num_rows


yaml_texts = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.dictionaries(
        st.sampled_from(
            ["epochs", "lr", "mlp", "model", "embed-dim", "dropout", "seed", "nope", "batch_size"]
        ),
        st.one_of(
            st.integers(-5, 10**20),
            st.floats(),
            st.text(max_size=5),
            st.booleans(),
            st.none(),
            st.lists(st.integers(-3, 40), max_size=3),
        ),
        max_size=5,
    ).map(lambda d: json.dumps(d).encode()),  # JSON is YAML
)


@fuzz_settings()
@given(data=yaml_texts)
def test_config_file_and_values_give_a_config_or_a_config_error(tmp_path, data):
    path = write_bytes(tmp_path, data, "exp.yaml")
    values, error = parse_or_error(load_yaml, path, name="load_yaml")
    if error is not None:
        assert isinstance(error, ConfigError) and str(path) in str(error)
        return
    assert isinstance(values, dict)
    config, error = parse_or_error(lambda: TrainConfig.from_dict(values).validate(), name="TrainConfig")
    if error is None:
        assert config.epochs >= 1 and 0 <= config.dropout < 1 and config.lr > 0
    else:
        assert isinstance(error, ConfigError)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    """A small trained run folder (model.pt and state.pt)."""
    from conftest import write_movielens

    from deepfm.cli.main import main

    root = tmp_path_factory.mktemp("trained")
    write_movielens(root / "ml" / "ratings.dat", n=3000)
    args = ["train", "--data-dir", str(root / "ml"), "--out", str(root / "run"), "--epochs", "1"]
    assert main([*args, "--no-progress", "--batch-size", "256"]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def trained_model(trained):
    return load_model(trained)


def _damage(draw, good: bytes) -> bytes:
    how = draw(st.sampled_from(["cut", "flip", "random", "empty"]))
    if how == "cut":
        return good[: draw(st.integers(0, len(good) - 1))]
    if how == "flip":
        data = bytearray(good)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "random":
        return draw(st.binary(max_size=300))
    return b""


def _resume(folder):
    """Everything ``--resume`` reads: the stored config, then the full state into a fresh run."""
    config = resume_config(folder, {})
    model = load_model(folder)  # the model.pt next to it (intact here)
    module = model.module
    optimizer = torch.optim.Adam(module.parameters())
    state = TrainingState(folder, config, module, optimizer, torch.Generator(), EarlyStopping(3))
    return state.restore()


@fuzz_settings(max(FUZZ_EXAMPLES // 3, 20))
@given(data=st.data())
def test_damaged_model_and_state_files_give_a_checkpoint_error(trained, tmp_path, data):
    (tmp_path / "model.pt").write_bytes((trained / "model.pt").read_bytes())
    for name, reader in (("model.pt", load_model), ("state.pt", read_state), ("state.pt", _resume)):
        damaged = _damage(data.draw, (trained / name).read_bytes())
        path = write_bytes(tmp_path, damaged, name)
        result, error = parse_or_error(reader, path if reader is not _resume else tmp_path, name=name)
        if error is None:  # a flipped byte in padding or an unused field can leave the file valid
            assert result is not None
        else:
            assert isinstance(error, (CheckpointError, ConfigError)) and str(path) in str(error), error
        (tmp_path / name).write_bytes((trained / name).read_bytes())


def _payload_mutations(trained, tmp_path, data):
    payload = torch.load(trained / "model.pt", weights_only=True)
    key = data.draw(st.sampled_from(sorted(payload)))
    what = data.draw(st.sampled_from(["drop", "none", "int", "text", "list"]))
    if what == "drop":
        del payload[key]
    else:
        payload[key] = {"none": None, "int": 7, "text": "x", "list": [1, "a"]}[what]
    path = tmp_path / "mutated.pt"
    torch.save(payload, path)
    return path


@fuzz_settings(max(FUZZ_EXAMPLES // 6, 20))
@given(data=st.data())
def test_checkpoint_with_missing_or_wrong_keys_gives_a_checkpoint_error(trained, tmp_path, data):
    path = _payload_mutations(trained, tmp_path, data)
    model, error = parse_or_error(load_model, path, name="load_model (payload)")
    assert error is None or isinstance(error, CheckpointError)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
records = st.one_of(
    st.lists(
        st.dictionaries(st.sampled_from(["user_id", "movie_id", "rating", "extra"]), json_values, max_size=4),
        max_size=6,
    ),
    json_values,  # not a list of objects at all
    st.lists(json_values, max_size=3),
)


@fuzz_settings()
@given(rows=records)
def test_predict_on_fuzzed_json_records_gives_probabilities_or_a_data_error(trained_model, rows):
    model = trained_model
    probs, error = parse_or_error(model.predict, rows, name="TrainedModel.predict")
    if error is None:
        assert probs.shape == (len(rows),) and np.all((probs > 0) & (probs < 1))
    else:
        assert isinstance(error, DataError)


def test_fuzz_value_strategy_covers_huge_and_non_utf8_values():
    """The strategies do generate the cases the issue lists (guards the fuzz tests themselves)."""
    from hypothesis import find

    find(odd_values(), lambda v: v.isdigit() and int(v) > INT64_MAX)
    find(odd_values(), lambda v: not _is_utf8(v))
    find(rating_files, lambda d: d == b"")
    find(rating_files, lambda d: (r := reference_ratings(d)) is not None and not r[1] and len(r[0]) > 3)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_read_ratings_matches_pandas_on_a_clean_file(tiny_ml):
    frame = read_ratings(tiny_ml / "ratings.dat")
    again = pd.read_csv(tiny_ml / "ratings.dat", sep="::", header=None, engine="python", dtype=str)
    np.testing.assert_array_equal(frame[RATINGS[:2]].to_numpy(), again[[0, 1]].to_numpy())
    np.testing.assert_array_equal(frame[RATINGS[2:]].to_numpy(), again[[2, 3]].astype(float).to_numpy())

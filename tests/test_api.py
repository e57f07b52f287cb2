"""The Python API: deepfm.fit on frames, tables and specs; the README example, run as written."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import SHARED

import deepfm
from deepfm.cli.main import main
from deepfm.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_blocks() -> dict[str, str]:
    """The python, yaml and bash code blocks of the README's '### Python' section."""
    text = README.read_text()
    section = text.split("\n### Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S):
        blocks.setdefault(lang, body)
    return blocks


def write_u_data(folder: Path, n_users: int = 200, n_movies: int = 150, n: int = 12000) -> None:
    """A MovieLens-100K ``u.data`` (tab-separated) with a planted user x movie signal."""
    rng = np.random.default_rng(1)
    ut, mt = rng.normal(0, 1, (n_users, 4)), rng.normal(0, 1, (n_movies, 4))
    users, movies = rng.integers(0, n_users, n), rng.integers(0, n_movies, n)
    like = rng.random(n) < 1 / (1 + np.exp(-(ut[users] * mt[movies]).sum(1)))
    rating = np.where(like, rng.integers(4, 6, n), rng.integers(1, 4, n))
    ts = 880000000 + rng.integers(0, 10**6, n)
    folder.mkdir(parents=True)
    rows = [f"{u + 1}\t{m + 1}\t{r}\t{t}" for u, m, r, t in zip(users, movies, rating, ts)]
    (folder / "u.data").write_text("\n".join(rows) + "\n")


@pytest.fixture
def in_ml100k(tmp_path, monkeypatch):
    """A working folder holding ml-100k/u.data (the real one when present) and its own cache."""
    real = SHARED / "ml-100k" / "u.data"
    if real.exists():
        (tmp_path / "ml-100k").mkdir()
        os.symlink(real, tmp_path / "ml-100k" / "u.data")
    else:
        write_u_data(tmp_path / "ml-100k")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.slow
def test_readme_python_example_runs_and_equals_the_cli(in_ml100k, capsys):
    blocks = readme_blocks()
    code = blocks["python"].replace("epochs=5", "epochs=5, threads=1, progress=False")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    printed = capsys.readouterr().out
    assert re.search(r"test AUC 0\.\d{4}  logloss 0\.\d{4}  gAUC 0\.\d{4}", printed)
    model = scope["model"]
    assert isinstance(model, deepfm.artifact.trained.TrainedModel)
    assert model.evaluate(scope["ratings"].tail(1000))["auc"] > 0.6
    assert len(scope["model"].recommend(42, k=5).items) == 5
    same = scope["same"]
    records = [{"user_id": 42, "movie_id": 1}, {"user_id": 7, "movie_id": 50}]
    np.testing.assert_array_equal(model.predict(records), same.predict(records))

    (in_ml100k / "ml100k.yaml").write_text(blocks["yaml"])
    command = next(line for line in blocks["bash"].splitlines() if line.startswith("deepfm train"))
    args = shlex.split(command)[1:] + ["--threads", "1", "--no-progress"]
    assert main(args) == 0
    py = json.loads((in_ml100k / "runs/py-ml100k/metrics.json").read_text())
    cli = json.loads((in_ml100k / "runs/cli-ml100k/metrics.json").read_text())
    for key in ("test_auc", "test_logloss", "test_gauc", "test_calibration", "best_epoch"):
        assert py[key] == cli[key], key
    assert py["data"]["rows"] == cli["data"]["rows"]
    # metadata names the data, not the built-in default; the label column was "rating"
    assert py["data"]["dataset"] == py["config"]["dataset"] == "ml-100k"
    assert py["config"]["spec"].endswith("spec.yaml") and (in_ml100k / "runs/py-ml100k/spec.yaml").exists()


def frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A click log with a planted signal in (u, i) and a numeric column; label column 'clicked'."""
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, 40, n), rng.integers(0, 30, n)
    price = rng.normal(0, 1, n)
    logit = np.sin(u) * np.cos(i) * 3 + price
    return pd.DataFrame(
        {
            "u": u.astype(str),
            "i": i,
            "price": price,
            "clicked": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int),
        }
    )


def test_fit_takes_an_arrow_table_with_given_valid_and_test_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))
    train, valid, test = frame(3000, 0), frame(600, 1), frame(600, 2)
    model = deepfm.fit(
        pa.Table.from_pandas(train),
        label="clicked",
        fields=["u", "i", {"name": "price", "kind": "numeric"}],
        valid=valid,
        test=test,
        out=tmp_path / "run",
        epochs=8,
        lr=0.01,
        batch_size=256,
        model="fm",
        threads=1,
        no_progress=True,  # deepfm train --no-progress
        echo=lambda *a: None,
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["rows"] == {"train": 3000, "valid": 600, "test": 600}
    assert metrics["config"]["dataset"] == "dataframe" and metrics["test_auc"] > 0.7
    # evaluate on the test frame reproduces the run's test metrics
    scored = model.evaluate(test)
    assert scored["auc"] == pytest.approx(metrics["test_auc"], abs=1e-6)
    assert scored["logloss"] == pytest.approx(metrics["test_logloss"], abs=1e-6)
    assert set(model.predict(test.head(3)).shape) == {3}


def test_fit_refuses_bad_declarations(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"fields\[0\].kind"):
        deepfm.fit(frame(), label="clicked", fields=[{"name": "u", "kind": "word"}], out=tmp_path / "r")
    with pytest.raises(ConfigError, match="leave_last needs group"):
        deepfm.fit(frame(), label="clicked", split={"method": "leave_last"}, out=tmp_path / "r")
    with pytest.raises(ConfigError, match="unknown config key"):
        deepfm.fit(frame(), label="clicked", out=tmp_path / "r", epochz=3)


def test_fit_on_a_spec_mapping_with_leave_last_split_reports_ranking(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    n = 6000
    users, items = rng.integers(0, 100, n), rng.integers(0, 60, n)
    data = pd.DataFrame(
        {
            "user": users,
            "item": items,
            "ts": rng.integers(0, 10**6, n),
            "click": ((users % 3) == (items % 3)).astype(int),
        }
    )
    data.to_csv(tmp_path / "log.csv", index=False)
    spec = {
        "name": "log",
        "input": {"files": [str(tmp_path / "log.csv")], "format": "csv"},
        "label": "click",
        "fields": ["user", "item"],
        "split": {"method": "leave_last", "group": "user", "time": "ts"},
    }
    model = deepfm.fit(spec, out=tmp_path / "run", epochs=3, threads=1, progress=False, echo=lambda *a: None)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["rows"]["test"] == 100  # one latest row per user
    test_ts = data.sort_values("ts").groupby("user").tail(1)
    assert metrics["data"]["positive_rate_train"] == pytest.approx(
        data.drop(data.sort_values("ts").groupby("user").tail(2).index)["click"].mean(), abs=1e-6
    )
    assert metrics["evaluation"]["ranking"]["item"] == "item"
    # 59 candidates, a third of them clicks too: chance is 10/60, a perfect model about 10/20
    assert metrics["test_hitrate@10"] > 0.3
    assert len(test_ts) == 100 and model.recommend(5, k=3).items.shape[0] == 3


def test_every_deepfm_train_flag_is_a_fit_keyword():
    """Read from the command line's parser: each ``--flag`` of ``deepfm train`` as a keyword of
    ``fit`` lands on the config key the flag sets (``--config`` is fit's own argument,
    ``--debug`` the command line's tracebacks)."""
    import dataclasses

    from deepfm.api import config_options
    from deepfm.cli.main import build_parser
    from deepfm.config import TrainConfig

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    checked = 0
    for action in commands["train"]._actions:
        for flag in (o for o in action.option_strings if o.startswith("--")):
            keyword = flag[2:].replace("-", "_")
            if keyword in ("help", "config", "debug"):
                continue
            value = action.const if action.nargs == 0 else action.default
            translated = config_options({keyword: True if action.nargs == 0 else value})
            assert list(translated) == [action.dest] and action.dest in known, flag
            if action.nargs == 0:
                assert translated[action.dest] == action.const, flag
            checked += 1
    assert checked > 30
    assert config_options({"no_progress": True}) == {"progress": False}
    with pytest.raises(ConfigError, match="not both"):
        config_options({"no_progress": True, "progress": True})

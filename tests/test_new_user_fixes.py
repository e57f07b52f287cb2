"""What a new user tripped on (issue 14): help texts, options, presets, datasets --show, all+time
records with a raw timestamp, recommend titles, the learning curve."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_side_features import write_side_movielens

import deepfm
from deepfm import config as config_module
from deepfm.cli.main import build_parser, main
from deepfm.config import TrainConfig, load_yaml, preset_names
from deepfm.data.records import raw_columns
from deepfm.data.spec import spec_from_dict
from deepfm.errors import ConfigError


def sub_parsers() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return {"": parser, **action.choices}


def test_help_texts_name_only_commands_and_models_that_exist():
    from deepfm.cli.train import MODEL_NAMES
    from deepfm.models import MODELS

    commands = sub_parsers()
    for name, parser in commands.items():
        for mentioned in re.findall(r"'deepfm ([a-z]\w*)", parser.format_help()):
            assert mentioned in commands, f"'deepfm {name} --help' names 'deepfm {mentioned}'"
    assert ", ".join(sorted(MODELS)) == MODEL_NAMES
    assert MODEL_NAMES in " ".join(commands["train"].format_help().split())


def test_every_train_config_field_is_a_train_option():
    dests = {a.dest for a in sub_parsers()["train"]._actions if a.option_strings}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "extra":  # model options: YAML only
            continue
        assert f.name in dests, f"TrainConfig.{f.name} has no 'deepfm train' option"
    # each such option takes its type and allowed values from the field, in every command
    from deepfm.config import CHOICES

    hints = typing.get_type_hints(TrainConfig)
    for name, parser in sub_parsers().items():
        for action in parser._actions:
            if action.dest not in hints or not action.option_strings or action.dest == "extra":
                continue
            where = f"deepfm {name} {action.option_strings[0]}"
            assert action.choices == CHOICES.get(action.dest), where
            hint = hints[action.dest]
            kinds = set(typing.get_args(hint) or (hint,))  # int, or int | None
            if typing.get_origin(hint) is not tuple and kinds & {int, float}:
                assert action.type in kinds, where
    args = build_parser().parse_args(["train", "--eval-batch-size", "128"])
    from deepfm.cli.train import config_from_args

    assert config_from_args(args).eval_batch_size == 128


def test_debug_is_in_the_help_of_every_command(capsys):
    for name, parser in sub_parsers().items():
        assert "--debug" in parser.format_help(), name
    assert main(["datasets", "--debug"]) == 0  # accepted after the command too


def test_resume_error_names_flags_that_exist(tiny_ml, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data-dir", str(tiny_ml), "--out", str(out), "--no-progress", "--threads", "1"]
    assert main(base + ["--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(base + ["--resume", "--lr", "0.5"]) == 2
    message = capsys.readouterr().err
    options = {s for a in sub_parsers()["train"]._actions for s in a.option_strings}
    named = re.findall(r"--[a-z][a-z-]+", message)
    assert named and all(flag in options for flag in named), named
    assert "--no-progress" in message


def test_presets_ship_with_the_package_and_load_by_name(tmp_path, monkeypatch):
    folder = Path(deepfm.__file__).parent / "presets"
    assert {"movielens-1m-all", "movielens-100k-all", "reference"} <= set(preset_names())
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"presets/*.yaml"' in pyproject  # installed as package data
    monkeypatch.chdir(tmp_path)  # outside the repository
    assert load_yaml("movielens-1m-all") == load_yaml(folder / "movielens-1m-all.yaml")
    assert load_yaml("configs/movielens-1m-all.yaml")["mlp"] == [128, 64]  # the old paths still work
    with pytest.raises(Exception, match="presets: .*movielens-1m-all"):
        load_yaml("no-such-preset")
    # any NAME.yaml dropped into the presets folder is loadable by NAME
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "tiny.yaml").write_text("epochs: 2\n")
    monkeypatch.setattr(config_module, "PRESETS", tmp_path / "p")
    assert load_yaml("tiny") == {"epochs": 2}
    args = build_parser().parse_args(["train", "--config", "tiny"])
    from deepfm.cli.train import config_from_args

    assert config_from_args(args).epochs == 2


@pytest.mark.parametrize("name", ["movielens-1m", "movielens-100k", "criteo"])
def test_datasets_show_prints_a_spec_for_every_builtin(name, capsys):
    assert main(["datasets", "--show", name]) == 0
    spec = spec_from_dict(yaml.safe_load(capsys.readouterr().out), source=name)
    assert spec.name == name


@pytest.fixture(scope="module")
def side_data(tmp_path_factory) -> Path:
    return write_side_movielens(tmp_path_factory.mktemp("side") / "ml", 200, 120, 4000)


def train_side(folder: Path, out: Path, features: str) -> deepfm.artifact.trained.TrainedModel:
    args = ["train", "--data-dir", str(folder), "--out", str(out), "--features", features, "--epochs", "1"]
    assert main(args + ["--no-progress", "--threads", "1", "--batch-size", "256"]) == 0
    return deepfm.load(out)


def test_all_time_model_scores_records_with_a_raw_timestamp(side_data, tmp_path):
    model = train_side(side_data, tmp_path / "run", "all+time")
    assert [c.name for c in raw_columns(model.feature_map, model.tables)] == [
        "user_id",
        "movie_id",
        "timestamp",
    ]
    noon_thursday = 12 * 3600  # 1970-01-01 12:00 UTC
    probs = model.predict([{"user_id": 1, "movie_id": 2, "timestamp": noon_thursday}])
    assert probs.shape == (1,) and 0 < probs[0] < 1
    record = {"user_id": [1], "movie_id": [2], "timestamp": [noon_thursday]}
    side = {
        "gender": "F",
        "age": "1",
        "occupation": "0",
        "zip": "10001",
        "genres": "Drama",
        "title": "X (1990)",
    }
    encoded = model.feature_map.encode(pd.DataFrame(record).assign(**side))
    names = [f.name for f in model.feature_map.categorical]
    hour, weekday = model.feature_map.field("hour"), model.feature_map.field("weekday")
    assert encoded["ids"][0, names.index("hour")] == hour.offset + 1 + hour.vocab.index(12)
    assert encoded["ids"][0, names.index("weekday")] == weekday.offset + 1 + weekday.vocab.index(3)
    result = model.evaluate(side_data / "ratings.dat")  # the ratings file has the timestamp column
    assert result["rows"] == 4000 and np.isfinite(result["auc"])
    # the HTTP server takes the same records (its request schema comes from the raw columns)
    from fastapi.testclient import TestClient

    from deepfm.serving.app import create_app

    with TestClient(create_app(model)) as client:
        response = client.post("/predict", json=[{"user_id": 1, "movie_id": 2, "timestamp": noon_thursday}])
    assert response.status_code == 200, response.text
    assert response.json()["probabilities"][0] == pytest.approx(float(probs[0]), abs=1e-6)


@pytest.mark.parametrize("features", ["ids", "all"])
def test_recommend_prints_titles_for_ids_and_all_models(side_data, tmp_path, features, capsys):
    train_side(side_data, tmp_path / "run", features)
    capsys.readouterr()
    assert main(["recommend", "--model", str(tmp_path / "run"), "--user", "3", "--k", "4"]) == 0
    out = capsys.readouterr().out
    assert "title" in out.splitlines()[1] and out.count("Caf\xe9 ") == 4


def test_learning_curve_has_valid_loss_integer_epochs_and_the_best_epoch():
    from deepfm.evaluation.plots import learning_curve_figure

    epochs = [
        {
            "epoch": e,
            "train_loss": 0.7 - 0.01 * e,
            "valid_logloss": 0.6 + 0.001 * e,
            "valid_auc": 0.7 + 0.01 * e,
        }
        for e in (1, 2, 3)
    ]
    fig = learning_curve_figure(epochs, "fm on my-clicks (my.yaml)", best_epoch=2)
    ax_loss, ax_auc = fig.axes
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert {"train loss", "valid loss", "valid AUC", "best epoch (2)"} <= set(labels)
    fig.canvas.draw()
    ticks = [t for t in ax_loss.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert ax_loss.get_title() == "fm on my-clicks (my.yaml)"


def test_learning_curve_title_names_the_data_not_the_builtin_default():
    from deepfm.training.run import curve_title

    spec_run = TrainConfig(spec="data/my.yaml", model="fm")
    assert curve_title(spec_run, "my-clicks") == "fm on my-clicks (my.yaml)"
    assert "movielens-1m" not in curve_title(spec_run, "my-clicks")
    half = TrainConfig(data_dir="../shared/data/ml-1m-half")
    assert curve_title(half, "movielens-1m") == "deepfm on movielens-1m (ml-1m-half)"


def test_named_values_have_one_source_for_validation_and_the_command_line():
    from deepfm.config import CHOICES

    actions = {a.dest: a for a in sub_parsers()["train"]._actions}
    for name, allowed in CHOICES.items():
        assert tuple(actions[name].choices) == allowed, name
        with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} must be one of"):
            TrainConfig(**{name: "no-such-value"}).validate()

"""Retraining in a reused run folder: nothing of the previous run is lost to a failed run, and a
warm start carries weights by field name, whatever the order of the fields."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_retraining import day_spec, write_days

from deepfm.artifact.checkpoint import model_from_config
from deepfm.artifact.trained import TrainedModel, load_model
from deepfm.cli.main import main
from deepfm.config import TrainConfig
from deepfm.training.run import load_data, train
from deepfm.training.warmstart import Carried, load_base, warm_start

RUN_FILES = ("model.pt", "metrics.json", "state.pt", "history.csv")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def train_args(out: Path, *args: str) -> list[str]:
    common = ["--out", str(out), "--epochs", "1", "--batch-size", "256", "--no-progress", "--threads", "1"]
    return ["train", *common, *args]


def digests(out: Path) -> dict[str, str]:
    return {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in RUN_FILES if (out / n).exists()}


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> Path:
    return write_days(tmp_path_factory.mktemp("days"), n=1500)


def broken_day2(days: Path, how: str) -> Path:
    spec = yaml.safe_load(day_spec(days, 2).read_text())
    if how == "bad line":
        lines = (days / "day2.csv").read_text().splitlines()
        lines[40] = "2,u1,i1"  # label 2: a bad line
        (days / "day2-bad.csv").write_text("\n".join(lines) + "\n")
        spec["split"]["files"]["train"] = ["day2-bad.csv"]
    elif how == "spec typo":
        spec["fields"][0]["kindd"] = "categorical"
    path = days / f"day2-{how.replace(' ', '-')}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    "how, extra",
    [
        ("bad line", []),
        ("spec typo", []),
        ("nan", ["--lr", "1e30", "--fm-warmup-epochs", "0"]),
        ("batch", ["--batch-size", "900000"]),
        ("mlflow", ["--mlflow", "foo://bar"]),
    ],
)
def test_a_failed_run_in_a_reused_out_leaves_the_previous_run_whole(days, tmp_path, capsys, how, extra):
    out = tmp_path / "current"
    assert main(train_args(out, "--spec", str(day_spec(days, 1)))) == 0
    before = digests(out)
    assert set(before) == set(RUN_FILES)
    spec = broken_day2(days, how) if how in ("bad line", "spec typo") else day_spec(days, 2)
    argv = train_args(out, "--spec", str(spec), "--init-from", str(out), *extra)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1, err
    assert digests(out) == before  # model.pt, metrics.json, state.pt, history.csv: untouched
    # the documented in-place daily retrain still works on the same folder
    assert main(train_args(out, "--spec", str(day_spec(days, 2)), "--init-from", str(out))) == 0
    after = digests(out)
    assert set(after) == set(RUN_FILES) and all(after[n] != before[n] for n in RUN_FILES)


def test_a_run_that_has_written_replaces_every_output_of_the_previous_one(days, tmp_path):
    """Once the new run saved its first epoch (then failed), the folder holds only the new run's."""
    out = tmp_path / "current"
    assert main(train_args(out, "--spec", str(day_spec(days, 1)))) == 0
    (out / "notes.txt").write_text("mine")
    before = digests(out)
    config = TrainConfig(
        spec=str(day_spec(days, 2)), out=str(out), epochs=3, batch_size=256, progress=False, threads=1
    )

    def stop(record: dict) -> None:
        raise RuntimeError("stopped after epoch 1")

    with pytest.raises(RuntimeError, match="stopped"):
        train(config, echo=lambda *_: None, on_epoch=stop)
    left = sorted(p.name for p in out.iterdir())
    assert left == [".lock", "history.csv", "model.pt", "notes.txt", "state.pt"], left
    assert all(digests(out)[n] != before[n] for n in ("model.pt", "state.pt", "history.csv"))
    run = torch.load(out / "model.pt", weights_only=True)["run"]["id"]
    assert run == torch.load(out / "state.pt", weights_only=True)["run"]["id"]


def reordered_spec(days: Path, day: int, fields: list[dict]) -> Path:
    spec = yaml.safe_load(day_spec(days, day).read_text())
    spec["fields"] = fields
    path = days / f"day{day}-{'-'.join(f['name'] for f in fields)}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def warm_started(config: TrainConfig) -> tuple[TrainedModel, Carried]:
    base = load_base(config)
    data = load_data(config, base.feature_map)
    module = model_from_config(config, data.feature_map)
    report = warm_start(base, module, data.feature_map)
    return TrainedModel(module.eval(), data.feature_map, config, data.tables, data.facts), report


@pytest.mark.parametrize("model", ["deepfm", "dcnv2"])
def test_warm_start_with_the_fields_in_another_order_carries_them_by_name(days, tmp_path, model):
    base_out = tmp_path / "base"
    common = dict(batch_size=256, progress=False, threads=1, model=model, fm_warmup_epochs=0)
    first = [{"name": "user"}, {"name": "item"}]
    train(TrainConfig(spec=str(reordered_spec(days, 1, first)), out=str(base_out), epochs=2, **common))
    swapped = reordered_spec(days, 1, first[::-1])  # same data and fields, listed item first
    config = TrainConfig(spec=str(swapped), out=str(tmp_path / "next"), init_from=str(base_out), **common)
    model_now, report = warm_started(config)
    assert report.fresh == [] and report.rows_new == 0
    records = pd.read_csv(days / "day1-valid.csv")
    base_probs = load_model(base_out).predict(records)
    assert np.allclose(model_now.predict(records), base_probs, atol=1e-6)  # the same model


def test_warm_start_with_other_fields_leaves_the_field_laid_out_tensors_fresh(days, tmp_path):
    base_out = tmp_path / "base"
    common = dict(batch_size=256, progress=False, threads=1, fm_warmup_epochs=0)
    train(
        TrainConfig(
            spec=str(reordered_spec(days, 1, [{"name": "user"}, {"name": "item"}])),
            out=str(base_out),
            epochs=1,
            **common,
        )
    )
    other = reordered_spec(days, 1, [{"name": "user"}, {"name": "product", "column": "item"}])
    config = TrainConfig(spec=str(other), out=str(tmp_path / "next"), init_from=str(base_out), **common)
    _, report = warm_started(config)
    assert "mlp.linear0.weight" in report.fresh  # its input blocks were the user's and the item's
    assert "mlp.linear1.weight" not in report.fresh and report.tables  # the rest is carried


def test_warm_start_log_says_no_rows_carried_when_the_table_starts_fresh(days, tmp_path, capsys):
    out = tmp_path / "base"
    assert main(train_args(out, "--spec", str(day_spec(days, 1)))) == 0
    argv = train_args(tmp_path / "next", "--spec", str(day_spec(days, 2)), "--init-from", str(out))
    assert main([*argv, "--embed-dim", "8"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("warm start"))
    assert "no table rows carried" in line and "features.sparse.table.weight" in line, line


def test_max_vocab_with_init_from_keeps_the_most_frequent_of_base_and_new_values():
    from deepfm.data.features import choose_vocab

    base = ["u1", "u2", "u3", "u4"]  # yesterday's vocabulary
    values, counts = ["u2", "u4", "n1", "n2", "n3"], np.array([5, 1, 9, 2, 1])  # today's counts
    assert choose_vocab(values, counts, max_vocab=3, base=base) == ["u2", "n1", "n2"]  # the cap holds
    assert choose_vocab(values, counts, max_vocab=2, base=base) == ["u2", "n1"]  # below the base's size
    assert choose_vocab(values, counts, max_vocab=10, base=base) == [*base, "n1", "n2", "n3"]  # room: all
    # equal counts: a base value wins, then base order, then new values by value
    assert choose_vocab(["u4", "n0", "u3"], np.array([2, 2, 2]), max_vocab=2, base=base) == ["u3", "u4"]


def test_max_vocab_with_init_from_on_real_runs(days, tmp_path):
    base_out = tmp_path / "base"
    train(
        TrainConfig(
            spec=str(day_spec(days, 1)),
            out=str(base_out),
            epochs=1,
            progress=False,
            threads=1,
            batch_size=256,
        )
    )
    config = TrainConfig(
        spec=str(day_spec(days, 2)),
        out=str(tmp_path / "next"),
        init_from=str(base_out),
        max_vocab=10,
        progress=False,
    )
    base = load_base(config)
    assert len(base.feature_map.field("user").vocab) > 10
    data = load_data(config, base.feature_map)
    user = data.feature_map.field("user")
    assert len(user.vocab) == 10  # the cap holds below the base's vocabulary
    day2 = pd.read_csv(days / "day2.csv")["user"].value_counts()
    assert day2[user.vocab].min() >= day2.iloc[10]  # the ten most frequent of today's users
    assert set(user.vocab) - set(base.feature_map.field("user").vocab)  # new users entered
    module = model_from_config(config, data.feature_map)
    report = warm_start(base, module, data.feature_map)  # the users kept from the base keep their rows
    assert report.rows_carried >= len(set(user.vocab) & set(base.feature_map.field("user").vocab))

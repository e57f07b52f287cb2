"""Metrics (gAUC, calibration, HitRate@K, NDCG@K), the leave-last split and what a run records."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from deepfm.cli.main import main
from deepfm.data.split import leave_last_parts
from deepfm.errors import ConfigError
from deepfm.evaluation import metrics as M


def test_gauc_is_the_row_weighted_mean_of_sklearn_per_group_aucs():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 30, 3000)
    labels = (rng.random(3000) < 0.3 + 0.01 * groups).astype(float)
    scores = np.round(labels * 0.3 + rng.random(3000), 2)  # ties inside groups too
    expected, weights = [], []
    for g in np.unique(groups):
        m = groups == g
        if 0 < labels[m].sum() < m.sum():
            expected.append(roc_auc_score(labels[m], scores[m]))
            weights.append(m.sum())
    assert M.gauc(labels, scores, groups) == pytest.approx(np.average(expected, weights=weights), abs=1e-12)
    assert math.isnan(M.gauc(np.ones(5), np.arange(5.0), np.zeros(5)))  # no group holds both classes


def test_calibration_is_mean_prediction_over_observed_rate():
    assert M.calibration(np.array([1, 0, 0, 0]), np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(2.0)
    assert math.isnan(M.calibration(np.zeros(3), np.ones(3)))


def test_hitrate_and_ndcg_from_ranks():
    out = M.ranking(np.array([0, 1, 9, 10, 50]), ["hitrate@10", "ndcg@10", "hitrate@1"])
    assert out["hitrate@10"] == pytest.approx(3 / 5)
    assert out["hitrate@1"] == pytest.approx(1 / 5)
    assert out["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 5)


def test_metric_names_are_checked():
    assert M.parse_metrics("AUC, ndcg@5") == ["auc", "ndcg@5"]
    assert "hitrate@10" in M.parse_metrics("auto", ranking_available=True)
    with pytest.raises(ConfigError, match="unknown metric 'recall'"):
        M.parse_metrics("auc,recall")
    assert main(["train", "--metrics", "auc,hit@3", "--epochs", "1"]) == 2


def test_leave_last_split_holds_out_each_users_latest_rows():
    users = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3])
    times = np.array([5, 9, 1, 7, 3, 2, 8, 1, 2])
    parts = leave_last_parts(users, times, ties=np.zeros(len(users)))
    assert np.flatnonzero(parts == 2).tolist() == [1, 6]  # user 1 at t=9, user 2 at t=8; user 3: < 3 rows
    assert np.flatnonzero(parts == 1).tolist() == [3, 4]  # their second-latest rows
    assert np.flatnonzero(parts == 0).tolist() == [0, 2, 5, 7, 8]
    tied = leave_last_parts(np.array([1, 1, 1]), np.array([4, 4, 4]), ties=np.array([0.5, 0.9, 0.1]))
    assert tied.tolist() == [1, 2, 0]  # equal times: ordered by the tie-break draw


def _history(out: Path) -> list[dict[str, str]]:
    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


def test_run_records_gauc_calibration_per_epoch_and_saves_test_predictions(tiny_ml, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_ml), "--out", str(out), "--epochs", "3", "--no-progress"]
    assert main(args + ["--threads", "1", "--batch-size", "512"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_auc", "test_logloss", "best_epoch", "best_valid_auc", "epochs", "config"):
        assert key in metrics  # the existing keys stay
    assert 0.6 < metrics["test_gauc"] < 1 and 0.8 < metrics["test_calibration"] < 1.25
    assert metrics["evaluation"]["gauc_group"] == "user_id"
    assert {"valid_gauc", "valid_calibration"} <= set(metrics["epochs"][0])
    rows = _history(out)
    assert len(rows) == metrics["epochs_run"] and 0.5 < float(rows[-1]["valid_gauc"]) < 1
    preds = pd.read_parquet(out / "test_predictions.parquet")
    assert len(preds) == metrics["data"]["rows"]["test"]
    assert list(preds.columns) == ["user_id", "movie_id", "label", "probability"]
    assert roc_auc_score(preds["label"], preds["probability"]) == pytest.approx(metrics["test_auc"], abs=1e-6)


def test_leave_last_run_reports_hitrate_and_ndcg_above_chance(tiny_ml, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_ml), "--out", str(out), "--epochs", "4", "--no-progress"]
    args += ["--threads", "1", "--batch-size", "512", "--split", "leave-last", "--model", "fm"]
    assert main(args + ["--rank-negatives", "50"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["rows"]["test"] == 300  # one held-out rating per user
    protocol = metrics["evaluation"]["ranking"]
    assert protocol["negatives"] == 50 and "sampled" in protocol["candidates"]
    # chance: HitRate@10 = 10/51 = 0.196; the planted taste vectors make the model rank far better
    assert metrics["test_hitrate@10"] > 0.3 and metrics["test_ndcg@10"] > 0.15
    assert metrics["test_ranking_targets"] == int(
        pd.read_parquet(out / "test_predictions.parquet")["label"].sum()
    )
    assert "valid_hitrate@10" in _history(out)[0]


def test_ranking_among_all_items_equals_a_brute_force_ranking(tiny_ml, tmp_path):
    import deepfm
    from deepfm.data.rated import rated_positions
    from deepfm.evaluation import evaluator as evaluation

    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_ml), "--out", str(out), "--epochs", "1", "--no-progress"]
    assert main(args + ["--threads", "1", "--split", "leave-last", "--rank-negatives", "0"]) == 0
    model = deepfm.load(out)
    ev = evaluation.for_model(model, metrics="hitrate@10")
    test = pd.read_parquet(out / "test_predictions.parquet")
    frame = test[test["label"] == 1].head(5)
    fi = model.feature_map.field("movie_id")
    fu = model.feature_map.field("user_id")
    expected = []
    for user, item in zip(frame["user_id"], frame["movie_id"]):
        seen = set(np.asarray(fi.vocab)[rated_positions(model.facts.rated, fu.vocab.index(user))].tolist())
        items = [i for i in fi.vocab if i not in seen or i == item]
        scores = model.predict(pd.DataFrame({"user_id": user, "movie_id": items}))
        expected.append(int((scores > scores[items.index(item)]).sum()))
    from deepfm.data.batching import Split

    encoded = model.feature_map.encode(frame)
    split = Split.from_arrays(encoded, np.ones(len(frame), np.float32))
    assert ev.target_ranks(model.module, split).tolist() == expected


def test_ranking_with_side_features_swaps_the_items_genres_and_year(tmp_path):
    """A candidate row carries the candidate's own item-table features (a brute-force check)."""
    from test_side_features import write_side_movielens

    import deepfm
    from deepfm.data.batching import Split
    from deepfm.evaluation import evaluator as evaluation

    folder = write_side_movielens(tmp_path / "ml", 120, 80, 3000)
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(folder), "--out", str(out), "--epochs", "1", "--no-progress"]
    args += ["--threads", "1", "--features", "all", "--split", "leave-last", "--batch-size", "256"]
    assert main(args + ["--rank-negatives", "0"]) == 0
    model = deepfm.load(out)
    ev = evaluation.for_model(model)
    assert ev.items is not None and ev.items.bags is not None  # genres is a bag field of the item
    test = pd.read_parquet(out / "test_predictions.parquet")
    rows = test[test["label"] == 1].head(4)
    fi = model.feature_map.field("movie_id")
    from deepfm.data.rated import rated_positions

    expected = []
    for user, item in zip(rows["user_id"], rows["movie_id"]):
        position = model.feature_map.field("user_id").vocab.index(user)
        seen = set(np.asarray(fi.vocab)[rated_positions(model.facts.rated, position)].tolist())
        items = [i for i in fi.vocab if i not in seen or i == item]
        scores = model.predict(pd.DataFrame({"user_id": user, "movie_id": items}))  # side tables joined
        expected.append(int((scores > scores[items.index(item)]).sum()))
    from deepfm.data.records import prepare_records

    frame = prepare_records(rows[["user_id", "movie_id"]], model.feature_map, model.tables)
    split = Split.from_arrays(model.feature_map.encode(frame), np.ones(len(rows), np.float32))
    assert ev.target_ranks(model.module, split).tolist() == expected


def test_split_option_is_for_builtin_data_and_specs_declare_theirs(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    (tmp_path / "d.csv").write_text("u,y\n" + "".join(f"{i % 5},{i % 2}\n" for i in range(40)))
    spec.write_text("input: {files: [d.csv]}\nlabel: y\nfields: [u]\n")
    assert main(["train", "--spec", str(spec), "--split", "leave-last", "--out", str(tmp_path / "r")]) == 2
    assert "split: {method: leave_last" in capsys.readouterr().err

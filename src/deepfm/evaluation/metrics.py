"""Evaluation metrics, safe on degenerate inputs.

Pointwise (scikit-learn's ROC AUC and log loss underneath): ``auc``, ``logloss``, ``gauc`` (AUC per
group, e.g. per user, averaged with the groups' row counts as weights, over groups holding both
classes) and ``calibration`` (mean prediction / observed positive rate; 1 = calibrated).
Ranking, on a leave-last-out split: ``hitrate@K`` and ``ndcg@K`` of each held-out item's rank among
its candidates (see :mod:`deepfm.evaluation.evaluator`). ``--metrics`` names a selection of them.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from deepfm.errors import ConfigError

POINTWISE = ("auc", "logloss", "gauc", "calibration")
RANKING = ("hitrate", "ndcg")
DEFAULT = "auc,logloss,gauc,calibration"  # auto; on a leave-last split gauc -> hitrate@10,ndcg@10
_RANKING = re.compile(r"^(hitrate|ndcg)@([1-9]\d*)$")


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return math.nan
    return float(roc_auc_score(labels, scores))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    if len(labels) == 0:
        return math.nan
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    return float(log_loss(labels, probs, labels=[0, 1]))


def calibration(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean predicted probability / observed positive rate (NaN without positives)."""
    labels = np.asarray(labels, dtype=np.float64)
    if labels.size == 0 or labels.sum() == 0:
        return math.nan
    return float(np.mean(np.asarray(probs, dtype=np.float64)) / labels.mean())


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC: per-group ROC AUC averaged with the groups' row counts as weights.

    Groups with a single class have no AUC and are left out (as in the DIN paper's gAUC). Each
    group's AUC is the Mann-Whitney statistic of the within-group average ranks, the quantity
    ``roc_auc_score`` computes, evaluated for all groups at once.
    """
    labels = np.asarray(labels, dtype=np.float64)
    if labels.size == 0:
        return math.nan
    frame = pd.DataFrame({"g": np.asarray(groups), "y": labels, "s": np.asarray(scores, dtype=np.float64)})
    frame["r"] = frame.groupby("g", sort=False)["s"].rank(method="average")
    frame["rp"] = frame["r"] * frame["y"]
    per = frame.groupby("g", sort=False).agg(n=("y", "size"), pos=("y", "sum"), rank_pos=("rp", "sum"))
    neg = per["n"] - per["pos"]
    ok = (per["pos"] > 0) & (neg > 0)
    if not ok.any():
        return math.nan
    per = per[ok]
    neg = neg[ok]
    group_auc = (per["rank_pos"] - per["pos"] * (per["pos"] + 1) / 2) / (per["pos"] * neg)
    return float(np.average(group_auc, weights=per["n"]))


def parse_metrics(text: str, ranking_available: bool = False, group_available: bool = True) -> list[str]:
    """``--metrics`` as a list of metric names.

    ``auto``: auc, logloss, gauc (when there is a group field), calibration; on a leave-last split
    (``ranking_available``) a user has one held-out row, so hitrate@10 and ndcg@10 replace gauc.
    """
    if text.strip() == "auto":
        if ranking_available:
            return ["auc", "logloss", "calibration", "hitrate@10", "ndcg@10"]
        return [n for n in DEFAULT.split(",") if n != "gauc" or group_available]
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--metrics must name at least one metric")
    for name in names:
        if name not in POINTWISE and not _RANKING.match(name):
            raise ConfigError(
                f"--metrics: unknown metric {name!r}; choose from {', '.join(POINTWISE)}, hitrate@K, ndcg@K "
                "(e.g. hitrate@10), or auto"
            )
    return list(dict.fromkeys(names))


def evaluate(
    labels: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray | None = None,
    metrics: list[str] | None = None,
) -> dict[str, float]:
    """The pointwise metrics among ``metrics`` (default: auc and logloss); gauc needs ``groups``."""
    names = metrics or ["auc", "logloss"]
    out: dict[str, float] = {}
    for name in names:
        if name == "auc":
            out["auc"] = auc(labels, probs)
        elif name == "logloss":
            out["logloss"] = logloss(labels, probs)
        elif name == "calibration":
            out["calibration"] = calibration(labels, probs)
        elif name == "gauc" and groups is not None:
            out["gauc"] = gauc(labels, probs, groups)
    return out


def ranking(ranks: np.ndarray, names: list[str]) -> dict[str, float]:
    """``hitrate@K`` (rank < K) and ``ndcg@K`` (1 / log2(rank + 2) when rank < K) of 0-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for name in names:
        m = _RANKING.match(name)
        if not m:
            continue
        k = int(m.group(2))
        if ranks.size == 0:
            out[name] = math.nan
        elif m.group(1) == "hitrate":
            out[name] = float(np.mean(ranks < k))
        else:
            out[name] = float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2), 0.0)))
    return out

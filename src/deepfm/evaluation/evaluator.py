"""Evaluating a model on an encoded split: the selected metrics, ranking metrics, saved predictions.

An :class:`Evaluator` is made once per run (or per loaded model) from the run's options and its
feature map. It knows

* which metrics to compute (``--metrics``; ``auto`` = AUC, logloss, gAUC, calibration, plus
  HitRate@10 and NDCG@10 on a leave-last split);
* the gAUC group field (``--group-by``; by default ``user_id`` when the data has it), read from
  the encoded ids, so no raw column is needed;
* the ranking protocol: every row of the split with label 1 is a held-out (user, item) target,
  ranked among candidate items for that user: all items of the vocabulary the user did not rate
  in training (``--rank-negatives 0``) or N of them drawn at random (seeded). A candidate row is
  the target row with the item's fields (the item id and the item-table features such as genres)
  replaced, so per-request fields (hour, weekday) keep the target's values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from deepfm.data.batching import Split
from deepfm.data.features import FeatureMap, _encode_lists
from deepfm.data.prepared import DataFacts, PreparedData
from deepfm.data.rated import rated_positions
from deepfm.data.tables import Tables, join_tables
from deepfm.errors import ConfigError
from deepfm.evaluation import metrics as M
from deepfm.evaluation.scoring import predict_probs
from deepfm.io import atomic_write

PREDICTIONS_FILE = "test_predictions.parquet"
RANK_ROWS = 1 << 18  # candidate rows scored per forward pass


@dataclass
class ItemFeatures:
    """Encoded item-side columns of every item in the vocabulary (row = vocabulary position)."""

    id_columns: list[int]  # positions in ``ids`` of the item field and its item-table fields
    ids: np.ndarray  # [n_items, len(id_columns)]
    bag_columns: list[int] = field(default_factory=list)  # positions in ``bags``
    bags: np.ndarray | None = None  # [n_items, len(bag_columns), width]


@dataclass
class Evaluator:
    metrics: list[str]
    feature_map: FeatureMap
    group: str | None = None  # gAUC group field
    user: str | None = None  # ranking: user and item fields
    item: str | None = None
    rated: dict[str, Any] | None = None
    items: ItemFeatures | None = None
    negatives: int = 100  # 0 = all items
    seed: int = 0
    batch_size: int = 65536

    @property
    def ranking(self) -> bool:
        return self.items is not None and any(n.split("@")[0] in M.RANKING for n in self.metrics)

    def describe(self) -> dict[str, Any]:
        """What the output states about how the metrics were computed."""
        out: dict[str, Any] = {"metrics": self.metrics, "gauc_group": self.group}
        if self.ranking:
            out["ranking"] = {
                "user": self.user,
                "item": self.item,
                "targets": "every held-out row with label 1 (leave-last: each user's last interaction); "
                "an item unseen in training counts as a miss",
                "candidates": (
                    "all items the user did not rate in training"
                    if self.negatives == 0
                    else f"the target + {self.negatives} sampled items the user did not rate in training"
                ),
                "negatives": "all" if self.negatives == 0 else self.negatives,
                "seed": self.seed,
                "rank": "0-based: candidates scored strictly higher than the target",
            }
        return out

    def key_fields(self) -> list[str]:
        """Fields saved beside the predictions: the group, user and item fields (when any)."""
        return list(dict.fromkeys(n for n in (self.group, self.user, self.item) if n))

    def save_predictions(self, path: str | Path, split: Any, probs: np.ndarray) -> Path:
        return save_predictions(path, self.feature_map, split, probs, self.key_fields())

    def evaluate(self, module: torch.nn.Module, split: Any, probs: np.ndarray) -> dict[str, float]:
        """Every selected metric on ``split`` whose predictions are ``probs``."""
        labels = split.label.numpy()
        groups = column(split, self.feature_map, self.group) if self.group else None
        out = M.evaluate(labels, probs, groups, self.metrics)
        if self.ranking and isinstance(split, Split):
            out.update(M.ranking(self.target_ranks(module, split), self.metrics))
            out["ranking_targets"] = int((labels > 0.5).sum())
        return out

    def target_ranks(self, module: torch.nn.Module, split: Split) -> np.ndarray:
        """0-based rank of every positive row's item among its user's candidates."""
        assert self.items is not None and self.user and self.item
        fmap = self.feature_map
        names = [f.name for f in fmap.categorical]
        fu, fi = fmap.field(self.user), fmap.field(self.item)
        rows = np.flatnonzero(split.label.numpy() > 0.5)
        ids = split.ids.numpy()
        users = ids[rows, names.index(self.user)] - (fu.offset + 1)
        targets = ids[rows, names.index(self.item)] - (fi.offset + 1)
        n_items = len(fi.vocab)
        keep = targets >= 0  # an item unseen in training cannot be recommended: a miss (rank n_items)
        misses = np.full(int((~keep).sum()), float(max(n_items, 1)))
        rows, users, targets = rows[keep], users[keep], targets[keep]
        if len(rows) == 0 or n_items == 0:
            return misses
        width = n_items if self.negatives == 0 else min(self.negatives, n_items - 1) + 1
        rng = np.random.default_rng(self.seed)
        per_chunk = max(1, min(RANK_ROWS // width, (1 << 22) // n_items))  # bounds the key matrix too
        ranks = []
        for start in range(0, len(rows), per_chunk):
            r, u, t = (a[start : start + per_chunk] for a in (rows, users, targets))
            excluded = np.zeros((len(r), n_items), dtype=bool)  # rated in training, not the target
            if self.rated is not None:
                for j, user in enumerate(u.tolist()):
                    excluded[j, rated_positions(self.rated, user)] = True
            excluded[np.arange(len(r)), t] = False
            if self.negatives == 0:
                candidates = np.broadcast_to(np.arange(n_items), (len(r), n_items))
                valid = ~excluded
            else:
                keys = rng.random((len(r), n_items))
                keys[excluded] = np.inf
                keys[np.arange(len(r)), t] = np.inf
                negatives = np.argpartition(keys, width - 2, axis=1)[:, : width - 1]
                valid = np.isfinite(np.take_along_axis(keys, negatives, axis=1))
                candidates = np.concatenate([t[:, None], negatives], axis=1)
                valid = np.concatenate([np.ones((len(r), 1), dtype=bool), valid], axis=1)
            scores = self._score(module, split, r, candidates).reshape(len(r), -1)
            target_score = scores[np.arange(len(r)), np.argmax(candidates == t[:, None], axis=1)]
            higher = (scores > target_score[:, None]) & valid
            ranks.append(higher.sum(axis=1))
        return np.concatenate([*ranks, misses]).astype(np.float64)

    def _score(
        self, module: torch.nn.Module, split: Split, rows: np.ndarray, candidates: np.ndarray
    ) -> np.ndarray:
        """Probabilities of the rows ``rows`` of ``split`` with their item set to each candidate."""
        assert self.items is not None
        width = candidates.shape[1]
        flat = candidates.reshape(-1)
        index = torch.from_numpy(np.repeat(rows, width))
        part = split.take(index)
        ids = part.ids.clone()
        ids[:, self.items.id_columns] = torch.from_numpy(self.items.ids[flat])
        bags = part.bags
        if self.items.bags is not None and bags is not None:
            bags = bags.clone()
            bags[:, self.items.bag_columns, : self.items.bags.shape[2]] = torch.from_numpy(
                self.items.bags[flat]
            )
        candidate_split = Split(ids, part.label, bags, part.dense)
        return predict_probs(module, candidate_split, self.batch_size)


def make_evaluator(
    feature_map: FeatureMap,
    tables: Tables,
    facts: DataFacts,
    metrics: str = "auto",
    group_by: str = "",
    negatives: int = 100,
    seed: int = 0,
    batch_size: int = 65536,
) -> Evaluator:
    """An :class:`Evaluator` for a model with this feature map, side tables and data facts."""
    names = {f.name for f in feature_map.categorical}
    user, item = facts.user, facts.item
    can_rank = user in names and item in names
    group = group_by or (user if user in names else "")
    if group and group not in names:
        raise ConfigError(f"--group-by {group!r} is not a categorical field; fields are {sorted(names)}")
    leave_last = can_rank and facts.leave_last
    selected = M.parse_metrics(metrics, ranking_available=leave_last, group_available=bool(group))
    if "gauc" in selected and not group:
        raise ConfigError(
            "gauc needs a group field: this model's data declares no user field (spec roles: {user: FIELD}); "
            f"pass --group-by FIELD (one of {sorted(names)})"
        )
    wants_ranking = any(n.split("@")[0] in M.RANKING for n in selected)
    if wants_ranking and not can_rank:
        raise ConfigError(
            f"ranking metrics need a user field and an item field (spec roles: {{user: FIELD, item: FIELD}}; "
            f"declared: user {user!r}, item {item!r}); this model has {sorted(names)}"
        )
    items = item_features(feature_map, tables, item) if wants_ranking and item else None
    return Evaluator(
        selected,
        feature_map,
        group or None,
        user if can_rank else None,
        item if can_rank else None,
        facts.rated,
        items,
        negatives,
        seed,
        batch_size,
    )


def for_run(config: Any, data: PreparedData) -> Evaluator:
    """The evaluator of a training run (``config``: its :class:`~deepfm.config.TrainConfig`)."""
    return make_evaluator(
        data.feature_map,
        data.tables,
        data.facts,
        config.metrics,
        config.group_by,
        config.rank_negatives,
        config.seed,
        config.eval_batch_size,
    )


def for_model(
    model: Any, metrics: str | None = None, group_by: str | None = None, negatives: int | None = None
) -> Evaluator:
    """The evaluator of a trained model, with its run's options unless given."""
    config = model.config
    return make_evaluator(
        model.feature_map,
        model.tables,
        model.facts,
        metrics if metrics is not None else getattr(config, "metrics", "auto"),
        group_by if group_by is not None else getattr(config, "group_by", ""),
        negatives if negatives is not None else getattr(config, "rank_negatives", 100),
        config.seed,
        config.eval_batch_size,
    )


def item_features(feature_map: FeatureMap, tables: Tables, item: str) -> ItemFeatures:
    """Encode the item field and the fields its item table supplies, for every known item."""
    fi = feature_map.field(item)
    frame = pd.DataFrame({item: pd.Series(fi.vocab, dtype=object)})
    table = tables.get(item)
    side = set(table.columns) - {item} if table is not None else set()
    if table is not None:
        frame = join_tables(frame, {item: table})
    cats = feature_map.categorical
    id_columns = [j for j, f in enumerate(cats) if f.name == item or f.source in side]
    ids = np.stack([cats[j].encode(cats[j].values(frame)) for j in id_columns], axis=1)
    seqs = feature_map.multi
    bag_columns = [j for j, f in enumerate(seqs) if f.source in side]
    bags = None
    if bag_columns:
        width = max(seqs[j].max_len for j in bag_columns)
        bags = np.stack(
            [_encode_lists(seqs[j], pd.Series(seqs[j].values(frame)), width) for j in bag_columns], axis=1
        )
    return ItemFeatures(id_columns, ids, bag_columns, bags)


def column(split: Any, feature_map: FeatureMap, name: str) -> np.ndarray | None:
    """The encoded ids of categorical field ``name`` in ``split`` (a Split or a memory-mapped one)."""
    names = [f.name for f in feature_map.categorical]
    if name not in names:
        return None
    j = names.index(name)
    if isinstance(split, Split):
        return split.ids[:, j].numpy()
    folder, part = getattr(split, "folder", None), getattr(split, "part", None)
    if folder is None:
        return None
    return np.asarray(np.load(Path(folder) / f"{part}_ids.npy", mmap_mode="r")[:, j])


def prefixed(
    prefix: str, values: dict[str, float], skip: tuple[str, ...] = ("auc", "logloss")
) -> dict[str, Any]:
    """``{"valid_gauc": ...}`` for the metrics beyond the ones a record already holds."""
    return {f"{prefix}_{k}": v for k, v in values.items() if k not in skip}


def save_predictions(
    path: str | Path, feature_map: FeatureMap, split: Any, probs: np.ndarray, fields: list[str]
) -> Path:
    """A Parquet file of the split's rows: raw values of ``fields`` (None = OOV), label, probability."""
    data: dict[str, Any] = {}
    for name in fields:
        encoded = column(split, feature_map, name)
        if encoded is None:
            continue
        f = feature_map.field(name)
        vocab = np.asarray([None, *f.vocab], dtype=object)
        data[name] = vocab[np.clip(encoded - f.offset, 0, len(f.vocab))]
    data["label"] = split.label.numpy().astype(np.float32)
    data["probability"] = np.asarray(probs, dtype=np.float32)
    frame = pd.DataFrame(data)
    for name in fields:
        if name in frame and frame[name].map(type).nunique() > 1:  # mixed types: keep Parquet happy
            frame[name] = frame[name].astype(str).where(frame[name].notna(), None)
    return atomic_write(path, lambda f: frame.to_parquet(f, index=False))


def brief(values: dict[str, float], skip: tuple[str, ...] = ("auc", "logloss", "ranking_targets")) -> str:
    """``gAUC 0.7312  calibration 1.013  hitrate@10 0.5123  `` (with a trailing gap when not empty)."""
    names = {"gauc": "gAUC"}
    parts = [
        f"{names.get(k, k)} {v:.4f}"
        if isinstance(v, float) and math.isfinite(v)
        else f"{names.get(k, k)} n/a"
        for k, v in values.items()
        if k not in skip
    ]
    return "  ".join(parts) + ("  " if parts else "")

"""Top-K items for a user: score every item the user did not rate in training, in one pass.

Works for models whose data declares a user field and an item field (a spec's ``roles``).
The candidates are the items seen in training that at least ``min_item_count`` users rated there
(default: :data:`MIN_ITEM_SHARE` of the training users): an item with a handful of ratings, all
positive, gets a large first-order weight and would top every user's list. The items the user
rated in the training split come from the model's data facts (:mod:`deepfm.data.rated`) and are
skipped.

Ranking (``discount``): a known user's candidates are ranked by
``logit(p(user, item)) - discount * logit(p(unknown, item))``, where the unknown user is the one the
model knows nothing about (the user field's OOV row): its score is what the model predicts for
an item before knowing who asks (the item's first-order weight, the part of the deep term that
does not depend on the user). ``discount=0`` ranks by the predicted probability; ``1`` by the lift
over the unknown user (what the model learned about this user only); the default
:data:`DISCOUNT` takes off half. An unknown user is always ranked by score.
Titles come from the item table when the model carries one with a ``title`` column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from deepfm.data.batching import Split
from deepfm.data.features import FeatureMap
from deepfm.data.prepared import DataFacts
from deepfm.data.rated import rated_positions
from deepfm.data.records import coerce_value, prepare_records, raw_columns
from deepfm.data.tables import Tables
from deepfm.errors import ConfigError


class Scorer(Protocol):
    """What recommending needs of a model (a :class:`~deepfm.artifact.trained.TrainedModel`)."""

    feature_map: FeatureMap
    tables: Tables
    facts: DataFacts

    def predict_split(self, split: Split, batch_size: int = ...) -> np.ndarray: ...


TITLE = "title"
# By default a candidate item was rated by at least this share of the training users. Measured on
# MovieLens leave-last (docs/serving.md): the top-10 lists cover more of the catalogue and overlap
# less between users, and the held-out item is found as often or more, than with every item.
MIN_ITEM_SHARE = 0.02
# How much of the unknown user's log-odds is taken off a known user's (module docstring). Measured on
# MovieLens leave-last (docs/serving.md): with the candidate rule, the lists cover twice as much of
# the catalogue and overlap less, and the held-out item is found more often, than by score alone
# (1.0, the full lift, spreads the lists further but finds the held-out item less often).
DISCOUNT = 0.5


@dataclass
class Recommendations:
    user: Any
    known_user: bool  # False: the user was not in training and is scored as the OOV user
    excluded: int  # items skipped because the user rated them in training
    candidates: int  # items scored
    rare: int  # items skipped because fewer than min_item_count users rated them in training
    items: pd.DataFrame  # item id, title (when known), score, rank_score (discount > 0); best first
    discount: float = DISCOUNT  # the discount the items were ranked with (0 for an unknown user)

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "known_user": self.known_user,
            "excluded": self.excluded,
            "candidates": self.candidates,
            "rare": self.rare,
            "discount": self.discount,
            "items": self.items.astype(object).where(self.items.notna(), None).to_dict(orient="records"),
        }


def can_recommend(model: Scorer) -> bool:
    user, item = model.facts.user, model.facts.item
    names = {f.name for f in model.feature_map.categorical}
    return user in names and item in names


def parse_user(model: Scorer, user: Any) -> Any:
    """``user`` in the user vocabulary's type (:func:`~deepfm.data.records.id_value`'s rule shared
    by every entry point); ``None`` when it cannot be one: an unknown user, scored as OOV."""
    name = model.facts.user
    dtype = next(c.dtype for c in raw_columns(model.feature_map, model.tables) if c.name == name)
    return coerce_value(user, dtype)


def item_counts(model: Scorer) -> np.ndarray | None:
    """How many users rated each item (vocabulary order) in training; None when not recorded."""
    rated = model.facts.rated
    if rated is None:
        return None
    return np.bincount(rated["items"].numpy(), minlength=len(model.feature_map.field(model.facts.item).vocab))


def default_min_item_count(model: Scorer) -> int:
    """:data:`MIN_ITEM_SHARE` of the users seen in training, rounded up (at least 1)."""
    return max(1, math.ceil(MIN_ITEM_SHARE * len(model.feature_map.field(model.facts.user).vocab)))


def candidate_mask(model: Scorer, min_item_count: int | None = None) -> np.ndarray:
    """Which items (vocabulary order) may be recommended: those rated by ``min_item_count`` users
    or more in training (default :func:`default_min_item_count`; every item when the model has no
    record of training ratings)."""
    counts = item_counts(model)
    if counts is None:
        return np.ones(len(model.feature_map.field(model.facts.item).vocab), dtype=bool)
    return counts >= (default_min_item_count(model) if min_item_count is None else min_item_count)


def recommend(
    model: Scorer,
    user: Any,
    k: int = 10,
    exclude_rated: bool = True,
    min_item_count: int | None = None,
    discount: float = DISCOUNT,
) -> Recommendations:
    """The ``k`` best items for ``user`` among those at least ``min_item_count`` users rated in
    training (default :func:`default_min_item_count`; 1: every item), excluding those ``user``
    rated in training; best by :func:`rank_scores` with ``discount`` (0: by score)."""
    if not can_recommend(model):
        raise ConfigError(
            "recommend needs a model whose data declares a user field and an item field (spec roles: "
            f"{{user: FIELD, item: FIELD}}; declared: user {model.facts.user!r}, item "
            f"{model.facts.item!r}); this model has {[f.name for f in model.feature_map.fields]}"
        )
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if min_item_count is not None and min_item_count < 0:
        raise ConfigError(f"min_item_count must be >= 0, got {min_item_count}")
    if not 0.0 <= discount <= 1.0:
        raise ConfigError(f"discount must be between 0 and 1, got {discount}")
    user_name, item_name = model.facts.user, model.facts.item
    assert user_name is not None and item_name is not None
    others = [
        c.name for c in raw_columns(model.feature_map, model.tables) if c.name not in (user_name, item_name)
    ]
    if others:
        raise ConfigError(f"recommend cannot fill the per-request column(s) {others} of this model")
    parsed = parse_user(model, user)
    user = parsed if parsed is not None else user
    fu, fi = model.feature_map.field(user_name), model.feature_map.field(item_name)
    position = int(fu.index().get_indexer([parsed])[0]) if parsed is not None else -1
    items = np.asarray(fi.vocab)
    keep = candidate_mask(model, min_item_count)
    rare = int((~keep).sum())
    rated = model.facts.rated
    if exclude_rated and rated is not None and position >= 0:
        mine = rated_positions(rated, position)
        excluded = int(keep[mine].sum())
        keep[mine] = False
    else:
        excluded = 0
    candidates = items[keep]
    scores = _scores(model, parsed, candidates)  # one forward pass
    discount = discount if position >= 0 else 0.0
    order = rank_scores(scores, _scores(model, None, candidates), discount) if discount else scores
    top = np.argsort(-order, kind="stable")[: min(k, len(scores))]
    table = pd.DataFrame({item_name: candidates[top]})
    titles = model.tables.get(item_name)
    if titles is not None and TITLE in titles.columns:
        lookup = titles.drop_duplicates(item_name).set_index(item_name)[TITLE]
        table[TITLE] = lookup.reindex(table[item_name].to_numpy()).to_numpy()
    table["score"] = scores[top].astype(np.float64)
    if discount:
        table["rank_score"] = order[top]
    return Recommendations(user, position >= 0, excluded, len(candidates), rare, table, discount)


def rank_scores(scores: np.ndarray, unknown: np.ndarray, discount: float = DISCOUNT) -> np.ndarray:
    """``logit(scores) - discount * logit(unknown)`` (``unknown``: the unknown user's scores for
    the same items)."""
    return _logit(scores) - discount * _logit(unknown)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def _scores(model: Scorer, user: Any, candidates: np.ndarray) -> np.ndarray:
    """``user``'s scores for ``candidates`` in one forward pass (``None``: the unknown user)."""
    user_name, item_name = model.facts.user, model.facts.item
    frame = pd.DataFrame(
        {user_name: np.repeat(np.asarray([user], dtype=object), len(candidates)), item_name: candidates}
    )
    frame = prepare_records(frame, model.feature_map, model.tables)
    split = Split.from_arrays(model.feature_map.encode(frame), np.zeros(len(frame), np.float32))
    return model.predict_split(split, batch_size=max(len(split), 1))

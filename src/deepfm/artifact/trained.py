"""A trained model loaded for use: raw records in, click probabilities (or top-K items) out.

:class:`TrainedModel` is what ``deepfm.fit`` and ``deepfm.load`` return and what the server,
``deepfm predict``, ``deepfm evaluate`` and ``deepfm recommend`` use; :func:`load_model` reads it
from a run folder or a ``model.pt`` (see :mod:`deepfm.artifact.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from deepfm.artifact.checkpoint import read_checkpoint, save_checkpoint
from deepfm.artifact.recommend import DISCOUNT, Recommendations, recommend
from deepfm.config import TrainConfig
from deepfm.data.batching import Split
from deepfm.data.features import FeatureMap
from deepfm.data.prepared import DataFacts
from deepfm.data.records import prepare_records, records_frame
from deepfm.data.tables import Tables
from deepfm.evaluation.files import evaluate_model
from deepfm.evaluation.scoring import predict_probs, refuse_non_finite


@dataclass
class TrainedModel:
    """A trained network with everything needed to turn raw records into probabilities."""

    module: nn.Module
    feature_map: FeatureMap
    config: TrainConfig
    tables: Tables = field(default_factory=dict)
    facts: DataFacts = field(default_factory=DataFacts)

    @property
    def extras(self) -> dict[str, Any]:
        """The data facts as the plain mapping ``model.pt`` stores (``spec``, ``rated``, ...)."""
        return self.facts.to_dict()

    def predict_split(self, split: Split, batch_size: int = 65536) -> np.ndarray:
        """Click probabilities for an encoded split, in its row order."""
        return predict_probs(self.module, split, batch_size)

    def predict(self, records: pd.DataFrame | list[dict[str, Any]]) -> np.ndarray:
        """Probabilities for raw records (a DataFrame or list of dicts of raw field values).

        Side features are looked up from the model's tables by their key columns, so MovieLens
        records need only ``user_id`` and ``movie_id``. Unseen values go to OOV; a missing column
        raises :class:`~deepfm.errors.DataError` naming it.
        """
        frame = records_frame(records, self.feature_map)  # bad values -> DataError
        frame = prepare_records(frame, self.feature_map, self.tables)
        arrays = self.feature_map.encode(frame)
        probs = self.predict_split(Split.from_arrays(arrays, np.zeros(len(frame), np.float32)))
        refuse_non_finite(probs, arrays.get("dense"), self.feature_map, lambda i, c: _raw(frame, i, c))
        return probs

    def evaluate(
        self,
        data: Any,
        label: str | None = None,
        metrics: str | None = None,
        group_by: str | None = None,
        negatives: int | None = None,
        layout: str = "auto",
    ) -> dict[str, Any]:
        """Metrics on labelled data: a DataFrame / Arrow table / records, or files in the model's layout.

        ``label`` is a column or a rule (``"rating > 3"``; default: the training data's rule);
        ``metrics`` as ``--metrics`` (default: the run's). See :mod:`deepfm.evaluation.evaluator`.
        """
        return evaluate_model(self, data, label, metrics, group_by, negatives, layout)

    def recommend(
        self,
        user: Any,
        k: int = 10,
        exclude_rated: bool = True,
        min_item_count: int | None = None,
        discount: float = DISCOUNT,
    ) -> Recommendations:
        """The ``k`` best items ``user`` did not rate in training, among the items at least
        ``min_item_count`` users rated there (default: 2% of the training users;
        ``Recommendations``; ``.items``), ranked by the log-odds of ``user``'s score less
        ``discount`` times the unknown user's (0: by predicted probability; 1: by lift)."""
        return recommend(self, user, k, exclude_rated, min_item_count, discount)

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.module, self.feature_map, self.config, self.tables, self.facts)


def _raw(frame: pd.DataFrame, row: int, column: str) -> Any:
    value = frame[column].iloc[row] if column in frame.columns else None
    return value.item() if isinstance(value, np.generic) else value


def load_model(path: str | Path, device: str = "cpu") -> TrainedModel:
    """Rebuild a :class:`TrainedModel` from a run folder or a ``model.pt`` file."""
    c = read_checkpoint(path, device)
    return TrainedModel(c.module, c.feature_map, c.config, c.tables, c.facts)

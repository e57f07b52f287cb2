"""Self-contained checkpoints (config + feature map + weights) and :class:`TrainedModel`.

``model.pt`` in a run folder is a plain dict of primitives and tensors, loadable with
``torch.load(weights_only=True)`` (no pickled code). It is always written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from deepfm.config import TrainConfig
from deepfm.data.batching import Split
from deepfm.data.features import FeatureMap
from deepfm.data.records import prepare_records, records_frame
from deepfm.data.tables import Tables, tables_from_payload, tables_to_payload
from deepfm.errors import CheckpointError, DeepFMError, brief
from deepfm.models import build_model
from deepfm.models.migrate import migrate_state_dict
from deepfm.training.io import atomic_write
from deepfm.training.loop import predict_probs

FORMAT = "deepfm-checkpoint"
VERSION = 1
MODEL_FILE = "model.pt"


def model_from_config(config: TrainConfig, feature_map: FeatureMap) -> nn.Module:
    module = build_model(
        config.model,
        num_rows=feature_map.num_rows,
        num_fields=len(feature_map.fields),
        num_dense=len(feature_map.numerics),
        embed_dim=config.embed_dim,
        mlp=config.mlp,
        dropout=config.dropout,
        **config.extra.get("model_options", {}),
    )
    features = getattr(module, "features", None)
    if features is not None:  # per bag: mean-pooled, or summed with libFM interactions
        features.sparse.bag_pooling = tuple(f.pooling for f in feature_map.sequences)
    return module


@dataclass
class TrainedModel:
    """A trained network with everything needed to turn raw records into probabilities."""

    module: nn.Module
    feature_map: FeatureMap
    config: TrainConfig
    tables: Tables = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

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
        return self.predict_split(Split.from_arrays(arrays, np.zeros(len(frame), np.float32)))

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
        ``metrics`` as ``--metrics`` (default: the run's). See :mod:`deepfm.training.evaluation`.
        """
        from deepfm.training.evaluation import evaluate_model

        return evaluate_model(self, data, label, metrics, group_by, negatives, layout)

    def recommend(self, user: Any, k: int = 10, exclude_rated: bool = True) -> Any:
        """The ``k`` best items ``user`` did not rate in training (``Recommendations``; ``.items``)."""
        from deepfm.serving.recommend import recommend

        return recommend(self, user, k, exclude_rated=exclude_rated)

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.module, self.feature_map, self.config, self.tables, self.extras)


def save_checkpoint(
    path: str | Path,
    module: nn.Module,
    feature_map: FeatureMap,
    config: TrainConfig,
    tables: Tables | None = None,
    extras: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    run: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.pt``; ``run`` (run id, data fingerprint) is stored beside the weights."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "feature_map": feature_map.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in (state_dict or module.state_dict()).items()},
        "tables": tables_to_payload(tables or {}),
        "extras": extras or {},
        **({"run": run} if run else {}),
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


def resolve(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (expected a run folder holding {MODEL_FILE})")
    return path


def load_model(path: str | Path, device: str = "cpu") -> TrainedModel:
    """Rebuild a :class:`TrainedModel` from a run folder or a ``model.pt`` file."""
    file = resolve(path)
    try:
        payload = torch.load(file, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{file} is not a readable deepfm checkpoint ({brief(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a deepfm checkpoint")
    if not isinstance(payload.get("version"), int):
        raise CheckpointError(f"{file} is damaged (no format version)")
    if payload["version"] > VERSION:
        raise CheckpointError(f"{file} was written by a newer deepfm (format {payload['version']})")
    try:  # a damaged payload (missing keys, wrong types, wrong shapes) is our error
        config = TrainConfig.from_dict(payload["config"])
        fmap = FeatureMap.from_dict(payload["feature_map"])
        module = model_from_config(config, fmap)
        module.load_state_dict(migrate_state_dict(module, payload["state_dict"]))
        module.to(device).eval()
        tables = tables_from_payload(payload.get("tables", {}))
        extras = payload.get("extras", {})
    except (DeepFMError, KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{file} is damaged or incompatible ({brief(exc)})") from None
    return TrainedModel(module, fmap, config, tables, extras)

"""The ``model.pt`` format: a self-contained checkpoint (config + feature map + weights).

``model.pt`` in a run folder is a plain dict of primitives and tensors, loadable with
``torch.load(weights_only=True)`` (no pickled code). It is always written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepfm.artifact.migrate import migrate_state_dict
from deepfm.config import TrainConfig
from deepfm.data.features import FeatureMap
from deepfm.data.prepared import DataFacts
from deepfm.data.tables import Tables, tables_from_payload, tables_to_payload
from deepfm.errors import CheckpointError, DeepFMError, brief
from deepfm.io import atomic_write, load_torch_payload
from deepfm.models import build_model

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
        weight_init=config.weight_init,
        **config.extra.get("model_options", {}),
    )
    features = getattr(module, "features", None)
    if features is not None:  # per bag: mean-pooled, or summed with libFM interactions
        features.sparse.bag_pooling = tuple(f.pooling for f in feature_map.multi)
    return module


def save_checkpoint(
    path: str | Path,
    module: nn.Module,
    feature_map: FeatureMap,
    config: TrainConfig,
    tables: Tables | None = None,
    facts: DataFacts | None = None,
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
        "extras": (facts or DataFacts()).to_dict(),  # the key earlier versions wrote
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


@dataclass
class Checkpoint:
    """What a ``model.pt`` holds, the network rebuilt with its weights (in eval mode)."""

    module: nn.Module
    feature_map: FeatureMap
    config: TrainConfig
    tables: Tables
    facts: DataFacts


def read_checkpoint(path: str | Path, device: str = "cpu") -> Checkpoint:
    """Read a run folder's or a file's ``model.pt`` (older formats migrated); one-line errors."""
    file = resolve(path)
    payload = load_torch_payload(file, "deepfm checkpoint", FORMAT, VERSION, "format version", device)
    try:  # a damaged payload (missing keys, wrong types, wrong shapes) is our error
        config = TrainConfig.from_dict(payload["config"])
        fmap = FeatureMap.from_dict(payload["feature_map"])
        module = model_from_config(config, fmap)
        module.load_state_dict(migrate_state_dict(module, payload["state_dict"]))
        module.to(device).eval()
        tables = tables_from_payload(payload.get("tables", {}))
        facts = DataFacts.from_dict(payload.get("extras"))
    except (DeepFMError, KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{file} is damaged or incompatible ({brief(exc)})") from None
    return Checkpoint(module, fmap, config, tables, facts)

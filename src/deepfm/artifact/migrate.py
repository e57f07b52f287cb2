"""Load checkpoints written before the MLP was ordinary layers (key migration).

Up to deepfm 0.x the MLP kept every weight in one flat parameter ``<prefix>.weights`` (per
hidden layer: Linear weight, Linear bias, BatchNorm scale, BatchNorm shift; then the output
weight and bias) and the BatchNorm running statistics in flat buffers ``<prefix>.running_mean``
and ``<prefix>.running_var``. :func:`migrate_state_dict` cuts them into the per-layer keys of
:class:`~deepfm.models.layers.MLP` (``linear0.weight``, ``norm0.running_mean``, ...).
"""

from __future__ import annotations

import torch
from torch import nn

from deepfm.models.layers import MLP


def migrate_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every old flat-MLP entry replaced by ``module``'s per-layer keys (other
    entries unchanged; a state dict in the current layout is returned as it is)."""
    state = dict(state)
    for prefix, mlp in module.named_modules():
        if not isinstance(mlp, MLP) or f"{prefix}.weights" not in state:
            continue
        flat = state.pop(f"{prefix}.weights")
        params = list(mlp.named_parameters())  # per layer: weight, bias (Linear, BatchNorm); output
        parts = flat.split([p.numel() for _, p in params])
        for (name, p), part in zip(params, parts, strict=True):
            state[f"{prefix}.{name}"] = part.reshape(p.shape).clone()
        norms = [(name, m) for name, m in mlp.named_children() if isinstance(m, nn.BatchNorm1d)]
        for stat in ("running_mean", "running_var"):
            if f"{prefix}.{stat}" not in state:
                continue
            values = state.pop(f"{prefix}.{stat}").split([m.num_features for _, m in norms])
            for (name, _), value in zip(norms, values, strict=True):
                state[f"{prefix}.{name}.{stat}"] = value.clone()
        for name, _ in norms:
            state.setdefault(f"{prefix}.{name}.num_batches_tracked", torch.zeros((), dtype=torch.long))
    return state

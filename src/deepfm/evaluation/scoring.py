"""Scoring an encoded split with a model: batched click probabilities, in row order.

Shared by validation and test during training, evaluation of a loaded model, ranking metrics and
recommendations. :func:`refuse_non_finite` is the one rule for a probability that is not a number
(a numeric input so far outside the training values that the model's float32 arithmetic
overflows): ``predict``, ``evaluate``, ``deepfm predict`` and the server refuse the record,
naming it and its numeric field, instead of returning NaN.

A split on another device than the model is copied there once and reused while it lives (pinned
memory, non-blocking copies), so every epoch after the first gathers on the GPU with no
host-to-device traffic.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfm.data.batching import Split
from deepfm.data.features import FeatureMap
from deepfm.errors import DataError


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s parameters (CPU for a module without any)."""
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


_ON_DEVICE: dict[tuple[int, str], tuple[weakref.ref, Split]] = {}


def on_device(split: Split, device: torch.device) -> Split:
    """``split`` on ``device``: itself when already there, else a copy made once and reused
    while ``split`` lives. A split streamed from disk is returned as it is (its batches are
    moved one at a time)."""
    if not isinstance(split, Split) or split.ids.device == device:
        return split
    key = (id(split), str(device))
    cached = _ON_DEVICE.get(key)
    if cached is not None and cached[0]() is split:
        return cached[1]
    for k in [k for k, (ref, _) in _ON_DEVICE.items() if ref() is None]:
        del _ON_DEVICE[k]
    pin = device.type == "cuda" and torch.cuda.is_available()
    moved = split.map(lambda t: (t.pin_memory() if pin else t).to(device, non_blocking=pin))
    _ON_DEVICE[key] = (weakref.ref(split), moved)
    return moved


@torch.inference_mode()
def predict_probs(module: nn.Module, split: Split, batch_size: int = 65536) -> np.ndarray:
    """Click probabilities for every row of ``split``, in order (eval mode, no autograd)."""
    was_training = module.training
    module.eval()
    device = module_device(module)
    out = [
        torch.sigmoid(module(*(t.to(device) if t is not None else None for t in b.inputs)))
        for b in on_device(split, device).batches(batch_size)
    ]
    module.train(was_training)
    return torch.cat(out).float().cpu().numpy() if out else np.zeros(0, dtype=np.float32)


def non_finite(
    probs: np.ndarray,
    dense: np.ndarray | torch.Tensor | None,
    feature_map: FeatureMap,
    raw: Any = None,
) -> tuple[int, str | None, str] | None:
    """``(record, column, reason)`` of the first record whose probability is not a number (None if
    every one is), naming the numeric field whose model input is largest in magnitude there (the
    one that overflowed); ``raw(record, column)`` gives the value the caller sent."""
    bad = ~np.isfinite(np.asarray(probs, dtype=np.float64))
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    numerics = feature_map.numerics
    if dense is None or not numerics:
        return i, None, "the model's output is not a number"
    row = np.nan_to_num(np.abs(np.asarray(dense[i], dtype=np.float64)), nan=np.inf)
    j = int(np.argmax(row))
    f = numerics[j]
    value = raw(i, f.source) if raw is not None else None
    shown = f"{value!r} is" if value is not None else "the value is"
    reason = (
        f"{shown} too far outside the training values of this field for the model (its input "
        f"{float(dense[i][j]):.3g} overflows the model's float32 arithmetic)"
    )
    return i, f.source, reason


def refuse_non_finite(
    probs: np.ndarray,
    dense: np.ndarray | torch.Tensor | None,
    feature_map: FeatureMap,
    raw: Any = None,
) -> None:
    """:class:`DataError` naming the record and field of :func:`non_finite`, if there is one."""
    found = non_finite(probs, dense, feature_map, raw)
    if found is not None:
        record, column, reason = found
        raise DataError(f"record {record}: {reason}", field=column)

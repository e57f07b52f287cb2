"""Export a trained model to ONNX or TorchScript, with its feature map written beside the file.

The exported graph maps encoded index tensors to click probabilities: ``ids`` [batch, F] int64
(always), ``bags`` [batch, S, L] int64 (when the model has multi-valued fields) and ``dense``
[batch, K] float32 (when it has numeric fields) -> ``probability`` [batch]. The batch axis is
dynamic. ``feature_map.json`` beside the file lists the inputs and every field's vocabulary and
offset, so another runtime can encode raw values exactly as :meth:`FeatureMap.encode` does.
ONNX uses PyTorch's ``torch.export``-based exporter (needs ``onnxscript``) and falls back to the
TorchScript-based one when ``onnxscript`` is missing; TorchScript uses ``torch.jit.trace``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepfm.artifact.trained import TrainedModel
from deepfm.data.features import FeatureMap
from deepfm.data.transforms import TOKEN_RULE
from deepfm.errors import ConfigError
from deepfm.io import atomic_write

FORMATS = ("onnx", "torchscript")
FEATURE_MAP_FILE = "feature_map.json"
OUTPUT = "probability"
EXAMPLE_BATCH = 64


class _Wrapper(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class _Ids(_Wrapper):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.module(ids))


class _IdsBags(_Wrapper):
    def forward(self, ids: torch.Tensor, bags: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.module(ids, bags))


class _IdsDense(_Wrapper):
    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.module(ids, None, dense))


class _IdsBagsDense(_Wrapper):
    def forward(self, ids: torch.Tensor, bags: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.module(ids, bags, dense))


WRAPPERS: dict[tuple[str, ...], type[_Wrapper]] = {
    ("ids",): _Ids,
    ("ids", "bags"): _IdsBags,
    ("ids", "dense"): _IdsDense,
    ("ids", "bags", "dense"): _IdsBagsDense,
}


def probabilities(module: nn.Module, names: tuple[str, ...]) -> nn.Module:
    """``sigmoid(module(...))`` taking exactly the inputs ``names`` (a fixed signature to export)."""
    return WRAPPERS[names](module).eval()


def input_names(feature_map: FeatureMap) -> tuple[str, ...]:
    names = ["ids"]
    if feature_map.multi:
        names.append("bags")
    if feature_map.numerics:
        names.append("dense")
    return tuple(names)


def example_inputs(feature_map: FeatureMap, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random valid encoded inputs (every index inside its field's rows, OOV included)."""
    gen = torch.Generator().manual_seed(seed)

    def rows(fields: list[Any], shape: tuple[int, ...]) -> torch.Tensor:
        out = torch.empty(shape, dtype=torch.int64)
        for j, f in enumerate(fields):
            out[:, j] = f.offset + torch.randint(0, f.size, (shape[0], *shape[2:]), generator=gen)
        return out

    inputs = {"ids": rows(feature_map.categorical, (batch, len(feature_map.categorical)))}
    if feature_map.multi:
        width = max(f.max_len for f in feature_map.multi)
        bags = rows(feature_map.multi, (batch, len(feature_map.multi), max(width, 1)))
        bags[..., 1:][torch.rand(bags[..., 1:].shape, generator=gen) < 0.5] = 0  # some padding
        inputs["bags"] = bags
    if feature_map.numerics:
        inputs["dense"] = torch.rand((batch, len(feature_map.numerics)), generator=gen)
    return inputs


def export_model(model: TrainedModel, fmt: str, out: str | Path, opset: int | None = None) -> Path:
    """Write ``out`` (ONNX or TorchScript) and ``feature_map.json`` beside it; returns ``out``."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = input_names(model.feature_map)
    wrapper = probabilities(model.module.cpu().eval(), names)
    example = example_inputs(model.feature_map, EXAMPLE_BATCH)
    args = tuple(example[n] for n in names)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit / legacy exporter deprecation notices
        if fmt == "onnx":
            atomic_write(out, lambda f: f.write(_onnx_bytes(wrapper, args, names, opset)))
        else:
            traced = torch.jit.trace(wrapper, args, check_trace=False)
            atomic_write(out, lambda f: torch.jit.save(traced, f))
    write_feature_map(model, out.parent / FEATURE_MAP_FILE)
    return out


def _onnx_bytes(
    wrapper: nn.Module, args: tuple[torch.Tensor, ...], names: tuple[str, ...], opset: int | None
) -> bytes:
    common: dict[str, Any] = {"input_names": list(names), "output_names": [OUTPUT], "opset_version": opset}
    if importlib.util.find_spec("onnxscript") is not None:
        batch = torch.export.Dim("batch")
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper, args, dynamo=True, dynamic_shapes=tuple({0: batch} for _ in args), **common
            )
        return program.model_proto.SerializeToString()
    axes = {name: {0: "batch"} for name in (*names, OUTPUT)}
    buffer = io.BytesIO()
    torch.onnx.export(wrapper, args, buffer, dynamo=False, dynamic_axes=axes, **common)
    return buffer.getvalue()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's progress lines and its notes about torchvision not being installed."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def write_feature_map(model: TrainedModel, path: Path) -> Path:
    fmap = model.feature_map
    shapes = {
        "ids": ["batch", len(fmap.categorical)],
        "bags": ["batch", len(fmap.multi), max((f.max_len for f in fmap.multi), default=0)],
        "dense": ["batch", len(fmap.numerics)],
    }
    fields = {"ids": fmap.categorical, "bags": fmap.multi, "dense": fmap.numerics}
    doc = {
        "format": "deepfm-export",
        "model": model.config.model,
        "inputs": [
            {
                "name": name,
                "dtype": "float32" if name == "dense" else "int64",
                "shape": shapes[name],
                "fields": [f.name for f in fields[name]],
            }
            for name in input_names(fmap)
        ],
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch"]},
        "encoding": "global row = field offset + 1 + position of the value's token in vocab; unseen "
        "value = field offset (OOV row); hashed field (hash_buckets B, hash xxh64-utf8-seed0): field "
        "offset + 1 + xxh64(the value's token as UTF-8, seed 0) % B; 0 pads bags; dense = the "
        "field's transform of the raw float (missing -> 0)",
        "token_rule": TOKEN_RULE,
        "feature_map": fmap.to_dict(),
    }
    text = json.dumps(doc, indent=1) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))

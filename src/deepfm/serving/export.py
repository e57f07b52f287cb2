"""Export a trained model to ONNX or TorchScript, with its feature map written beside the file.

The exported graph maps encoded index tensors to click probabilities: ``ids`` [batch, F] int64
(always), ``bags`` [batch, S, L] int64 (when the model has multi-valued fields) and ``dense``
[batch, K] float32 (when it has numeric fields) -> ``probability`` [batch]. The batch axis is
dynamic. ``feature_map.json`` beside the file states every field's exact rule from a raw value to
its column of those inputs (:mod:`deepfm.serving.rules`) with the vocabularies, and the model's
side tables are written beside it as CSV, so another runtime scores raw records exactly as
``deepfm predict`` does.
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
from deepfm.data.transforms import TOKEN_RULE, token_text
from deepfm.errors import ConfigError
from deepfm.io import atomic_write
from deepfm.serving.rules import READ, field_rule

FORMATS = ("onnx", "torchscript")
FEATURE_MAP_FILE = "feature_map.json"
TABLE_FILE = "table_{key}.csv"  # a side table, written beside the exported file
EXPORT_VERSION = 2  # 2: per-field rules ("fields"), side tables, "read"
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
    """``feature_map.json``: the graph's inputs, each field's exact encoding rule (``fields``), the
    side tables written beside it (``tables``) and the feature map itself (``feature_map``)."""
    fmap = model.feature_map
    shapes = {
        "ids": ["batch", len(fmap.categorical)],
        "bags": ["batch", len(fmap.multi), max((f.max_len for f in fmap.multi), default=0)],
        "dense": ["batch", len(fmap.numerics)],
    }
    slots = {"ids": fmap.categorical, "bags": fmap.multi, "dense": fmap.numerics}
    where = {f.name: (name, j) for name, fields in slots.items() for j, f in enumerate(fields)}
    supplied = {c: key for key, t in model.tables.items() for c in t.columns if c != key}
    rules = []
    for f in fmap.fields:
        name, j = where[f.name]
        rules.append({**field_rule(f, supplied.get(f.source)), "input": name, "position": j})
    tables = []
    for key, table in model.tables.items():
        file = TABLE_FILE.format(key=key)
        cells = table.drop_duplicates(key).astype(object).map(token_text)  # 35.0 -> "35", as trained
        text = cells.to_csv(index=False)
        atomic_write(path.parent / file, lambda f, text=text: f.write(text.encode()))
        tables.append({"key": key, "file": file, "columns": [str(c) for c in table.columns]})
    doc = {
        "format": "deepfm-export",
        "version": EXPORT_VERSION,
        "model": model.config.model,
        "inputs": [
            {
                "name": name,
                "dtype": "float32" if name == "dense" else "int64",
                "shape": shapes[name],
                "fields": [f.name for f in slots[name]],
            }
            for name in input_names(fmap)
        ],
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch"]},
        "token_rule": TOKEN_RULE,
        "read": READ,
        "fields": rules,
        "tables": tables,
        "feature_map": fmap.to_dict(),
    }
    text = json.dumps(doc, indent=1) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))

"""``deepfm export``: write a trained model as ONNX or TorchScript plus feature_map.json."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained model to ONNX or TorchScript",
        description="The exported graph maps encoded index tensors (ids [batch, F] int64; bags "
        "[batch, S, L] and dense [batch, K] when the model has such fields) to click probabilities "
        "[batch], with a dynamic batch axis. feature_map.json beside the file holds the encoding.",
    )
    p.add_argument("--model", required=True, help="run folder of 'deepfm train' (or its model.pt)")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--out", required=True, help="file to write (e.g. model.onnx, model.ts)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import deepfm
    from deepfm.serving.export import FEATURE_MAP_FILE, export_model

    model = deepfm.load(args.model)
    out = export_model(model, args.format, args.out, args.opset)
    print(f"wrote {out} ({out.stat().st_size:,} bytes) and {Path(out).parent / FEATURE_MAP_FILE}")
    return 0

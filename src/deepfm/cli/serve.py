"""``deepfm serve``: serve a trained model over HTTP (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import contextlib
import socket
from typing import Any

from deepfm.errors import ConfigError


def add_parser(sub: Any) -> None:
    from deepfm.serving import MAX_BATCH

    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP: POST /predict, GET /recommend, GET /health, /docs",
        description="Start a FastAPI app under uvicorn. POST /predict takes a JSON list of raw "
        "records and returns probabilities; GET /recommend?user=42&k=10 ranks unrated items; "
        "GET /health; the OpenAPI page is at /docs.",
    )
    p.add_argument("--model", required=True, help="run folder of 'deepfm train' (or its model.pt)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument(
        "--max-batch", type=int, default=MAX_BATCH, help=f"most records a request (default {MAX_BATCH:,})"
    )
    p.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads (default: automatic)")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    import deepfm
    from deepfm.serving.app import create_app

    if args.max_batch < 1:
        raise ConfigError("--max-batch must be >= 1")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {args.port}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:  # the address before the model loads: a port in use is a one-line error
        with socket.create_server((args.host, args.port)) if args.port else contextlib.nullcontext():
            pass
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
    app = create_app(deepfm.load(args.model), max_batch=args.max_batch)
    print(f"serving {args.model} on http://{args.host}:{args.port} (docs at /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0

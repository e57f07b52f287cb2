"""``deepfm compare``: train several models on the same splits over seeds; write a report."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from deepfm.cli.train import MODEL_NAMES, add_train_options, config_from_args
from deepfm.errors import ConfigError

DEFAULT_MODELS = "lr,fm,widedeep,deepfm"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="train several models on the same splits and compare them",
        description="Train each model on the same split for each seed (the data set is prepared once "
        "per seed) and write comparison.csv, comparison.md, comparison.png and comparison.json to "
        "--out, with each run's own folder under OUT/runs. Seeds are --seed, --seed+1, ...",
    )
    p.add_argument("--out", default="runs/compare", help="report folder (default runs/compare)")
    p.add_argument(
        "--models",
        default=DEFAULT_MODELS,
        help=f"comma-separated models (default {DEFAULT_MODELS}); models: {MODEL_NAMES}",
    )
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    add_train_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepfm.experiments.compare import compare
    from deepfm.models import MODELS

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if not models or unknown:
        raise ConfigError(f"--models takes names from {sorted(MODELS)}, got {args.models!r}")
    if len(set(models)) != len(models):
        raise ConfigError(f"--models lists a model twice: {args.models!r}")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    base = config_from_args(args, ignore=("models", "seeds"))
    base = dataclasses.replace(base, progress=False)
    seeds = [base.seed + i for i in range(args.seeds)]
    print(f"compare {', '.join(models)} on {base.dataset} (features {base.features}), seeds {seeds}")
    compare(base, models, seeds, args.out)
    print()
    print((Path(args.out) / "comparison.md").read_text(), end="")
    print(f"report: {args.out}/comparison.csv, comparison.md, comparison.png")
    return 0

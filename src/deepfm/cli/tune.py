"""``deepfm tune``: Optuna search over training options, selected on validation AUC."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from deepfm.cli.train import add_train_options, config_from_args
from deepfm.errors import ConfigError
from deepfm.experiments.tune import PRUNE_AFTER


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tune",
        help="search hyper-parameters (Optuna) on the validation split",
        description="Search the options in --space with Optuna (TPE sampler, median pruning on the "
        "per-epoch validation AUC, --prune-after / --no-prune). Every trial trains on the same "
        "split (--seed) and is scored by its best validation AUC only. The study is kept in "
        "OUT/study.db, so running the same command again resumes a killed search. Writes "
        "OUT/trials.csv, OUT/best.yaml (use it with 'deepfm train --config OUT/best.yaml'), "
        "OUT/search.png and OUT/trials/N.",
    )
    p.add_argument("--space", required=True, help="YAML search space (see docs/tuning.md)")
    p.add_argument("--out", default="runs/tune", help="study folder (default runs/tune)")
    p.add_argument("--trials", type=int, default=20, help="trials in the study (default 20)")
    p.add_argument("--n-jobs", type=int, default=1, help="parallel trial processes (default 1)")
    p.add_argument(
        "--prune-after",
        type=int,
        default=PRUNE_AFTER,
        metavar="EPOCH",
        help="the median rule may stop a trial from this epoch on, once 4 trials have finished "
        f"(default {PRUNE_AFTER})",
    )
    p.add_argument(
        "--no-prune",
        action="store_true",
        help="never stop a trial early (for lr schedules whose gain comes late, e.g. lr_decay "
        "after an FM warm-up)",
    )
    add_train_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("deepfm tune needs Optuna: pip install 'deepfm[tune]'") from None
    from deepfm.experiments.tune import load_space, tune

    if args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    if args.n_jobs < 1:
        raise ConfigError(f"--n-jobs must be >= 1, got {args.n_jobs}")
    if args.prune_after < 1:
        raise ConfigError(f"--prune-after must be >= 1 (an epoch), got {args.prune_after}")
    space = load_space(args.space)
    base = config_from_args(args, ignore=("space", "trials", "n_jobs", "prune_after", "no_prune"))
    base = dataclasses.replace(base, progress=False)
    prune_after = None if args.no_prune else args.prune_after
    tune(base, space, args.out, args.trials, args.n_jobs, prune_after=prune_after)
    return 0

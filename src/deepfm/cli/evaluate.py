"""``deepfm evaluate``: metrics of a trained model on labelled files in the layout it was trained on."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from deepfm.data.options import LAYOUTS


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="AUC, logloss, gAUC, calibration (and HitRate/NDCG) of a model on labelled files",
        description="Score labelled files with a trained model and report its metrics. Files are read "
        "in the layout the model was trained on (ratings.dat, a headerless Criteo TSV, the model's "
        "spec) or as records (CSV/TSV with header, Parquet, JSON Lines) by --format.",
    )
    p.add_argument("--model", required=True, help="run folder of 'deepfm train' (or its model.pt)")
    p.add_argument("--input", required=True, nargs="+", metavar="FILE", help="labelled file(s)")
    p.add_argument(
        "--format",
        default="auto",
        choices=LAYOUTS,
        help="input layout (default auto: records files by suffix, else the model's own layout)",
    )
    p.add_argument(
        "--label",
        help="label column or rule such as 'rating > 3' (default: the rule of the training data)",
    )
    p.add_argument(
        "--metrics",
        help="comma-separated auc, logloss, gauc, calibration, hitrate@K, ndcg@K (default: the run's)",
    )
    p.add_argument("--group-by", metavar="FIELD", help="gAUC group field (default: user_id when present)")
    p.add_argument(
        "--rank-negatives",
        type=int,
        metavar="N",
        help="HitRate/NDCG: N sampled unrated candidate items per positive row; 0 = all items",
    )
    p.add_argument("--output", metavar="FILE", help="write the metrics as JSON here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import deepfm
    from deepfm.io import write_json

    model = deepfm.load(args.model)
    start = time.perf_counter()
    result = model.evaluate(
        args.input,
        label=args.label,
        metrics=args.metrics,
        group_by=args.group_by,
        negatives=args.rank_negatives,
        layout=args.format,
    )
    result = {"model": args.model, "inputs": list(args.input), **result}
    result["seconds"] = time.perf_counter() - start
    names = {"auc": "AUC", "logloss": "logloss", "gauc": "gAUC", "calibration": "calibration"}
    print(f"{result['rows']:,} rows, positive rate {result['positive_rate']:.4f}")
    for key, value in result.items():
        if key in names or "@" in key:
            shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "n/a"
            print(f"{names.get(key, key):<12} {shown}")
    if "gauc" not in result and not args.metrics and result["evaluation"]["gauc_group"] is None:
        print(f"{'gAUC':<12} n/a (the model has no user_id field; --group-by FIELD: AUC per FIELD value)")
    if "ranking" in result["evaluation"]:
        print(
            f"ranking: {result['ranking_targets']:,} targets; {result['evaluation']['ranking']['candidates']}"
        )
    if args.output:
        write_json(args.output, result)
        print(f"-> {args.output}", file=sys.stderr)
    return 0

"""``deepfm predict``: score a file of raw records with a trained model."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from deepfm.data.options import LAYOUTS


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        help="click probabilities for a file of raw records",
        description="Read raw records (ids as in the source data; MovieLens: user_id, movie_id), "
        "apply the model's feature map (unseen values go to OOV) and write the records with a "
        "'probability' column. Input: .csv, .tsv, .parquet or .jsonl; output format by suffix.",
    )
    p.add_argument("--model", required=True, help="run folder of 'deepfm train' (or its model.pt)")
    p.add_argument("--input", required=True, help="records file (.csv, .tsv, .parquet, .jsonl)")
    p.add_argument("--output", required=True, help="where to write records + probability")
    p.add_argument(
        "--format",
        default="auto",
        choices=LAYOUTS,
        help="input layout: records (by suffix), movielens-1m (ratings.dat), movielens-100k (u.data), "
        "spec (the model's training spec, e.g. a headerless Criteo TSV); auto (default): records "
        "files by suffix, else the layout the model was trained on",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import deepfm
    from deepfm.serving.predict import predict_file

    model = deepfm.load(args.model)
    start = time.perf_counter()
    scored = predict_file(model, args.input, args.output, args.format)
    seconds = time.perf_counter() - start
    print(
        f"scored {len(scored):,} records in {seconds:.2f}s -> {args.output}",
        file=sys.stderr,
    )
    return 0

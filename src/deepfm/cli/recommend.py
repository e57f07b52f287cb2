"""``deepfm recommend``: the top-K items a user has not rated in training, with titles."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "recommend",
        help="top-K unrated items for a user (MovieLens models)",
        description="Score every item (movie) the user did not rate in the training data in one "
        "batched forward pass and print the K best, with titles when the model carries them.",
    )
    p.add_argument("--model", required=True, help="run folder of 'deepfm train' (or its model.pt)")
    p.add_argument("--user", required=True, help="user id as in the data (e.g. 42)")
    p.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    p.add_argument("--include-rated", action="store_true", help="also rank items the user rated in training")
    p.add_argument(
        "--min-item-count",
        type=int,
        default=None,
        metavar="N",
        help="recommend only items that at least N users rated in training (default: 2%% of the "
        "training users; 1: every item)",
    )
    p.add_argument(
        "--discount",
        type=float,
        default=0.5,  # deepfm.artifact.recommend.DISCOUNT (not imported: the parsers stay light)
        metavar="D",
        help="rank by the log-odds of the user's score less D times an unknown user's for the same "
        "item (default 0.5; 0: by predicted probability; 1: by lift over the unknown user)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import deepfm
    from deepfm.artifact.recommend import recommend

    model = deepfm.load(args.model)
    result = recommend(
        model,
        args.user,
        args.k,
        exclude_rated=not args.include_rated,
        min_item_count=args.min_item_count,
        discount=args.discount,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=1, default=str))
        return 0
    note = "" if result.known_user else " (not seen in training: scored as an unknown user)"
    if model.facts.rated is None and not args.include_rated:
        note += " (this checkpoint has no record of training ratings: none skipped)"
    print(
        f"user {result.user}{note}: top {len(result.items)} of {result.candidates:,} items "
        f"({result.excluded:,} rated in training skipped, {result.rare:,} rated by too few users)"
    )
    print(format_table(result.items))
    return 0


def format_table(table: Any) -> str:
    """Rank, then the columns: text left-aligned, numbers right-aligned, scores to 4 places."""
    import pandas as pd

    header = ["#", *table.columns]
    rows = [
        [str(rank), *(f"{v:.4f}" if isinstance(v, float) else str(v) for v in values)]
        for rank, values in enumerate(table.itertuples(index=False), start=1)
    ]
    text = {c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])}
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if name in text else cell.rjust(w) for cell, w, name in zip(r, widths, header)
        )
        for r in [header, *rows]
    ).rstrip()

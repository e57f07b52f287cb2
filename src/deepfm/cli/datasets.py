"""``deepfm datasets``: list the built-in data sets, or print one's spec as a starting point."""

from __future__ import annotations

import argparse
from typing import Any

import yaml


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "datasets",
        help="list the built-in data sets",
        description="List the built-in data sets (use with 'deepfm train --dataset NAME'). "
        "With --show NAME, print that data set's spec as YAML, a template for 'deepfm train --spec'.",
    )
    p.add_argument(
        "--show",
        metavar="NAME",
        help="print a built-in data set as a spec (criteo, avazu, movielens-1m, movielens-100k)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepfm.data.datasets import REGISTRY, dataset_names
    from deepfm.errors import ConfigError

    names = dataset_names()
    if args.show:
        from deepfm.data import ctr_datasets

        templates = {"criteo": ctr_datasets.criteo_spec_dict, "avazu": ctr_datasets.avazu_spec_dict}
        if args.show in MOVIELENS:
            print(MOVIELENS_NOTE.format(name=args.show), end="")
            print(yaml.safe_dump(movielens_spec_dict(args.show), sort_keys=False, width=100), end="")
            return 0
        if args.show not in templates:
            raise ConfigError(f"--show takes one of {sorted([*templates, *MOVIELENS])}, got {args.show!r}")
        print(yaml.safe_dump(templates[args.show](), sort_keys=False, width=100), end="")
        return 0
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {REGISTRY[name].description}")
    print("\nAny other data: deepfm train --spec FILE.yaml (deepfm datasets --show criteo: a template).")
    return 0


MOVIELENS = ("movielens-1m", "movielens-100k")
MOVIELENS_NOTE = """\
# {name} is built in: deepfm train --dataset {name} [--data-dir DIR] reads its files with
# dedicated readers (ratings.dat '::'-separated, u.data tab-separated; users/movies side tables
# with --features all). The same ratings declared as a spec, for a file with a header line
# user_id,movie_id,rating,timestamp; for leave-last-out evaluation (HitRate@K, NDCG@K) use
#   split: {{method: leave_last, group: user_id, time: timestamp}}
"""


def movielens_spec_dict(name: str) -> dict[str, Any]:
    """A spec equivalent to the built-in MovieLens data set with ``--features ids``."""
    return {
        "name": name,
        "input": {"files": ["ratings.csv"], "format": "csv", "header": True},
        "label": "rating > 3",
        "fields": ["user_id", "movie_id"],
        "split": {"method": "random", "ratios": [0.8, 0.1, 0.1]},
    }

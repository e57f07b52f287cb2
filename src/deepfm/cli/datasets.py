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
    p.add_argument("--show", metavar="NAME", help="print the spec of a streamed built-in (criteo, avazu)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepfm.data.datasets import REGISTRY, dataset_names
    from deepfm.errors import ConfigError

    names = dataset_names()
    if args.show:
        from deepfm.data import ctr_datasets

        templates = {"criteo": ctr_datasets.criteo_spec_dict, "avazu": ctr_datasets.avazu_spec_dict}
        if args.show not in templates:
            raise ConfigError(f"--show takes one of {sorted(templates)}, got {args.show!r}")
        print(yaml.safe_dump(templates[args.show](), sort_keys=False, width=100), end="")
        return 0
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {REGISTRY[name].description}")
    print("\nAny other data: deepfm train --spec FILE.yaml (deepfm datasets --show criteo: a template).")
    return 0

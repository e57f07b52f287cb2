"""``deepfm datasets``: list the built-in data sets, or print one's spec as a starting point."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from deepfm.data.options import CHOICES

SHOW_NOTE = """\
# {name} as a dataset spec, reading the data set's own files by their names: saved beside them,
# `deepfm train --spec THIS_FILE` prepares exactly what `deepfm train --dataset {name}{options}`
# prepares (same split for the same --seed). Edit it as a starting point for your own data.
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "datasets",
        help="list the built-in data sets",
        description="List the built-in data sets (use with 'deepfm train --dataset NAME'). "
        "With --show NAME, print that data set's spec as YAML: saved beside the data set's files, "
        "'deepfm train --spec' on it prepares what --dataset NAME prepares.",
    )
    p.add_argument("--show", metavar="NAME", help="print a built-in data set as a spec (YAML)")
    p.add_argument(
        "--features",
        default="ids",
        choices=CHOICES["features"],
        help="with --show, MovieLens: the fields, as deepfm train --features (default ids)",
    )
    p.add_argument(
        "--split",
        default="random",
        choices=CHOICES["split"],
        help="with --show, MovieLens: the split, as deepfm train --split (default random)",
    )
    p.add_argument(
        "--drop-neutral",
        action="store_true",
        help="with --show, MovieLens: drop rating-3 rows, as deepfm train --drop-neutral",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepfm.data.catalog import CATALOG, dataset_names, template
    from deepfm.data.options import PrepareOptions
    from deepfm.errors import ConfigError

    names = dataset_names()
    if args.show:
        if args.show not in CATALOG:
            raise ConfigError(f"--show takes one of {names}, got {args.show!r}")
        options = PrepareOptions(
            dataset=args.show, features=args.features, split=args.split, drop_neutral=args.drop_neutral
        )
        given = [
            f" --{name.replace('_', '-')}" + ("" if value is True else f" {value}")
            for name, value in (
                ("features", args.features),
                ("split", args.split),
                ("drop_neutral", args.drop_neutral),
            )
            if value != getattr(PrepareOptions(), name)
        ]
        spec = template(args.show, options)
        print(SHOW_NOTE.format(name=args.show, options="".join(given)), end="")
        print(
            yaml.safe_dump(spec, sort_keys=False, width=100, allow_unicode=True, default_flow_style=None),
            end="",
        )
        return 0
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {CATALOG[name].description}")
    print("\nAny other data: deepfm train --spec FILE.yaml (deepfm datasets --show criteo: a template).")
    return 0

"""``deepfm prepare``: prepare a data set once into a folder that training runs (and ranks) read."""

from __future__ import annotations

import argparse
from typing import Any

from deepfm.cli.train import add_data_options, add_option
from deepfm.data.options import ENGINE_CHOICES, EngineOptions

E = EngineOptions()


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "prepare",
        help="prepare a data set once into a folder (deepfm train --prepared DIR)",
        description="Read, split, fit the vocabularies and encode a data set (the same options as "
        "deepfm train) into --out DIR: feature_map.json, meta.json (rows, options, checksums), the "
        "encoded arrays of train / valid / test and the side tables. 'deepfm train --prepared DIR' "
        "and every data-parallel rank then read it instead of preparing. --engine spark runs the same "
        "stage as Apache Spark jobs (docs/spark.md).",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (new or empty)")
    p.add_argument(
        "--shards",
        type=int,
        default=0,
        metavar="N",
        help="write the training split as N shards (training row k in shard k mod N); with W "
        "data-parallel ranks (N a multiple of W) each rank streams only its own shards from disk",
    )
    add_data_options(p)
    add_option(p, "seed", help="seed of the random split (default 0)")
    p.add_argument("--config", help="YAML file of options, or a preset name (its data options are used)")
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", default=True, help="no progress lines"
    )
    engine = p.add_argument_group("engine")
    engine.add_argument(
        "--engine",
        default=E.engine,
        choices=ENGINE_CHOICES["engine"],
        help="polars (default): streamed on this machine; spark: Apache Spark jobs, from a laptop to a "
        "cluster (pip install 'deepfm[spark]', Java 17+); both write the same folder",
    )
    engine.add_argument(
        "--master",
        default=E.master,
        help="--engine spark: where the jobs run: local[*] (default, in this process), local[N], "
        "spark://HOST:7077, yarn, k8s://...; input files and --out must be on storage every node sees",
    )
    engine.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--engine spark: a Spark setting passed through (repeatable), e.g. spark.executor.memory=8g",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepfm.config import TrainConfig, load_yaml
    from deepfm.data.catalog import dataset_spec
    from deepfm.data.prepare import write_prepared
    from deepfm.errors import ConfigError

    engine = EngineOptions(args.engine, args.master, tuple(args.conf))
    values: dict[str, Any] = load_yaml(args.config) if args.config else {}
    skip = {"config", "out", "run", "command", "shards", *EngineOptions.__dataclass_fields__}
    values.update({k: v for k, v in vars(args).items() if k not in skip})
    options = TrainConfig.from_dict(values).validate().prepare_options()  # unknown keys: an error
    if args.shards < 0:
        raise ConfigError(f"--shards must be >= 1 (0: not sharded), got {args.shards}")
    folder = write_prepared(
        dataset_spec(options), options, args.out, progress=args.progress, shards=args.shards, engine=engine
    )
    sharded = f" ({args.shards} training shards)" if args.shards else ""
    print(f"prepared {options.spec or options.dataset} -> {folder}{sharded}")
    return 0

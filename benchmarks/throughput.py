"""Training throughput, side by side in one process on the same split.

Runs, each for ``--epochs`` epochs on the same data and seed:
  1. the reference pipeline (per-sample Dataset + DataLoader, sigmoid + BCELoss);
  2. a plain batched PyTorch loop over the same reference model;
  3. ``deepfm`` (the package's default training path) at batch 1024 and 4096,
  4. optionally ``deepfm`` with other ``--optimizer`` choices at batch 1024 (``--optimizers``)
     and ``deepfm --no-fast`` (the plain model code without the fused kernels, ``--plain-model``),
and prints training samples/s (wall clock and per CPU-second of this process, which is steadier
on a shared machine), the ratios to the reference and to the plain loop, and test AUC after
those epochs. Rounds are interleaved (``--rounds``), the best round of each row is reported.

    PYTHONPATH=src python benchmarks/throughput.py --data-dir ../shared/data/ml-1m-half
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import reference  # noqa: E402

from deepfm.config import TrainConfig  # noqa: E402
from deepfm.training.checkpoint import model_from_config  # noqa: E402
from deepfm.training.loop import predict_probs, train_epoch  # noqa: E402
from deepfm.training.metrics import auc  # noqa: E402
from deepfm.training.run import configure_threads, load_data, make_optimizer, trainable  # noqa: E402


@dataclass
class Row:
    """One pipeline: trains one epoch per call, remembers the best wall and CPU rates."""

    name: str
    batch: int
    epoch: Any  # () -> samples
    predict: Any  # () -> test AUC
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def run_epoch(self) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        samples = self.epoch()
        self.wall.append(samples / (time.perf_counter() - wall))
        self.cpu.append(samples / (time.process_time() - cpu))


def reference_row(data, batch_size: int, plain: bool, seed: int) -> Row:
    dims, ids = reference.local_ids(data)
    torch.manual_seed(seed)
    model = reference.ReferenceDeepFM(dims)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)
    generator = torch.Generator().manual_seed(seed)
    y = data.train.label
    x_train = torch.from_numpy(ids["train"])

    def epoch() -> int:
        if plain:
            return reference.train_plain_epoch(model, x_train, y, batch_size, optimizer, generator)
        return reference.train_reference_epoch(
            model, ids["train"], y.numpy(), batch_size, optimizer, generator
        )

    def test_auc() -> float:
        return auc(data.test.label.numpy(), reference.predict(model, torch.from_numpy(ids["test"])))

    name = "plain batched loop" if plain else "reference (Dataset+DataLoader)"
    return Row(name, batch_size, epoch, test_auc)


def deepfm_row(
    data, batch_size: int, seed: int, base: TrainConfig, optimizer_name: str, fast: bool = True
) -> Row:
    config = TrainConfig(**{**base.to_dict(), "batch_size": batch_size, "mlp": base.mlp, "fast": fast})
    config.optimizer = optimizer_name
    torch.manual_seed(seed)
    model = model_from_config(config, data.feature_map)
    net = trainable(model, data, config)  # the fused training path (deepfm.fast) unless fast=False
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(seed)

    def epoch() -> int:
        return train_epoch(net, data.train, optimizer, batch_size, generator).samples

    def test_auc() -> float:
        return auc(data.test.label.numpy(), predict_probs(model, data.test))

    suffix = "" if optimizer_name == base.optimizer else f", --optimizer {optimizer_name}"
    suffix += "" if fast else ", --no-fast"
    return Row(f"deepfm (batch {batch_size}{suffix})", batch_size, epoch, test_auc)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="../shared/data/ml-1m-half")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per row (= rounds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="0 = deepfm's automatic choice")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument(
        "--optimizers",
        default="",
        help="extra deepfm rows at batch 1024 with these --optimizer values, e.g. adam,lazy",
    )
    parser.add_argument(
        "--plain-model", action="store_true", help="also a deepfm row with --no-fast (the plain model code)"
    )
    args = parser.parse_args()
    base = TrainConfig(data_dir=args.data_dir, seed=args.seed, threads=args.threads, progress=False)
    configure_threads(args.threads)
    data = load_data(base)
    print(
        f"{len(data.train):,} training rows, {args.epochs} epoch(s) per row (interleaved), "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    )
    rows = []
    if not args.skip_reference:
        rows.append(reference_row(data, 1024, False, args.seed))
    rows.append(reference_row(data, 1024, True, args.seed))
    rows += [deepfm_row(data, bs, args.seed, base, base.optimizer) for bs in (1024, 4096)]
    rows += [deepfm_row(data, 1024, args.seed, base, o) for o in args.optimizers.split(",") if o]
    if args.plain_model:
        rows.append(deepfm_row(data, 1024, args.seed, base, base.optimizer, fast=False))
    for _ in range(args.epochs):
        for row in rows:
            row.run_epoch()
    first, plain = rows[0], next(r for r in rows if r.name == "plain batched loop")
    first_name = first.name.split(" (")[0]
    print(
        f"\n| pipeline | batch | samples/s (wall) | samples per CPU-s | x {first_name} | x plain loop "
        f"| test AUC after {args.epochs} epoch(s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        wall, cpu = max(row.wall), max(row.cpu)
        print(
            f"| {row.name} | {row.batch} | {wall:,.0f} | {cpu:,.0f} | {wall / max(first.wall):.2f} "
            f"| {wall / max(plain.wall):.2f} (CPU-s: {cpu / max(plain.cpu):.2f}) | {row.predict():.4f} |"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this benchmark process: {peak:,.0f} MiB")


if __name__ == "__main__":
    main()

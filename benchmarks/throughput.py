"""Training throughput, side by side in one process on the same split.

Runs, each for ``--epochs`` epochs on the same data and seed:
  1. the reference pipeline (per-sample Dataset + DataLoader, sigmoid + BCELoss);
  2. a plain batched PyTorch loop over the same reference model;
  3. ``deepfm`` (the package's default training path) at batch 1024 and 4096,
and prints training samples/s, the ratio to the reference and test AUC after those epochs.

    python benchmarks/throughput.py --data-dir ../shared/data/ml-1m-half --epochs 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import reference  # noqa: E402

from deepfm.config import TrainConfig  # noqa: E402
from deepfm.training.checkpoint import model_from_config  # noqa: E402
from deepfm.training.loop import predict_probs, train_epoch  # noqa: E402
from deepfm.training.metrics import auc  # noqa: E402
from deepfm.training.run import configure_threads, load_data, make_optimizer  # noqa: E402


def run_reference(data, epochs: int, batch_size: int, plain: bool, seed: int):
    dims, ids = reference.local_ids(data)
    torch.manual_seed(seed)
    model = reference.ReferenceDeepFM(dims)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)
    generator = torch.Generator().manual_seed(seed)
    y = data.train.label
    seconds, samples = 0.0, 0
    for _ in range(epochs):
        start = time.perf_counter()
        if plain:
            samples += reference.train_plain_epoch(
                model, torch.from_numpy(ids["train"]), y, batch_size, optimizer, generator
            )
        else:
            samples += reference.train_reference_epoch(
                model, ids["train"], y.numpy(), batch_size, optimizer, generator
            )
        seconds += time.perf_counter() - start
    test_auc = auc(data.test.label.numpy(), reference.predict(model, torch.from_numpy(ids["test"])))
    return samples / seconds, test_auc


def run_ours(data, epochs: int, batch_size: int, seed: int, base: TrainConfig):
    config = TrainConfig(**{**base.to_dict(), "batch_size": batch_size, "mlp": base.mlp})
    torch.manual_seed(seed)
    model = model_from_config(config, data.feature_map)
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(seed)
    seconds, samples = 0.0, 0
    for _ in range(epochs):
        stats = train_epoch(model, data.train, optimizer, batch_size, generator)
        seconds += stats.seconds
        samples += stats.samples
    test_auc = auc(data.test.label.numpy(), predict_probs(model, data.test))
    return samples / seconds, test_auc


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="../shared/data/ml-1m-half")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    base = TrainConfig(data_dir=args.data_dir, seed=args.seed, threads=args.threads, progress=False)
    configure_threads(args.threads)
    data = load_data(base)
    print(
        f"{len(data.train):,} training rows, {args.epochs} epoch(s), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    rows = []
    if not args.skip_reference:
        rows.append(
            (
                "reference (Dataset+DataLoader)",
                1024,
                *run_reference(data, args.epochs, 1024, False, args.seed),
            )
        )
    rows.append(("plain batched loop", 1024, *run_reference(data, args.epochs, 1024, True, args.seed)))
    for bs in (1024, 4096):
        rows.append((f"deepfm (batch {bs})", bs, *run_ours(data, args.epochs, bs, args.seed, base)))
    base_rate = rows[0][2]
    print(f"\n| pipeline | batch | samples/s | x {rows[0][0].split(' (')[0]} | test AUC |")
    print("|---|---:|---:|---:|---:|")
    for name, bs, rate, test_auc in rows:
        print(f"| {name} | {bs} | {rate:,.0f} | {rate / base_rate:.2f} | {test_auc:.4f} |")


if __name__ == "__main__":
    main()

"""The speed layer against the plain modules, per model, on a synthetic batch layout.

Random ids (and numeric values), so only speed is measured: every model in ``--models`` trains
``--rounds`` interleaved epochs with the fused path (``deepfm.fast``) and with the plain modules
(``--no-fast``), and the best samples per CPU-second of each are printed with their ratio.
Defaults are the Criteo shape: 39 id fields, a 620k-row table, embed 16, MLP 400-400-400,
dropout 0.2, batch 4096.

    PYTHONPATH=src python benchmarks/fast_vs_plain.py --models deepfm,fm --dense 13 --fields 26
"""

from __future__ import annotations

import argparse
import time

import torch

from deepfm import fast
from deepfm.config import parse_mlp
from deepfm.data.batching import Split
from deepfm.models import build_model
from deepfm.training.loop import train_epoch
from deepfm.training.optim import make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="lr,fm,widedeep,deepfm,dcnv2")
    parser.add_argument("--fields", type=int, default=39, help="categorical id fields")
    parser.add_argument("--dense", type=int, default=0, help="numeric fields")
    parser.add_argument("--rows", type=int, default=620_000, help="rows of the embedding table")
    parser.add_argument("--mlp", default="400,400,400")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=6, help="steps per epoch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n = args.batch_size * args.steps
    split = Split(
        ids=torch.randint(1, args.rows, (n, args.fields), generator=g),
        label=torch.randint(0, 2, (n,), generator=g).float(),
        dense=torch.randn(n, args.dense, generator=g) if args.dense else None,
    )
    print(
        f"{args.fields} id + {args.dense} numeric fields, {args.rows:,}-row table, MLP {args.mlp}, "
        f"batch {args.batch_size}, {args.threads} thread(s); samples per CPU-second\n"
    )
    print("| model | fused | plain (--no-fast) | fused / plain |\n|---|---:|---:|---:|")
    for name in args.models.split(","):
        epochs = {}
        for enabled in (True, False):
            torch.manual_seed(0)
            model = build_model(
                name,
                num_rows=args.rows,
                num_fields=args.fields + args.dense,
                num_dense=args.dense,
                embed_dim=16,
                mlp=parse_mlp(args.mlp),
                dropout=args.dropout,
            )
            net = fast.trainable(model, split, enabled)
            optimizer = make_optimizer(model, "fused", 1e-3, 1e-6)
            generator = torch.Generator().manual_seed(0)
            epochs[enabled] = (net, optimizer, generator)
        best = dict.fromkeys(epochs, 0.0)
        for _ in range(args.rounds):
            for enabled, (net, optimizer, generator) in epochs.items():
                cpu = time.process_time()
                samples = train_epoch(net, split, optimizer, args.batch_size, generator).samples
                best[enabled] = max(best[enabled], samples / (time.process_time() - cpu))
        print(f"| {name} | {best[True]:,.0f} | {best[False]:,.0f} | {best[True] / best[False]:.2f} |")


if __name__ == "__main__":
    main()

"""What ``--embedding-l2`` costs per training step on a large table, and whether a
batch-rows-only variant is needed.

Interleaved in one process (so machine load hits every variant alike), per optimizer step on an
embedding table of ROWS x 11 with a batch of 4096 rows x 39 fields looked up:

- ``fused, no l2``: ``--optimizer fused``, weight decay 0;
- ``fused, --embedding-l2``: the same kernel with weight decay 0.05 (coupled decay of every row);
- ``lazy, --embedding-l2``: ``--optimizer lazy``: decay (and Adam) on the batch's rows only;
- ``loss term (FuxiCTR)``: plain fused Adam on ``loss + lambda/2 * ||W||^2`` of the whole table.

Usage: python benchmarks/l2_cost.py [--rows 2000000] [--repeats 5]; prints ms/step and ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepfm.training.optim import make_optimizer  # noqa: E402


class Table(torch.nn.Module):
    def __init__(self, rows: int) -> None:
        super().__init__()
        self.features = torch.nn.Module()
        self.features.table = torch.nn.Embedding(rows, 11)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.features.table(ids).sum((1, 2))


def step_time(variant: str, model: Table, opt, ids: torch.Tensor, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss = model(ids).square().mean()
        if variant == "loss term (FuxiCTR)":
            loss = loss + 0.05 / 2 * torch.norm(model.features.table.weight, 2) ** 2
        loss.backward()
        opt.step()
    return (time.perf_counter() - started) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ids = torch.randint(0, args.rows, (4096, 39))
    variants = {
        "fused, no l2": ("fused", 0.0),
        "fused, --embedding-l2": ("fused", 0.05),
        "lazy, --embedding-l2": ("lazy", 0.05),
        "loss term (FuxiCTR)": ("fused", 0.0),
    }
    setups = {}
    for name, (optimizer, l2) in variants.items():
        model = Table(args.rows)
        setups[name] = (model, make_optimizer(model, optimizer, 1e-3, 0.0, embedding_l2=l2, net_l2=0.0))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved
        for name, (model, opt) in setups.items():
            times[name].append(step_time(name, model, opt, ids, args.steps))
    base = min(times["fused, no l2"])
    print(f"table {args.rows:,} x 11, batch 4096 x 39 ids, 1 thread; best of {args.repeats} x {args.steps}")
    for name, t in times.items():
        print(f"{name:24s} {min(t):8.2f} ms/step  {min(t) / base:5.2f}x")


if __name__ == "__main__":
    main()

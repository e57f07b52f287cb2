"""Full-table (``fused``) vs row-wise (``lazy``) Adam as the embedding table grows.

One DeepFM training step (39 fields, embed 16, batch 4096, Zipf-distributed ids per field as in
the Criteo-like workload, a small MLP so the table's share of the step shows) for each
``--optimizer`` and table size, in CPU milliseconds of this process per step (steadier than
wall time on a shared machine), table sizes and optimizers interleaved, best of ``--rounds``.
Also prints the distinct rows a batch touches, which is what row-wise Adam pays for.

    PYTHONPATH=src python benchmarks/table_optimizers.py --rows 618959,2500000,10000000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F

from deepfm.models import build_model
from deepfm.training import auto
from deepfm.training.optim import make_optimizer

FIELDS, EMBED, BATCH = 39, 16, 4096


def batches(rows: int, steps: int, seed: int = 0) -> list[torch.Tensor]:
    """``steps`` batches of ids: field ``f`` owns rows ``[1 + f * n, 1 + (f + 1) * n)``, Zipf(1.2) ranks."""
    rng = np.random.default_rng(seed)
    per_field = (rows - 1) // FIELDS
    out = []
    for _ in range(steps):
        ranks = (rng.zipf(1.2, (BATCH, FIELDS)) - 1) % per_field
        out.append(torch.from_numpy(1 + ranks + per_field * np.arange(FIELDS)))
    return out


def step_ms(rows: int, optimizer: str, ids: list[torch.Tensor], mlp: tuple[int, ...]) -> float:
    torch.manual_seed(0)
    model = build_model("deepfm", num_rows=rows, num_fields=FIELDS, embed_dim=EMBED, mlp=mlp, dropout=0.0)
    opt = make_optimizer(model, optimizer, lr=1e-3, weight_decay=1e-6)
    label = torch.ones(BATCH)
    times = []
    for i, x in enumerate(ids):
        t = time.process_time()
        loss = F.binary_cross_entropy_with_logits(model(x), label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # the first step allocates the optimizer state
            times.append(time.process_time() - t)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="618959,2500000,10000000", help="table sizes")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mlp", default="64", help="MLP widths (small: the table's share shows)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mlp = tuple(int(w) for w in args.mlp.split(",") if w)
    sizes = [int(r) for r in args.rows.split(",")]
    data = {rows: batches(rows, args.steps) for rows in sizes}
    best: dict[tuple[int, str], float] = {}
    for _ in range(args.rounds):
        for rows in sizes:
            for name in ("fused", "lazy"):
                ms = step_ms(rows, name, data[rows], mlp)
                best[rows, name] = min(ms, best.get((rows, name), float("inf")))
    lookups = BATCH * FIELDS
    print(f"batch {BATCH} x {FIELDS} fields = {lookups:,} lookups, MLP {mlp}, 1 thread, CPU ms per step\n")
    print("| table rows | distinct rows per batch | fused | lazy | lazy / fused | `auto` picks |")
    print("|---:|---:|---:|---:|---:|---|")
    for rows in sizes:
        distinct = np.mean([len(torch.unique(x)) for x in data[rows]])
        fused, lazy = best[rows, "fused"], best[rows, "lazy"]
        table = torch.nn.Module()
        table.t = torch.nn.Embedding(1, 1)
        table.t.weight = torch.nn.Parameter(torch.empty(rows, 1), requires_grad=False)
        pick = auto.auto_optimizer(table, BATCH, FIELDS)
        print(f"| {rows:,} | {distinct:,.0f} | {fused:.0f} | {lazy:.0f} | {lazy / fused:.2f} | {pick} |")


if __name__ == "__main__":
    main()

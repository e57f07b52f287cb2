"""Cost of resumability: state.pt save time and size, and the training-loop overhead.

Side by side in one process: the epoch time of ``train_epoch`` with the per-step loss window and
NaN checks (and a state save every ``--every`` steps) against the same loop with no hooks, on a
generated MovieLens-shaped data set (``--rows``), alternating runs so machine load hits both.

    python benchmarks/state_cost.py --rows 200000 --every 100
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepfm.config import TrainConfig
from deepfm.data.batching import Split
from deepfm.models import build_model
from deepfm.training.early_stopping import EarlyStopping
from deepfm.training.loop import EpochPosition, train_epoch
from deepfm.training.state import TrainingState


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--users", type=int, default=6040)
    p.add_argument("--movies", type=int, default=3706)
    p.add_argument("--every", type=int, default=100, help="--checkpoint-every for the hooked runs")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    opts = p.parse_args()
    torch.set_num_threads(opts.threads)
    rng = np.random.default_rng(0)
    ids = np.stack(
        [
            1 + rng.integers(0, opts.users, opts.rows),
            2 + opts.users + rng.integers(0, opts.movies, opts.rows),
        ],
        1,
    )
    split = Split.from_arrays({"ids": ids}, (rng.random(opts.rows) < 0.5).astype(np.float32))
    rows = 3 + opts.users + opts.movies
    config = TrainConfig(checkpoint_every=opts.every)
    module = build_model("deepfm", num_rows=rows, num_fields=2)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    stopper = EarlyStopping(3)
    with tempfile.TemporaryDirectory() as out:
        state = TrainingState(out, config, module, optimizer, generator, stopper)
        train_epoch(module, split, optimizer, 1024, generator)  # warm up, fills Adam state
        stopper.update(1, 0.5, module)
        saves = []
        for _ in range(10):
            t = time.perf_counter()
            state.save(EpochPosition(1, 5, torch.zeros((), dtype=torch.float64), 5120))
            saves.append(time.perf_counter() - t)
        size = (Path(out) / "state.pt").stat().st_size
        times: dict[str, list[float]] = {"plain": [], "hooked": []}
        for _ in range(opts.repeats):
            for kind in times:
                kw = state.loop_options(2) if kind == "hooked" else {}
                t = time.perf_counter()
                train_epoch(module, split, optimizer, 1024, generator, **kw)
                times[kind].append(time.perf_counter() - t)
    steps = -(-opts.rows // 1024)
    save_ms = statistics.median(saves) * 1e3
    plain, hooked = statistics.median(times["plain"]), statistics.median(times["hooked"])
    params = sum(p.numel() for p in module.parameters())
    print(f"state.pt: {size / 1e6:.2f} MB for {params:,} parameters; save {save_ms:.1f} ms (median of 10)")
    print(
        f"epoch of {steps} steps: no saves {plain:.3f}s, saves every {opts.every} steps "
        f"{hooked:.3f}s (median of {opts.repeats}); ratio {hooked / plain:.3f}"
    )


if __name__ == "__main__":
    main()

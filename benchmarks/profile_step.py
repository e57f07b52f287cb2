"""Where one training step's time goes: phases (forward, loss, backward, optimizer) per
``--optimizer``, for the speed layer's training step without autograd (``deepfm.fast``: forward,
loss and backward as one phase), its fused forward node with autograd, and the plain model code
(``--no-fast``), in CPU time of this process (steadier than wall time on a shared machine), then
the top operators by self CPU time from ``torch.profiler`` for the default path.

    PYTHONPATH=src python benchmarks/profile_step.py --data-dir ../shared/data/ml-1m-half
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from deepfm.artifact.checkpoint import model_from_config
from deepfm.config import TrainConfig
from deepfm.training.loop import train_epoch
from deepfm.training.optim import optimizer_for
from deepfm.training.run import configure_threads, load_data, trainable


def phases(data, config: TrainConfig, steps: int, rounds: int, fused_step: bool = False) -> dict[str, float]:
    """Best-of-``rounds`` mean microseconds per step of each phase (with ``fused_step``: the
    speed layer's training step without autograd, its forward + loss + backward as one phase)."""
    torch.manual_seed(0)
    model = model_from_config(config, data.feature_map)
    net = trainable(model, data, config)
    optimizer = optimizer_for(model, config)
    perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    ids = data.train.ids[perm].split(config.batch_size)[:steps]
    label = data.train.label[perm].split(config.batch_size)[:steps]
    clock = time.process_time
    step = getattr(net, "train_step", None) if fused_step else None
    best: dict[str, float] = {}
    for _ in range(rounds):
        spent = dict.fromkeys(("forward", "loss", "zero_grad+backward", "optimizer step"), 0.0)
        for x, y in zip(ids, label, strict=True):
            t0 = clock()
            if step is not None:  # forward, loss and gradients in one call: counted as forward
                optimizer.zero_grad(set_to_none=True)
                step(x, None, None, y)
                t1 = t2 = t3 = clock()
            else:
                logits = net(x)
                t1 = clock()
                loss = F.binary_cross_entropy_with_logits(logits, y)
                t2 = clock()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                t3 = clock()
            optimizer.step()
            t4 = clock()
            for key, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                spent[key] += dt
        per_step = {k: v / len(ids) * 1e6 for k, v in spent.items()}
        per_step["total"] = sum(per_step.values())
        if not best or per_step["total"] < best["total"]:
            best = per_step
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="../shared/data/ml-1m-half")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--optimizers", default="fused,adam,lazy")
    args = parser.parse_args()
    base = TrainConfig(data_dir=args.data_dir, threads=args.threads, progress=False)
    configure_threads(args.threads)
    data = load_data(base)
    print(f"batch {base.batch_size}, {torch.get_num_threads()} thread(s); CPU microseconds per step\n")
    print("| --optimizer | path | forward | loss | zero_grad+backward | optimizer step | total |")
    print("|---|---|---:|---:|---:|---:|---:|")
    paths = (
        ("fused step, no autograd", True, True),
        ("fused node", True, False),
        ("plain (--no-fast)", False, False),
    )
    for name in args.optimizers.split(","):
        for label, fast, step in paths:
            config = TrainConfig(**{**base.to_dict(), "optimizer": name, "mlp": base.mlp, "fast": fast})
            p = phases(data, config, args.steps, args.rounds, fused_step=step)
            print(
                f"| {name} | {label} | {p['forward']:.0f} "
                f"| {p['loss']:.0f} | {p['zero_grad+backward']:.0f} | {p['optimizer step']:.0f} "
                f"| {p['total']:.0f} |"
            )

    torch.manual_seed(0)
    model = model_from_config(base, data.feature_map)
    net = trainable(model, data, base)
    optimizer = optimizer_for(model, base)
    part = data.train.take(torch.arange(min(len(data.train), base.batch_size * 100)))
    generator = torch.Generator().manual_seed(0)
    train_epoch(net, part, optimizer, base.batch_size, generator)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        train_epoch(net, part, optimizer, base.batch_size, generator)
    print("\nTop operators of the default path (torch.profiler, 100 steps):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()

"""Where one training step's time goes: phases (forward, loss, backward, optimizer) per
``--optimizer``, for the speed layer's training step without autograd (``deepfm.fast``: forward,
loss and backward as one phase), its fused forward node with autograd, and the plain model code
(``--no-fast``), in CPU time of this process (steadier than wall time on a shared machine), then
the top operators by self CPU time from ``torch.profiler`` for the default path.

    PYTHONPATH=src python benchmarks/profile_step.py --data-dir ../shared/data/ml-1m-half

``--workload criteo``: where a Criteo-like DeepFM step goes (the data and recipe of
``throughput.py --workload criteo``; every part training, as after the FM warm-up): wall
milliseconds per step by kind of work (``torch.profiler`` self time of each operator, sorted
into matrix products, embedding gather, table gradient, optimizer, BatchNorm, ReLU and dropout,
dropout mask draws, FM and first order, loss, batching; the rest of the step's wall time is
Python and NumPy), beside the GEMM-only limit measured in the same run.

    PYTHONPATH=src python benchmarks/profile_step.py --workload criteo --steps 30
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.nn import functional as F

from deepfm.artifact.checkpoint import model_from_config
from deepfm.config import TrainConfig
from deepfm.training import auto
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


CRITEO_WIDTHS = (400, 1)  # the MLP's activations: [batch, 400], the output [batch, 1]


def kind_of(name: str, shapes: list, table_rows: int) -> str:
    """The kind of work of one operator called by the step (its name and input shapes)."""
    first = list(shapes[0]) if shapes and shapes[0] else []
    if name in ("aten::mm", "aten::addmm"):
        return "matrix products (MLP; addmm with its bias copy)"
    if name == "aten::index_select":
        return "embedding gather"
    if name in ("aten::index_put_", "aten::index_add_") or (first and first[0] == table_rows):
        return "table gradient (zeroing, adding the batch's rows)"
    if "adam" in name or (name == "aten::add_" and not first):  # (+ the shared step counter)
        return "optimizer (Adam over the table and the MLP)"
    if "batch_norm" in name:
        return "BatchNorm forward + backward"
    if len(first) == 2 and first[1] in CRITEO_WIDTHS and first[0] > 1:
        return "ReLU, dropout masks applied, bias column sums"
    if name in ("aten::randint", "aten::random_"):
        return "dropout mask draws (RNG)"
    if len(first) == 1 and name not in ("aten::addmv_",):
        return "loss (and other per-row ops)"
    if name in ("aten::index", "aten::randperm", "aten::split", "aten::split_with_sizes"):
        return "batching (shuffled gather, views)"
    return "FM, first order, MLP input copy"


def criteo_profile(args: argparse.Namespace) -> None:
    """Wall ms per Criteo-like DeepFM step by kind of work, and the GEMM-only limit beside it."""
    sys.path.insert(0, str(Path(__file__).parent))
    import throughput  # noqa: PLC0415  (a sibling benchmark script: its data and recipe)

    spec = throughput.criteo_data(args.rows, args.workdir)
    config = TrainConfig(spec=spec, progress=False, precision=args.precision, **throughput.CRITEO_RECIPE)
    data = load_data(config)
    torch.manual_seed(0)
    model = model_from_config(config, data.feature_map)
    choices = auto.resolve(config, model, data.feature_map)
    threads = args.threads or choices.threads
    torch.set_num_threads(threads)
    net = trainable(model, data, config)
    optimizer = optimizer_for(model, config, choices.optimizer)
    batch = config.batch_size
    part = data.train.take(torch.arange(batch * args.steps))
    generator = torch.Generator().manual_seed(0)
    train_epoch(net, part, optimizer, batch, generator)  # warm: optimizer state, thread pool
    limit = throughput.gemm_row(len(data.feature_map.fields) * config.embed_dim, threads, choices.precision)
    table_rows = data.feature_map.num_rows
    best: dict[str, float] | None = None
    for _ in range(args.rounds):
        limit.run_epoch()
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
        ) as prof:
            stats = train_epoch(net, part, optimizer, batch, generator)
        spent: dict[str, float] = defaultdict(float)
        for event in prof.events():  # the operators the step calls (with what they call inside)
            if event.cpu_parent is None:
                spent[kind_of(event.name, event.input_shapes, table_rows)] += event.cpu_time_total / 1e3
        steps = args.steps
        per_step = {k: v / steps for k, v in spent.items()}
        per_step["step (wall)"] = stats.seconds * 1e3 / steps
        if best is None or per_step["step (wall)"] < best["step (wall)"]:
            best = per_step
    gemm_ms = batch / max(limit.wall) * 1e3
    step_ms = best.pop("step (wall)")
    print(
        f"{data.name}: DeepFM, MLP {config.mlp}, batch {batch}, {threads} thread(s), {choices.precision}, "
        f"optimizer {choices.optimizer}; best of {args.rounds} rounds of {args.steps} steps\n"
    )
    print("| kind of work | ms a step | share of the step |")
    print("|---|---:|---:|")
    for kind, ms in sorted(best.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {ms:.1f} | {ms / step_ms:.0%} |")
    rest = step_ms - sum(best.values())
    print(f"| Python, NumPy (dropout mask conversion), untracked | {rest:.1f} | {rest / step_ms:.0%} |")
    print(f"| **step (wall)** | **{step_ms:.1f}** | 100% |")
    print(
        f"\nGEMM-only limit: {gemm_ms:.1f} ms a step ({max(limit.wall):,.0f} samples/s); the step runs at "
        f"{gemm_ms / step_ms:.0%} of it ({batch / step_ms * 1e3:,.0f} samples/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="../shared/data/ml-1m-half")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--optimizers", default="fused,adam,lazy")
    parser.add_argument("--workload", choices=["movielens", "criteo"], default="movielens")
    parser.add_argument("--rows", type=int, default=1_000_000, help="criteo: rows to generate")
    parser.add_argument("--workdir", default=None, help="criteo: as throughput.py --workdir")
    parser.add_argument("--precision", default="fp32", help="criteo: fp32 or bf16")
    args = parser.parse_args()
    if args.workload == "criteo":
        criteo_profile(args)
        return
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

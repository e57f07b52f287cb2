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

``--workload criteo``: a Criteo-like data set instead (see :func:`criteo_main`): a plain batched
PyTorch loop at 2 threads against ``deepfm train`` defaults, 1 epoch each, samples/s and test AUC,
at equal work: deepfm's samples/s are those of the steps that train the whole model, as every
step of the plain loop does (the FM warm-up's steps, MLP frozen, are reported apart). Each row
is also given as a share of the GEMM-only limit of its MLP (the forward and both backward matrix
products alone, at the row's threads and precision), measured in every round of the same run.

    PYTHONPATH=src python benchmarks/throughput.py --workload criteo            # 1M rows
    PYTHONPATH=src python benchmarks/throughput.py --workload criteo --rows 200000 \
        --variants "fm_warmup_steps=0;threads=1;precision=fp32;optimizer=lazy"
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import criteo_scale  # noqa: E402
import reference  # noqa: E402

from deepfm.artifact.checkpoint import model_from_config  # noqa: E402
from deepfm.config import TrainConfig  # noqa: E402
from deepfm.evaluation.metrics import auc  # noqa: E402
from deepfm.evaluation.scoring import predict_probs  # noqa: E402
from deepfm.training import auto  # noqa: E402
from deepfm.training.loop import train_epoch  # noqa: E402
from deepfm.training.optim import optimizer_for  # noqa: E402
from deepfm.training.precision import Autocast  # noqa: E402
from deepfm.training.run import configure_threads, load_data, train, trainable  # noqa: E402


@dataclass
class Row:
    """One pipeline: trains one epoch per call, remembers the best wall and CPU rates."""

    name: str
    batch: int
    epoch: Any  # () -> samples
    predict: Any  # () -> test AUC
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # training seconds, if epoch() times itself
    warmup: list[tuple[float, int]] = field(default_factory=list)  # FM warm-up: (samples/s, samples)
    flops: float = 0.0  # per step (the GEMM-only row)
    limit: tuple[int, str] = (0, "")  # (threads, precision) of the GEMM-only limit it is compared with

    def run_epoch(self) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        samples = self.epoch()
        elapsed = time.perf_counter() - wall
        if len(self.seconds) > len(self.wall):  # training time alone (no model set-up, no eval)
            elapsed = self.seconds[-1]
        self.wall.append(samples / elapsed)
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
    # what `deepfm train` resolves: threads (of the step and of the table update), optimizer
    choices = auto.resolve(config, model, data.feature_map)
    if choices.precision != "fp32":
        net = Autocast(net, choices.precision, config.device)
    optimizer = optimizer_for(model, config, choices.optimizer)
    generator = torch.Generator().manual_seed(seed)

    def epoch() -> int:
        threads = torch.get_num_threads()
        torch.set_num_threads(choices.threads)
        try:
            return train_epoch(net, data.train, optimizer, batch_size, generator).samples
        finally:
            torch.set_num_threads(threads)

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
    parser.add_argument("--workload", choices=["movielens", "criteo"], default="movielens")
    parser.add_argument("--rows", type=int, default=1_000_000, help="criteo: rows to generate")
    parser.add_argument(
        "--workdir",
        default=None,
        help="criteo: folder for the generated data and its preprocessing cache, reused by later "
        "runs with the same --rows (default: deepfm-throughput-criteo in the temp folder)",
    )
    parser.add_argument("--plain-threads", type=int, default=2, help="criteo: threads of the plain loop")
    parser.add_argument(
        "--variants",
        default="",
        help="criteo: extra deepfm rows, ';'-separated TrainConfig overrides, e.g. "
        "'threads=1;precision=fp32,optimizer=lazy;fm_warmup_steps=0'",
    )
    args = parser.parse_args()
    if args.workload == "criteo":
        criteo_main(args)
        return
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


# --- Criteo-like workload -------------------------------------------------------------------
CRITEO_RECIPE = {"mlp": (400, 400, 400), "dropout": 0.2, "batch_size": 4096}  # = --mlp 400,400,400 ...
CRITEO_ZIPF = 1.2  # category ranks; ~620k table rows at 1M generated rows (min_count 1)


def criteo_data(rows: int, workdir: str | None) -> str:
    """Generate ``rows`` Criteo-layout rows (once per folder) and write their spec; its path."""
    folder = Path(workdir or Path(tempfile.gettempdir()) / "deepfm-throughput-criteo") / f"rows-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DEEPFM_CACHE", str(folder / "cache"))
    spec = folder / "spec.yaml"
    if not spec.exists():
        import yaml

        from deepfm.data.catalog.ctr import criteo_spec_dict

        t = time.perf_counter()
        rate = criteo_scale.generate(folder / "train.txt", rows, seed=0, zipf=CRITEO_ZIPF)
        print(f"generated {rows:,} Criteo-like rows (CTR {rate:.3f}) in {time.perf_counter() - t:.0f}s")
        layout = criteo_spec_dict(["train.txt"]) | {"name": f"criteo-like-{rows}"}
        spec.write_text(yaml.safe_dump(layout, sort_keys=False))
    return str(spec)


def plain_criteo_row(data, threads: int, seed: int) -> Row:
    """The plain batched loop with the recipe: embed 16, MLP 400-400-400 (BatchNorm, ReLU,
    dropout 0.2), ``torch.optim.Adam``, batch 4096; a fresh model each round (1 epoch)."""
    dims, ids = reference.local_ids(data)
    x_train, x_test = torch.from_numpy(ids["train"]), torch.from_numpy(ids["test"])
    batch = CRITEO_RECIPE["batch_size"]
    aucs: list[float] = []

    def epoch() -> int:
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        model = reference.ReferenceDeepFM(dims, 16, CRITEO_RECIPE["mlp"], CRITEO_RECIPE["dropout"])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)
        generator = torch.Generator().manual_seed(seed)
        wall = time.perf_counter()
        n = reference.train_plain_epoch(model, x_train, data.train.label, batch, optimizer, generator)
        row.seconds.append(time.perf_counter() - wall)
        aucs.append(auc(data.test.label.numpy(), reference.predict(model, x_test)))
        return n

    row = Row(f"plain batched loop, {threads} threads", batch, epoch, lambda: aucs[-1])
    return row


def deepfm_criteo_row(data, spec: str, seed: int, overrides: dict[str, Any]) -> Row:
    """``deepfm train --spec SPEC --mlp 400,400,400 --dropout 0.2 --batch-size 4096 --epochs 1``
    (plus ``overrides``) through :func:`deepfm.training.run.train` on the prepared data.

    Its speed is taken on the steps that train the whole model (the plain loop's work); the FM
    warm-up's steps (MLP frozen, a third of the matrix products) are timed apart (``warmup``).
    """
    batch = CRITEO_RECIPE["batch_size"]
    results: list[dict] = []

    def epoch() -> int:
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(
                spec=spec, out=out, epochs=1, seed=seed, progress=False, **CRITEO_RECIPE, **overrides
            )
            metrics = train(config, data=data, echo=lambda *_: None)
        results.append(metrics)
        (record,) = metrics["epochs"]
        # (older versions record no warm-up: equal work there is --fm-warmup-epochs 0)
        warmup_samples = record.get("warmup_samples", 0)
        seconds = record["train_seconds"] - record.get("warmup_seconds", 0.0)
        samples = record["train_samples_per_s"] * record["train_seconds"] - warmup_samples
        row.seconds.append(seconds)
        if warmup_samples:
            row.warmup.append((warmup_samples / record["warmup_seconds"], warmup_samples))
        env = metrics["environment"]
        row.name = f"{label}: {env['threads']} thr, {env['precision']}, {env['optimizer']}"
        return int(round(samples))

    label = "deepfm defaults" + "".join(f", {k}={v}" for k, v in overrides.items())
    row = Row(label, batch, epoch, lambda: results[-1]["test_auc"])
    return row


def gemm_row(in_dim: int, threads: int, precision: str, seconds: float = 20.0) -> Row:
    """The GEMM-only limit of the recipe's MLP: per step its forward matrix products and both
    backward products of every layer (weight gradient; input gradient, the first layer's too:
    the embeddings train), on random operands of the step's shapes, at ``threads`` threads and
    ``precision``; nothing else (no BatchNorm, activations, embeddings, optimizer or batching).
    Its samples/s bounds every row's at that thread count and precision. Timed over ``seconds``
    of steps (at least 8), an average as the rows' epochs are, so that load from other jobs on
    a shared machine weighs on both alike."""
    batch = CRITEO_RECIPE["batch_size"]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)
    dims = [in_dim, *CRITEO_RECIPE["mlp"], 1]
    weights = [(torch.randn(o, i, generator=g) / i**0.5).to(dtype) for i, o in zip(dims, dims[1:])]
    x = torch.randn(batch, in_dim, generator=g).to(dtype)

    def step() -> None:
        acts = [x]
        for w in weights:
            acts.append(acts[-1] @ w.t())
        grad = acts[-1]
        for w, a in zip(reversed(weights), reversed(acts[:-1])):
            grad.t() @ a  # weight gradient
            grad = grad @ w  # input gradient

    def epoch() -> int:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            step()  # warm caches and the thread pool
            wall, steps = time.perf_counter(), 0
            while steps < 8 or time.perf_counter() - wall < seconds:
                step()
                steps += 1
            row.seconds.append(time.perf_counter() - wall)
        finally:
            torch.set_num_threads(previous)
        return steps * batch

    flops = 6 * batch * sum(i * o for i, o in zip(dims, dims[1:]))
    row = Row(
        f"GEMM-only limit of the MLP ({threads} thr, {precision}, {flops / 1e9:.1f} GFLOP a step)",
        batch,
        epoch,
        lambda: float("nan"),
    )
    row.flops = flops
    return row


def _overrides(text: str) -> dict[str, Any]:
    """``"threads=1,precision=fp32"`` -> ``{"threads": 1, "precision": "fp32"}``."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    return out


def criteo_main(args: argparse.Namespace) -> None:
    """Plain loop vs ``deepfm train`` defaults on the Criteo-like data, rounds interleaved, with
    the GEMM-only limit of the MLP measured in each round at deepfm's threads and precision."""
    spec = criteo_data(args.rows, args.workdir)
    data = load_data(TrainConfig(spec=spec, seed=args.seed, progress=False))
    print(
        f"{data.name}: {len(data.train):,} train / {len(data.test):,} test rows, "
        f"{len(data.feature_map.fields)} fields, table {data.feature_map.num_rows:,} rows; "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.epochs} round(s) of 1 epoch per row"
    )
    in_dim = len(data.feature_map.fields) * TrainConfig().embed_dim
    variants = [{}] + [_overrides(v) for v in args.variants.split(";") if v]
    trained = [plain_criteo_row(data, args.plain_threads, args.seed)]
    trained[0].limit = (args.plain_threads, "fp32")
    for overrides in variants:
        row = deepfm_criteo_row(data, spec, args.seed, overrides)
        probe = TrainConfig(spec=spec, **CRITEO_RECIPE, **overrides)
        choices = auto.resolve(probe, model_from_config(probe, data.feature_map), data.feature_map)
        row.limit = (choices.threads, choices.precision)
        trained.append(row)
    limits = {key: gemm_row(in_dim, *key) for key in dict.fromkeys(r.limit for r in trained)}
    rows = [*limits.values(), *trained]
    for _ in range(args.epochs):
        for row in rows:
            row.run_epoch()
            extra = f", test AUC {row.predict():.4f}" if row.flops == 0 else ""
            print(f"  {row.name}: {row.wall[-1]:,.0f} samples/s{extra}", flush=True)
    print()
    for (threads, precision), limit in limits.items():
        gflops = limit.flops * max(limit.wall) / CRITEO_RECIPE["batch_size"] / 1e9
        print(
            f"GEMM-only limit at {threads} thread(s), {precision}: {max(limit.wall):,.0f} samples/s "
            f"({gflops:.0f} GFLOPS)"
        )
    print(
        "samples/s of deepfm rows: the steps that train the whole model (the plain loop's work); "
        "the FM warm-up's steps apart\n"
    )
    plain = trained[0]
    print(
        "| pipeline | samples/s | share of GEMM limit | x plain loop | FM warm-up: samples/s (samples) "
        "| test AUC after 1 epoch | AUC - plain |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in trained:
        wall = max(row.wall)
        warmup = max(row.warmup) if row.warmup else None
        warm = f"{warmup[0]:,.0f} ({warmup[1]:,})" if warmup else "-"
        print(
            f"| {row.name} | {wall:,.0f} | {wall / max(limits[row.limit].wall):.0%} "
            f"| {wall / max(plain.wall):.2f} | {warm} | {row.predict():.4f} "
            f"| {row.predict() - plain.predict():+.4f} |"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this benchmark process: {peak:,.0f} MiB")


if __name__ == "__main__":
    main()

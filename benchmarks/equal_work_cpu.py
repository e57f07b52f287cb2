"""Equal work at 1 thread in CPU time, for a machine whose cores are shared with other jobs:
the GEMM-only limit of the Criteo-like MLP, the plain batched loop and deepfm's fused step with
every part training, on the first K batches of ``throughput.py --workload criteo``'s 1M-row
training split (generated and prepared once in WORKDIR), rounds interleaved, best round of each,
in samples per CPU-second of this process (``time.process_time``).

    PYTHONPATH=src python benchmarks/equal_work_cpu.py 8 3 /tmp/criteo   # K batches, rounds, WORKDIR
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import reference  # noqa: E402
import throughput as tp  # noqa: E402

from deepfm.artifact.checkpoint import model_from_config  # noqa: E402
from deepfm.config import TrainConfig  # noqa: E402
from deepfm.training import auto  # noqa: E402
from deepfm.training.loop import train_epoch  # noqa: E402
from deepfm.training.optim import optimizer_for  # noqa: E402
from deepfm.training.run import load_data, trainable  # noqa: E402

K, ROUNDS = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
spec = tp.criteo_data(1_000_000, sys.argv[3] if len(sys.argv) > 3 else None)
data = load_data(TrainConfig(spec=spec, seed=0, progress=False))
B = 4096
small = data.train.take(torch.arange(K * B))
cfg = TrainConfig(
    spec=spec, threads=1, precision="fp32", fm_warmup_epochs=0, seed=0, progress=False, **tp.CRITEO_RECIPE
)
torch.manual_seed(0)
model = model_from_config(cfg, data.feature_map)
net = trainable(model, data, cfg)
choices = auto.resolve(cfg, model, data.feature_map)
opt = optimizer_for(model, cfg, choices.optimizer)
gen = torch.Generator().manual_seed(0)
dims, ids = reference.local_ids(data)
x = torch.from_numpy(ids["train"])[: K * B]
y = data.train.label[: K * B]
torch.manual_seed(0)
pm = reference.ReferenceDeepFM(dims, 16, tp.CRITEO_RECIPE["mlp"], tp.CRITEO_RECIPE["dropout"])
popt = torch.optim.Adam(pm.parameters(), lr=1e-3, weight_decay=1e-6)
in_dim = len(data.feature_map.fields) * 16
dimsm = [in_dim, *tp.CRITEO_RECIPE["mlp"], 1]
g = torch.Generator().manual_seed(0)
W = [torch.randn(o, i, generator=g) / i**0.5 for i, o in zip(dimsm, dimsm[1:])]
X = torch.randn(B, in_dim, generator=g)


def gemm(steps: int) -> int:
    for _ in range(steps):
        acts = [X]
        for w in W:
            acts.append(acts[-1] @ w.t())
        grad = acts[-1]
        for w, a in zip(reversed(W), reversed(acts[:-1])):
            grad.t() @ a
            grad = grad @ w
    return steps * B


rows = {
    "GEMM-only limit (1 thr, fp32)": lambda: gemm(K),
    "plain batched loop (1 thr)": lambda: reference.train_plain_epoch(pm, x, y, B, popt, gen),
    f"deepfm fused step, MLP training (1 thr, fp32, {choices.optimizer})": lambda: (
        train_epoch(net, small, opt, B, gen).samples
    ),
}
best = {k: (0.0, 0.0) for k in rows}
gemm(1)
train_epoch(net, data.train.take(torch.arange(2 * B)), opt, B, gen)
for r in range(ROUNDS):
    for name, fn in rows.items():
        c, w = time.process_time(), time.perf_counter()
        n = fn()
        c, w = n / (time.process_time() - c), n / (time.perf_counter() - w)
        best[name] = (max(best[name][0], c), max(best[name][1], w))
        print(f"round {r}: {name}: {c:,.0f} samples/CPU-s, {w:,.0f} samples/s wall", flush=True)
lim, plain = best["GEMM-only limit (1 thr, fp32)"][0], best["plain batched loop (1 thr)"][0]
print(
    f"\n| row | samples per CPU-s (best of {ROUNDS}) | share of GEMM-only limit | x plain loop "
    "| samples/s wall (best) |"
)
print("|---|---:|---:|---:|---:|")
for name, (c, w) in best.items():
    print(f"| {name} | {c:,.0f} | {c / lim:.0%} | {c / plain:.2f} | {w:,.0f} |")

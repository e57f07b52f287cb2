"""Optimizer factory: Adam in three speeds, chosen by ``--optimizer``.

- ``adam``: ``torch.optim.Adam`` exactly as the reference notebook builds it (per-parameter
  for-loop kernels). Slowest; kept one option away as the reference behaviour.
- ``fused``: the same Adam update (same formula, L2 weight decay added to the gradient, every row
  of every table updated every step) computed by ``torch.optim.Adam(fused=True)``: one fused
  kernel per parameter instead of ~10 small ones. Results equal ``adam`` up to float rounding.
- ``lazy``: row-wise ("lazy") Adam for embedding tables, fused Adam for the dense layers. The
  embedding emits a sparse gradient and only the rows seen in the batch get their moments,
  weight decay and weights updated (as TensorFlow's LazyAdam / large-scale CTR systems do).
  This changes the semantics: untouched rows keep stale moments and get no decay that step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import optimizer as torch_optimizer

from deepfm.errors import ConfigError

OPTIMIZERS = ("fused", "adam", "lazy")
DEFAULT_OPTIMIZER = "fused"

# Intra-op threads when ``--threads 0``. A training step here is ~60 kernels on tensors of
# ~16k elements, below PyTorch's parallel grain size (32k), so extra threads barely help on an
# idle machine, while on a busy one OpenMP's thread barriers collapse throughput (measured
# 40x slower with 2 threads on 2 shared cores); see benchmarks/README.md.
AUTO_THREADS = 1


def make_optimizer(
    module: nn.Module,
    name: str = DEFAULT_OPTIMIZER,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    embedding_l2: float | None = None,
    net_l2: float | None = None,
) -> torch.optim.Optimizer | CombinedOptimizer:
    """The optimizer ``name`` over ``module``'s parameters (see the module docstring).

    Two parameter groups: the embeddings (``nn.Embedding`` tables and everything under the
    model's ``features`` input layer) with L2 weight decay ``embedding_l2``, all other
    parameters with ``net_l2``; either one ``None`` falls back to ``weight_decay``.
    ``lazy`` switches the module's ``nn.Embedding`` layers to sparse gradients.
    """
    emb_decay = weight_decay if embedding_l2 is None else embedding_l2
    net_decay = weight_decay if net_l2 is None else net_l2
    embedding = embedding_parameters(module)
    tables = [m for m in module.modules() if isinstance(m, nn.Embedding)]
    sparse_ids = {id(t.weight) for t in tables} if name == "lazy" else set()
    groups = [
        {"params": [p for p in module.parameters() if id(p) in embedding and id(p) not in sparse_ids]},
        {"params": [p for p in module.parameters() if id(p) not in embedding], "weight_decay": net_decay},
    ]
    groups = [g for g in groups if g["params"]]
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=emb_decay)
    if name == "fused":
        return fused_adam(groups, lr=lr, weight_decay=emb_decay)
    if name == "lazy":
        for table in tables:
            table.sparse = True
        sparse = [t.weight for t in tables]
        dense = [fused_adam(groups, lr=lr, weight_decay=emb_decay)] if groups else []
        return CombinedOptimizer([*dense, LazyAdam(sparse, lr=lr, weight_decay=emb_decay)])
    raise ConfigError(f"--optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")


def embedding_parameters(module: nn.Module) -> set[int]:
    """``id``s of the embedding parameters: ``nn.Embedding`` weights and the parameters of the
    model's input layer ``module.features`` (tables and numeric-field vectors)."""
    ids = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    features = getattr(module, "features", None)
    if isinstance(features, nn.Module):
        ids |= {id(p) for p in features.parameters()}
    return ids


def fused_adam(params: Iterable[Any], lr: float, weight_decay: float) -> torch.optim.Adam:
    """:class:`FusedAdam`; ``torch.optim.Adam(foreach=True)`` where fused is unsupported."""
    params = list(params)
    try:
        return FusedAdam(params, lr=lr, weight_decay=weight_decay)
    except (RuntimeError, TypeError):  # pragma: no cover - depends on the torch build / device
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` with a lean ``step``: the same state, the same
    ``torch._fused_adam_`` kernel and so the same numbers, without the per-step regrouping by
    device/dtype and per-tensor copies of the generic path (~25 small ops per step here).
    Anything unusual (amsgrad, maximize, tensor lr, grad scaling) takes ``Adam.step``.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, fused=True)

    def step(self, closure=None):  # type: ignore[override]  # noqa: ANN001
        """One Adam update of every parameter with a gradient.

        ``torch.optim.Optimizer`` wraps every subclass's ``step`` in a profiler
        ``record_function`` plus hook dispatch; in a training step here that wrapper cost ~50 us
        (5% of the step, interleaved A/B epochs). This ``step`` is marked as already wrapped and
        takes the wrapped path itself only when step hooks are registered.
        """
        if _step_hooks(self):
            return _HOOKED_STEP(self, closure)
        return self._step(closure)

    step.hooked = True  # type: ignore[attr-defined]  # Optimizer: do not wrap (see the docstring)

    @torch.no_grad()
    def _step(self, closure=None):  # noqa: ANN001
        if closure is not None or any(_unusual(g) for g in self.param_groups):
            return super().step(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            fresh = [p for p in params if not self.state[p]]
            if fresh:  # parameters starting together share one step counter
                counter = torch.zeros((), dtype=torch.float32, device=fresh[0].device)
                for p in fresh:
                    self.state[p].update(
                        step=counter,
                        exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                        exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format),
                    )
            states = [self.state[p] for p in params]
            if len(params) < len(group["params"]):  # a shared counter may not advance for all
                copies: dict[int, torch.Tensor] = {}
                for state in states:
                    old = state["step"]
                    if id(old) not in copies:
                        copies[id(old)] = old.clone()
                    state["step"] = copies[id(old)]
            for counter in {id(s["step"]): s["step"] for s in states}.values():
                counter.add_(1)  # one add per distinct counter, not one per parameter
            beta1, beta2 = group["betas"]
            torch._fused_adam_(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [],
                [s["step"] for s in states],
                amsgrad=False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
                grad_scale=None,
                found_inf=None,
            )
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            return super().zero_grad(set_to_none)
        for group in self.param_groups:  # what the base class does, without its ~8 us of set-up
            for p in group["params"]:
                p.grad = None
        return None

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # share equal step counters again (see ``step``)
            counters: dict[float, torch.Tensor] = {}
            for p in group["params"]:
                state = self.state.get(p)
                if state and isinstance(state.get("step"), torch.Tensor):
                    state["step"] = counters.setdefault(float(state["step"]), state["step"])


_HOOKED_STEP = torch.optim.Optimizer.profile_hook_step(FusedAdam._step)


def _step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Whether any optimizer step hook (this optimizer's or a global one) is registered; ``True``
    when that cannot be told (a torch without these registries), so hooks are never skipped."""
    registries = (
        getattr(optimizer, "_optimizer_step_pre_hooks", None),
        getattr(optimizer, "_optimizer_step_post_hooks", None),
        getattr(torch_optimizer, "_global_optimizer_pre_hooks", None),
        getattr(torch_optimizer, "_global_optimizer_post_hooks", None),
    )
    return any(r is None or len(r) > 0 for r in registries)


def _unusual(group: dict) -> bool:
    return bool(
        group["amsgrad"]
        or group["maximize"]
        or group.get("decoupled_weight_decay")
        or group.get("capturable")
        or group.get("differentiable")
        or isinstance(group["lr"], torch.Tensor)
        or any(isinstance(b, torch.Tensor) for b in group["betas"])
    )


class LazyAdam(torch.optim.Optimizer):
    """Adam on sparse (row) gradients: only the rows present in the gradient are updated.

    Same update as ``torch.optim.SparseAdam`` (one global step count for bias correction), plus
    lazy L2 weight decay: ``weight_decay * row`` is added to the gradient of the touched rows.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                grad = p.grad
                if grad.is_sparse:
                    grad = grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                else:  # a dense gradient: every row is touched
                    rows, values = None, grad
                _row_adam(p, rows, values, state, group, beta1, beta2)
        return loss


def _row_adam(p, rows, grad, state, group, beta1: float, beta2: float) -> None:
    step = state["step"]
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    if rows is None:
        weight, m, v = p, exp_avg, exp_avg_sq
    else:
        weight, m, v = (
            p.index_select(0, rows),
            exp_avg.index_select(0, rows),
            exp_avg_sq.index_select(0, rows),
        )
    if group["weight_decay"]:
        grad = grad.add(weight, alpha=group["weight_decay"])
    m.lerp_(grad, 1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias1 = 1 - beta1**step
    bias2_sqrt = math.sqrt(1 - beta2**step)
    update = m / (v.sqrt() / bias2_sqrt).add_(group["eps"])
    if rows is None:
        p.add_(update, alpha=-group["lr"] / bias1)
        return
    exp_avg.index_copy_(0, rows, m)
    exp_avg_sq.index_copy_(0, rows, v)
    p.index_add_(0, rows, update, alpha=-group["lr"] / bias1)


class CombinedOptimizer:
    """Several optimizers stepped, zeroed and (de)serialised as one (duck-types ``Optimizer``)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict:
        return {k: v for o in self.optimizers for k, v in o.state.items()}

    def step(self, closure=None):  # noqa: ANN001
        loss = closure() if closure is not None else None
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for o, s in zip(self.optimizers, state_dict["optimizers"], strict=True):
            o.load_state_dict(s)


class CombinedScheduler:
    """One scheduler per optimizer of a :class:`CombinedOptimizer`, stepped and saved as one."""

    def __init__(self, schedulers: list[Any]) -> None:
        self.schedulers = schedulers

    def step(self, metric: float) -> None:
        for s in self.schedulers:
            s.step(metric)

    def state_dict(self) -> dict:
        return {"schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for s, state in zip(self.schedulers, state_dict["schedulers"], strict=True):
            s.load_state_dict(state)


def plateau_scheduler(
    optimizer: torch.optim.Optimizer | CombinedOptimizer, **options: Any
) -> torch.optim.lr_scheduler.ReduceLROnPlateau | CombinedScheduler:
    """``ReduceLROnPlateau(optimizer, **options)``, also for a :class:`CombinedOptimizer`."""
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
    if isinstance(optimizer, CombinedOptimizer):
        return CombinedScheduler([plateau(o, **options) for o in optimizer.optimizers])
    return plateau(optimizer, **options)

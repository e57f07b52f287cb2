"""Optimizer factory: Adam in three speeds, chosen by ``--optimizer``.

- ``adam``: ``torch.optim.Adam`` exactly as the reference notebook builds it (per-parameter
  for-loop kernels). Slowest; kept one option away as the reference behaviour.
- ``fused``: the same Adam update (same formula, L2 weight decay added to the gradient, every row
  of every table updated every step) computed by :class:`~deepfm.fast.optim.FusedAdam`, which is
  ``torch.optim.Adam(fused=True)`` with a leaner ``step`` (same kernel, same numbers; why it is
  kept: see there). Results equal ``adam`` up to float rounding.
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

from deepfm.config import CHOICES, TrainConfig
from deepfm.errors import ConfigError
from deepfm.fast.optim import FusedAdam

OPTIMIZERS = tuple(o for o in CHOICES["optimizer"] if o != "auto")  # auto resolves to one of these
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
    group_weight_decay: dict[str, float] | None = None,
) -> torch.optim.Optimizer | CombinedOptimizer:
    """The optimizer ``name`` over ``module``'s parameters (see the module docstring).

    One parameter group per group the model declares (``module.parameter_groups()``, e.g.
    ``{"embedding": [...], "dense": [...]}``; one ``"dense"`` group for a module that declares
    none), each with weight decay ``group_weight_decay[group]`` where given, else
    ``weight_decay``. ``lazy`` switches the module's ``nn.Embedding`` layers to sparse gradients
    and updates their weights row-wise.
    """
    groups = parameter_groups(module, weight_decay, group_weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "fused":
        return fused_adam(groups, lr=lr)
    if name == "lazy":
        tables = [m for m in module.modules() if isinstance(m, nn.Embedding)]
        for table in tables:
            table.sparse = True
        sparse_ids = {id(t.weight) for t in tables}
        dense = [{**g, "params": [p for p in g["params"] if id(p) not in sparse_ids]} for g in groups]
        sparse = [{**g, "params": [p for p in g["params"] if id(p) in sparse_ids]} for g in groups]
        return CombinedOptimizer(
            [
                fused_adam([g for g in dense if g["params"]], lr=lr),
                LazyAdam([g for g in sparse if g["params"]], lr=lr),
            ]
        )
    raise ConfigError(f"--optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")


def parameter_groups(
    module: nn.Module, weight_decay: float, group_weight_decay: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Optimizer parameter groups ``{"name", "params", "weight_decay"}`` from the groups
    ``module`` declares (``parameter_groups()``), empty groups left out."""
    declared = getattr(module, "parameter_groups", None)
    groups = declared() if declared is not None else {"dense": list(module.parameters())}
    decay = dict(group_weight_decay or {})
    unknown = sorted(set(decay) - set(groups))
    if unknown:
        raise ConfigError(
            f"weight decay given for unknown parameter group(s) {unknown}; groups: {sorted(groups)}"
        )
    return [
        {"name": name, "params": list(params), "weight_decay": float(decay.get(name, weight_decay))}
        for name, params in groups.items()
        if params
    ]


def fused_adam(params: Iterable[Any], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """:class:`FusedAdam`; ``torch.optim.Adam(foreach=True)`` where fused is unsupported."""
    params = list(params)
    try:
        return FusedAdam(params, lr=lr, weight_decay=weight_decay)
    except (RuntimeError, TypeError):  # pragma: no cover - depends on the torch build / device
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


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


def optimizer_for(
    module: nn.Module, config: TrainConfig, resolved: str | None = None
) -> torch.optim.Optimizer:
    """``config.optimizer`` over ``module``, its L2 per parameter group from the config;
    ``auto`` is ``resolved`` (what :func:`deepfm.training.auto.resolve` chose), else ``fused``."""
    name = config.optimizer if config.optimizer != "auto" else resolved or DEFAULT_OPTIMIZER
    decay = {"embedding": config.embedding_l2, "dense": config.net_l2}  # None: --weight-decay
    group_decay = {group: value for group, value in decay.items() if value is not None}
    optimizer = make_optimizer(module, name, config.lr, config.weight_decay, group_decay)
    if config.clip_grad_norm:
        clip_grad_norm(optimizer, config.clip_grad_norm)
    return optimizer


def clip_grad_norm(optimizer: torch.optim.Optimizer | CombinedOptimizer, max_norm: float) -> None:
    """Before every step of ``optimizer``, scale the step's gradient to norm ``max_norm`` at most,
    as FuxiCTR does (``clip_grad_norm_(model.parameters(), 10)`` in every ``train_step``).

    FuxiCTR clips the gradient of its loss, which holds the L2 terms (``lambda/2 * ||W||^2``, the
    whole table): here the L2 is the optimizer's coupled weight decay (``grad + lambda * W``), so
    the norm counts it, ``||g + lambda*W||^2 = ||g||^2 + 2*lambda*<g, W> + lambda^2*||W||^2``
    (dot products, no table-sized temporary), and a clipped step scales the decay with the
    gradient: the update is Adam on FuxiCTR's clipped gradient (tests/test_regularization.py).
    With ``--optimizer lazy`` the decay, and so its part of the norm, covers the batch's rows.
    """
    parts = getattr(optimizer, "optimizers", [optimizer])  # CombinedOptimizer: all or none

    def clip(*_: Any) -> None:
        squares = []
        for group in optimizer.param_groups:
            decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, weight = p.grad, p.detach()
                if grad.is_sparse:  # row-wise Adam: the rows present, the decay on them only
                    grad = p.grad = grad.coalesce()
                    weight = weight.index_select(0, grad.indices()[0])
                    grad = grad.values()
                g, w = grad.reshape(-1), weight.reshape(-1)
                square = torch.dot(g, g)
                if decay:
                    square = square + 2 * decay * torch.dot(g, w) + decay * decay * torch.dot(w, w)
                squares.append(square.float())
        norm = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
        scale = max_norm / (norm + 1e-6)  # torch.nn.utils.clip_grad_norm_'s coefficient
        if scale >= 1.0:
            return
        for group in optimizer.param_groups:
            group["unclipped_weight_decay"] = group["weight_decay"]
            group["weight_decay"] = group["weight_decay"] * scale
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(scale)

    def restore(*_: Any) -> None:
        for group in optimizer.param_groups:
            if "unclipped_weight_decay" in group:
                group["weight_decay"] = group.pop("unclipped_weight_decay")

    parts[0].register_step_pre_hook(clip)
    parts[-1].register_step_post_hook(restore)

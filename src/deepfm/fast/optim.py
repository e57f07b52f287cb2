"""A leaner ``torch.optim.Adam(fused=True)``: same state, same ``torch._fused_adam_`` kernel,
same numbers (``tests/test_speed.py`` checks bit-for-bit equality), less Python per step.

Why it is kept instead of ``torch.optim.Adam(fused=True)``: on the MovieLens reference workload
(DeepFM defaults, batch 1024, 1 thread, the fused training path) ``torch.optim.Adam(fused=True)``
ran 0.78x the samples per CPU-second of this class (interleaved epochs in one process,
``benchmarks/README.md``): its generic step regroups tensors by device/dtype and copies lists
every step, which at ~1 ms a step is a fifth of the time. It uses the private
``torch._fused_adam_`` kernel and ``Optimizer`` internals, so it falls back to ``Adam.step`` for
anything unusual (amsgrad, maximize, tensor lr, grad scaling, closures).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import optimizer as torch_optimizer


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
        # groups with equal hyper-parameters (e.g. "embedding" and "dense" at the same weight
        # decay) are stepped by one kernel call
        calls: dict[tuple, list[torch.Tensor]] = {}
        total = 0
        for group in self.param_groups:
            total += len(group["params"])
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                key = (group["lr"], *group["betas"], group["weight_decay"], group["eps"])
                calls.setdefault(key, []).extend(params)
        stepping = [p for params in calls.values() for p in params]
        if not stepping:
            return None
        fresh = [p for p in stepping if not self.state[p]]
        if fresh:  # parameters starting together share one step counter
            counter = torch.zeros((), dtype=torch.float32, device=fresh[0].device)
            for p in fresh:
                self.state[p].update(
                    step=counter,
                    exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                    exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format),
                )
        if len(stepping) < total:  # a shared counter may not advance for all
            copies: dict[int, torch.Tensor] = {}
            for p in stepping:
                state = self.state[p]
                old = state["step"]
                if id(old) not in copies:
                    copies[id(old)] = old.clone()
                state["step"] = copies[id(old)]
        for counter in {id(c): c for c in (self.state[p]["step"] for p in stepping)}.values():
            counter.add_(1)  # one add per distinct counter, not one per parameter
        for (lr, beta1, beta2, weight_decay, eps), params in calls.items():
            states = [self.state[p] for p in params]
            torch._fused_adam_(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [],
                [s["step"] for s in states],
                amsgrad=False,
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                weight_decay=weight_decay,
                eps=eps,
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
        counters: dict[float, torch.Tensor] = {}  # share equal step counters again (see ``step``)
        for group in self.param_groups:
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

"""Training precision, ``--precision``: ``fp32`` or ``bf16`` (mixed: bfloat16 matrix products).

``bf16`` is ``torch.autocast`` with ``dtype=torch.bfloat16`` around the training forward and the
loss: on CPU (needs AVX512-BF16 or AMX, checked up front) and on CUDA (PyTorch's automatic mixed
precision; bfloat16 needs no loss scaling). Weights, optimizer state and gradients stay float32;
autocast runs the matrix products (``Linear``, ``addmm``, ``mm``) in bfloat16 and keeps
reductions, normalisation and the loss in float32. Evaluation and prediction run in float32.

:class:`Autocast` applies it by wrapping the training module, so the training loop needs no
change. Hand-written autograd Functions (the fused CPU training kernels) run their forward under
autocast like any op; their ``backward`` does not (autograd runs it outside the ``with`` block),
and a matrix product of a bfloat16 activation with a float32 weight would then fail. PyTorch's
answer is ``torch.amp.custom_bwd``, which re-enters the forward's autocast state around the
backward; :class:`Autocast` does the same from outside for every such node of the step's graph
(``_backward_under_autocast``), so the fused kernels and the plain modules both train in bf16.
"""

from __future__ import annotations

import torch
from torch import nn

from deepfm.config import CHOICES
from deepfm.errors import ConfigError
from deepfm.hardware import bf16_problem, bf16_supported

PRECISIONS = CHOICES["precision"]
__all__ = ["PRECISIONS", "Autocast", "autocast", "bf16_supported", "check_precision"]


def check_precision(precision: str, device: str | torch.device) -> str:
    """``precision`` if ``device`` can run it; a one-line :class:`ConfigError` otherwise."""
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"--precision must be one of {list(PRECISIONS)}, got {precision!r}")
    problem = bf16_problem(device) if precision == "bf16" else None
    if problem:
        raise ConfigError(problem)
    return precision


def autocast(precision: str, device: str | torch.device) -> torch.autocast:
    """The autocast context of ``precision`` on ``device`` (disabled for ``fp32``)."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


class Autocast(nn.Module):
    """``module`` run under :func:`autocast` in training mode; float32 logits out.

    In eval mode (validation, test, predict) the wrapped module runs in float32. ``state_dict``
    and checkpoints are the wrapped module's own (save ``module``, not this wrapper).
    """

    def __init__(self, module: nn.Module, precision: str, device: str | torch.device) -> None:
        super().__init__()
        self.module = module
        self.precision = check_precision(precision, device)
        self.device_type = torch.device(device).type

    def forward(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        if not self.training or self.precision == "fp32":
            return self.module(*inputs)
        with autocast(self.precision, self.device_type):
            out = self.module(*inputs)
        if out.requires_grad:
            _backward_under_autocast(out, self.device_type)
        return out.float()


def _backward_under_autocast(out: torch.Tensor, device_type: str) -> None:
    """Every hand-written autograd Function node behind ``out`` runs its backward under the
    autocast state of its forward (what ``torch.amp.custom_bwd`` does inside a Function).

    The walk visits each node of this step's graph once (a few dozen); built-in nodes are left
    alone: autograd already runs their backward in the dtypes autocast chose forward.
    """
    seen: set[torch.autograd.graph.Node] = set()
    stack = [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            _hook_node(node, device_type)
        stack.extend(next_node for next_node, _ in node.next_functions)


def _hook_node(node: torch.autograd.graph.Node, device_type: str) -> None:
    contexts: list[torch.autocast] = []

    def enter(_: tuple) -> None:
        contexts.append(torch.autocast(device_type, dtype=torch.bfloat16))
        contexts[-1].__enter__()

    def leave(_: tuple, __: tuple) -> None:
        contexts.pop().__exit__(None, None, None)

    node.register_prehook(enter)
    node.register_hook(leave)

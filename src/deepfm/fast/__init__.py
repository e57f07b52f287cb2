"""The speed layer: fused training forwards for the plain models of ``deepfm.models``.

The models stay plain PyTorch modules; this package knows their structure and, given a model and
the layout of its batches, returns a module that computes the same training forward with
hand-written fused kernels (``deepfm.fast.kernels``), and where it can a whole training step
without autograd (:class:`Fused`), or ``None`` (then the plain path runs)::

    net = fast.accelerate(model, BatchLayout.of(split)) or model

The returned :class:`FastModel` holds ``model`` (same parameters and buffers, so optimizers,
checkpoints and DDP see the model's own tensors) and runs the fused forward only in training
mode with autograd on; evaluation, export and no-grad calls run ``model`` itself. Builders are
registered per model class (:func:`register`); ``tests/test_fast.py`` checks every registered
model against its plain path (forward, gradients, optimizer update, BatchNorm statistics,
dropout masks), the contract between the two layers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from deepfm.fast import models  # noqa: F401  (registers the built-in models' builders)
from deepfm.fast.registry import BUILDERS, BatchLayout, Forward, Fused, Step, register


class FastModel(nn.Module):
    """``model`` with a fused training forward; everything else (eval, no-grad, autocast) is
    ``model``. (The hand-written backwards assume one dtype throughout; under autocast the
    plain modules run until the kernels learn mixed precision.)"""

    def __init__(self, model: nn.Module, forward: Forward, step: Step | None = None) -> None:
        super().__init__()
        self.model = model
        self._fused = forward
        self._step = step

    def forward(
        self, ids: torch.Tensor, bags: torch.Tensor | None = None, dense: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self._training_fp32(ids):
            return self._fused(ids, bags, dense)
        return self.model(ids, bags, dense)

    def _training_fp32(self, ids: torch.Tensor) -> bool:
        """Training mode, autograd on, no autocast: where the fused kernels apply."""
        return self.training and torch.is_grad_enabled() and not torch.is_autocast_enabled(ids.device.type)

    def train_step(
        self, ids: torch.Tensor, bags: torch.Tensor | None, dense: torch.Tensor | None, label: torch.Tensor
    ) -> torch.Tensor | None:
        """One training batch's mean BCE loss with every parameter's gradient assigned to
        ``.grad`` as ``zero_grad(set_to_none=True)`` + ``loss.backward()`` of :meth:`forward`
        would leave them, or ``None`` where no fused step applies (call those then)."""
        if self._step is None or not self._training_fp32(ids) or self._hooked():
            return None
        return self._step(ids, bags, dense, label)

    def _hooked(self) -> bool:
        """Whether a forward (pre-)hook is registered on this module or globally: a step that
        calls no ``forward`` would skip it, so those run forward + backward instead."""
        registries = (
            self._forward_hooks,
            self._forward_pre_hooks,
            getattr(torch_module, "_global_forward_hooks", None),
            getattr(torch_module, "_global_forward_pre_hooks", None),
        )
        return any(r is None or len(r) > 0 for r in registries)


def accelerate(model: nn.Module, layout: BatchLayout) -> FastModel | None:
    """A :class:`FastModel` for ``model`` on batches of ``layout``, or ``None`` (no fused path:
    another device, an unregistered model class, or a structure the kernels do not cover)."""
    if layout.device != "cpu":
        return None
    builder = BUILDERS.get(type(model))
    fused = builder(model, layout) if builder is not None else None
    if fused is None:
        return None
    if not isinstance(fused, Fused):
        fused = Fused(fused)
    return FastModel(model, fused.forward, fused.step)


def trainable(model: nn.Module, split: object, enabled: bool = True) -> nn.Module:
    """What the training loop should run: the fast model where there is one, else ``model``."""
    if not enabled:
        return model
    param = next(model.parameters(), None)
    device = param.device.type if param is not None else "cpu"
    return accelerate(model, BatchLayout.of(split, device)) or model


__all__ = [
    "BUILDERS",
    "BatchLayout",
    "FastModel",
    "Forward",
    "Fused",
    "Step",
    "accelerate",
    "register",
    "trainable",
]

"""The speed layer: fused training forwards for the plain models of ``deepfm.models``.

The models stay plain PyTorch modules; this package knows their structure and, given a model and
the layout of its batches, returns a module that computes the same training forward with
hand-written fused kernels (``deepfm.fast.kernels``) or ``None`` (then the plain path runs)::

    net = fast.accelerate(model, BatchLayout.of(split)) or model

The returned :class:`FastModel` holds ``model`` (same parameters and buffers, so optimizers,
checkpoints and DDP see the model's own tensors) and runs the fused forward only in training
mode with autograd on; evaluation, export and no-grad calls run ``model`` itself. Builders are
registered per model class (:func:`register`); ``tests/test_fast.py`` checks every registered
model against its plain path (forward, gradients, optimizer update, BatchNorm statistics,
dropout masks), the contract between the two layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Forward = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]
Builder = Callable[[nn.Module, "BatchLayout"], Forward | None]

BUILDERS: dict[type[nn.Module], Builder] = {}


@dataclass(frozen=True)
class BatchLayout:
    """What a training batch holds: categorical id fields, multi-valued (bag) fields, numeric
    fields, and the device."""

    fields: int
    bags: int = 0
    dense: int = 0
    device: str = "cpu"

    @classmethod
    def of(cls, split: object, device: str = "cpu") -> BatchLayout:
        """The layout of the batches of ``split`` (a :class:`~deepfm.data.batching.Split`, or a
        memory-mapped split with ``columns``) trained on ``device``."""
        columns = getattr(split, "columns", None)
        if columns is not None:  # MemmapSplit: name -> column with a shape
            shapes = {name: tuple(column.shape) for name, column in columns.items()}
        else:
            shapes = {
                name: tuple(t.shape)
                for name in ("ids", "bags", "dense")
                if (t := getattr(split, name)) is not None
            }
        return cls(
            fields=shapes["ids"][1],
            bags=shapes["bags"][1] if "bags" in shapes else 0,
            dense=shapes["dense"][1] if "dense" in shapes else 0,
            device=device,
        )


def register(cls: type[nn.Module]) -> Callable[[Builder], Builder]:
    """Decorator: ``builder(model, layout)`` returns the fused training forward of a ``cls``
    model for batches of ``layout``, or ``None`` where it has none (or it does not pay)."""

    def decorate(builder: Builder) -> Builder:
        BUILDERS[cls] = builder
        return builder

    return decorate


class FastModel(nn.Module):
    """``model`` with a fused training forward; everything else (eval, no-grad, autocast) is
    ``model``. (The hand-written backwards assume one dtype throughout; under autocast the
    plain modules run until the kernels learn mixed precision.)"""

    def __init__(self, model: nn.Module, forward: Forward) -> None:
        super().__init__()
        self.model = model
        self._fused = forward

    def forward(
        self, ids: torch.Tensor, bags: torch.Tensor | None = None, dense: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.training and torch.is_grad_enabled() and not torch.is_autocast_enabled(ids.device.type):
            return self._fused(ids, bags, dense)
        return self.model(ids, bags, dense)


def accelerate(model: nn.Module, layout: BatchLayout) -> FastModel | None:
    """A :class:`FastModel` for ``model`` on batches of ``layout``, or ``None`` (no fused path:
    another device, an unregistered model class, or a structure the kernels do not cover)."""
    from deepfm.fast import models  # noqa: F401  (registers the built-in models)

    if layout.device != "cpu":
        return None
    builder = BUILDERS.get(type(model))
    forward = builder(model, layout) if builder is not None else None
    return FastModel(model, forward) if forward is not None else None


def trainable(model: nn.Module, split: object, enabled: bool = True) -> nn.Module:
    """What the training loop should run: the fast model where there is one, else ``model``."""
    if not enabled:
        return model
    param = next(model.parameters(), None)
    device = param.device.type if param is not None else "cpu"
    return accelerate(model, BatchLayout.of(split, device)) or model


__all__ = ["BUILDERS", "BatchLayout", "FastModel", "accelerate", "register", "trainable"]

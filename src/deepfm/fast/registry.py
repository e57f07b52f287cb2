"""The speed layer's registry: fused training forwards (and steps) registered per model class.

A builder takes a plain model and the :class:`BatchLayout` of its training batches and returns
its fused training forward (or a :class:`Fused` with a whole training step), or ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Forward = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]
# (ids, bags, dense, label) -> the batch's mean BCE loss, with the gradients assigned; or None
Step = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor], torch.Tensor | None]


@dataclass(frozen=True)
class Fused:
    """What a builder returns: the fused training ``forward``, and optionally a fused training
    ``step``: forward, mean BCE loss and the gradients of the parameters that require them in one
    call without autograd, returning the (detached) loss, or ``None`` for a batch it does not
    cover (then ``forward`` + ``loss.backward()`` run)."""

    forward: Forward
    step: Step | None = None


Builder = Callable[[nn.Module, "BatchLayout"], Forward | Fused | None]

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

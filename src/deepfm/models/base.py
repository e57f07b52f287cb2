"""What every model declares besides its forward: parameter groups and warm-up freezing.

The trainer reads these declarations instead of knowing model internals: the optimizer builds
its parameter groups (and per-group weight decay) from :meth:`CTRModel.parameter_groups`, and
the training run holds :meth:`CTRModel.warmup_frozen` still during the warm-up (``--fm-warmup-steps``,
``--fm-warmup-epochs``).
"""

from __future__ import annotations

from torch import nn


class CTRModel(nn.Module):
    """A click-through-rate model: ``forward(ids, bags=None, dense=None)`` -> one logit per row.

    Every model has ``features`` (:class:`~deepfm.models.layers.Features`), the shared input layer.
    """

    features: nn.Module

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"embedding": the input layer's tables and numeric-field vectors, "dense": the rest}``."""
        embedding = list(self.features.parameters())
        ids = {id(p) for p in embedding}
        return {"embedding": embedding, "dense": [p for p in self.parameters() if id(p) not in ids]}

    def warmup_frozen(self) -> list[nn.Parameter]:
        """Parameters held still during the warm-up at the start of training; none by default."""
        return []

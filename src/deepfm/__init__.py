"""deepfm: fast, practical DeepFM / FM / Wide&Deep for click-through-rate prediction.

The public entry points are :func:`deepfm.load` (a trained model back from its folder or file)
and the ``deepfm`` command line (``python -m deepfm``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from deepfm.training.checkpoint import TrainedModel


def load(path: str) -> TrainedModel:
    """Load a trained model from a run folder (``--out`` of ``deepfm train``) or a ``model.pt``."""
    from deepfm.training.checkpoint import load_model

    return load_model(path)


__all__ = ["__version__", "load"]

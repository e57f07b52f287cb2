"""deepfm: fast, practical DeepFM / FM / Wide&Deep for click-through-rate prediction.

The public entry points are :func:`deepfm.fit` (train on a DataFrame, an Arrow table, a spec or a
built-in data set), :func:`deepfm.load` (a trained model back from its folder or file) and the
``deepfm`` command line (``python -m deepfm``). Both return a
:class:`~deepfm.artifact.trained.TrainedModel` (``.predict``, ``.evaluate``, ``.recommend``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deepfm.version import __version__

if TYPE_CHECKING:
    from deepfm.artifact.trained import TrainedModel


def load(path: str) -> TrainedModel:
    """Load a trained model from a run folder (``--out`` of ``deepfm train``) or a ``model.pt``."""
    from deepfm.artifact.trained import load_model

    return load_model(path)


def fit(data: Any = None, **kwargs: Any) -> TrainedModel:
    """Train a model like ``deepfm train`` and return it; see :func:`deepfm.api.fit`."""
    from deepfm.api import fit as _fit

    return _fit(data, **kwargs)


__all__ = ["__version__", "fit", "load"]

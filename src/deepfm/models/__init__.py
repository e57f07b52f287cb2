"""Models: a registry of model names -> classes composed from the shared layers in ``layers``.

Adding a model is one short file plus one line in ``MODELS``.
"""

from __future__ import annotations

from torch import nn

from deepfm.errors import ConfigError
from deepfm.models.dcnv2 import DCNv2
from deepfm.models.deepfm import DeepFM
from deepfm.models.fm import FM
from deepfm.models.init import initialize
from deepfm.models.lr import LR
from deepfm.models.widedeep import WideDeep

MODELS: dict[str, type[nn.Module]] = {
    "lr": LR,
    "fm": FM,
    "widedeep": WideDeep,
    "deepfm": DeepFM,
    "dcnv2": DCNv2,
}


def build_model(
    name: str,
    num_rows: int,
    num_fields: int,
    num_dense: int = 0,
    weight_init: str = "deepfm",
    **options: object,
) -> nn.Module:
    """Instantiate model ``name``.

    ``num_rows``: rows of the fused embedding table; ``num_fields``: all fields (categorical,
    multi-valued and numeric), i.e. the second dimension of the embeddings; ``num_dense``: numeric
    fields; ``weight_init``: the initialisation scheme (:mod:`deepfm.models.init`). Every model's
    ``forward(ids, bags=None, dense=None)`` returns one logit per row.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    module = MODELS[name](num_rows=num_rows, num_fields=num_fields, num_dense=num_dense, **options)
    return initialize(module, weight_init)


__all__ = ["MODELS", "build_model"]

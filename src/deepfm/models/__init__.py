"""Models: a registry of model names -> classes composed from the shared layers in ``layers``.

Adding a model is one short file plus one line in ``MODELS``.
"""

from __future__ import annotations

import os

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
    check_table_size(num_rows, int(options.get("embed_dim", 16)))  # type: ignore[call-overload]
    module = MODELS[name](num_rows=num_rows, num_fields=num_fields, num_dense=num_dense, **options)
    return initialize(module, weight_init)


def check_table_size(num_rows: int, embed_dim: int) -> None:
    """Refuse, before allocating it, an embedding table larger than the machine's memory (a huge
    ``hash_buckets``), instead of an allocation failure or the OOM killer."""
    need = num_rows * (embed_dim + 1) * 4  # the fp32 table and its first-order weights
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows)
        have = 2**50
    if need > have:
        raise ConfigError(
            f"the embedding table would need {need / 2**30:,.1f} GiB ({num_rows:,} rows x {embed_dim + 1} "
            f"floats), more than this machine's {have / 2**30:,.1f} GiB of memory; lower hash_buckets, "
            "max_vocab or --embed-dim"
        )


__all__ = ["MODELS", "build_model", "check_table_size"]

"""Weight initialisation schemes (``--weight-init``): ``deepfm`` and ``fuxictr``.

``deepfm`` (the default) is the models as their constructors build them: embeddings N(0, 0.01)
with the first-order column 0 at zero, ``nn.Linear`` layers with PyTorch's default, and DeepFM's
MLP output layer at zero (DeepFM starts as its FM part; it pairs with the FM warm-up).

``fuxictr`` is what FuxiCTR (v2.3.10, ``BaseModel.reset_parameters``) gives every model, so a
published FuxiCTR / BARS recipe trains from the same starting point: every embedding value
N(0, 1e-4), the first-order weights included (FuxiCTR's ``LogisticRegression`` is a width-1
embedding with the same initializer); every ``nn.Linear`` Xavier-normal with zero bias, the MLP's
output layer included. One departure: a numeric field's vector takes the embedding N(0, 1e-4)
too. FuxiCTR keeps it in an ``nn.Linear(1, D)`` (and ``nn.Linear(1, 1)`` for its first-order
weight), so Xavier-normal (std 1 for that weight), on its inputs as given (BARS Criteo_x1: scaled
into [0, 1]); here numeric inputs are standardised, and weights of std 1 on them start the logit
with noise of std ~sqrt(#numeric fields) (13 on Criteo: test AUC 0.61 instead of 0.73 after 5
epochs on tests/test_bars.py's data). Measured (docs/tuning.md): with the BARS DeepFM recipe's
strong embedding L2, the zero output layer of ``deepfm`` is what keeps the deep part from
reaching FuxiCTR's accuracy.
"""

from __future__ import annotations

import torch
from torch import nn

from deepfm.models.layers import DenseFeatures, SparseFeatures

FUXICTR_EMBEDDING_STD = 1e-4  # FuxiCTR's embedding_initializer: partial(nn.init.normal_, std=1e-4)


def initialize(module: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise ``module``'s weights by ``scheme`` (``deepfm``: left as built); returns it."""
    if scheme == "deepfm":
        return module
    if scheme != "fuxictr":
        raise ValueError(f"unknown weight initialisation {scheme!r}")
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, SparseFeatures):
                sub.table.weight.normal_(0.0, FUXICTR_EMBEDDING_STD)
                sub.table.weight[0].zero_()  # the padding row
            elif isinstance(sub, DenseFeatures):  # see the module docstring
                sub.weight.normal_(0.0, FUXICTR_EMBEDDING_STD)
            elif isinstance(sub, nn.Linear):
                nn.init.xavier_normal_(sub.weight)
                if sub.bias is not None:
                    sub.bias.zero_()
    return module

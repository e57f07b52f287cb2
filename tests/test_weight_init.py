"""``--weight-init``: FuxiCTR's starting point for published recipes, ours by default.

The cause measured with ``benchmarks/peer_fuxictr.py`` (docs/tuning.md, "Side by side with
FuxiCTR"): with the BARS DeepFM recipe, DeepFM's zero-initialised MLP output layer makes the deep
part start silent (no share of the logits, no gradient into the embeddings) and grow only as fast
as Adam moves the output weights (at most lr a step); under the recipe's strong embedding L2 the
FM and first-order part alone flatten out first, FuxiCTR's rule decays the lr at that flat epoch,
and the run ends ~0.02 test AUC below FuxiCTR. From FuxiCTR's weights (``weight_init: fuxictr``,
Xavier output layer) and with its clipping it reaches FuxiCTR's accuracy. These tests pin that
starting point and its effect on the first step.
"""

import math

import pytest
import torch
from torch.nn import functional as F

from deepfm.config import TrainConfig, load_yaml
from deepfm.errors import ConfigError
from deepfm.models import build_model

BARS_PRESETS = ["bars-deepfm", "frappe-x1", "movielenslatest-x1", "avazu-x1", "criteo-x1"]


def _deepfm(weight_init: str, num_dense: int = 0):
    torch.manual_seed(0)
    return build_model(
        "deepfm",
        num_rows=20_001,
        num_fields=10,
        num_dense=num_dense,
        embed_dim=10,
        mlp=(400, 400, 400),
        dropout=0.2,
        weight_init=weight_init,
    )


def test_fuxictr_init_draws_fuxictrs_distributions():
    """Embeddings N(0, 1e-4) in every column (the first-order weights too), the padding row zero;
    every Linear Xavier-normal (std sqrt(2 / (fan_in + fan_out))) with zero bias, the output too;
    numeric fields' vectors as embeddings (their inputs are standardised here, see models/init)."""
    model = _deepfm("fuxictr", num_dense=2)
    table = model.features.sparse.table.weight.detach()
    assert table[0].abs().max() == 0
    for column in (table[1:, :1], table[1:, 1:]):
        assert column.std().item() == pytest.approx(1e-4, rel=0.05)
        assert column.mean().abs().item() < 1e-5
    linears = [m for m in model.mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4
    for layer in linears:
        fan_out, fan_in = layer.weight.shape
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.1)
        assert layer.bias.abs().max() == 0
    dense = model.features.dense.weight.detach()
    assert 0 < dense.abs().max().item() < 1e-3


def test_default_init_is_unchanged():
    """``deepfm``: embeddings N(0, 0.01), first-order weights and DeepFM's MLP output at zero."""
    model = _deepfm("deepfm")
    table = model.features.sparse.table.weight.detach()
    assert table[1:, 1:].std().item() == pytest.approx(0.01, rel=0.05)
    assert table[:, 0].abs().max() == 0
    assert model.mlp.output.weight.abs().max() == 0
    torch.manual_seed(0)
    plain = build_model(
        "deepfm", num_rows=20_001, num_fields=10, embed_dim=10, mlp=(400, 400, 400), dropout=0.2
    )
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))


def test_first_step_reaches_the_embeddings_through_the_mlp_only_with_fuxictr_init():
    """The embeddings' first gradient: with the zero output layer the deep part sends them nothing
    (only FM, the first-order part and the L2 act at first); from FuxiCTR's weights the deep
    part's gradient is most of it."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 20_001, (512, 10), generator=g)
    label = (torch.rand(512, generator=g) < 0.33).float()
    norms = {}
    for scheme in ("deepfm", "fuxictr"):
        model = _deepfm(scheme).train()
        linear, emb = model.features(ids)
        to_fm, to_mlp = emb.detach().requires_grad_(), emb.detach().requires_grad_()
        logits = model.bias + linear + model.fm(to_fm) + model.mlp(to_mlp.flatten(1))
        grads = torch.autograd.grad(F.binary_cross_entropy_with_logits(logits, label), [to_fm, to_mlp])
        norms[scheme] = [float(gr.norm()) for gr in grads]
    assert norms["deepfm"][0] > 0 and norms["deepfm"][1] == 0.0
    assert norms["fuxictr"][1] > 10 * norms["fuxictr"][0]


@pytest.mark.parametrize("name", BARS_PRESETS)
def test_bars_presets_start_from_fuxictrs_weights(name):
    """The presets named after BARS recipes train as FuxiCTR does: its initialisation, its
    gradient clipping, its lr rule (x0.1 on every epoch without a valid-AUC gain), patience 2, no
    FM warm-up."""
    config = TrainConfig.from_dict(load_yaml(name)).validate()
    assert (config.weight_init, config.clip_grad_norm) == ("fuxictr", 10.0)
    assert (config.lr_decay, config.lr_patience, config.patience, config.fm_warmup_epochs) == (0.1, 1, 2, 0)
    assert (config.embed_dim, config.mlp, config.batch_size, config.net_l2) == (
        10,
        (400, 400, 400),
        4096,
        0.0,
    )


def test_unknown_weight_init_is_a_config_error():
    with pytest.raises(ConfigError, match="--weight-init must be one of deepfm, fuxictr"):
        TrainConfig(weight_init="xavier").validate()


def test_weight_init_and_clipping_reach_the_run_and_its_checkpoint(tiny_ml, tmp_path):
    """``--config bars-deepfm`` trains (FuxiCTR's start and clipping), the planted signal is
    found, and the checkpoint keeps the setting."""
    import json

    import deepfm
    from deepfm.cli.main import main

    out = tmp_path / "run"
    args = [
        "train",
        "--data-dir",
        str(tiny_ml),
        "--out",
        str(out),
        "--config",
        "bars-deepfm",
        "--threads",
        "1",
    ]
    args += [
        "--epochs",
        "4",
        "--batch-size",
        "512",
        "--mlp",
        "32,32",
        "--embedding-l2",
        "1e-4",
        "--no-progress",
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["config"]["weight_init"], metrics["config"]["clip_grad_norm"]) == ("fuxictr", 10.0)
    assert metrics["test_auc"] > 0.7, metrics["test_auc"]
    assert deepfm.load(str(out)).config.weight_init == "fuxictr"

"""``--embedding-l2`` / ``--net-l2``: per-group coupled weight decay equal to FuxiCTR's regularizers."""

import copy

import pytest
import torch
from torch.nn import functional as F

from deepfm.cli.main import main
from deepfm.config import TrainConfig
from deepfm.errors import ConfigError
from deepfm.models import build_model
from deepfm.training.optim import clip_grad_norm, make_optimizer


def _model(num_dense: int = 0):
    torch.manual_seed(0)
    model = build_model("deepfm", num_rows=50, num_fields=3, num_dense=num_dense, embed_dim=4, mlp=(8,))
    with torch.no_grad():
        for p in model.mlp.parameters():  # (the output layer starts at zero)
            p.normal_(0, 0.3)
    return model


def _batch(num_dense: int = 0):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (64, 3 - num_dense), generator=g)
    dense = torch.rand(64, num_dense, generator=g) if num_dense else None
    return ids, dense, (torch.rand(64, generator=g) < 0.4).float()


def _fuxictr_loss(model, logits, y, emb_lambda, net_lambda):
    """FuxiCTR ``compute_loss``: mean BCE + sum over parameters of ``lambda / 2 * ||W||_2^2``;
    embeddings (its FeatureEmbeddingDict: tables and numeric-field vectors) take
    ``embedding_regularizer``, every other parameter ``net_regularizer``."""
    loss = F.binary_cross_entropy_with_logits(logits, y)
    for name, p in model.named_parameters():
        lam = emb_lambda if name.startswith("features.") else net_lambda
        loss = loss + lam / 2 * torch.norm(p, 2) ** 2
    return loss


@pytest.mark.parametrize("name", ["adam", "fused"])
@pytest.mark.parametrize("num_dense", [0, 1])
def test_embedding_and_net_l2_equal_fuxictr_regularizer_loss(name, num_dense):
    """Adam with the two decays takes the same steps as plain Adam on the FuxiCTR loss."""
    ours, theirs = _model(num_dense), _model(num_dense)
    ids, dense, y = _batch(num_dense)
    opt = make_optimizer(
        ours, name, lr=0.01, weight_decay=1e-6, group_weight_decay={"embedding": 0.05, "dense": 0.002}
    )
    ref = torch.optim.Adam(theirs.parameters(), lr=0.01, weight_decay=0.0)
    ours.eval(), theirs.eval()  # no dropout noise: the steps must match exactly
    for _ in range(5):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(ours(ids, None, dense), y).backward()
        opt.step()
        ref.zero_grad()
        _fuxictr_loss(theirs, theirs(ids, None, dense), y, 0.05, 0.002).backward()
        ref.step()
    for (n, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    # and the decay really is split: without net_l2 the MLP moves differently
    other = _model(num_dense)
    opt = make_optimizer(
        other, name, lr=0.01, weight_decay=1e-6, group_weight_decay={"embedding": 0.05, "dense": 0.0}
    )
    other.eval()
    for _ in range(5):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(other(ids, None, dense), y).backward()
        opt.step()
    mlp = torch.nn.utils.parameters_to_vector
    assert not torch.allclose(mlp(other.mlp.parameters()), mlp(ours.mlp.parameters()))


@pytest.mark.parametrize("name", ["adam", "fused"])
def test_clip_grad_norm_equals_fuxictrs_clipped_step(name):
    """``--clip-grad-norm``: FuxiCTR's ``clip_grad_norm_`` on the gradient of its loss (the L2
    terms inside), then Adam; here the decay stays in the optimizer and is clipped with it."""
    ours, theirs = _model(), _model()
    ids, dense, y = _batch()
    opt = make_optimizer(ours, name, lr=0.01, group_weight_decay={"embedding": 0.05, "dense": 0.002})
    clip_grad_norm(opt, 0.05)
    ref = torch.optim.Adam(theirs.parameters(), lr=0.01)
    ours.eval(), theirs.eval()
    for _ in range(5):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(ours(ids, None, dense), y).backward()
        opt.step()
        ref.zero_grad()
        _fuxictr_loss(theirs, theirs(ids, None, dense), y, 0.05, 0.002).backward()
        norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.05)
        assert norm > 0.06  # every step is clipped, by a different factor
        ref.step()
    for (n, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.002]  # restored after each step
    assert not any("unclipped_weight_decay" in g for g in opt.param_groups)


def test_clip_grad_norm_on_row_wise_adam_counts_the_rows_present():
    """``lazy``: sparse table gradient, decay on the batch's rows; the global norm covers both
    sub-optimizers and every gradient is scaled by the same factor."""
    model = _model()
    ids, _, y = _batch()
    opt = make_optimizer(model, "lazy", lr=0.01, group_weight_decay={"embedding": 0.05, "dense": 0.0})
    seen = []
    opt.optimizers[-1].register_step_pre_hook(lambda *_: seen.append(_grad_norm(model, opt)))
    clip_grad_norm(opt, 0.05)
    opt.zero_grad()
    F.binary_cross_entropy_with_logits(model(ids), y).backward()
    opt.step()
    assert seen == [pytest.approx(0.05, rel=1e-4)]


def _grad_norm(model, opt):
    """The clipped norm: every gradient, plus the decay of the rows a sparse gradient holds."""
    total = 0.0
    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                rows = p.grad.coalesce().indices()[0]
                g = p.grad.coalesce().values() + group["weight_decay"] * p.detach()[rows]
            else:
                g = p.grad + group["weight_decay"] * p.detach()
            total += float(g.square().sum())
    return total**0.5


def test_groups_fall_back_to_weight_decay():
    model = _model()
    opt = make_optimizer(copy.deepcopy(model), "fused", weight_decay=3e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [3e-4, 3e-4]
    opt = make_optimizer(
        model, "lazy", weight_decay=3e-4, group_weight_decay={"embedding": 0.1, "dense": 0.0}
    )
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model.features.sparse.table.weight)] == 0.1
    assert all(decays[id(p)] == 0.0 for p in model.mlp.parameters())


def test_l2_options_validate_and_reach_the_run(tiny_ml, tmp_path):
    with pytest.raises(ConfigError, match="--embedding-l2 must be a finite number >= 0"):
        TrainConfig(embedding_l2=-1.0).validate()
    with pytest.raises(ConfigError, match="--net-l2 must be"):
        TrainConfig.from_dict({"net_l2": "big"}).validate()
    with pytest.raises(ConfigError, match="--clip-grad-norm must be a finite number >= 0"):
        TrainConfig(clip_grad_norm=-1.0).validate()
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_ml), "--out", str(out), "--epochs", "1", "--threads", "1"]
    assert main([*args, "--embedding-l2", "0.01", "--net-l2", "0", "--no-progress"]) == 0
    import json

    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["embedding_l2"], config["net_l2"]) == (0.01, 0.0)

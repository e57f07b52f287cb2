"""The fast training path computes what the plain one does: kernels, optimizers, dropout, loop."""

import copy
import io
import json

import pytest
import torch
from torch.nn import functional as F

from deepfm.cli.main import main
from deepfm.config import TrainConfig
from deepfm.data.batching import Split
from deepfm.errors import ConfigError
from deepfm.models import build_model
from deepfm.models.layers import MLP, keep_mask
from deepfm.training.loop import train_epoch
from deepfm.training.optim import FusedAdam, LazyAdam, make_optimizer


def _general_logits(model, ids):
    """The unfused path: Features -> first-order sum, FactorizationMachine, MLP."""
    linear, emb = model.features(ids)
    out = model.bias + linear + model.fm(emb)
    if not hasattr(model, "mlp"):
        return out
    x = emb.flatten(1)
    return out + model.mlp.plain_forward(x, model.mlp.keep_masks(x))  # same masks if same seed


@pytest.mark.parametrize("fields", [1, 2, 4])
@pytest.mark.parametrize("name", ["deepfm", "fm"])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_fused_kernels_equal_general_path(fields, name, sparse, dropout):
    """FM: TableFMNode; DeepFM: DeepFMNode (table, FM, MLP with dropout, bias in one node)."""
    torch.manual_seed(fields)
    model = build_model(name, num_rows=40, num_fields=fields, embed_dim=4, mlp=(8, 6), dropout=dropout)
    model = model.double()
    with torch.no_grad():
        model.features.sparse.table.weight.normal_()
        model.features.sparse.table.weight[0] = 0
        model.bias.fill_(0.3)
        if name == "deepfm":
            model.mlp.weights.normal_()  # (the output layer starts at zero: no gradient to test)
    model.features.sparse.table.sparse = sparse
    reference = copy.deepcopy(model)
    ids = torch.randint(0, 40, (32, fields))
    ids[0, 0] = 0  # the padding row gets no gradient
    ids[1] = ids[2]  # repeated rows accumulate
    torch.manual_seed(5)
    out = model(ids)
    torch.manual_seed(5)
    ref = _general_logits(reference, ids)
    if name == "deepfm":
        assert "DeepFMNode" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    ref.square().sum().backward()
    for (n, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad.to_dense(), q.grad.to_dense(), msg=n)
    assert model.features.sparse.table.weight.grad.to_dense()[0].abs().sum() == 0


def _train_steps(model, optimizer, steps=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        ids = torch.randint(1, 60, (64, 2), generator=g)
        y = torch.randint(0, 2, (64,), generator=g).float()
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(model(ids), y).backward()
        if step == 5:
            model.bias.grad = None  # a parameter that skips a step
        optimizer.step()


def _deepfm():
    torch.manual_seed(0)
    return build_model("deepfm", num_rows=60, num_fields=2, embed_dim=4, mlp=(8, 8), dropout=0.0)


def test_fused_adam_is_torch_fused_adam_bit_for_bit_and_close_to_reference_adam():
    models = [_deepfm() for _ in range(3)]
    opts = [
        FusedAdam(models[0].parameters(), lr=1e-2, weight_decay=1e-3),
        torch.optim.Adam(models[1].parameters(), lr=1e-2, weight_decay=1e-3, fused=True),
        torch.optim.Adam(models[2].parameters(), lr=1e-2, weight_decay=1e-3),
    ]
    for model, opt in zip(models, opts, strict=True):
        _train_steps(model, opt)
    for (name, a), b, c in zip(
        models[0].named_parameters(), models[1].parameters(), models[2].parameters(), strict=True
    ):
        assert torch.equal(a, b), name
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4, msg=name)
    steps = {k: float(v["step"]) for k, v in opts[0].state_dict()["state"].items()}
    assert steps == {k: float(v["step"]) for k, v in opts[1].state_dict()["state"].items()}
    assert sorted(set(steps.values())) == [11.0, 12.0]  # the bias skipped one step


def test_fused_adam_state_round_trip_continues_identically():
    a, b = _deepfm(), _deepfm()
    opt_a = FusedAdam(a.parameters(), lr=1e-2)
    opt_b = FusedAdam(b.parameters(), lr=1e-2)
    _train_steps(a, opt_a, steps=4)
    _train_steps(b, opt_b, steps=4)
    buffer = io.BytesIO()
    torch.save(opt_b.state_dict(), buffer)
    buffer.seek(0)
    opt_b = FusedAdam(b.parameters(), lr=1e-2)
    opt_b.load_state_dict(torch.load(buffer))
    _train_steps(a, opt_a, steps=4, seed=1)
    _train_steps(b, opt_b, steps=4, seed=1)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_lazy_adam_equals_dense_adam_when_every_row_is_touched():
    torch.manual_seed(0)
    table = torch.randn(5, 3)
    dense, lazy = table.clone().requires_grad_(), table.clone().requires_grad_()
    opt_dense = torch.optim.Adam([dense], lr=0.1, weight_decay=0.01)
    opt_lazy = LazyAdam([lazy], lr=0.1, weight_decay=0.01)
    for step in range(5):
        ids = torch.tensor([4, 0, 1, 2, 3, 1, step % 5])  # every row, some twice
        weights = torch.randn(len(ids), 3)
        (F.embedding(ids, dense) * weights).sum().backward()
        (F.embedding(ids, lazy, sparse=True) * weights).sum().backward()
        assert lazy.grad.is_sparse
        for opt in (opt_dense, opt_lazy):
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(lazy, dense)


def test_lazy_adam_leaves_untouched_rows_alone():
    table = torch.randn(6, 3)
    weight = table.clone().requires_grad_()
    opt = LazyAdam([weight], lr=0.1, weight_decay=0.1)
    F.embedding(torch.tensor([1, 3]), weight, sparse=True).sum().backward()
    opt.step()
    changed = (weight.detach() != table).any(1)
    assert changed.tolist() == [False, True, False, True, False, False]


def test_lazy_optimizer_switches_embeddings_to_sparse_and_trains_planted_signal(tiny_ml, tmp_path):
    code = main(
        ["train", "--data-dir", str(tiny_ml), "--out", str(tmp_path / "run"), "--epochs", "6"]
        + ["--lr", "0.01", "--no-progress", "--optimizer", "lazy"]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_auc"] > 0.70, metrics["test_auc"]
    assert metrics["config"]["optimizer"] == "lazy"


def test_make_optimizer_choices():
    model = _deepfm()
    assert type(make_optimizer(model, "adam")) is torch.optim.Adam
    assert isinstance(make_optimizer(model, "fused"), FusedAdam)
    assert not model.features.sparse.table.sparse
    make_optimizer(model, "lazy")
    assert model.features.sparse.table.sparse
    with pytest.raises(ConfigError):
        make_optimizer(model, "sgd")
    with pytest.raises(ConfigError, match="--optimizer"):
        TrainConfig(optimizer="sgd").validate()


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_keep_mask_is_scaled_bernoulli(p):
    torch.manual_seed(0)
    mask = keep_mask((2000, 16), p)
    assert mask.dtype == (torch.uint8 if p == 0.5 else torch.float32) and mask.shape == (2000, 16)
    values = mask.float().unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p))
    assert abs((mask == 0).float().mean().item() - p) < 0.01
    torch.manual_seed(0)
    assert torch.equal(mask, keep_mask((2000, 16), p))  # seeded by torch.manual_seed


def test_mlp_dropout_fresh_masks_each_step_and_eval_identity():
    torch.manual_seed(0)
    mlp = MLP(4, (1024,), dropout=0.5, batch_norm=False)
    masks = torch.stack([mlp.keep_masks(torch.ones(16, 4))[0].float() for _ in range(5)])
    assert masks.shape == (5, 16, 1024)
    assert abs(masks.mean().item() - 1.0) < 0.02  # unbiased: E[mask] = 1 (std 0.0035 here)
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[4])
    x = torch.randn(16, 4)
    assert not torch.equal(mlp(x), mlp(x))  # fresh masks each training step
    mlp.eval()
    assert mlp.keep_masks(x) == [None] and torch.equal(mlp(x), mlp(x))


def test_mlp_masks_within_an_epoch_depend_on_seed_and_step_only():
    """A resumed epoch (start_masks at step t) draws what an uninterrupted one draws at step t."""
    mlp = MLP(4, (16, 8), dropout=0.5)
    x = torch.ones(64, 4)
    mlp.start_masks(seed=7)
    torch.manual_seed(0)
    run = [torch.cat([k.flatten() for k in mlp.keep_masks(x)]) for _ in range(300)]  # several blocks
    assert len({tuple(m.tolist()) for m in run}) == 300  # a fresh mask every step
    for t in (0, 5, 150, 299):
        mlp.start_masks(seed=7, step=t)
        torch.manual_seed(123)  # the global generator plays no part
        assert torch.equal(torch.cat([k.flatten() for k in mlp.keep_masks(x)]), run[t])
    mlp.start_masks(seed=8)
    assert not torch.equal(torch.cat([k.flatten() for k in mlp.keep_masks(x)]), run[0])


def _torch_mlp(mlp: MLP) -> torch.nn.Sequential:
    """``mlp`` rebuilt from torch.nn modules with the same weights (dropout left out)."""
    params, layers, step = mlp.tensors(), [], 4 if mlp.batch_norm else 2
    stats = mlp.running_stats()
    for i, width in enumerate(mlp.hidden):
        linear = torch.nn.Linear(params[step * i].shape[1], width).double()
        linear.weight.data, linear.bias.data = params[step * i].clone(), params[step * i + 1].clone()
        layers.append(linear)
        if mlp.batch_norm:
            norm = torch.nn.BatchNorm1d(width).double()
            norm.weight.data, norm.bias.data = params[4 * i + 2].clone(), params[4 * i + 3].clone()
            norm.running_mean.data, norm.running_var.data = stats[0][i].clone(), stats[1][i].clone()
            layers.append(norm)
        layers.append(torch.nn.ReLU())
    output = torch.nn.Linear(params[-2].shape[1], 1).double()
    output.weight.data, output.bias.data = params[-2].clone(), params[-1].clone()
    return torch.nn.Sequential(*layers, output)


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("hidden", [(8, 6), (5,), ()])
def test_mlp_is_linear_batchnorm_relu_and_its_fused_node_matches(hidden, batch_norm):
    torch.manual_seed(1)
    mlp = MLP(10, hidden, dropout=0.0, batch_norm=batch_norm).double()
    with torch.no_grad():
        mlp.weights.normal_()
    x = torch.randn(32, 10, dtype=torch.float64, requires_grad=True)
    # training mode (batch statistics, running statistics updated) against torch.nn modules
    reference = _torch_mlp(mlp)
    x_ref = x.detach().clone().requires_grad_()
    torch.testing.assert_close(mlp(x), reference(x_ref).squeeze(1))
    if batch_norm and hidden:
        norms = [m for m in reference if isinstance(m, torch.nn.BatchNorm1d)]
        torch.testing.assert_close(mlp.running_mean, torch.cat([m.running_mean for m in norms]))
        torch.testing.assert_close(mlp.running_var, torch.cat([m.running_var for m in norms]))
    mlp.eval()
    reference.eval()
    torch.testing.assert_close(mlp(x), reference(x_ref).squeeze(1))


@pytest.mark.parametrize("hidden,p", [((16, 16), 0.5), ((12, 8), 0.3), ((8,), 0.0), ((), 0.5)])
def test_fused_mlp_node_equals_plain_ops_with_the_same_masks(hidden, p):
    """Forward, every gradient and the running statistics, bit for bit."""
    torch.manual_seed(2)
    fused = MLP(24, hidden, dropout=p)
    with torch.no_grad():
        fused.weights.normal_()
    plain = copy.deepcopy(fused)
    x = torch.randn(64, 24, requires_grad=True)
    x_plain = x.detach().clone().requires_grad_()
    torch.manual_seed(3)
    out = fused(x)
    torch.manual_seed(3)
    ref = plain.plain_forward(x_plain, plain.keep_masks(x_plain))
    assert out.grad_fn is not None and "MLPNode" in type(out.grad_fn).__name__
    assert torch.equal(out, ref)
    out.square().sum().backward()
    ref.square().sum().backward()
    assert torch.equal(x.grad, x_plain.grad)
    assert torch.equal(fused.weights.grad, plain.weights.grad)
    for a, b in zip(fused.buffers(), plain.buffers(), strict=True):
        assert torch.equal(a, b)


def test_train_epoch_drops_a_single_row_tail_and_reports_the_mean_loss():
    torch.manual_seed(0)
    n = 2 * 64 + 1
    split = Split(ids=torch.randint(1, 60, (n, 2)), label=torch.randint(0, 2, (n,)).float())
    model = _deepfm()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay put: the loss is checkable
    stats = train_epoch(model, split, opt, 64, torch.Generator().manual_seed(0))
    assert stats.samples == 128
    generator = torch.Generator().manual_seed(0)
    torch.randint(0, 2**62, (), generator=generator)  # the epoch's dropout-mask seed comes first
    perm = torch.randperm(n, generator=generator)[:128]  # the same order
    losses = [
        F.binary_cross_entropy_with_logits(model(split.ids[idx]), split.label[idx]) for idx in perm.split(64)
    ]
    assert stats.loss == pytest.approx(float(torch.stack(losses).mean().detach()), abs=1e-6)


def test_cuda_device_without_a_gpu_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="cuda"):
        TrainConfig(device="cuda").validate()


def test_lr_decay_works_with_the_lazy_combined_optimizer(tiny_ml, tmp_path):
    import json

    from deepfm.cli.main import main

    out = tmp_path / "run"
    args = [
        "train",
        "--data-dir",
        str(tiny_ml),
        "--out",
        str(out),
        "--epochs",
        "4",
        "--patience",
        "4",
        "--lr",
        "0.05",
        "--optimizer",
        "lazy",
        "--lr-decay",
        "0.5",
        "--no-progress",
    ]
    assert main(args) == 0
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    assert epochs[0]["lr"] == 0.05 and all(e["lr"] in (0.05, 0.025, 0.0125, 0.00625) for e in epochs)
    assert main([*args, "--resume", "--epochs", "6"]) == 0  # the combined scheduler state restores


def test_fused_mlp_views_follow_copies_and_moved_weights():
    """The fused node's cached weight views never outlive the weights they view."""
    torch.manual_seed(0)
    mlp = MLP(8, (4,), dropout=0.0)
    x = torch.randn(16, 8)
    before = mlp(x)  # fills the view cache
    copied = copy.deepcopy(mlp)
    with torch.no_grad():
        copied.weights.add_(1.0)
    assert not torch.equal(copied(x), mlp(x))  # the copy uses its own weights
    copied.weights.data = mlp.weights.detach().clone()  # new storage, same values
    copied.running_mean.copy_(mlp.running_mean)
    copied.running_var.copy_(mlp.running_var)
    torch.testing.assert_close(copied(x), mlp(x))
    assert before.shape == (16,)


def test_fused_adam_runs_step_hooks_though_it_skips_the_profiler_wrapper():
    from torch.optim import optimizer as torch_optimizer

    p = torch.nn.Parameter(torch.ones(3))
    opt = FusedAdam([p], lr=0.1)
    calls = []
    own = opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    own_post = opt.register_step_post_hook(lambda *_: calls.append("post"))
    glob = torch_optimizer.register_optimizer_step_pre_hook(lambda *_: calls.append("global"))
    p.grad = torch.ones(3)
    opt.step()
    assert calls == ["global", "pre", "post"]
    for handle in (own, own_post, glob):
        handle.remove()
    p.grad = torch.ones(3)
    opt.step()
    assert calls == ["global", "pre", "post"]  # no hooks left: the lean path, still a step
    assert torch.allclose(p.detach(), torch.full((3,), 0.8), atol=1e-6)

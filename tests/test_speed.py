"""Optimizers (fused, reference, lazy row-wise, parameter groups) and the training loop."""

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
from deepfm.training.loop import train_epoch
from deepfm.training.optim import FusedAdam, LazyAdam, make_optimizer


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


@pytest.mark.parametrize("name", ["fused", "adam", "lazy"])
def test_optimizer_groups_come_from_the_model_with_per_group_weight_decay(name):
    torch.manual_seed(0)
    model = build_model("deepfm", num_rows=60, num_fields=2, num_dense=1, embed_dim=4, mlp=(8,), dropout=0.0)
    declared = model.parameter_groups()
    assert [id(p) for p in declared["embedding"]] == [id(p) for p in model.features.parameters()]
    assert len(declared["embedding"]) + len(declared["dense"]) == len(list(model.parameters()))
    opt = make_optimizer(model, name, lr=0.1, weight_decay=0.5, group_weight_decay={"embedding": 0.0})
    decay = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decay == {"embedding": 0.0, "dense": 0.5}
    # no gradient but weight decay: only the "dense" group moves
    embedding = [p.detach().clone() for p in declared["embedding"]]
    dense = [p.detach().clone() for p in declared["dense"]]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    if name == "lazy":
        table = model.features.sparse.table.weight
        table.grad = torch.sparse_coo_tensor(
            torch.tensor([[1]]), torch.zeros(1, 5), table.shape, check_invariants=False
        )
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(embedding, declared["embedding"], strict=True))
    moved = [not torch.equal(a, b) for a, b in zip(dense, declared["dense"], strict=True)]
    assert any(moved)
    with pytest.raises(ConfigError, match="unknown parameter group"):
        make_optimizer(model, name, group_weight_decay={"tables": 0.1})

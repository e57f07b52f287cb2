"""The speed layer (``deepfm.fast``) computes what the plain models compute: the contract.

For every registered model and every batch layout (categorical ids only, multi-valued bags,
numeric fields, both), the fused training forward and the plain module give the same logits,
gradients, optimizer update and BatchNorm statistics, with the same dropout masks, in float64
to rounding; whole training runs with the fast layer on and off give the same numbers.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from deepfm import fast, masks
from deepfm.cli.main import main
from deepfm.data.batching import Split
from deepfm.evaluation.scoring import predict_probs
from deepfm.fast import kernels
from deepfm.models import MODELS, build_model
from deepfm.models.layers import MLP, Dropout
from deepfm.training.loop import skip_frozen_backward, train_epoch
from deepfm.training.optim import make_optimizer

LAYOUTS = {"ids": (3, 0, 0), "bags": (2, 1, 0), "dense": (2, 0, 2), "all": (1, 2, 1)}


def _batch(layout: str, n: int = 48, seed: int = 0, dtype=torch.float64):
    fields, bags, dense = LAYOUTS[layout]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (n, fields), generator=g)
    ids[0, 0] = 0  # the padding row gets no gradient
    ids[1] = ids[2]  # repeated rows accumulate
    b = torch.randint(0, 40, (n, bags, 4), generator=g) if bags else None
    d = torch.randn(n, dense, generator=g, dtype=dtype) if dense else None
    return ids, b, d


def _model(name: str, layout: str, dropout: float, dtype=torch.float64, hidden=(8, 6)) -> nn.Module:
    fields, bags, dense = LAYOUTS[layout]
    torch.manual_seed(1)
    model = build_model(
        name,
        num_rows=40,
        num_fields=fields + bags + dense,
        num_dense=dense,
        embed_dim=4,
        mlp=hidden,
        dropout=dropout,
    ).to(dtype)
    with torch.no_grad():  # away from the initialisation (e.g. DeepFM's MLP output starts at zero)
        for p in model.parameters():
            p.normal_(0, 0.5)
        model.features.sparse.table.weight[0] = 0
    return model


def _assert_same_state(a: nn.Module, b: nn.Module, grads: bool = True, **tol) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name, **tol)
        if grads:
            torch.testing.assert_close(p.grad.to_dense(), q.grad.to_dense(), msg=f"grad {name}", **tol)
    for (name, p), q in zip(a.named_buffers(), b.buffers(), strict=True):
        torch.testing.assert_close(p, q, msg=name, **tol)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("dropout", [0.0, 0.5, 0.3])
def test_fused_step_equals_plain_step(name, layout, dropout):
    """Forward, every gradient, one Adam update and the BatchNorm running statistics."""
    model = _model(name, layout, dropout)
    plain = copy.deepcopy(model)
    fields, bags, dense = LAYOUTS[layout]
    net = fast.accelerate(model, fast.BatchLayout(fields, bags, dense))
    assert net is not None and net.model is model
    inputs = _batch(layout)
    label = torch.randint(0, 2, (48,), generator=torch.Generator().manual_seed(9)).double()
    for module, target in ((net, model), (plain, plain)):
        optimizer = make_optimizer(target, "fused", lr=0.01, weight_decay=0.001)
        with masks.epoch_stream(seed=11, step=5) as stream:
            stream.at(5)
            logits = module(*inputs)
            F.binary_cross_entropy_with_logits(logits, label).backward()
        target.logits, target.optimizer = logits, optimizer  # stepped after comparing gradients
    torch.testing.assert_close(model.logits, plain.logits)
    _assert_same_state(model, plain)
    assert model.features.sparse.table.weight.grad[0].abs().sum() == 0
    model.optimizer.step()
    plain.optimizer.step()
    _assert_same_state(model, plain)


@pytest.mark.parametrize("name", ["deepfm", "widedeep"])
def test_deep_models_on_ids_are_one_node_and_sparse_table_gradients_match(name):
    model = _model(name, "ids", 0.5)
    model.features.sparse.table.sparse = True  # row-wise optimizers: sparse table gradients
    plain = copy.deepcopy(model)
    net = fast.accelerate(model, fast.BatchLayout(3))
    ids, _, _ = _batch("ids")
    torch.manual_seed(3)
    out = net(ids)
    torch.manual_seed(3)
    ref = plain(ids)
    assert type(out.grad_fn).__name__ == "TableMLPNodeBackward"
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    ref.square().sum().backward()
    assert model.features.sparse.table.weight.grad.is_sparse
    _assert_same_state(model, plain)


@pytest.fixture(params=["small", "large"])
def kernel_shapes(request, monkeypatch):
    """The kernels' choices for small batches (MovieLens) and for large ones (many fields, many
    rows: a strided field sum, the FM gradient broadcast over the fields), forced on small data."""
    if request.param == "large":
        monkeypatch.setattr(kernels, "FIELD_ADDS_MAX", 0)
        monkeypatch.setattr(kernels, "BROADCAST_MIN_ELEMENTS", 0)
    return request.param


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("frozen_mlp", [False, True])
@pytest.mark.parametrize("dropout", [0.5, 0.3])
def test_fused_train_step_equals_plain_backward(name, layout, frozen_mlp, dropout, kernel_shapes):
    """``FastModel.train_step`` (forward, loss and gradients without autograd) leaves the loss,
    every gradient and the BatchNorm statistics that ``loss.backward()`` of the plain model
    leaves, also with the MLP frozen (the FM warm-up: no gradients for it at all); for batches it
    does not cover it returns ``None``."""
    model = _model(name, layout, dropout)
    model.features.sparse.table.sparse = name == "fm"  # row-wise optimizers: sparse gradients
    plain = copy.deepcopy(model)
    net = fast.accelerate(model, fast.BatchLayout(*LAYOUTS[layout]))
    inputs = _batch(layout)
    label = torch.randint(0, 2, (48,), generator=torch.Generator().manual_seed(9)).double()
    frozen = [list(m.mlp.parameters()) if frozen_mlp and hasattr(m, "mlp") else [] for m in (model, plain)]
    with masks.epoch_stream(seed=11, step=5) as stream, skip_frozen_backward(net, frozen[0]):
        stream.at(5)
        loss = net.train_step(*inputs, label)
    covered = layout == "ids" and name != "dcnv2"
    assert (loss is not None) == covered
    if not covered:
        return
    assert loss.grad_fn is None and not loss.requires_grad
    with masks.epoch_stream(seed=11, step=5) as stream, skip_frozen_backward(plain, frozen[1]):
        stream.at(5)
        ref = F.binary_cross_entropy_with_logits(plain(*inputs), label)
        ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    for (key, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), key
        if q.grad is not None:
            assert p.grad.is_sparse == q.grad.is_sparse, key
            torch.testing.assert_close(p.grad.to_dense(), q.grad.to_dense(), msg=key)
    if frozen_mlp and hasattr(model, "mlp"):
        assert all(p.grad is None for p in model.mlp.parameters())
    _assert_same_state(model, plain, grads=False)


def test_fused_train_step_steps_aside_for_forward_hooks():
    """A step that calls no ``forward`` would skip a user's forward hook: with one registered
    ``train_step`` returns ``None`` and the loop runs forward + backward (the hook sees it)."""
    model = _model("deepfm", "ids", 0.5)
    net = fast.accelerate(model, fast.BatchLayout(3))
    ids, _, _ = _batch("ids")
    label = torch.zeros(48, dtype=torch.float64)
    assert net.train_step(ids, None, None, label) is not None
    seen = []
    handle = net.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    assert net.train_step(ids, None, None, label) is None
    split = Split(ids=ids.clamp_min(1), label=label)
    train_epoch(net, split, make_optimizer(model, "fused"), 16, torch.Generator().manual_seed(0))
    assert seen == [(16,)] * 3
    handle.remove()
    assert net.train_step(ids, None, None, label) is not None


def test_fast_model_evaluates_with_the_plain_model():
    model = _model("deepfm", "ids", 0.5)
    net = fast.accelerate(model, fast.BatchLayout(3))
    ids, _, _ = _batch("ids")
    net.eval()
    assert torch.equal(net(ids), model(ids))
    net.train()
    with torch.no_grad():  # no autograd: the plain path runs (and draws dropout masks as it does)
        torch.manual_seed(0)
        out = net(ids)
        torch.manual_seed(0)
        assert torch.equal(out, model(ids))


def test_autocast_runs_the_plain_modules():
    model = _model("deepfm", "ids", 0.5, dtype=torch.float32)
    net = fast.accelerate(model, fast.BatchLayout(3))
    ids, _, _ = _batch("ids")
    assert type(net(ids).grad_fn).__name__ == "TableMLPNodeBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(ids)
    assert "TableMLPNode" not in type(out.grad_fn).__name__
    out.float().sum().backward()  # the plain modules' autograd graph


def test_no_fused_path_for_other_devices_unknown_models_and_unknown_layers():
    model = _model("deepfm", "ids", 0.5)
    assert fast.accelerate(model, fast.BatchLayout(3, device="cuda")) is None

    class Custom(nn.Module):
        def forward(self, ids, bags=None, dense=None):
            return ids.float().sum(1)

    assert fast.accelerate(Custom(), fast.BatchLayout(3)) is None
    model.mlp.dropout0 = nn.Dropout(0.5)  # torch's own masks: the fused path cannot reproduce them
    assert fast.accelerate(model, fast.BatchLayout(3)) is None
    assert (
        fast.trainable(model, Split(ids=torch.zeros(4, 3, dtype=torch.long), label=torch.zeros(4))) is model
    )


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_model_trains_and_predicts_the_same_with_the_fast_layer_off(layout):
    """Two epochs through the training loop, fast on and off: same weights, losses and predictions.

    In float64: a Linear bias in front of BatchNorm has a zero gradient up to rounding, which Adam
    normalises into full-size steps, so float32 runs drift apart on that noise alone."""
    n = 600
    ids, bags, dense = _batch(layout, n=n, seed=4)
    ids = ids.clamp_min(1)
    label = (ids[:, 0] % 3 == 0).double()
    split = Split(ids=ids, label=label, bags=bags, dense=dense)
    for name in MODELS:
        runs = []
        for enabled in (True, False):
            model = _model(name, layout, 0.5)
            net = fast.trainable(model, split, enabled=enabled)
            assert (net is not model) == enabled, name
            optimizer = make_optimizer(model, "fused", lr=0.01, weight_decay=1e-6)
            generator = torch.Generator().manual_seed(0)
            losses = [train_epoch(net, split, optimizer, 64, generator).loss for _ in range(2)]
            runs.append((model, losses, predict_probs(model, split)))
        (fast_model, fast_losses, fast_probs), (plain_model, plain_losses, plain_probs) = runs
        assert fast_losses == pytest.approx(plain_losses, rel=1e-9), name
        _assert_same_state(fast_model, plain_model, grads=False)
        torch.testing.assert_close(torch.from_numpy(fast_probs), torch.from_numpy(plain_probs))


def test_cli_no_fast_gives_the_same_run(tiny_ml, tmp_path):
    metrics = []
    for flag in ([], ["--no-fast"]):
        out = tmp_path / ("plain" if flag else "fast")
        args = ["train", "--data-dir", str(tiny_ml), "--out", str(out), "--epochs", "2", "--no-progress"]
        assert main(args + ["--threads", "1", *flag]) == 0
        metrics.append(json.loads((out / "metrics.json").read_text()))
    fast_run, plain_run = metrics
    assert fast_run["config"]["fast"] is True and plain_run["config"]["fast"] is False
    assert fast_run["test_auc"] == pytest.approx(plain_run["test_auc"], abs=1e-4)
    for a, b in zip(fast_run["epochs"], plain_run["epochs"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


# --- dropout masks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.5, 0.3])
def test_keep_mask_is_scaled_bernoulli(p):
    torch.manual_seed(0)
    mask = masks.keep_mask((2000, 16), p)
    assert mask.dtype == (torch.uint8 if p == 0.5 else torch.float32) and mask.shape == (2000, 16)
    values = mask.float().unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p))
    assert abs((mask == 0).float().mean().item() - p) < 0.01
    torch.manual_seed(0)
    assert torch.equal(mask, masks.keep_mask((2000, 16), p))  # seeded by torch.manual_seed


def test_dropout_fresh_masks_each_step_and_eval_identity():
    torch.manual_seed(0)
    dropout = Dropout(0.5)
    x = torch.ones(16, 1024)
    outs = torch.stack([dropout(x) for _ in range(5)])
    assert abs(outs.mean().item() - 1.0) < 0.02  # unbiased: E[mask] = 1 (std 0.0035 here)
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[4])
    dropout.eval()
    assert torch.equal(dropout(x), x)


def test_masks_within_an_epoch_depend_on_seed_step_and_draw_only():
    """A resumed epoch (a stream opened at step t) draws what an uninterrupted one draws at step t."""

    def step_masks(stream, t):
        stream.at(t)
        return torch.cat([masks.keep((64, 16), 0.5).flatten(), masks.keep((64, 8), 0.5).flatten()])

    with masks.epoch_stream(seed=7) as stream:
        run = [step_masks(stream, t) for t in range(300)]  # several pooled blocks
    assert len({tuple(m.tolist()) for m in run}) == 300  # a fresh mask every step
    for t in (0, 5, 150, 299):
        with masks.epoch_stream(seed=7, step=t) as stream:
            torch.manual_seed(123)  # the global generator plays no part
            assert torch.equal(step_masks(stream, t), run[t])
    with masks.epoch_stream(seed=8) as stream:
        assert not torch.equal(step_masks(stream, 0), run[0])
    torch.manual_seed(0)
    outside = masks.keep((64, 16), 0.5)  # after the stream: the global generator again
    torch.manual_seed(0)
    assert torch.equal(outside, masks.keep_mask((64, 16), 0.5))


def test_mlp_is_ordinary_layers_with_named_keys():
    mlp = MLP(10, (8, 6), dropout=0.5)
    assert [type(m) for m in mlp] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, Dropout] * 2 + [nn.Linear]
    assert list(mlp.state_dict())[:3] == ["linear0.weight", "linear0.bias", "norm0.weight"]
    assert "output.weight" in mlp.state_dict()
    assert isinstance(mlp.dropout0, nn.Dropout)


@pytest.mark.parametrize("layout", ["bags", "all"])
def test_bags_gather_node_with_sparse_table_gradients(layout):
    """Ids and pooled bags come from one gather (``SparseRowsNode``): row-wise (sparse) table
    gradients equal the plain path's two ``nn.Embedding`` gradients summed."""
    model = _model("deepfm", layout, 0.5)
    model.features.sparse.table.sparse = True
    plain = copy.deepcopy(model)
    net = fast.accelerate(model, fast.BatchLayout(*LAYOUTS[layout]))
    inputs = _batch(layout)
    torch.manual_seed(3)
    out = net(*inputs)
    torch.manual_seed(3)
    ref = plain(*inputs)
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    ref.square().sum().backward()
    assert model.features.sparse.table.weight.grad.is_sparse
    _assert_same_state(model, plain)


def test_epoch_gathered_in_chunks_gives_the_same_batches(monkeypatch):
    """The epoch's shuffled rows are gathered a chunk of batches at a time (less memory): the
    same batches, losses and weights as one gather of the whole epoch, also when resumed mid-epoch
    (the skipped batches span several chunks)."""
    from deepfm.training import loop

    ids, bags, dense = _batch("all", n=700, seed=5)
    split = Split(ids=ids.clamp_min(1), label=(ids[:, 0] % 2 == 0).double(), bags=bags, dense=dense)

    def run(chunk_bytes: int, start: loop.EpochPosition | None = None):
        monkeypatch.setattr(loop, "GATHER_CHUNK_BYTES", chunk_bytes)
        model = _model("deepfm", "all", 0.5)
        optimizer = make_optimizer(model, "fused", lr=0.01)
        stats = train_epoch(model, split, optimizer, 64, torch.Generator().manual_seed(3), start=start)
        return stats.loss, model

    whole_loss, whole = run(1 << 30)
    for chunk_bytes in (1, 3 * 64 * 200):  # one batch per gather; a few batches per gather
        loss, model = run(chunk_bytes)
        assert loss == whole_loss
        _assert_same_state(model, whole, grads=False, rtol=0, atol=0)
    # resumed at step 5 from scratch weights: the same batches 6.. as the whole gather gives
    resumed = [run(c, loop.EpochPosition(0, 5))[1] for c in (1, 1 << 30)]
    _assert_same_state(resumed[0], resumed[1], grads=False, rtol=0, atol=0)


def test_mask_pools_per_dtype_hold_the_same_draw():
    """A draw asked for in two dtypes (e.g. float32 for the fused kernels, bfloat16 under
    autocast) gives each its own pool of the same values: the dtype of ``x * mask`` follows
    the caller, whichever dtype was asked for first."""
    with masks.epoch_stream(seed=3) as stream:
        stream.at(0)
        f32 = masks.keep((32, 8), 0.5, torch.float32)
        stream.at(0)
        bf16 = masks.keep((32, 8), 0.5, torch.bfloat16)
        stream.at(0)
        drawn = masks.keep((32, 8), 0.5)
    assert (f32.dtype, bf16.dtype, drawn.dtype) == (torch.float32, torch.bfloat16, torch.uint8)
    assert torch.equal(f32, drawn.float()) and torch.equal(bf16.float(), f32)

"""``--precision`` (bf16 autocast, also around the fused CPU kernels) and the automatic choices of
threads, precision and optimizer from a step's work."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from deepfm.cli.main import main
from deepfm.config import TrainConfig
from deepfm.errors import ConfigError
from deepfm.models import build_model
from deepfm.training import auto, precision
from deepfm.training.precision import Autocast, bf16_supported

needs_bf16 = pytest.mark.skipif(not bf16_supported("cpu"), reason="CPU without AVX512-BF16/AMX")


@pytest.fixture(autouse=True)
def keep_threads():
    """Trainings below set the thread count; put the global setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _deepfm(mlp: tuple[int, ...], fields: int = 2, rows: int = 50, embed: int = 16) -> nn.Module:
    return build_model("deepfm", num_rows=rows, num_fields=fields, embed_dim=embed, mlp=mlp, dropout=0.0)


def test_step_flops_count_dense_weights_not_tables():
    small = _deepfm((16, 16))  # the MovieLens default
    big = _deepfm((400, 400, 400), fields=39, rows=1000)  # the Criteo recipe
    dense = sum(p.numel() for p in big.parameters()) - big.features.sparse.table.weight.numel()
    assert auto.step_flops(big, 4096) == 6 * 4096 * dense
    assert auto.step_flops(small, 1024) < auto.HEAVY_STEP_FLOPS / 100
    assert auto.step_flops(big, 4096) > auto.HEAVY_STEP_FLOPS * 10


def test_auto_threads_and_precision_follow_the_step(monkeypatch):
    small, big = _deepfm((16, 16)), _deepfm((400, 400, 400), fields=39)
    monkeypatch.setattr(auto, "available_cores", lambda: 6)
    assert auto.auto_threads(small, 1024) == 1
    assert auto.auto_threads(big, 4096) == 6
    monkeypatch.setattr(auto, "bf16_supported", lambda device: True)
    assert auto.auto_precision(small, 1024, "cpu") == "fp32"
    assert auto.auto_precision(big, 4096, "cpu") == "bf16"
    monkeypatch.setattr(auto, "bf16_supported", lambda device: False)
    assert auto.auto_precision(big, 4096, "cpu") == "fp32"


def test_auto_optimizer_is_lazy_only_for_tables_far_larger_than_a_batch():
    class Table(nn.Module):
        def __init__(self, rows: int) -> None:
            super().__init__()
            self.table = nn.Embedding(rows, 1)

    lookups = 1024 * 2  # batch 1024, 2 fields
    limit = auto.LAZY_TABLE_ROWS_PER_LOOKUP * lookups
    assert auto.auto_optimizer(Table(6_000), 1024, 2) == "fused"
    assert auto.auto_optimizer(Table(limit), 1024, 2) == "fused"
    assert auto.auto_optimizer(Table(limit + 1), 1024, 2) == "lazy"


def test_explicit_settings_are_kept(tiny_ml):
    config = TrainConfig(threads=3, precision="fp32", optimizer="adam")
    from deepfm.training.run import load_data

    data = load_data(TrainConfig(data_dir=str(tiny_ml), progress=False))
    choices = auto.resolve(config, _deepfm((400, 400, 400), fields=2), data.feature_map)
    assert choices == auto.Choices(3, "fp32", "adam")


def test_precision_option_is_checked(monkeypatch):
    with pytest.raises(ConfigError, match="--precision must be one of auto, fp32, bf16, got 'fp16'"):
        TrainConfig(precision="fp16").validate()
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    with pytest.raises(ConfigError, match="--precision bf16: this CPU has neither AVX512-BF16 nor AMX"):
        TrainConfig(precision="bf16").validate()
    assert TrainConfig(precision="auto").validate().precision == "auto"  # auto falls back to fp32


def test_cli_rejects_an_unknown_precision(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--precision", "fp16"])
    assert exit_info.value.code == 2
    assert "--precision" in capsys.readouterr().err


@needs_bf16
def test_autocast_runs_linear_layers_in_bf16_and_returns_fp32():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1), nn.Flatten(0))
    seen = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    wrapped = Autocast(net, "bf16", "cpu")
    x = torch.randn(16, 8)
    out = wrapped(x)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    out.sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in net.parameters())
    wrapped.eval()  # evaluation runs the module in float32, unchanged
    torch.testing.assert_close(wrapped(x), net(x), rtol=0, atol=0)
    assert seen[-1] == torch.float32


@needs_bf16
@pytest.mark.parametrize("name", ["deepfm", "fm", "widedeep", "dcnv2"])
def test_fused_kernels_train_under_bf16_autocast(name):
    """The hand-written CPU training nodes run inside the autocast wrapper (their backward under
    the forward's autocast state): float32 gradients close to the float32 ones, and a few bf16
    steps lower the loss like float32 steps do."""
    torch.manual_seed(0)
    model = build_model(name, num_rows=300, num_fields=3, embed_dim=8, mlp=(64, 32), dropout=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # away from the zero-initialised output layer
    ids = torch.randint(1, 300, (256, 3))
    label = (ids[:, 0] % 2).float()
    grads = {}
    for prec in ("fp32", "bf16"):
        m = copy.deepcopy(model)
        wrapped = Autocast(m, prec, "cpu")
        F.binary_cross_entropy_with_logits(wrapped(ids), label).backward()
        grads[prec] = torch.cat([p.grad.to_dense().flatten() for p in m.parameters() if p.grad is not None])
    assert grads["bf16"].dtype == torch.float32
    cosine = F.cosine_similarity(grads["bf16"], grads["fp32"], dim=0)
    assert cosine > 0.99, cosine

    m = copy.deepcopy(model)
    wrapped = Autocast(m, "bf16", "cpu")
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.binary_cross_entropy_with_logits(wrapped(ids), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert not torch.is_autocast_enabled("cpu")  # the backward hooks left no autocast state behind


@needs_bf16
def test_train_with_bf16_records_it_and_learns(tiny_ml, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_ml), "--out", str(out), "--epochs", "3", "--lr", "0.01"]
    assert main([*args, "--precision", "bf16", "--no-progress", "--threads", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["environment"]["precision"] == "bf16"
    assert metrics["config"]["precision"] == "bf16"
    assert metrics["test_auc"] > 0.7  # the planted signal


def test_default_run_records_its_automatic_choices(tiny_ml, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_ml), "--out", str(out), "--epochs", "1", "--no-progress"]
    assert main(args) == 0
    env = json.loads((out / "metrics.json").read_text())["environment"]
    # MovieLens-sized step: 1 thread, float32, full-table fused Adam
    assert (env["threads"], env["precision"], env["optimizer"]) == (1, "fp32", "fused")

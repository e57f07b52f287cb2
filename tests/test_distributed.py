"""Data-parallel training (issue 7): 2 gloo ranks launched by torchrun on CPU, checked against one process.

The launch tests run ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m deepfm
train ...`` in a subprocess on generated data; each rank dumps its final weights through the
``DEEPFM_DIST_DUMP_DIR`` debug hook so the test can compare them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import prepared, write_movielens

import deepfm
from deepfm.cli.main import main
from deepfm.evaluation.metrics import auc
from deepfm.training.distributed import DUMP_ENV, DistContext, Shard, chunk_bounds, init_distributed

SRC = Path(deepfm.__file__).resolve().parents[1]
PER_RANK_BATCH = 256
COMMON = ["--lr", "0.01", "--seed", "3", "--no-progress"]


def torchrun(data: Path, out: Path, dump: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    path = f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = {**os.environ, "PYTHONPATH": path, DUMP_ENV: str(dump)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "deepfm", "train", "--data-dir", str(data), "--out", str(out), *COMMON, *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def single(data: Path, out: Path, *extra: str) -> dict:
    assert main(["train", "--data-dir", str(data), "--out", str(out), *COMMON, *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def rank_states(dump: Path) -> list[dict]:
    return [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp") / "ml"
    write_movielens(folder / "ratings.dat", n=16000)
    return folder


@pytest.fixture(scope="module")
def deepfm_2ranks(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("deepfm2")
    proc = torchrun(data, root / "run", root / "dump", "--epochs", "3", "--batch-size", str(PER_RANK_BATCH))
    return root, proc


# -- the permutation shard (no processes) -----------------------------------------------------
def test_rank_shards_are_disjoint_and_together_form_the_single_process_batches():
    n, batch, world = 1003, 8, 2
    shards = [Shard(r, world).permutation(n, torch.Generator().manual_seed(5)) for r in range(world)]
    single_perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    assert all(len(s) == n // world for s in shards)
    assert len(set(torch.cat(shards).tolist())) == world * (n // world)  # disjoint
    for k in range(3):  # k-th global batch = union of every rank's k-th batch
        union = torch.cat([s[k * batch : (k + 1) * batch] for s in shards])
        expect = single_perm[k * batch * world : (k + 1) * batch * world]
        assert sorted(union.tolist()) == sorted(expect.tolist())
    assert torch.equal(Shard().permutation(n, torch.Generator().manual_seed(5)), single_perm)


def test_chunks_cover_the_split_in_order():
    bounds = chunk_bounds(11, 3)
    assert bounds.tolist() == [0, 4, 8, 11]
    assert [Shard(r, 3).chunk(11) for r in range(3)] == [(0, 4), (4, 8), (8, 11)]


def test_world_size_one_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.enabled, ctx.is_main, ctx.world_size) == (False, True, 1)
    module = torch.nn.Linear(2, 1)
    assert ctx.wrap(module, seed=0) is module
    scores = np.arange(5, dtype=np.float32)
    assert ctx.predict(lambda s: s, scores) is scores
    assert ctx.all_sum([1.0, 2.0]) == [1.0, 2.0]
    assert isinstance(DistContext(), DistContext)


# -- 2 gloo ranks through torchrun -------------------------------------------------------------
@pytest.mark.slow
def test_both_ranks_hold_identical_parameters(deepfm_2ranks):
    root, _ = deepfm_2ranks
    a, b = rank_states(root / "dump")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:  # parameters and BatchNorm buffers, after the last epoch
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for key in a["best_state"]:
        assert torch.equal(a["best_state"][key], b["best_state"][key]), key
    # training did move the weights away from their (shared) initialisation
    assert a["state_dict"]["features.sparse.table.weight"].abs().max() > 0.05


@pytest.mark.slow
def test_reported_auc_equals_single_process_evaluation_of_the_checkpoint(deepfm_2ranks, data):
    root, proc = deepfm_2ranks
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    model = deepfm.load(str(root / "run"))
    prepared_data = prepared(data, seed=3)
    assert auc(prepared_data.test.label.numpy(), model.predict_split(prepared_data.test)) == pytest.approx(
        metrics["test_auc"], abs=1e-9
    )
    assert auc(prepared_data.valid.label.numpy(), model.predict_split(prepared_data.valid)) == pytest.approx(
        metrics["best_valid_auc"], abs=1e-9
    )
    assert metrics["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "batch_size_per_rank": PER_RANK_BATCH,
        "global_batch_size": 2 * PER_RANK_BATCH,
    }
    # rank 0 alone prints and writes: one summary line, one history row per epoch
    assert proc.stdout.count("test AUC") == 1
    assert len((root / "run" / "history.csv").read_text().splitlines()) == 1 + metrics["epochs_run"]
    assert metrics["data"]["rows"]["train"] == len(prepared_data.train)


@pytest.mark.slow
def test_auc_close_to_single_process_with_same_global_batch(deepfm_2ranks, data, tmp_path):
    root, _ = deepfm_2ranks
    two = json.loads((root / "run" / "metrics.json").read_text())
    one = single(data, tmp_path / "one", "--epochs", "3", "--batch-size", str(2 * PER_RANK_BATCH))
    assert two["test_auc"] > 0.70 and one["test_auc"] > 0.70
    assert abs(two["test_auc"] - one["test_auc"]) < 0.01, (two["test_auc"], one["test_auc"])


@pytest.mark.slow
def test_fm_data_parallel_matches_one_process_numerically(data, tmp_path):
    """FM has no BatchNorm or dropout: 2 ranks x B must follow the 1 x 2B trajectory up to rounding."""
    fm = ["--model", "fm", "--epochs", "2"]
    torchrun(data, tmp_path / "two", tmp_path / "dump", *fm, "--batch-size", "256")
    single(data, tmp_path / "one", *fm, "--batch-size", "512")
    two = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["state_dict"]
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["state_dict"]
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-4)
    table = one["features.sparse.table.weight"]
    assert table.abs().max() > 0.05  # and the weights did move: the comparison is not vacuous


# -- the context on its own, in 2 spawned gloo workers ------------------------------------------
def _toy_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world)}
    )
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    torch.manual_seed(100 + rank)  # deliberately different initial weights on each rank
    emb = torch.nn.Embedding(50, 4, sparse=True)  # sparse embedding gradients, all-reduced by gloo
    head = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    module = torch.nn.ModuleDict({"emb": emb, "head": head})
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    net = ctx.wrap(torch.nn.Sequential(module["emb"], module["head"]), seed=0)
    sparse_opt = torch.optim.SparseAdam(list(emb.parameters()), lr=0.05)
    dense_opt = torch.optim.Adam(head.parameters(), lr=0.05)
    x = torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(1))
    y = (x % 3 == 0).float()
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        for idx in ctx.shard.permutation(len(x), gen).split(25):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[idx]).squeeze(1), y[idx])
            sparse_opt.zero_grad()
            dense_opt.zero_grad()
            loss.backward()
            sparse_opt.step()
            dense_opt.step()
    ctx.sync_buffers(net)
    scores = ctx.predict(lambda part: part * 10.0, np.arange(7, dtype=np.float32))
    torch.save({"initial": initial, "final": module.state_dict(), "scores": scores}, f"{out}/rank{rank}.pt")


def test_ddp_broadcasts_rank0_weights_and_keeps_ranks_identical_with_sparse_gradients(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_toy_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert not torch.equal(a["initial"]["emb.weight"], b["initial"]["emb.weight"])  # seeded apart
    for key, value in a["final"].items():
        assert torch.equal(value, b["final"][key]), key
    assert not torch.equal(a["final"]["emb.weight"], a["initial"]["emb.weight"])  # it trained
    np.testing.assert_array_equal(a["scores"], np.arange(7, dtype=np.float32) * 10.0)
    np.testing.assert_array_equal(b["scores"], a["scores"])

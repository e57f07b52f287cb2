"""Data-parallel training: 2 gloo ranks launched by torchrun on CPU, checked against one process.

The launch tests run ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m deepfm
train ...`` in a subprocess on generated data; each rank dumps its final weights through the
``DEEPFM_DIST_DUMP_DIR`` debug hook so the test can compare them. The embedding tables are
synchronised outside DDP (``--embedding-sync dense`` or ``rows``), with every optimizer.
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


def launch_env(dump: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if dump is not None:
        env[DUMP_ENV] = str(dump)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def launcher(nproc: int = 2) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node=N -m deepfm``."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*run, "-m", "deepfm"]


def torchrun(
    data: Path | None, out: Path, dump: Path, *extra: str, nproc: int = 2, check: bool = True
) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` of ``deepfm train`` (``data``: its --data-dir; None: give --prepared)."""
    source = ["--data-dir", str(data)] if data is not None else []
    cmd = [*launcher(nproc), "train", *source, "--out", str(out), *COMMON, *extra]
    proc = subprocess.run(cmd, env=launch_env(dump), capture_output=True, text=True, timeout=300)
    if check:
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
    # lazy: row-sparse table gradients, synchronised outside DDP (the crash of a DDP-wrapped table
    # switched to sparse gradients is gone)
    args = ["--epochs", "3", "--batch-size", str(PER_RANK_BATCH), "--optimizer", "lazy"]
    proc = torchrun(data, root / "run", root / "dump", *args)
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
    layout = {k: v for k, v in metrics["distributed"].items() if k != "bytes_per_step"}
    assert layout == {
        "world_size": 2,
        "backend": "gloo",
        "batch_size_per_rank": PER_RANK_BATCH,
        "global_batch_size": 2 * PER_RANK_BATCH,
        "embedding_sync": "dense",  # auto: a 503-row table, ~350 rows touched per batch and rank
    }
    assert metrics["environment"]["optimizer"] == "lazy"
    traffic = metrics["distributed"]["bytes_per_step"]
    table = model.feature_map.num_rows * 17 * 4  # rows x (1 + embed 16) float32, all-reduced whole
    assert traffic["embedding_dense"] == table
    assert traffic["total"] == traffic["embedding_dense"] + traffic["dense_parameters"]
    dense_layers = sum(v.numel() for k, v in model.module.named_parameters() if "table" not in k) * 4
    assert traffic["dense_parameters"] == dense_layers  # DDP's buckets: every other parameter
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
@pytest.mark.parametrize(
    ("sync", "optimizer"), [("rows", "lazy"), ("dense", "lazy")], ids=lambda v: v
)  # (rows with a dense-gradient optimizer: test_ranks_start_from_rank0_and_stay_identical_...)
def test_fm_data_parallel_equals_one_process_at_the_global_batch(data, tmp_path, sync, optimizer):
    """FM has no BatchNorm or dropout: after one epoch, 2 ranks x B hold the weights of 1 x 2B
    up to float rounding, whichever way the table is synchronised, and both ranks are identical.

    (The ranks sum a row's gradient in another order than one process; where a row's gradient
    nearly cancels, Adam's normalised step turns that rounding into up to ~2e-3 x lr: at this lr
    the largest difference measured is ~5e-6, at lr 1e-2 it was 2.2e-5.)"""
    fm = ["--model", "fm", "--epochs", "1", "--optimizer", optimizer, "--lr", "0.002"]
    torchrun(data, tmp_path / "two", tmp_path / "dump", *fm, "--batch-size", "256", "--embedding-sync", sync)
    single(data, tmp_path / "one", *fm, "--batch-size", "512")
    a, b = rank_states(tmp_path / "dump")
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["state_dict"]
    for key in one:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
        torch.testing.assert_close(a["state_dict"][key], one[key], rtol=0, atol=1e-5)
    table = one["features.sparse.table.weight"]
    assert table.abs().max() > 0.03  # and the weights did move: the comparison is not vacuous
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["distributed"]["embedding_sync"] == sync
    kind = "embedding_rows" if sync == "rows" else "embedding_dense"
    assert set(metrics["distributed"]["bytes_per_step"]) == {"dense_parameters", kind, "total"}


@pytest.mark.slow
def test_auto_optimizer_picks_lazy_and_trains_under_torchrun(data, tmp_path):
    """The documented command with a batch small against the table: auto resolves to lazy (the
    combination that crashed in every rank when DDP wrapped the table), rows chosen to sync it."""
    args = ["--epochs", "1", "--batch-size", "32", "--threads", "1", "--optimizer", "auto"]
    proc = torchrun(data, tmp_path / "run", tmp_path / "dump", *args)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["environment"]["optimizer"] == "lazy"
    assert metrics["distributed"]["embedding_sync"] == "rows"
    assert "embedding sync rows" in proc.stdout and metrics["test_auc"] > 0.6
    a, b = rank_states(tmp_path / "dump")
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


# -- sharded data, prepared once: each rank streams its own shards ------------------------------
@pytest.fixture(scope="module")
def sharded(data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sharded") / "prepared"
    args = ["prepare", "--data-dir", str(data), "--seed", "3", "--shards", "2", "--no-progress"]
    assert main([*args, "--out", str(folder)]) == 0
    return folder


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_c10d_rendezvous_train_from_one_sharded_prepared_folder(sharded, tmp_path):
    """Two torchrun "nodes" on 127.0.0.1 (one rank each) meet through the c10d rendezvous and
    train from one prepared folder, each rank streaming its own shard; weights stay identical."""
    port, out, dump = free_port(), tmp_path / "run", tmp_path / "dump"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "deepfm-test"]
    cmd += ["-m", "deepfm", "train", "--prepared", str(sharded), "--out", str(out), "--lr", "0.01"]
    cmd += ["--no-progress", "--epochs", "2", "--batch-size", "128", "--optimizer", "lazy"]
    nodes = [
        subprocess.Popen(cmd, env=launch_env(dump), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    printed = "".join(o for o, _ in outputs)
    rows = json.loads((sharded / "meta.json").read_text())["rows"]["train"]
    assert f"{rows // 2:,} training rows streamed per rank" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distributed"]["world_size"] == 2 and metrics["data"]["rows"]["train"] == rows
    assert metrics["test_auc"] > 0.65
    a, b = rank_states(dump)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


@pytest.mark.slow
def test_a_prepared_folder_that_does_not_fit_the_ranks_is_a_one_line_error(data, tmp_path):
    folder = tmp_path / "three"
    args = ["prepare", "--data-dir", str(data), "--shards", "3", "--no-progress", "--out", str(folder)]
    assert main(args) == 0
    proc = torchrun(None, tmp_path / "run", tmp_path / "dump", "--prepared", str(folder), check=False)
    assert proc.returncode != 0
    line = "the prepared training split has 3 shard(s); 2 data-parallel ranks need a multiple of 2"
    errors = [e for e in proc.stderr.splitlines() if e.startswith("error:")]
    assert errors and all(line in e for e in errors), proc.stderr[-3000:]
    frames = [e for e in proc.stderr.splitlines() if e.strip().startswith("File ")]
    assert not [f for f in frames if "/deepfm/" in f]  # (torchrun reports its failed ranks its own way)


@pytest.mark.slow
def test_sigkill_mid_epoch_of_streamed_shards_then_resume_replays_the_same_batches(sharded, tmp_path):
    import signal
    import time

    from deepfm.training.state import STATE_FILE, read_state

    args = ["--prepared", str(sharded), "--epochs", "1", "--batch-size", "64", "--optimizer", "lazy"]
    torchrun(None, tmp_path / "ref", tmp_path / "dump-ref", *args)
    reference = json.loads((tmp_path / "ref" / "metrics.json").read_text())

    out = tmp_path / "run"
    cmd = launcher()
    cmd += ["train", *args, "--out", str(out), *COMMON, "--checkpoint-every", "5"]
    env = {**launch_env(), "DEEPFM_TEST_STEP_DELAY": "0.02"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    steps = json.loads((sharded / "meta.json").read_text())["rows"]["train"] // 2 // 64
    target = steps // 2  # in the middle of the epoch
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if read_state(out / STATE_FILE)["global_step"] >= target:
                    break
            except Exception:  # not written yet, or being replaced right now
                pass
            time.sleep(0.01)
        assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read()}"
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (out / "metrics.json").exists()
    saved = read_state(out / STATE_FILE)
    assert saved["position"]["epoch"] == 1 and 0 < saved["position"]["step"] < steps

    cmd = launcher()
    cmd += ["train", "--out", str(out), "--resume", "--no-progress"]
    resumed = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    again = json.loads((out / "metrics.json").read_text())
    for key in ("test_auc", "test_logloss", "best_valid_auc", "best_epoch"):
        assert again[key] == reference[key], key
    for ea, eb in zip(again["epochs"], reference["epochs"], strict=True):
        assert (ea["train_loss"], ea["valid_auc"]) == (eb["train_loss"], eb["valid_auc"])


# -- the context on its own, in 2 spawned gloo workers ------------------------------------------
SYNCS = [("rows", True), ("rows", False), ("dense", True), ("dense", False)]


def _global_batch_gradient(module: torch.nn.Module, x, y, parts: torch.Tensor) -> torch.Tensor:
    """One process's table gradient on the global batch (every rank's rows): the mean of the
    ranks' mean losses, which for equal batches is the mean over all their rows."""
    import copy

    clone = copy.deepcopy(module)
    loss = torch.stack(
        [torch.nn.functional.binary_cross_entropy_with_logits(clone(x[p]).squeeze(1), y[p]) for p in parts]
    ).mean()
    loss.backward()
    grad = clone[0].weight.grad
    return grad.to_dense() if grad.is_sparse else grad


def _toy_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world)}
    )
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    x = torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(1))
    y = (x % 3 == 0).float()
    results = {}
    for sync, sparse_update in SYNCS:  # every way of synchronising the table, in one process group
        ctx = init_distributed("cpu")
        torch.manual_seed(100 + rank)  # deliberately different initial weights on each rank
        emb = torch.nn.Embedding(50, 4, sparse=sparse_update)  # row-wise optimizers: sparse gradients
        head = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        module = torch.nn.Sequential(emb, head)
        initial = {k: v.clone() for k, v in module.state_dict().items()}
        net = ctx.wrap(module, seed=0, embedding_sync=sync, sparse_update=sparse_update)
        table_opt = (torch.optim.SparseAdam if sparse_update else torch.optim.Adam)(
            list(emb.parameters()), 0.05
        )
        dense_opt = torch.optim.Adam(head.parameters(), lr=0.05)
        gen = torch.Generator().manual_seed(2)
        gap, support = 0.0, True
        for _ in range(3):
            for idx in ctx.shard.permutation(len(x), gen).split(25):
                everyone = ctx.all_gather(idx.contiguous())  # [world, 25]: the global batch
                expected = _global_batch_gradient(module, x, y, everyone)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[idx]).squeeze(1), y[idx])
                table_opt.zero_grad()
                dense_opt.zero_grad()
                loss.backward()
                ctx.sync()
                grad = emb.weight.grad
                assert grad.is_sparse == sparse_update
                dense = grad.to_dense() if grad.is_sparse else grad
                gap = max(gap, float((dense - expected).abs().max()))
                if sparse_update:  # exactly the rows some rank looked up
                    rows, looked_up = (
                        set(grad.coalesce().indices()[0].tolist()),
                        set(x[everyone].view(-1).tolist()),
                    )
                    support &= rows == looked_up if sync == "rows" else rows <= looked_up
                table_opt.step()
                dense_opt.step()
        results[(sync, sparse_update)] = {
            "initial": initial,
            "final": module.state_dict(),
            "traffic": ctx.traffic.per_step(),
            "gap": gap,
            "support": support,
        }
    ctx = init_distributed("cpu")
    scores = ctx.predict(lambda part: part * 10.0, np.arange(7, dtype=np.float32))
    torch.save({"results": results, "scores": scores}, f"{out}/rank{rank}.pt")


def test_ranks_start_from_rank0_and_stay_identical_with_every_table_sync(tmp_path):
    """The table out of DDP, synchronised as a dense all-reduce or as touched rows, for optimizers
    taking dense or row-sparse gradients: every step's gradient is one process's on the global
    batch, ranks stay identical, and the bytes are counted at the collective calls."""
    torch.multiprocessing.spawn(_toy_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    for key in SYNCS:
        ra, rb = a["results"][key], b["results"][key]
        assert not torch.equal(ra["initial"]["0.weight"], rb["initial"]["0.weight"])  # seeded apart
        for name, value in ra["final"].items():
            assert torch.equal(value, rb["final"][name]), (key, name)
        assert not torch.equal(ra["final"]["0.weight"], ra["initial"]["0.weight"])  # it trained
        assert ra["gap"] < 1e-6 and ra["support"], (key, ra["gap"])
        traffic = ra["traffic"]
        if key[0] == "dense":
            assert traffic["embedding_dense"] == 50 * 4 * 4  # the whole table, every step
        else:  # 2 counts (8 bytes) + 2 x (most rows a rank touched, <= 25) x (4 floats + an int64 id)
            assert 16 + 2 * 15 * 24 <= traffic["embedding_rows"] <= 16 + 2 * 25 * 24
        assert traffic["dense_parameters"] == (4 * 8 + 8 + 8 + 1) * 4  # DDP's bucket: the head
    np.testing.assert_array_equal(a["scores"], np.arange(7, dtype=np.float32) * 10.0)
    np.testing.assert_array_equal(b["scores"], a["scores"])

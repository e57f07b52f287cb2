"""The training split as shards (``deepfm prepare --shards N``) and a rank's rows streamed from disk."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfm.cli.main import main
from deepfm.data.memmap import MemmapSplit
from deepfm.data.prepare import open_prepared
from deepfm.data.shards import StreamedRows, deal, rank_shards, rank_view, shard_part, shard_sizes
from deepfm.errors import ConfigError


def write_shards(folder: Path, rows: int, count: int) -> list[int]:
    """Shards of a training split whose row k has the id k (and label k % 2), dealt round robin."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.arange(rows, dtype=np.int32).reshape(-1, 1)
    for s, (part_ids, part_labels) in enumerate(
        zip(deal(ids, 0, count), deal((np.arange(rows) % 2).astype(np.float32), 0, count))
    ):
        np.save(folder / f"{shard_part('train', s, count)}_ids.npy", part_ids)
        np.save(folder / f"{shard_part('train', s, count)}_label.npy", part_labels)
    return shard_sizes(rows, count)


def epoch_rows(split, batch: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [b.ids[:, 0].tolist() for b in split.batches(batch, gen, shuffle=True)]


def test_rows_are_dealt_round_robin_and_read_back_in_order(tmp_path):
    assert shard_sizes(10, 4) == [3, 3, 2, 2]
    assert [p.tolist() for p in deal(np.arange(5, 12), 5, 4)] == [[8], [5, 9], [6, 10], [7, 11]]
    sizes = write_shards(tmp_path, 1000, 4)
    together = StreamedRows.sharded(tmp_path, "train", sizes).in_memory()
    assert together.ids[:, 0].tolist() == list(range(1000))
    assert together.label.tolist() == [k % 2 for k in range(1000)]


def test_each_rank_streams_its_own_shards_with_equal_steps_and_a_seeded_order(tmp_path):
    sizes = write_shards(tmp_path, 1003, 4)  # 251, 251, 251, 250 rows
    split = StreamedRows.sharded(tmp_path, "train", sizes)
    split.block_rows, split.window_blocks = 64, 2  # several windows per epoch
    ranks = [split.rank_view(r, 2) for r in range(2)]
    assert [len(r) for r in ranks] == [501, 501]  # 1003 // 2 rows each: the same number of steps
    epochs = [epoch_rows(r, 100, seed=7) for r in ranks]
    # 501 = 5 x 100 + 1: a last batch of one row is left out, on both ranks
    assert [[len(b) for b in e] for e in epochs] == [[100] * 5] * 2
    seen = [sorted(itertools.chain(*e)) for e in epochs]
    assert all(k % 2 == r for r in range(2) for k in seen[r])  # rank r: rows k = r mod 2 (shards r, r + 2)
    assert len(seen[0]) == len(set(seen[0])) == 500 and len(set(seen[0]) | set(seen[1])) == 1000
    assert epoch_rows(ranks[0], 100, seed=7) == epochs[0]  # same seed, same batches (a resume replays them)
    assert epoch_rows(ranks[0], 100, seed=8) != epochs[0]
    assert epochs[0][0] != [k - 1 for k in epochs[1][0]]  # ranks shuffle apart
    # rank 0 and rank 1 consume the shared generator alike, whatever their shard sizes
    gens = [torch.Generator().manual_seed(3) for _ in range(2)]
    for r in range(2):
        list(ranks[r].batches(100, gens[r], shuffle=True))
    assert torch.equal(gens[0].get_state(), gens[1].get_state())


def test_a_shard_count_that_is_no_multiple_of_the_ranks_is_one_clear_error():
    assert rank_shards(6, 1, 3) == [1, 4]
    with pytest.raises(ConfigError, match="has 3 shard\\(s\\); 2 data-parallel ranks need a multiple of 2"):
        rank_shards(3, 0, 2)


def test_an_unsharded_streamed_split_gives_each_rank_a_contiguous_share(tmp_path):
    np.save(tmp_path / "train_ids.npy", np.arange(101, dtype=np.int32).reshape(-1, 1))
    np.save(tmp_path / "train_label.npy", np.zeros(101, dtype=np.float32))
    split = MemmapSplit(tmp_path, "train")
    assert rank_view(split, 0, 1) is split
    shares = [rank_view(split, r, 2) for r in range(2)]
    assert [len(s) for s in shares] == [50, 50]
    rows = [sorted(itertools.chain(*epoch_rows(s, 10, seed=1))) for s in shares]
    assert rows[0] == list(range(50))  # rows 0-49, and 50 of the rows 50-100 (one left out this epoch)
    assert len(set(rows[1])) == 50 and set(rows[1]) <= set(range(50, 101))
    assert split[10:20].label.shape == (10,)
    assert [b.ids[:, 0].tolist() for b in split[95:101].batches(4)] == [[95, 96, 97, 98], [99, 100]]


def test_prepare_writes_shards_that_read_back_as_the_unsharded_split(tiny_ml, tmp_path, capsys):
    args = ["--data-dir", str(tiny_ml), "--seed", "3", "--no-progress"]
    assert main(["prepare", *args, "--out", str(tmp_path / "plain")]) == 0
    assert main(["prepare", *args, "--out", str(tmp_path / "sharded"), "--shards", "3"]) == 0
    assert "(3 training shards)" in capsys.readouterr().out
    meta = json.loads((tmp_path / "sharded" / "meta.json").read_text())
    assert meta["format_version"] == 4
    assert meta["shards"]["train"] == {"count": 3, "rows": shard_sizes(meta["rows"]["train"], 3)}
    names = set(meta["files_written"])
    assert "train_ids.npy" not in names and {"train-00002-of-00003_ids.npy", "valid_ids.npy"} <= names
    plain, sharded = open_prepared(tmp_path / "plain"), open_prepared(tmp_path / "sharded")
    assert torch.equal(plain.train.ids, sharded.train.ids) and torch.equal(
        plain.train.label, sharded.train.label
    )
    assert torch.equal(plain.test.ids, sharded.test.ids)
    # streamed (as when larger than memory): every row once per epoch
    streamed = open_prepared(tmp_path / "sharded", in_memory=False)
    assert isinstance(streamed.train, StreamedRows) and len(streamed.train) == len(plain.train)
    assert sum(len(b.label) for b in streamed.train.batches(1000)) == len(plain.train)
    # a rank of 3 opens its own shard only: the others may be missing (copied per node)
    for name in names:
        if name.startswith(("train-00000", "train-00002")):
            (tmp_path / "sharded" / name).unlink()
    rank1 = open_prepared(tmp_path / "sharded", rank=1, world=3)
    assert len(rank1.train) == len(plain.train) // 3 and rank1.summary()["rows"]["train"] == len(plain.train)
    with pytest.raises(Exception, match="train-00000-of-00003_ids.npy is missing"):
        open_prepared(tmp_path / "sharded")

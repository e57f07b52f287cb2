"""Are recommendations personal? Top-10 lists of every user on a leave-last split, measured.

For each seed and each variant (a set of ``deepfm train`` options), trains on MovieLens with
``--split leave-last`` and reports, on the test split (each user's latest rating):

* ``hr@10`` / ``ndcg@10``: the library's ranking metrics (each held-out liked item ranked among
  ``--rank-negatives`` sampled items the user did not rate; ``metrics.json``);
* ``full_hr@10`` / ``full_ndcg@10``: the same held-out items ranked in the user's actual top-10
  from ``model.recommend(user, 10)`` (every candidate item, rated ones excluded);
* ``coverage``: distinct items in all users' top-10 / items in the catalogue (seen in training);
* ``overlap``: mean over all pairs of users of |top-10 A and top-10 B| / 10;
* ``median_count``: median number of training ratings of the recommended items;
* ``test_auc`` and the best epoch.

    python benchmarks/recommendations.py --data-dir ../shared/data/ml-1m-half --seeds 0 1 2 \
        --min-item-counts 1 default --discounts 0 0.5 1

A variant is ``NAME=OPTIONS`` (the options of ``deepfm train``, empty for the defaults); each
trained model's lists are measured for every ``--min-item-counts`` value (``recommend``'s
candidate rule: items at least N users rated in training; ``default``: its default) and every
``--discounts`` value (``recommend``'s order: 0 by score, 1 by lift over the unknown user). The table
is printed in Markdown and written to ``--json`` when given.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import deepfm
from deepfm.artifact.recommend import candidate_mask, rank_scores
from deepfm.cli.main import build_parser
from deepfm.cli.train import config_from_args
from deepfm.data.batching import Split
from deepfm.data.rated import rated_positions
from deepfm.experiments.tracking import train_tracked
from deepfm.training.run import load_data

K = 10


def run(
    data_dir: str,
    seed: int,
    options: str,
    out: Path,
    epochs: int | None,
    counts: list[int | None],
    discounts: list[float],
) -> list[dict[str, Any]]:
    """One training run; its figures for each candidate rule in ``counts`` and discount in ``discounts``."""
    argv = ["train", "--data-dir", data_dir, "--split", "leave-last", "--seed", str(seed), "--out", str(out)]
    argv += ["--no-progress", *shlex.split(options)]
    if epochs:
        argv += ["--epochs", str(epochs)]
    config = config_from_args(build_parser().parse_args(argv))
    started = time.perf_counter()
    metrics = train_tracked(config, echo=lambda *_: None)
    seconds = time.perf_counter() - started
    model = deepfm.load(out)
    trained = {
        "hr@10": metrics[f"test_hitrate@{K}"],
        "ndcg@10": metrics[f"test_ndcg@{K}"],
        "test_auc": metrics["test_auc"],
        "best_epoch": metrics["best_epoch"],
        "train_s": seconds,
    }
    return [
        trained | {"min_count": n, "discount": d} | top_lists(model, config, n, d)
        for n in counts
        for d in discounts
    ]


def top_lists(
    model: Any, config: Any, min_count: int | None = None, discount: float = 0.0, check: bool = True
) -> dict[str, Any]:
    """Every user's top-10 against their held-out test item.

    The lists are ``model.recommend``'s (checked on a few users), computed for all users at once:
    every (user, candidate item) pair scored in large batches, rated items masked out."""
    user, item = model.facts.user, model.facts.item
    fmap = model.feature_map
    fu, fi = fmap.field(user), fmap.field(item)
    if [f.name for f in fmap.fields] != [user, item]:
        raise SystemExit("this measurement scores ids-only models (--features ids)")
    rated = model.facts.rated
    n_users, n_items = len(fu.vocab), len(fi.vocab)
    counts = np.bincount(rated["items"].numpy(), minlength=n_items)  # training ratings per item
    allowed = candidate_mask(model, min_count)
    top = np.empty((n_users, K), dtype=np.int64)
    per = max(1, (1 << 21) // n_items)
    items = fi.offset + 1 + np.arange(n_items)
    unknown = np.stack([np.full(n_items, fu.offset), items], 1)  # the OOV user's row, every item
    unknown_scores = model.predict_split(Split.from_arrays({"ids": unknown}, np.zeros(n_items, np.float32)))
    for start in range(0, n_users, per):
        users = np.arange(start, min(start + per, n_users))
        ids = np.empty((len(users), n_items, 2), dtype=np.int64)
        ids[:, :, 0] = fu.offset + 1 + users[:, None]
        ids[:, :, 1] = items[None, :]
        flat = ids.reshape(-1, 2)
        scores = model.predict_split(Split.from_arrays({"ids": flat}, np.zeros(len(flat), np.float32)))
        scores = scores.reshape(len(users), n_items)
        scores = (
            rank_scores(scores, unknown_scores[None, :], discount) if discount else scores.astype(np.float64)
        )
        scores[:, ~allowed] = -np.inf
        for j, u in enumerate(users.tolist()):
            scores[j, rated_positions(rated, u)] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        top[users] = order
    for u in (0, 1, n_users // 2, n_users - 1) if check else ():  # the same lists as the product's recommend
        expected = (
            model.recommend(fu.vocab[u], K, min_item_count=min_count, discount=discount).items[item].tolist()
        )
        assert [fi.vocab[i] for i in top[u]] == expected, (u, expected)

    test = load_data(config).test
    ids = test.ids.numpy()
    users = ids[:, 0] - (fu.offset + 1)
    targets = ids[:, 1] - (fi.offset + 1)
    liked = (test.label.numpy() > 0.5) & (users >= 0)
    hit_rank = np.full(int(liked.sum()), -1)
    for n, (u, t) in enumerate(zip(users[liked].tolist(), targets[liked].tolist())):
        where = np.flatnonzero(top[u] == t)
        hit_rank[n] = where[0] if len(where) else -1
    hit = hit_rank >= 0
    shown = np.bincount(top.reshape(-1), minlength=n_items)  # users whose top-10 holds each item
    pairs = n_users * (n_users - 1) / 2
    return {
        "full_hr@10": float(hit.mean()),
        "full_ndcg@10": float(np.where(hit, 1.0 / np.log2(np.maximum(hit_rank, 0) + 2), 0.0).mean()),
        "coverage": float((shown > 0).sum() / n_items),
        "overlap": float((shown * (shown - 1) / 2).sum() / pairs / K),
        "median_count": float(np.median(counts[top.reshape(-1)])),
    }


COLUMNS = ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10", "coverage", "overlap", "median_count")
COLUMNS += ("test_auc",)


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| variant | " + " | ".join(COLUMNS) + " | best epochs |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for name, rows in results.items():
        cells = []
        for c in COLUMNS:
            values = [r[c] for r in rows]
            mean = statistics.fmean(values)
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            digits = 1 if c == "median_count" else 4
            cell = f"{mean:.{digits}f}"
            cells.append(f"{cell} ± {spread:.{digits}f}" if len(values) > 1 else cell)
        epochs = ", ".join(str(r["best_epoch"]) for r in rows)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {epochs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", action="append", default=None, help="NAME=OPTIONS (repeatable)")
    parser.add_argument("--epochs", type=int, default=None, help="epoch cap (default: deepfm train's)")
    parser.add_argument(
        "--min-item-counts", nargs="+", default=["default"], help="candidate rules: N or 'default'"
    )
    parser.add_argument("--discounts", nargs="+", type=float, default=[0.5], help="recommend's discounts")
    parser.add_argument("--json", default=None, help="also write every run's figures here")
    args = parser.parse_args(argv)
    variants = dict(v.split("=", 1) for v in (args.variant or ["default="]))
    counts = [None if c == "default" else int(c) for c in args.min_item_counts]
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="recommendations-") as tmp:
        for seed in args.seeds:  # seeds outermost: the variants of one seed run side by side
            for name, options in variants.items():
                out = Path(tmp) / f"{name}-{seed}"
                rows = run(args.data_dir, seed, options, out, args.epochs, counts, args.discounts)
                labels = [(c, d) for c in args.min_item_counts for d in args.discounts]
                for (label, discount), row in zip(labels, rows):
                    row |= {"seed": seed, "options": options}
                    results.setdefault(f"{name}, min item count {label}, discount {discount:g}", []).append(
                        row
                    )
                    print(json.dumps({"variant": name, **row}), file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

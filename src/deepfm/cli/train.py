"""``deepfm train``: options -> :class:`TrainConfig` -> :func:`deepfm.training.run.train`."""

from __future__ import annotations

import argparse
from typing import Any

from deepfm.config import CHOICES, TrainConfig, load_yaml, parse_mlp

D = TrainConfig()
MODEL_NAMES = "dcnv2, deepfm, fm, lr, widedeep"  # sorted(deepfm.models.MODELS), without importing torch


def add_data_options(p: argparse.ArgumentParser) -> None:
    """The options that choose and shape the data (train, compare, tune, prepare)."""
    s = argparse.SUPPRESS  # unset options do not override --config
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=s, help=f"built-in data set (default {D.dataset})")
    data.add_argument(
        "--data-dir",
        default=s,
        help="folder holding the data set's files (default: download once into ~/.cache/deepfm, "
        "or $DEEPFM_CACHE)",
    )
    data.add_argument(
        "--spec",
        default=s,
        help="dataset spec file (YAML or TOML) declaring files, label, fields and split; replaces "
        "--dataset (see docs/data-specs.md)",
    )
    data.add_argument(
        "--on-bad-lines",
        default=s,
        choices=CHOICES["on_bad_lines"],
        help="spec/streamed data: stop at a malformed row naming file, line and column (error, "
        "default) or skip such rows and report how many",
    )
    data.add_argument(
        "--features",
        default=s,
        choices=CHOICES["features"],
        help="'ids': user and movie id only (the reference); 'all': side features too; "
        "'all+time': also hour and weekday of the rating",
    )
    data.add_argument(
        "--drop-neutral",
        action="store_true",
        default=s,
        help="MovieLens: drop rating-3 rows instead of labelling them 0",
    )
    data.add_argument("--min-count", type=int, default=s, help="values seen fewer times go to OOV")
    data.add_argument(
        "--max-vocab",
        type=int,
        default=s,
        metavar="N",
        help="keep at most the N most frequent values of every field; the rest go to OOV (default: all)",
    )


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that trains (train, compare)."""
    s = argparse.SUPPRESS  # unset options do not override --config
    add_data_options(p)
    p.add_argument(
        "--prepared",
        default=s,
        metavar="DIR",
        help="train on a folder written by 'deepfm prepare' instead of preparing the data here",
    )
    model = p.add_argument_group("model")
    model.add_argument("--embed-dim", type=int, default=s, help=f"embedding size (default {D.embed_dim})")
    model.add_argument(
        "--mlp", type=parse_mlp, default=s, help="hidden widths of the deep part (default 16,16)"
    )
    model.add_argument("--dropout", type=float, default=s, help=f"MLP dropout (default {D.dropout})")
    model.add_argument(
        "--weight-init",
        default=s,
        choices=CHOICES["weight_init"],
        help="deepfm (default): embeddings N(0, 0.01), DeepFM's MLP output layer at zero; fuxictr: "
        "FuxiCTR's (embeddings N(0, 1e-4), Xavier-normal Linear layers), for published FuxiCTR/BARS "
        "recipes",
    )
    opt = p.add_argument_group("training")
    opt.add_argument("--lr", type=float, default=s, help=f"Adam learning rate (default {D.lr})")
    opt.add_argument(
        "--weight-decay", type=float, default=s, help=f"Adam L2 weight decay (default {D.weight_decay})"
    )
    opt.add_argument(
        "--embedding-l2",
        type=float,
        default=s,
        help="L2 weight decay on the embeddings only (default: --weight-decay); equals FuxiCTR/BARS "
        "embedding_regularizer (lambda/2 * ||W||^2 over the whole table each step)",
    )
    opt.add_argument(
        "--net-l2",
        type=float,
        default=s,
        help="L2 weight decay on all non-embedding weights (default: --weight-decay); equals "
        "FuxiCTR/BARS net_regularizer",
    )
    opt.add_argument(
        "--optimizer",
        default=s,
        choices=CHOICES["optimizer"],
        help="auto (default): lazy when the embedding table is much larger than the rows a batch "
        "touches, else fused; fused: Adam in fused kernels (same updates as adam); adam: the "
        "reference torch.optim.Adam; lazy: row-wise Adam on embeddings, only rows in the batch updated",
    )
    opt.add_argument(
        "--embedding-sync",
        default=s,
        choices=CHOICES["embedding_sync"],
        help="data-parallel (torchrun) ranks: dense: all-reduce the whole embedding table's gradient "
        "every step; rows: all-gather only the rows each rank touched (ids + gradient rows); auto "
        "(default): rows when its bytes are at most half the table's",
    )
    opt.add_argument(
        "--clip-grad-norm",
        type=float,
        default=s,
        metavar="N",
        help="scale every step's gradient, its L2 part included, to norm N at most, as FuxiCTR "
        "(max_gradient_norm 10) does; 0 = off (default)",
    )
    opt.add_argument("--batch-size", type=int, default=s, help=f"default {D.batch_size}")
    opt.add_argument(
        "--epochs",
        type=int,
        default=s,
        help=f"maximum epochs; early stopping picks the best (default {D.epochs})",
    )
    opt.add_argument(
        "--patience",
        type=int,
        default=s,
        help=f"stop after this many epochs without a valid-AUC gain (default {D.patience})",
    )
    opt.add_argument(
        "--lr-decay",
        type=float,
        default=s,
        help=f"multiply the lr by this when valid AUC stalls; 1 keeps it constant (default {D.lr_decay})",
    )
    opt.add_argument(
        "--lr-patience",
        type=int,
        default=s,
        help=f"epochs without a valid-AUC gain before the lr decays (default {D.lr_patience})",
    )
    opt.add_argument(
        "--fm-warmup-steps",
        type=int,
        default=s,
        help="DeepFM: train only the FM part (MLP frozen) for the first N optimizer steps of the "
        "first epoch, at most a tenth of a one-epoch run (a one-pass run trains the MLP); 0 "
        f"trains everything from the start (default {D.fm_warmup_steps})",
    )
    opt.add_argument(
        "--fm-warmup-epochs",
        type=int,
        default=s,
        help="DeepFM: train only the FM part (MLP frozen) for the first N whole epochs instead of "
        "--fm-warmup-steps (0: no warm-up; default: unset, the warm-up is --fm-warmup-steps)",
    )
    opt.add_argument("--seed", type=int, default=s, help="seed of split, init and shuffling (default 0)")
    opt.add_argument(
        "--threads",
        type=int,
        default=s,
        help="CPU threads (default 0: automatic, all cores for GEMM-heavy steps, else 1)",
    )
    opt.add_argument("--device", default=s, help="cpu (default) or cuda")
    opt.add_argument(
        "--no-fast",
        dest="fast",
        action="store_false",
        default=s,
        help="train with the plain model code instead of the fused kernels (same numbers, slower)",
    )
    opt.add_argument(
        "--precision",
        default=s,
        choices=CHOICES["precision"],
        help="bf16: bfloat16 autocast for training (CPUs with AVX512-BF16/AMX, CUDA); auto "
        "(default): bf16 for GEMM-heavy steps where supported, else fp32; eval is fp32",
    )
    opt.add_argument(
        "--no-progress", dest="progress", action="store_false", default=s, help="no progress bars"
    )
    add_eval_options(p)
    p.add_argument(
        "--config",
        help="YAML file of options, or the name of a preset shipped with the package (e.g. "
        "movielens-1m-all; see docs); command-line options override it",
    )


def add_eval_options(p: argparse.ArgumentParser) -> None:
    """Evaluation options (metrics, split, ranking protocol), each a TrainConfig field."""
    s = argparse.SUPPRESS
    ev = p.add_argument_group("evaluation")
    ev.add_argument(
        "--eval-batch-size",
        type=int,
        default=s,
        help=f"rows per forward pass when scoring validation and test (default {D.eval_batch_size})",
    )
    ev.add_argument(
        "--metrics",
        default=s,
        help="comma-separated: auc, logloss, gauc, calibration, hitrate@K, ndcg@K; 'auto' (default): "
        "auc,logloss,gauc,calibration; on a leave-last split auc,logloss,calibration,hitrate@10,ndcg@10",
    )
    ev.add_argument(
        "--group-by",
        default=s,
        metavar="FIELD",
        help="gAUC group field (default: user_id when the data has it)",
    )
    ev.add_argument(
        "--split",
        default=s,
        choices=CHOICES["split"],
        help="built-in data: seeded random 80/10/10 (default), or leave-last: each user's latest "
        "rating is test, the one before valid (specs declare split: {method: leave_last})",
    )
    ev.add_argument(
        "--rank-negatives",
        type=int,
        default=s,
        metavar="N",
        help="HitRate@K / NDCG@K: rank each held-out item among N sampled items the user did not "
        f"rate in training; 0 = among all such items (default {D.rank_negatives})",
    )


def given_options(args: argparse.Namespace, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """Options set in ``--config`` and on the command line (the latter win)."""
    values: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    skip = {"config", "run", "command", *ignore}
    values.update({k: v for k, v in vars(args).items() if k not in skip})
    return values


def config_from_args(args: argparse.Namespace, ignore: tuple[str, ...] = ()) -> TrainConfig:
    return TrainConfig.from_dict(given_options(args, ignore)).validate()


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a model and report test AUC / logloss",
        description="Train a model with early stopping on validation AUC, then evaluate it on the "
        "test split. Writes model.pt, metrics.json, history.csv and learning_curve.png to --out.",
    )
    p.add_argument("--out", default=argparse.SUPPRESS, help=f"run folder (default {D.out})")
    p.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        help=f"model to train: {MODEL_NAMES} (default {D.model}; fm is deepfm without the MLP)",
    )
    add_train_options(p)
    # resumable training
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="also save the training state (DIR/state.pt) every N steps; it is always saved at the "
        "end of every epoch",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        default=argparse.SUPPRESS,
        help="continue the run in --out from its state.pt, with the options it was started with",
    )
    daily = p.add_argument_group("daily retraining and tracking (docs/retraining.md)")
    daily.add_argument(
        "--init-from",
        default=argparse.SUPPRESS,
        metavar="RUN",
        help="warm start from a trained run (folder or model.pt): its vocabulary extended with the new "
        "data's values, old rows and every other weight carried over, new rows initialised as usual",
    )
    daily.add_argument(
        "--init-optimizer",
        action="store_true",
        default=argparse.SUPPRESS,
        help="with --init-from: also carry the optimizer state (Adam moments) from RUN/state.pt",
    )
    daily.add_argument(
        "--prune-below",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="with --init-from: drop old values seen fewer than N times in the new training data "
        "(default 0: values that vanished keep their rows)",
    )
    daily.add_argument(
        "--tensorboard",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="write TensorBoard event files to DIR/<run folder name>-<run id> (needs deepfm[track])",
    )
    daily.add_argument(
        "--tensorboard-every",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help=f"log the training loss every N steps (default {D.tensorboard_every})",
    )
    daily.add_argument(
        "--mlflow",
        nargs="?",
        const="mlruns",
        default=argparse.SUPPRESS,
        metavar="URI",
        help="log params, per-epoch metrics and the run folder to MLflow: a tracking URI, or a local "
        "folder (default ./mlruns; needs deepfm[track])",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepfm.experiments.tracking import train_tracked as train

    if getattr(args, "resume", False):  #
        from deepfm.training.state import resume_config

        train(resume_config(getattr(args, "out", D.out), given_options(args)))
        return 0
    train(config_from_args(args))
    return 0

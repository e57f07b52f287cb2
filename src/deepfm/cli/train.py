"""``deepfm train``: options -> :class:`TrainConfig` -> :func:`deepfm.training.run.train`.

Every option that sets a :class:`TrainConfig` field is declared by :func:`add_option`, which takes
its flag, type and allowed values from the field (and ``CHOICES``); only the help text is written
here. ``deepfm compare``, ``tune`` and ``prepare`` share these declarations."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from deepfm.config import CHOICES, TrainConfig, load_yaml, parse_mlp

D = TrainConfig()
MODEL_NAMES = "dcnv2, deepfm, fm, lr, widedeep"  # sorted(deepfm.models.MODELS), without importing torch


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
TYPES = typing.get_type_hints(TrainConfig)


def add_option(group: Any, name: str, **given: Any) -> None:
    """The option of :class:`TrainConfig` field ``name``, whose type, allowed values (``CHOICES``)
    and flag follow from the field: ``--name-with-dashes``, or for a field that defaults to
    ``True`` the switch ``--no-name``; a ``False`` field is a switch. Unset, it is left out of
    the parsed options (``SUPPRESS``), so a ``--config`` file's value stands. ``given``: help,
    metavar and argparse settings the field cannot say (``nargs``, a ``type`` parser)."""
    field = FIELDS[name]  # a name TrainConfig does not have fails here, when the parser is built
    kind = TYPES[name]
    settings: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
    flag = "--" + name.replace("_", "-")
    if kind is bool:
        flag = flag if field.default is False else "--no-" + flag[2:]
        settings["action"] = "store_false" if field.default else "store_true"
    else:
        numbers = {t for t in typing.get_args(kind) or (kind,) if t in (int, float)}
        if numbers:
            settings["type"] = numbers.pop()
        if name in CHOICES:
            settings["choices"] = CHOICES[name]
    group.add_argument(flag, **{**settings, **given})


def add_data_options(p: argparse.ArgumentParser) -> None:
    """The options that choose and shape the data (train, compare, tune, prepare)."""
    data = p.add_argument_group("data")
    add_option(data, "dataset", help=f"built-in data set (default {D.dataset})")
    add_option(
        data,
        "data_dir",
        help="folder holding the data set's files (default: download once into ~/.cache/deepfm, "
        "or $DEEPFM_CACHE)",
    )
    add_option(
        data,
        "spec",
        help="dataset spec file (YAML or TOML) declaring files, label, fields and split; replaces "
        "--dataset (see docs/data-specs.md)",
    )
    add_option(
        data,
        "on_bad_lines",
        help="spec/streamed data: stop at a malformed row naming file, line and column (error, "
        "default) or skip such rows and report how many",
    )
    add_option(
        data,
        "features",
        help="'ids': user and movie id only (the reference); 'all': side features too; "
        "'all+time': also hour and weekday of the rating",
    )
    add_option(data, "drop_neutral", help="MovieLens: drop rating-3 rows instead of labelling them 0")
    add_option(data, "min_count", help="values seen fewer times go to OOV")
    add_option(
        data,
        "max_vocab",
        metavar="N",
        help="keep at most the N most frequent values of every field; the rest go to OOV (default: all)",
    )


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that trains (train, compare)."""
    add_data_options(p)
    add_option(
        p,
        "prepared",
        metavar="DIR",
        help="train on a folder written by 'deepfm prepare' instead of preparing the data here",
    )
    model = p.add_argument_group("model")
    add_option(model, "embed_dim", help=f"embedding size (default {D.embed_dim})")
    add_option(model, "mlp", type=parse_mlp, help="hidden widths of the deep part (default 16,16)")
    add_option(model, "dropout", help=f"MLP dropout (default {D.dropout})")
    add_option(
        model,
        "weight_init",
        help="deepfm (default): embeddings N(0, 0.01), DeepFM's MLP output layer at zero; fuxictr: "
        "FuxiCTR's (embeddings N(0, 1e-4), Xavier-normal Linear layers), for published FuxiCTR/BARS "
        "recipes",
    )
    opt = p.add_argument_group("training")
    add_option(opt, "lr", help=f"Adam learning rate (default {D.lr})")
    add_option(opt, "weight_decay", help=f"Adam L2 weight decay (default {D.weight_decay})")
    add_option(
        opt,
        "embedding_l2",
        help="L2 weight decay on the embeddings only (default: --weight-decay); equals FuxiCTR/BARS "
        "embedding_regularizer (lambda/2 * ||W||^2 over the whole table each step)",
    )
    add_option(
        opt,
        "net_l2",
        help="L2 weight decay on all non-embedding weights (default: --weight-decay); equals "
        "FuxiCTR/BARS net_regularizer",
    )
    add_option(
        opt,
        "optimizer",
        help="auto (default): lazy when the embedding table is much larger than the rows a batch "
        "touches, else fused; fused: Adam in fused kernels (same updates as adam); adam: the "
        "reference torch.optim.Adam; lazy: row-wise Adam on embeddings, only rows in the batch updated",
    )
    add_option(
        opt,
        "embedding_sync",
        help="data-parallel (torchrun) ranks: dense: all-reduce the whole embedding table's gradient "
        "every step; rows: all-gather only the rows each rank touched (ids + gradient rows); auto "
        "(default): rows when its bytes are at most half the table's",
    )
    add_option(
        opt,
        "clip_grad_norm",
        metavar="N",
        help="scale every step's gradient, its L2 part included, to norm N at most, as FuxiCTR "
        "(max_gradient_norm 10) does; 0 = off (default)",
    )
    add_option(opt, "batch_size", help=f"default {D.batch_size}")
    add_option(opt, "epochs", help=f"maximum epochs; early stopping picks the best (default {D.epochs})")
    add_option(
        opt, "patience", help=f"stop after this many epochs without a valid-AUC gain (default {D.patience})"
    )
    add_option(
        opt,
        "lr_decay",
        help=f"multiply the lr by this when valid AUC stalls; 1 keeps it constant (default {D.lr_decay})",
    )
    add_option(
        opt,
        "lr_patience",
        help=f"epochs without a valid-AUC gain before the lr decays (default {D.lr_patience})",
    )
    add_option(
        opt,
        "fm_warmup_steps",
        help="DeepFM: train only the FM part (MLP frozen) for the first N optimizer steps of the "
        "first epoch, at most a tenth of a one-epoch run (a one-pass run trains the MLP); 0 "
        f"trains everything from the start (default {D.fm_warmup_steps})",
    )
    add_option(
        opt,
        "fm_warmup_epochs",
        help="DeepFM: train only the FM part (MLP frozen) for the first N whole epochs instead of "
        "--fm-warmup-steps (0: no warm-up; default: unset, the warm-up is --fm-warmup-steps)",
    )
    add_option(opt, "seed", help="seed of split, init and shuffling (default 0)")
    add_option(
        opt, "threads", help="CPU threads (default 0: automatic, all cores for GEMM-heavy steps, else 1)"
    )
    add_option(opt, "device", help="cpu (default) or cuda")
    add_option(
        opt,
        "fast",
        help="train with the plain model code instead of the fused kernels (same numbers, slower)",
    )
    add_option(
        opt,
        "precision",
        help="bf16: bfloat16 autocast for training (CPUs with AVX512-BF16/AMX, CUDA); auto "
        "(default): bf16 for GEMM-heavy steps where supported, else fp32; eval is fp32",
    )
    add_option(opt, "progress", help="no progress bars")
    add_eval_options(p)
    p.add_argument(
        "--config",
        help="YAML file of options, or the name of a preset shipped with the package (e.g. "
        "movielens-1m-all; see docs); command-line options override it",
    )


def add_eval_options(p: argparse.ArgumentParser) -> None:
    """Evaluation options (metrics, split, ranking protocol), each a TrainConfig field."""
    ev = p.add_argument_group("evaluation")
    add_option(
        ev,
        "eval_batch_size",
        help=f"rows per forward pass when scoring validation and test (default {D.eval_batch_size})",
    )
    add_option(
        ev,
        "metrics",
        help="comma-separated: auc, logloss, gauc, calibration, hitrate@K, ndcg@K; 'auto' (default): "
        "auc,logloss,gauc,calibration; on a leave-last split auc,logloss,calibration,hitrate@10,ndcg@10",
    )
    add_option(
        ev, "group_by", metavar="FIELD", help="gAUC group field (default: user_id when the data has it)"
    )
    add_option(
        ev,
        "split",
        help="built-in data: seeded random 80/10/10 (default), or leave-last: each user's latest "
        "rating is test, the one before valid (specs declare split: {method: leave_last})",
    )
    add_option(
        ev,
        "rank_negatives",
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
    add_option(p, "out", help=f"run folder (default {D.out})")
    add_option(
        p, "model", help=f"model to train: {MODEL_NAMES} (default {D.model}; fm is deepfm without the MLP)"
    )
    add_train_options(p)
    # resumable training
    add_option(
        p,
        "checkpoint_every",
        metavar="N",
        help="also save the training state (DIR/state.pt) every N steps; it is always saved at the "
        "end of every epoch",
    )
    add_option(
        p, "resume", help="continue the run in --out from its state.pt, with the options it was started with"
    )
    daily = p.add_argument_group("daily retraining and tracking (docs/retraining.md)")
    add_option(
        daily,
        "init_from",
        metavar="RUN",
        help="warm start from a trained run (folder or model.pt): its vocabulary extended with the new "
        "data's values, old rows and every other weight carried over, new rows initialised as usual",
    )
    add_option(
        daily,
        "init_optimizer",
        help="with --init-from: also carry the optimizer state (Adam moments) from RUN/state.pt",
    )
    add_option(
        daily,
        "prune_below",
        metavar="N",
        help="with --init-from: drop old values seen fewer than N times in the new training data "
        "(default 0: values that vanished keep their rows)",
    )
    add_option(
        daily,
        "tensorboard",
        metavar="DIR",
        help="write TensorBoard event files to DIR/<run folder name>-<run id> (needs deepfm[track])",
    )
    add_option(
        daily,
        "tensorboard_every",
        metavar="N",
        help=f"log the training loss every N steps (default {D.tensorboard_every})",
    )
    add_option(
        daily,
        "mlflow",
        nargs="?",
        const="mlruns",
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

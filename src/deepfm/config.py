"""The run configuration: every option of ``deepfm train``, its default and its validation.

Defaults reproduce the reference setup (embed 16, MLP 16-16 with BatchNorm/ReLU/dropout 0.5,
Adam lr 1e-3, weight decay 1e-6, batch 1024) except ``epochs``, which is a cap for early stopping.
A YAML file (``--config``) may set any field; command-line options override it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deepfm.data import yamltext
from deepfm.data.options import CHOICES as DATA_CHOICES
from deepfm.data.options import PrepareOptions
from deepfm.errors import ConfigError

# The allowed values of every option that takes a name: validation, argparse's ``choices`` and
# ``--help`` all read them from here (the data options' from deepfm.data.options).
CHOICES: dict[str, tuple[str, ...]] = {
    **DATA_CHOICES,
    "optimizer": ("auto", "fused", "adam", "lazy"),
    "embedding_sync": ("auto", "dense", "rows"),
    "precision": ("auto", "fp32", "bf16"),
    "weight_init": ("deepfm", "fuxictr"),
}
_DATA = PrepareOptions()  # the defaults of the data options (fields of the same names below)


@dataclass
class TrainConfig:
    # the data options: PrepareOptions' fields, its defaults (config.prepare_options())
    dataset: str = _DATA.dataset
    data_dir: str | None = _DATA.data_dir
    spec: str | None = _DATA.spec  # a dataset spec file (YAML/TOML); replaces --dataset
    prepared: str | None = None  # a folder written by `deepfm prepare`: the data, already prepared
    on_bad_lines: str = _DATA.on_bad_lines  # "error" or "skip" malformed rows
    out: str = "runs/deepfm"
    model: str = "deepfm"
    features: str = _DATA.features
    drop_neutral: bool = _DATA.drop_neutral
    min_count: int = _DATA.min_count
    embed_dim: int = 16
    mlp: tuple[int, ...] = (16, 16)
    dropout: float = 0.5
    # deepfm: embeddings N(0, 0.01), first-order weights 0, DeepFM's MLP output layer 0;
    # fuxictr: FuxiCTR's (embeddings N(0, 1e-4), Xavier-normal Linear layers): deepfm.models.init
    weight_init: str = "deepfm"
    lr: float = 1e-3
    weight_decay: float = 1e-6
    # L2 on the embeddings only / on all other weights (None = --weight-decay). Coupled Adam weight
    # decay: the same update as adding lambda/2 * ||W||^2 of the whole table to the loss every step,
    # i.e. FuxiCTR/BARS `embedding_regularizer: lambda` / `net_regularizer: lambda` (docs/tuning.md)
    embedding_l2: float | None = None
    net_l2: float | None = None
    optimizer: str = "auto"  # auto | fused | adam (reference kernels) | lazy (row-wise embeddings)
    # data-parallel ranks: the tables' gradients all-reduced whole (dense) or their touched rows
    # all-gathered (rows); auto: the fewer bytes (deepfm.training.embedding_sync)
    embedding_sync: str = "auto"
    clip_grad_norm: float = 0.0  # scale each step's gradient (L2 included) to this norm at most (FuxiCTR: 10)
    batch_size: int = 1024
    epochs: int = 40
    patience: int = 3
    lr_decay: float = 1.0  # multiply lr by this when valid AUC stalls (1.0 = constant lr)
    lr_patience: int = 1  # epochs without a valid-AUC gain before the lr is decayed
    # DeepFM's FM warm-up (MLP frozen): the first N optimizer steps of the first epoch, at most
    # a tenth of a one-epoch run (so a one-pass run trains the MLP); or, when fm_warmup_epochs is
    # set, exactly the first N whole epochs (0: none) instead
    fm_warmup_steps: int = 1000
    fm_warmup_epochs: int | None = None
    seed: int = _DATA.seed  # seeds the split, the initialisation and the shuffling
    eval_batch_size: int = 65536
    threads: int = 0  # 0 = automatic from the step's work (deepfm.training.auto)
    device: str = "cpu"
    fast: bool = True  # fused training kernels (deepfm.fast); False: the plain module path, same numbers
    precision: str = "auto"  # auto | fp32 | bf16 (autocast; deepfm.training.precision)
    progress: bool = True
    checkpoint_every: int = 0  # also save DIR/state.pt every N optimizer steps (0 = epoch ends only)
    resume: bool = False  # continue the run in ``out`` from its state.pt
    # evaluation (deepfm.evaluation.metrics / evaluation): metrics.json, history.csv, deepfm evaluate
    metrics: str = "auto"  # auc,logloss,gauc,calibration,hitrate@K,ndcg@K; auto: see --help
    group_by: str = ""  # gAUC group field ("" = user_id when the data has it)
    split: str = _DATA.split  # built-in data sets: "random" (80/10/10) or "leave-last" (per user)
    rank_negatives: int = 100  # HitRate/NDCG candidates: N sampled unrated items; 0 = all items
    # daily retraining (docs/retraining.md): warm start, vocabulary caps, experiment tracking
    init_from: str | None = None  # warm start from this run folder (or model.pt) on new data
    init_optimizer: bool = False  # warm start: also carry the optimizer state (its state.pt)
    prune_below: int = _DATA.prune_below  # warm start: drop old values seen fewer times in new data
    max_vocab: int = _DATA.max_vocab  # keep at most the N most frequent values per field (0 = all)
    tensorboard: str | None = None  # write TensorBoard event files under this folder
    tensorboard_every: int = 50  # TensorBoard: log the training loss every N optimizer steps
    mlflow: str | None = None  # MLflow tracking URI or local folder (file store)
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        # imported here, not at the top: ``deepfm --help`` and option parsing stay free of torch
        from deepfm.evaluation.metrics import parse_metrics
        from deepfm.hardware import cuda_available
        from deepfm.models import MODELS

        problems = _type_problems(self)  # e.g. "epochs: ten" in a YAML file
        if problems:
            raise ConfigError("; ".join(problems))
        if self.model not in MODELS:
            problems.append(f"--model must be one of {sorted(MODELS)}, got {self.model!r}")
        else:
            problems += _model_option_problems(MODELS[self.model], self.extra.get("model_options", {}))
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                flag = "--" + name.replace("_", "-")
                problems.append(f"{flag} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("embed_dim", "batch_size", "epochs", "eval_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch_size == 1:  # BatchNorm has no statistics of one row; training goes NaN
            problems.append("--batch-size must be >= 2, got 1")
        if self.patience < 1:
            problems.append(f"--patience must be >= 1, got {self.patience}")
        if any(w < 1 for w in self.mlp):
            problems.append(f"--mlp widths must be >= 1, got {','.join(map(str, self.mlp))}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"--dropout must be in [0, 1), got {self.dropout}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"--lr must be a finite number > 0, got {self.lr}")
        if not 0.0 < self.lr_decay <= 1.0:
            problems.append(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        if self.lr_patience < 1:
            problems.append(f"--lr-patience must be >= 1, got {self.lr_patience}")
        for name in ("fm_warmup_steps", "fm_warmup_epochs"):
            if (getattr(self, name) or 0) < 0:
                problems.append(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            problems.append(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        for name in ("embedding_l2", "net_l2"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                problems.append(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if not (self.clip_grad_norm >= 0 and math.isfinite(self.clip_grad_norm)):
            problems.append(
                f"--clip-grad-norm must be a finite number >= 0 (0 = off), got {self.clip_grad_norm}"
            )
        if self.checkpoint_every < 0:
            problems.append(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        if self.min_count < 1:
            problems.append(f"--min-count must be >= 1, got {self.min_count}")
        if self.rank_negatives < 0:
            problems.append(f"--rank-negatives must be >= 0 (0 = all items), got {self.rank_negatives}")
        if not problems:
            try:
                parse_metrics(self.metrics)
            except ConfigError as exc:
                problems.append(str(exc))
        for name in ("prune_below", "max_vocab"):
            if getattr(self, name) < 0:
                problems.append(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.tensorboard_every < 1:
            problems.append(f"--tensorboard-every must be >= 1, got {self.tensorboard_every}")
        if self.prepared is not None:
            given = [
                n for n in PrepareOptions.names() if n != "seed" and getattr(self, n) != getattr(_DATA, n)
            ]
            if given:
                flags = ", ".join("--" + n.replace("_", "-") for n in given)
                problems.append(
                    f"--prepared {self.prepared} holds data prepared with its own options; drop {flags} "
                    "(or prepare again with them: deepfm prepare)"
                )
        if (self.init_optimizer or self.prune_below) and not self.init_from:
            problems.append("--init-optimizer and --prune-below need --init-from RUN")
        if self.threads < 0:
            problems.append(f"--threads must be >= 0, got {self.threads}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            problems.append(f"--device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        elif self.device.startswith("cuda") and not cuda_available():
            problems.append(f"--device {self.device}: PyTorch sees no CUDA GPU here")
        elif self.precision == "bf16":
            problems += _bf16_problems(self.device)
        if problems:
            raise ConfigError("; ".join(problems))
        return self

    def prepare_options(self) -> PrepareOptions:
        """The options that decide the prepared data (the cache keys of prepared data)."""
        return PrepareOptions.of(self)

    def check_data(self, train_rows: int) -> TrainConfig:
        """Checks that need the prepared data: the batch size must fit the training split."""
        if train_rows < 2:
            raise ConfigError(f"the training split has {train_rows} row(s); at least 2 are needed")
        if self.batch_size > train_rows:
            raise ConfigError(
                f"--batch-size {self.batch_size} is larger than the training split ({train_rows:,} rows); "
                f"use a batch size between 2 and {train_rows}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["mlp"] = list(self.mlp)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known keys are {sorted(known)}")
        data = dict(data)
        if "mlp" in data:
            data["mlp"] = parse_mlp(data["mlp"])
        return cls(**data)


def _type_problems(config: TrainConfig) -> list[str]:
    """Options whose value has the wrong type (bools are not numbers, ints are floats)."""
    hints = typing.get_type_hints(TrainConfig)
    problems = []
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        allowed = {
            int: (int,),
            float: (int, float),
            bool: (bool,),
            str: (str,),
        }.get(hint)
        if hint == (str | None):
            allowed = (str, type(None))
        elif hint == (float | None):
            allowed = (int, float, type(None))
        elif hint == (int | None):
            allowed = (int, type(None))
        elif hint == tuple[int, ...]:
            ints = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            if not (isinstance(value, tuple) and ints):
                problems.append(f"--{f.name.replace('_', '-')} must be a list of integers, got {value!r}")
            continue
        elif hint == dict[str, Any]:
            allowed = (dict,)
        if allowed is None:
            continue
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            names = " or ".join("none" if t is type(None) else t.__name__ for t in allowed)
            problems.append(f"--{f.name.replace('_', '-')} must be {names}, got {value!r}")
    return problems


def _model_option_problems(cls: type, options: Any) -> list[str]:
    """``extra.model_options`` must name keyword arguments the model accepts."""
    if not isinstance(options, dict):
        return [f"model_options must be a mapping of option: value, got {options!r}"]
    reserved = {"self", "num_rows", "num_fields", "num_dense", "embed_dim", "mlp", "dropout"}
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    known = sorted(set(params) - reserved)
    unknown = sorted(set(options) - set(known))
    if unknown:
        return [f"unknown model option(s) {unknown} for {cls.__name__}; it accepts {known}"]
    return []


def _bf16_problems(device: str) -> list[str]:
    from deepfm.hardware import bf16_problem

    problem = bf16_problem(device)
    return [problem] if problem else []


def parse_mlp(value: Any) -> tuple[int, ...]:
    """``"16,16"``, ``[16, 16]`` or ``""`` (no hidden layer) -> a tuple of widths."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"--mlp takes comma-separated integers like 16,16, got {value!r}") from None
    if isinstance(value, (list, tuple)) and all(type(v) is int for v in value):
        return tuple(value)
    raise ConfigError(f"mlp must be a list of integer widths like [16, 16], got {value!r}")


PRESETS = Path(__file__).resolve().parent / "presets"  # package data: any NAME.yaml is preset NAME


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def resolve_config(path: str | Path) -> Path:
    """A YAML file, or the preset named ``path`` (``movielens-1m-all``; the old ``configs/NAME.yaml``
    paths of a repository checkout resolve to the same preset)."""
    given = Path(path)
    if given.exists():
        return given
    for name in (str(path), given.stem if given.suffix in (".yaml", ".yml") else ""):
        if name and (PRESETS / f"{name}.yaml").is_file() and "/" not in name.replace("\\", "/"):
            return PRESETS / f"{name}.yaml"
    raise ConfigError(
        f"config file {path} not found, and it is not a preset name; presets: {', '.join(preset_names())}"
    )


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Options from a YAML file or a preset name (see :func:`resolve_config`)."""
    path = resolve_config(path)
    try:
        data = yamltext.load(path.read_bytes().decode("utf-8"))  # (lr: 1e-3 is a number)
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"config file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:  # one line: where and what
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({what})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}

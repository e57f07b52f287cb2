"""The run configuration: every option of ``deepfm train``, its default and its validation.

Defaults reproduce the reference setup (embed 16, MLP 16-16 with BatchNorm/ReLU/dropout 0.5,
Adam lr 1e-3, weight decay 1e-6, batch 1024) except ``epochs``, which is a cap for early stopping.
A YAML file (``--config``) may set any field; command-line options override it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deepfm.errors import ConfigError


@dataclass
class TrainConfig:
    dataset: str = "movielens-1m"
    data_dir: str | None = None
    spec: str | None = None  # a dataset spec file (YAML/TOML); replaces --dataset
    on_bad_lines: str = "error"  # spec / streamed data sets: "error" or "skip"
    out: str = "runs/deepfm"
    model: str = "deepfm"
    features: str = "ids"
    drop_neutral: bool = False
    min_count: int = 1
    embed_dim: int = 16
    mlp: tuple[int, ...] = (16, 16)
    dropout: float = 0.5
    lr: float = 1e-3
    weight_decay: float = 1e-6
    batch_size: int = 1024
    epochs: int = 40
    patience: int = 3
    seed: int = 0
    eval_batch_size: int = 65536
    threads: int = 0  # 0 = let the toolkit choose
    device: str = "cpu"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        from deepfm.models import MODELS

        problems = []
        if self.model not in MODELS:
            problems.append(f"--model must be one of {sorted(MODELS)}, got {self.model!r}")
        if self.features not in ("ids", "all"):
            problems.append(f"--features must be 'ids' or 'all', got {self.features!r}")
        for name in ("embed_dim", "batch_size", "epochs", "eval_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.patience < 1:
            problems.append(f"--patience must be >= 1, got {self.patience}")
        if any(w < 1 for w in self.mlp):
            problems.append(f"--mlp widths must be >= 1, got {','.join(map(str, self.mlp))}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"--dropout must be in [0, 1), got {self.dropout}")
        if not self.lr > 0:
            problems.append(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.on_bad_lines not in ("error", "skip"):
            problems.append(f"--on-bad-lines must be 'error' or 'skip', got {self.on_bad_lines!r}")
        if self.min_count < 1:
            problems.append(f"--min-count must be >= 1, got {self.min_count}")
        if self.threads < 0:
            problems.append(f"--threads must be >= 0, got {self.threads}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            problems.append(f"--device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if problems:
            raise ConfigError("; ".join(problems))
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


def parse_mlp(value: Any) -> tuple[int, ...]:
    """``"16,16"``, ``[16, 16]`` or ``""`` (no hidden layer) -> a tuple of widths."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"--mlp takes comma-separated integers like 16,16, got {value!r}") from None
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    raise ConfigError(f"mlp must be a list of widths, got {value!r}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in data.items()}

"""Early stopping on a validation metric (higher is better), keeping the best weights."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch


@dataclass
class EarlyStopping:
    patience: int
    best: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def update(self, epoch: int, value: float, module: torch.nn.Module) -> bool:
        """Record ``value`` for ``epoch``; return True when it is a new best."""
        if not math.isnan(value) and value > self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = copy.deepcopy(module.state_dict())
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

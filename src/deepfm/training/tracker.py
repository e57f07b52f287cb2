"""What a training run tells a tracker, and when: the interface ``deepfm.training.run`` calls.

The run calls ``start(config, run, out, summary)`` once the data is ready, ``log_step(step,
loss)`` every ``step_every`` optimizer steps, ``log_epoch(record)`` after every epoch, ``end(metrics,
out)`` after the outputs are written and ``close(failed)`` always. This base class does nothing;
TensorBoard and MLflow implement it in :mod:`deepfm.experiments.tracking`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from deepfm.config import TrainConfig


class Tracker:
    """Does nothing; subclasses log somewhere."""

    def start(self, config: TrainConfig, run: dict[str, Any], out: Path, summary: dict[str, Any]) -> None:
        """The run begins (data prepared, model built)."""

    def log_step(self, step: int, loss: float) -> None:
        """Mean training loss of the steps since the previous call; ``step`` counts the whole run."""

    def log_epoch(self, record: dict[str, Any]) -> None:
        """One epoch's ``history.csv`` row."""

    def end(self, metrics: dict[str, Any], out: Path) -> None:
        """The run finished and wrote its outputs."""

    def close(self, failed: bool = False) -> None:
        """Always called last (also after an error)."""

    @property
    def step_every(self) -> int:
        """Steps between ``log_step`` calls (0: never)."""
        return 0


class Trackers(Tracker):
    """Several trackers as one."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def start(self, config: TrainConfig, run: dict[str, Any], out: Path, summary: dict[str, Any]) -> None:
        for t in self.trackers:
            t.start(config, run, out, summary)

    def log_step(self, step: int, loss: float) -> None:
        for t in self.trackers:
            t.log_step(step, loss)

    def log_epoch(self, record: dict[str, Any]) -> None:
        for t in self.trackers:
            t.log_epoch(record)

    def end(self, metrics: dict[str, Any], out: Path) -> None:
        for t in self.trackers:
            t.end(metrics, out)

    def close(self, failed: bool = False) -> None:
        for t in self.trackers:
            t.close(failed)

    @property
    def step_every(self) -> int:
        return max((t.step_every for t in self.trackers), default=0)


def with_step_logging(options: dict[str, Any], tracker: Tracker, global_step: Any) -> dict[str, Any]:
    """``train_epoch`` options whose step hook also logs the loss every ``tracker.step_every`` steps.

    Uses the loop's ``on_step`` hook (the running loss sum it reports): the hook it already has
    (``state.pt`` saving) still runs first, at its own step numbers.
    """
    every = tracker.step_every
    if not every:
        return options
    inner, inner_every = options.get("on_step"), options.get("step_every") or 0
    start = options.get("start")
    last = [float(start.loss_sum) if start is not None and start.loss_sum is not None else 0.0]
    last.append(start.samples if start is not None else 0)

    def on_step(pos: Any) -> None:
        if inner is not None:
            inner(pos)
        if pos.step % every == 0 and pos.loss_sum is not None and pos.samples > last[1]:
            total = float(pos.loss_sum)
            tracker.log_step(int(global_step()), (total - last[0]) / (pos.samples - last[1]))
            last[:] = [total, pos.samples]

    step_every = math.gcd(inner_every, every) if inner_every else every
    return {**options, "on_step": on_step, "step_every": step_every}

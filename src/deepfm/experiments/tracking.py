"""Experiment tracking: TensorBoard (``--tensorboard DIR``) and MLflow (``--mlflow [URI]``).

Both are optional extras (``pip install 'deepfm[track]'``) imported only when asked for; asking
without them installed is a one-line error naming the extra. ``deepfm.training.run`` talks to
them through one small interface, :class:`~deepfm.training.tracker.Tracker`:

* ``start(config, run, out, summary)`` once the data is ready,
* ``log_step(step, loss)`` every ``--tensorboard-every`` optimizer steps (the mean training loss
  since the previous call),
* ``log_epoch(record)`` after every epoch (the ``history.csv`` row: loss, valid AUC/logloss, lr...),
* ``end(metrics, out)`` after the outputs are written, ``close(failed)`` always.

TensorBoard writes event files to ``DIR/<run folder name>-<run id>`` (per-step loss, per-epoch
metrics and lr, and the hyper-parameters with the test metrics in the HPARAMS tab), so
``tensorboard --logdir DIR`` lists every run. MLflow logs the options as params, the per-epoch
metrics (step = epoch), the test metrics and the run folder's outputs as artifacts, in the
experiment named after the data set; a bare path (default ``./mlruns``) is a local file store
(MLflow 3 keeps that backend in maintenance mode: ``MLFLOW_ALLOW_FILE_STORE`` is set for it; a
``sqlite:///mlflow.db`` URI is its recommended local backend).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from deepfm.config import TrainConfig
from deepfm.errors import ConfigError, brief
from deepfm.io import ensure_folder
from deepfm.training.distributed import is_main_process
from deepfm.training.run import train
from deepfm.training.runfolder import OUTPUTS
from deepfm.training.tracker import Tracker, Trackers

EXTRA = "pip install 'deepfm[track]'"


def from_config(config: TrainConfig, main: bool | None = None) -> Tracker:
    """The trackers ``config`` asks for (none on DDP ranks other than 0); checks the extras first.

    Pass the result to :func:`deepfm.training.run.train` (``tracker=``)."""
    main = is_main_process() if main is None else main
    trackers: list[Tracker] = []
    if config.tensorboard is not None:
        _need("tensorboard", "--tensorboard")
        if main:
            ensure_folder(Path(config.tensorboard).expanduser(), "--tensorboard")
        trackers.append(TensorBoardTracker(config.tensorboard, config.tensorboard_every))
    if config.mlflow is not None:
        _need("mlflow", "--mlflow")
        tracker = MLflowTracker(config.mlflow)
        if main:
            tracker.check()
        trackers.append(tracker)
    return Trackers(trackers) if main else Tracker()


def train_tracked(config: TrainConfig, **options: Any) -> dict[str, Any]:
    """:func:`deepfm.training.run.train` with the trackers ``config`` asks for (``--tensorboard``,
    ``--mlflow``); the extras are checked before any work. Returns the ``metrics.json`` content."""
    return train(config, tracker=from_config(config), **options)


def _need(module: str, option: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{option} needs {module} (not installed): {EXTRA} (or pip install {module})")


def params(config: TrainConfig) -> dict[str, Any]:
    """The options as flat scalar params (lists joined, None -> "")."""
    flat: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if key == "extra":
            for k, v in _flatten(value, "extra").items():
                flat[k] = v
        elif isinstance(value, (list, tuple)):
            flat[key] = ",".join(map(str, value))
        else:
            flat[key] = "" if value is None else value
    return flat


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    return {prefix: value if isinstance(value, (int, float, str, bool)) else str(value)}


EPOCH_SCALARS = {
    "train_loss": "train/loss",
    "valid_auc": "valid/auc",
    "valid_logloss": "valid/logloss",
    "lr": "train/lr",
    "train_samples_per_s": "train/samples_per_s",
}
FINAL_SCALARS = ("test_auc", "test_logloss", "best_valid_auc", "best_epoch")


class TensorBoardTracker(Tracker):
    def __init__(self, logdir: str, every: int) -> None:
        self.root = Path(logdir)
        self.every = every
        self.writer: Any = None
        self.hparams: dict[str, Any] = {}

    @property
    def step_every(self) -> int:
        return self.every

    def start(self, config: TrainConfig, run: dict[str, Any], out: Path, summary: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = self.root / f"{out.name}-{run['id']}"
        try:
            self.writer = SummaryWriter(log_dir=str(self.logdir))
        except OSError as exc:
            raise ConfigError(f"--tensorboard {self.root}: cannot write there ({brief(exc)})") from None
        self.hparams = {k: v for k, v in params(config).items() if isinstance(v, (int, float, str, bool))}
        self.writer.add_text("run", f"run id {run['id']}, data fingerprint {run.get('data_fingerprint')}")

    def log_step(self, step: int, loss: float) -> None:
        self.writer.add_scalar("train/loss_step", loss, step)

    def log_epoch(self, record: dict[str, Any]) -> None:
        for key, tag in EPOCH_SCALARS.items():
            if key in record:
                self.writer.add_scalar(tag, record[key], record["epoch"])
        self.writer.flush()

    def end(self, metrics: dict[str, Any], out: Path) -> None:
        final = {f"hparam/{k}": float(metrics[k]) for k in FINAL_SCALARS if metrics.get(k) is not None}
        self.writer.add_hparams(self.hparams, final, run_name=".")

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def tracking_uri(value: str) -> str:
    """A URI as given (``http://...``, ``file:...``, ``sqlite:///...``); a bare path -> a file store."""
    if "://" in value or value.split(":", 1)[0] in ("file", "sqlite", "databricks", "postgresql", "mysql"):
        return value
    return Path(value).expanduser().resolve().as_uri()


# the tracking URI schemes MLflow stores runs in (a bare path is a local file store)
MLFLOW_SCHEMES = ("file", "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "uc")
PROBE_SECONDS = 5.0  # how long --mlflow http(s)://... may take to answer before the run is refused


class MLflowTracker(Tracker):
    def __init__(self, uri: str) -> None:
        self.given = uri
        self.uri = tracking_uri(uri)
        self.mlflow: Any = None
        self.active = False

    def check(self) -> None:
        """Refuse, before any work, a URI MLflow cannot store runs in: an unknown scheme, a file
        store that cannot be written, a server that does not answer within ``PROBE_SECONDS``
        (MLflow itself retries for minutes before it gives up)."""
        scheme = self.uri.split(":", 1)[0].split("+", 1)[0].lower()
        if scheme not in MLFLOW_SCHEMES and not scheme.startswith("databricks"):
            raise ConfigError(
                f"--mlflow {self.given}: unknown tracking URI scheme {scheme!r}; give a folder, or a URI "
                f"starting with {', '.join(s + ':' for s in MLFLOW_SCHEMES)}"
            )
        if scheme == "file":
            from urllib.parse import urlparse
            from urllib.request import url2pathname

            ensure_folder(url2pathname(urlparse(self.uri).path), "--mlflow")
        elif scheme in ("http", "https"):
            import urllib.error
            import urllib.request

            try:
                urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=PROBE_SECONDS).close()
            except urllib.error.HTTPError:
                pass  # it answered: a server is there
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise ConfigError(
                    f"--mlflow {self.given}: the tracking server does not answer ({brief(reason)}); "
                    "start it, or give a local folder"
                ) from None

    def start(self, config: TrainConfig, run: dict[str, Any], out: Path, summary: dict[str, Any]) -> None:
        try:
            self._start(config, run, out, summary)
        except Exception as exc:  # the tracking backend refused: one line, before training starts
            raise ConfigError(f"--mlflow {self.given}: {brief(exc)}") from None

    def _start(self, config: TrainConfig, run: dict[str, Any], out: Path, summary: dict[str, Any]) -> None:
        import mlflow  # slow to import (seconds): only when asked for

        self.mlflow = mlflow
        if self.uri.startswith("file:"):  # MLflow >= 3.x asks for this opt-in to its file store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(str(summary.get("dataset") or "deepfm"))
        mlflow.start_run(run_name=f"{out.name}-{run['id']}")
        self.active = True
        mlflow.set_tags(
            {
                "deepfm.run_id": run["id"],
                "deepfm.data_fingerprint": str(run.get("data_fingerprint")),
                "deepfm.out": str(out.resolve()),
            }
        )
        mlflow.log_params({k: str(v)[:500] for k, v in params(config).items()})

    def log_epoch(self, record: dict[str, Any]) -> None:
        values = {k: float(record[k]) for k in EPOCH_SCALARS if k in record}
        self.mlflow.log_metrics(values, step=int(record["epoch"]))

    def end(self, metrics: dict[str, Any], out: Path) -> None:
        final = {k: float(metrics[k]) for k in FINAL_SCALARS if metrics.get(k) is not None}
        self.mlflow.log_metrics(final)
        for name in OUTPUTS:
            if (out / name).is_file():
                self.mlflow.log_artifact(str(out / name))

    def close(self, failed: bool = False) -> None:
        if self.active:
            self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
            self.active = False

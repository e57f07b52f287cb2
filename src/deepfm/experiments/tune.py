"""``deepfm tune``: hyper-parameter search with Optuna, selected on the validation split only.

- The search space is a YAML mapping of :class:`~deepfm.config.TrainConfig` options, each
  ``{low: A, high: B}`` (int or float by the bounds' type; ``log: true``, ``step: S``) or
  ``{choices: [...]}`` (any YAML values, e.g. lists of MLP widths); see ``docs/tuning.md``.
- TPE sampler (seeded by ``--seed``), median pruning on the per-epoch validation AUC from epoch
  ``--prune-after`` on (``--no-prune``: none; for lr schedules whose gain comes late).
- The study lives in ``OUT/study.db`` (SQLite): running the same command again resumes it. Trials
  a killed search left running are marked failed and queued again with the same parameters, and
  only the trials still missing are run. Exactly ``--trials`` trials finish: each process claims
  a trial under a file lock (``OUT/.trials.lock``) only while fewer are finished or running.
- A trial whose training diverges (NaN) is recorded as failed and the search goes on; an option
  the space allows but that cannot run (``dropout: 1.5``) stops it with one line.
- Every trial trains on the same split (``--seed``) and is scored by its best validation AUC;
  the test split plays no part. Outputs: ``trials.csv``, ``best.yaml`` (the base options plus the
  best trial's, usable as ``--config``), ``search.png`` and each trial's run folder
  ``trials/NUMBER``. ``--n-jobs N`` runs N trial processes sharing the study; they end with the
  search process, even when it is killed.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from deepfm.config import TrainConfig, load_yaml
from deepfm.errors import ConfigError, DeepFMError, NumericalError, brief
from deepfm.io import atomic_write, ensure_folder, write_text

STUDY_NAME = "deepfm-tune"
DB_FILE = "study.db"
# options a trial may not vary (they name where the run goes, not how it trains)
NOT_TUNABLE = {"out", "resume", "progress", "checkpoint_every", "extra", "spec", "dataset", "data_dir"}
# options never written to best.yaml (where a run goes and how it is shown)
NOT_IN_BEST = {"out", "resume", "progress", "checkpoint_every"}
# the median rule may stop a trial from this epoch on (``--prune-after``)
PRUNE_AFTER = 2


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and check a search-space file; errors name the file and the option."""
    raw = load_yaml(path)
    if not raw:
        raise ConfigError(
            f"{path}: the search space is empty; give options like 'lr: {{low: 1e-4, high: 1e-2}}'"
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)} - NOT_TUNABLE
    space: dict[str, dict[str, Any]] = {}
    for name, spec in raw.items():
        where = f"{path}: {name}"
        if name not in known:
            raise ConfigError(f"{where}: not a tunable option; tunable options are {sorted(known)}")
        if isinstance(spec, list):
            spec = {"choices": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected {{low: A, high: B}} or {{choices: [...]}}, got {spec!r}")
        if "choices" in spec:
            if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ConfigError(f"{where}: 'choices' must be the only key and a non-empty list")
        else:
            unknown = sorted(set(spec) - {"low", "high", "log", "step"})
            if unknown or "low" not in spec or "high" not in spec:
                raise ConfigError(f"{where}: a range needs 'low' and 'high' (and optionally 'log', 'step')")
            low, high = spec["low"], spec["high"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
                raise ConfigError(f"{where}: 'low' and 'high' must be numbers, got {low!r}, {high!r}")
            if not low < high:
                raise ConfigError(f"{where}: 'low' must be below 'high', got {low} and {high}")
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
            if "step" in spec:
                step = spec["step"]
                if not isinstance(step, (int, float)) or isinstance(step, bool) or not step > 0:
                    raise ConfigError(f"{where}: 'step' must be a number > 0, got {step!r}")
                if spec.get("log"):
                    raise ConfigError(f"{where}: a range takes 'log' or 'step', not both")
        space[name] = spec
    return space


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The trial's options drawn from ``space`` (lists in ``choices`` round-trip through JSON)."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if "choices" in spec:
            keys = [json.dumps(c) for c in spec["choices"]]
            params[name] = json.loads(trial.suggest_categorical(name, keys))
        elif all(isinstance(spec[k], int) for k in ("low", "high")) and not isinstance(
            spec.get("step"), float
        ):
            params[name] = trial.suggest_int(
                name, spec["low"], spec["high"], step=spec.get("step", 1), log=bool(spec.get("log"))
            )
        else:
            params[name] = trial.suggest_float(
                name,
                float(spec["low"]),
                float(spec["high"]),
                step=spec.get("step"),
                log=bool(spec.get("log")),
            )
    return params


def decode(space: dict[str, dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """Stored Optuna parameters -> option values (JSON-encoded choices decoded)."""
    return {k: json.loads(v) if "choices" in space.get(k, {}) else v for k, v in params.items()}


def tune(
    base: TrainConfig,
    space: dict[str, dict[str, Any]],
    out: str | Path,
    n_trials: int,
    n_jobs: int = 1,
    echo: Any = print,
    prune_after: int | None = PRUNE_AFTER,
) -> dict[str, Any]:
    """Run (or resume) the search; write trials.csv, best.yaml and search.png; return the best.

    ``prune_after``: the median rule may stop a trial from this epoch on; ``None``: never."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = ensure_folder(Path(out), "--out")
    storage = f"sqlite:///{(out / DB_FILE).resolve()}"
    study = _study(storage, base.seed, prune_after=prune_after)
    requeued = _requeue_stale(study)
    if requeued:
        echo(f"resuming {out / DB_FILE}: {requeued} trial(s) left running by a killed search queued again")
    done = _finished(study)
    missing = max(0, n_trials - done)
    shown = f"{done} of {n_trials}" if done <= n_trials else f"{done} ({n_trials} asked for)"
    echo(f"tune: {shown} trials done, {missing} to run ({n_jobs} process(es)) -> {out}")
    if missing:
        jobs = [base.to_dict(), space, str(out), storage, n_trials, prune_after]
        if n_jobs <= 1:
            _worker(*jobs, worker=1, echo=echo)
        else:
            context = multiprocessing.get_context("spawn")
            parent = os.getpid()
            procs = [
                context.Process(target=_worker_process, args=[*jobs, i + 1, parent]) for i in range(n_jobs)
            ]
            try:
                for p in procs:
                    p.start()
                for p in procs:
                    p.join()
            finally:  # stopped (SIGTERM, Ctrl-C): stop the trial processes too; a resume re-runs theirs
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                for p in procs:
                    if p.pid is not None:
                        p.join()
            failed = [p.exitcode for p in procs if p.exitcode != 0]
            if failed:
                stopped = _stopping_error(_study(storage, base.seed, prune_after=prune_after))
                if stopped:
                    raise ConfigError(stopped)
                raise ConfigError(f"{len(failed)} tune worker process(es) failed (exit codes {failed})")
    study = _study(storage, base.seed, prune_after=prune_after)
    return write_outputs(study, base, space, out, echo)


def make_pruner(prune_after: int | None) -> Any:
    """Optuna's median rule from epoch ``prune_after`` on, once 4 trials have finished; ``None``:
    no pruning (every trial runs to its own early stop)."""
    import optuna

    if prune_after is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=prune_after)


def _study(storage: str, seed: int, worker: int = 0, prune_after: int | None = PRUNE_AFTER) -> Any:
    """The study in ``storage``; each process (``worker``) and each resumption seeds its own TPE
    sampler, so parallel or resumed processes do not propose the same parameters again."""
    import optuna

    study = optuna.load_study(study_name=STUDY_NAME, storage=storage) if worker else None
    done = len(study.get_trials(deepcopy=False)) if study is not None else 0
    return optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed + 1009 * worker + 7919 * done),
        pruner=make_pruner(prune_after),
        load_if_exists=True,
    )


DIVERGED = "diverged"  # the ``failed`` user attribute of a trial whose training diverged (NaN/inf)


def _finished(study: Any) -> int:
    """Trials that count towards ``--trials``: completed, pruned, and failed by diverging (a
    result of their parameters); a trial failed by a kill is queued again and does not count."""
    from optuna.trial import TrialState

    trials = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    )
    return sum(t.state != TrialState.FAIL or t.user_attrs.get("failed") == DIVERGED for t in trials)


def _claimed(study: Any) -> int:
    """Finished trials plus those running now (each a claimed place among ``--trials``)."""
    from optuna.trial import TrialState

    return _finished(study) + len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _stopping_error(study: Any) -> str | None:
    """The message of a trial that stopped the search (an option error of the space), if any."""
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("failed") == "error" and t.user_attrs.get("error"):
            return str(t.user_attrs["error"])
    return None


@contextlib.contextmanager
def _slot_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (``flock``) while a worker counts the trials and claims one,
    so N processes never start more than ``--trials`` between them."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): best effort
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _die_with_parent(parent: int) -> None:
    """A trial process ends when the search process does, even when that one is killed (SIGKILL):
    Linux's parent-death signal, and elsewhere a thread that watches the parent pid."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="deepfm-tune-parent").start()


def _worker_process(*args: Any) -> None:
    """A spawned trial process: dies with the search; a stopping error is stored on its trial
    (the search process reports it as one line), never printed as a traceback."""
    *jobs, worker, parent = args
    _die_with_parent(parent)
    try:
        _worker(*jobs, worker=worker)
    except DeepFMError:
        sys.exit(2)


def _requeue_stale(study: Any) -> int:
    """Trials still RUNNING when a search starts were left by a killed one: fail and re-queue them."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
    return len(stale)


def _worker(
    base_dict: dict[str, Any],
    space: dict,
    out: str,
    storage: str,
    n_trials: int,
    prune_after: int | None = PRUNE_AFTER,
    worker: int = 1,
    echo: Any = print,
) -> None:
    """One trial process: claims and runs trials until ``n_trials`` are finished or running.

    A trial whose training diverges (NaN/inf) is recorded as failed (it counts, with its
    parameters) and the search goes on; an option error of the space stops the search with one
    line naming the trial and its options."""
    import optuna
    from optuna.trial import TrialState

    from deepfm.experiments.tracking import train_tracked
    from deepfm.training.run import configure_threads, load_data

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = TrainConfig.from_dict(base_dict)
    configure_threads(base.threads)
    study = _study(storage, base.seed, worker, prune_after)
    cache: dict[tuple, Any] = {}
    lock = Path(out) / ".trials.lock"

    while True:
        with _slot_lock(lock):
            if _claimed(study) >= n_trials:
                return
            trial = study.ask()
        params = suggest(trial, space)
        shown = decode(space, trial.params)
        try:
            config = dataclasses.replace(
                base,
                **params,
                out=str(Path(out) / "trials" / str(trial.number)),
                progress=False,
                resume=False,
            )
            if "mlp" in params:
                config.mlp = tuple(params["mlp"])
            config.validate()
            key = config.prepare_options()  # every option that changes the prepared data
            if key not in cache:
                cache.clear()
                cache[key] = load_data(config)

            def report(record: dict[str, Any], trial: optuna.Trial = trial) -> None:
                trial.report(record["valid_auc"], record["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned()

            metrics = train_tracked(config, data=cache[key], echo=lambda *_: None, on_epoch=report)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            echo(f"trial {trial.number:3d} pruned  {shown}")
            continue
        except NumericalError as exc:  # these options diverge: a result, the search goes on
            trial.set_user_attr("failed", DIVERGED)
            trial.set_user_attr("error", str(exc))
            study.tell(trial, state=TrialState.FAIL)
            echo(f"trial {trial.number:3d} failed (diverged: {brief(exc, 100)})  {shown}")
            continue
        except DeepFMError as exc:  # an option the space allows that cannot run: stop, one line
            message = f"trial {trial.number} ({shown}): {exc}"
            trial.set_user_attr("failed", "error")
            trial.set_user_attr("error", message)
            study.tell(trial, state=TrialState.FAIL)
            raise ConfigError(message) from None
        trial.set_user_attr("best_epoch", metrics["best_epoch"])
        trial.set_user_attr("epochs_run", metrics["epochs_run"])
        value = float(metrics["best_valid_auc"])
        study.tell(trial, value)
        echo(f"trial {trial.number:3d} complete valid AUC {value:.4f}  {shown}")


def write_outputs(
    study: Any, base: TrainConfig, space: dict[str, dict[str, Any]], out: Path, echo: Any = print
) -> dict[str, Any]:
    """trials.csv, best.yaml, search.png; the best trial as a dict."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    names = list(space)
    rows = []
    for t in trials:
        params = decode(space, t.params)
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "valid_auc": "" if t.value is None else f"{t.value:.6f}",
                "best_epoch": t.user_attrs.get("best_epoch", ""),
                "last_epoch": max(t.intermediate_values, default=""),
                "seconds": "" if t.duration is None else f"{t.duration.total_seconds():.1f}",
                **{
                    n: json.dumps(params[n]) if isinstance(params.get(n), list) else params.get(n, "")
                    for n in names
                },
            }
        )
    buffer = io.StringIO()
    fields = ["number", "state", "valid_auc", "best_epoch", "last_epoch", "seconds", *names]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "trials.csv", buffer.getvalue())
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"no trial of {out / DB_FILE} completed; see {out / 'trials.csv'}")
    best = max(complete, key=lambda t: t.value)
    params = decode(space, best.params)
    options = {k: v for k, v in base.to_dict().items() if k not in NOT_IN_BEST}
    if not options.get("extra"):
        options.pop("extra", None)
    options.update(params)
    header = (
        f"# deepfm tune: best of {len(complete)} completed trials ({len(trials)} in all) by validation AUC\n"
        f"# trial {best.number}: valid AUC {best.value:.6f} at epoch {best.user_attrs.get('best_epoch')}\n"
        f"# usage: deepfm train --config {out / 'best.yaml'} --out DIR\n"
    )
    write_text(out / "best.yaml", header + yaml.safe_dump(options, sort_keys=False))
    plot(trials, out / "search.png")
    echo(f"best: trial {best.number}, valid AUC {best.value:.4f}, {params} -> {out / 'best.yaml'}")
    return {"number": best.number, "valid_auc": best.value, "params": params, "trials": len(trials)}


def _label_ends(ax: Any, ends: list[tuple[int, float, Any]], colour: Any, gap: float) -> None:
    """``#N`` at the end of each trial's curve, nudged apart where curves end close together."""
    last = max((x for x, _, _ in ends), default=0)
    ax.set_xlim(right=last + 0.06 * max(last, 1) + 0.4)  # room for the labels
    low, high = ax.get_ylim()
    for x in sorted({x for x, _, _ in ends}):
        column = sorted((e for e in ends if e[0] == x), key=lambda e: -e[1])
        y_prev = math.inf
        for _, y, t in column:
            y_text = min(max(min(y, y_prev - gap), low), high)
            ax.annotate(f"#{t.number}", (x, y), xytext=(x + 0.08, y_text), textcoords="data", fontsize=7,
                        color=colour(t), va="center", ha="left")  # fmt: skip
            y_prev = y_text


def plot(trials: list[Any], path: Path) -> Path:
    """Write :func:`figure` as a PNG."""
    fig = figure(trials)
    import matplotlib.pyplot as plt

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def figure(trials: list[Any]) -> Any:
    """Validation AUC per trial (completed and pruned) with the running best, and each trial's
    curve per epoch; a trial has one colour in both panels, and its curve ends in its number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    numbers = [t.number for t in trials] or [0]
    cmap = plt.get_cmap("viridis")
    span = max(max(numbers) - min(numbers), 1)

    def colour(t: Any) -> Any:
        return cmap(0.9 * (t.number - min(numbers)) / span)

    # the axes show the top 0.05 of AUC (the differences that matter); a trial below is drawn on
    # the floor as a triangle and named with its value in the legend, never left out of sight
    values = [v for t in trials for v in t.intermediate_values.values()]
    values += [t.value for t in trials if t.state.name == "COMPLETE"]
    top = max(values) if values else 1.0
    low = max(min(values), top - 0.05) if values else 0.0
    margin = (top - low) * 0.04 + 1e-4
    floor = low - margin
    below: list[str] = []

    def point(t: Any, value: float, marker: str, size: float) -> None:
        if value < floor:
            below.append(f"#{t.number} {value:.3f}")
            ax.plot(t.number, floor, "v", color=colour(t), markersize=8, clip_on=False)
        else:
            ax.plot(t.number, value, marker, color=colour(t), markersize=size)

    ax = axes[0]
    best, xs, ys = -math.inf, [], []
    pruned = [t for t in trials if t.state.name == "PRUNED" and t.intermediate_values]
    for t in trials:
        if t.state.name == "COMPLETE":
            point(t, t.value, "o", 6)
            best = max(best, t.value)
        elif t in pruned:
            point(t, max(t.intermediate_values.values()), "x", 8)
        if best > -math.inf:
            xs.append(t.number)
            ys.append(best)
    ax.step(xs, ys, where="post", color="0.2", linewidth=1, label="best so far")
    handles = [Line2D([], [], color="0.2", linewidth=1, label="best so far")]
    handles.append(Line2D([], [], marker="o", linestyle="", color="0.5", label="completed"))
    if pruned:  # no legend entry for a kind of trial the study does not have
        handles.append(
            Line2D([], [], marker="x", linestyle="", color="0.5", label="pruned (best epoch seen)")
        )
    if below:
        text = ", ".join(below[:4]) + (f" +{len(below) - 4}" if len(below) > 4 else "")
        handles.append(Line2D([], [], marker="v", linestyle="", color="0.5", label=f"below the axis: {text}"))
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation AUC")
    ax.grid(alpha=0.3)
    ax = axes[1]
    ends = []
    for t in trials:
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            values = [t.intermediate_values[s] for s in steps]
            dashes = "--" if t.state.name == "PRUNED" else "-"
            ax.plot(steps, values, dashes, color=colour(t), alpha=0.85)
            ends.append((steps[-1], values[-1], t))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AUC (one line per trial)")
    ax.grid(alpha=0.3)
    for a in axes:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    if values:
        for a in axes:
            a.set_ylim(low - margin, top + margin)
        _label_ends(ax, ends, colour, gap=(top - low + 2 * margin) * 0.045)
    fig.suptitle("deepfm tune: validation AUC" + (" (x and dashed: pruned trials)" if pruned else ""))
    fig.tight_layout()
    return fig

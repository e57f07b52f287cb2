"""``deepfm compare``: several models trained on the same split per seed, summarised as a report.

For each seed the data set is prepared once (split, vocabularies, encoding) and every model is
trained on it with :func:`deepfm.training.run.train` (same options except ``model``), so the
models differ only in their architecture. Outputs in ``out``: ``comparison.csv`` (one row per
model), ``comparison.md``, ``comparison.png`` and ``comparison.json`` (every run), plus each
run's own folder ``runs/MODEL-seedS``. Training on CPU is deterministic, so the same seeds give
the same AUC / logloss columns.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from deepfm.config import TrainConfig
from deepfm.experiments.tracking import train_tracked
from deepfm.io import finite, write_json, write_text
from deepfm.training.run import load_data

COLUMNS = (
    "model",
    "test_auc_mean",
    "test_auc_std",
    "test_logloss_mean",
    "test_logloss_std",
    "train_seconds",
    "params",
)


def compare(
    base: TrainConfig, models: list[str], seeds: list[int], out: str | Path, echo: Any = print
) -> list[dict[str, Any]]:
    """Train every model for every seed; write the report files; return one summary row a model."""
    out = Path(out)
    runs: list[dict[str, Any]] = []
    labelling = ""
    for seed in seeds:
        data = load_data(dataclasses.replace(base, seed=seed))
        labelling = labelling_of(data.facts.spec)
        for model in models:
            config = dataclasses.replace(
                base, model=model, seed=seed, out=str(out / "runs" / f"{model}-seed{seed}")
            )
            metrics = train_tracked(config, data=data, echo=lambda _msg: None)
            echo(
                f"{model:>10s} seed {seed}: test AUC {metrics['test_auc']:.4f}  logloss "
                f"{metrics['test_logloss']:.4f}  best epoch {metrics['best_epoch']}  "
                f"{metrics['train_seconds']:.0f}s"
            )
            runs.append(
                {
                    "model": model,
                    "seed": seed,
                    "test_auc": metrics["test_auc"],
                    "test_logloss": metrics["test_logloss"],
                    "best_epoch": metrics["best_epoch"],
                    "train_seconds": metrics["train_seconds"],
                    "params": metrics["params"],
                    "valid_auc": [e["valid_auc"] for e in metrics["epochs"]],
                }
            )
    rows = summarise(runs, models)
    write_report(out, rows, runs, base, seeds, labelling)
    return rows


def summarise(runs: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    rows = []
    for model in models:
        mine = [r for r in runs if r["model"] == model]
        auc = np.array([r["test_auc"] for r in mine])
        loss = np.array([r["test_logloss"] for r in mine])
        rows.append(
            {
                "model": model,
                "test_auc_mean": float(auc.mean()),
                "test_auc_std": _std(auc),
                "test_logloss_mean": float(loss.mean()),
                "test_logloss_std": _std(loss),
                "train_seconds": float(np.mean([r["train_seconds"] for r in mine])),
                "params": int(mine[0]["params"]),
            }
        )
    return rows


def _std(values: np.ndarray) -> float:
    """Sample standard deviation across seeds (0 for a single seed)."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def labelling_of(spec: dict[str, Any] | None) -> str:
    """How the data's rows became labels (its label rule and row filter), for the report."""
    label = (spec or {}).get("label") or {}
    column = label.get("column", "label")
    rule = f"{column} {label['op']} {label['value']:g}" if label.get("declared") else f"{column} (0/1)"
    kept = (spec or {}).get("filter") or []
    return rule + (f", rows kept where {' and '.join(kept)}" if kept else "")


def to_markdown(
    rows: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    base: TrainConfig,
    seeds: list[int],
    labelling: str = "",
) -> str:
    """The table (mean ± std over seeds) with a header naming data, features and seeds."""
    capped = sum(len(run["valid_auc"]) >= base.epochs for run in runs)
    cap = f"; {capped} of {len(runs)} runs used all {base.epochs}" if capped else ""
    lines = [
        f"Dataset `{base.dataset}`, features `{base.features}`, label {labelling}, "
        f"seeds {', '.join(map(str, seeds))}; embed {base.embed_dim}, MLP "
        f"{','.join(map(str, base.mlp)) or 'none'}, dropout {base.dropout}, lr {base.lr}, "
        f"weight decay {base.weight_decay}, batch {base.batch_size}, at most {base.epochs} epochs with "
        f"early stopping (patience {base.patience}){cap}.",
        "",
        "| model | test AUC | test logloss | train s | params |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['test_auc_mean']:.4f} ± {r['test_auc_std']:.4f} | "
            f"{r['test_logloss_mean']:.4f} ± {r['test_logloss_std']:.4f} | "
            f"{r['train_seconds']:.0f} | {r['params']:,} |"
        )
    lines += paired_markdown(paired(runs, [r["model"] for r in rows]))
    return "\n".join(lines) + "\n"


def paired(runs: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """Test AUC of each model minus the baseline's (``fm`` when compared, else the first model),
    per seed on the same split, with a paired t-test (``scipy.stats.ttest_rel``).

    The spread of each model over seeds is mostly the spread of the splits; the per-seed
    difference removes it, so it is the fairer test of which model is better.
    """
    from scipy import stats

    baseline = "fm" if "fm" in models else models[0]
    auc = {(r["model"], r["seed"]): r["test_auc"] for r in runs}
    rows = []
    for model in models:
        if model == baseline:
            continue
        seeds = sorted({s for m, s in auc if m == model} & {s for m, s in auc if m == baseline})
        gaps = np.array([auc[model, s] - auc[baseline, s] for s in seeds])
        mean, std = (float(gaps.mean()), _std(gaps)) if len(gaps) else (math.nan, math.nan)
        t, p = math.nan, math.nan
        if len(gaps) > 1 and std > 0:
            result = stats.ttest_rel([auc[model, s] for s in seeds], [auc[baseline, s] for s in seeds])
            t, p = float(result.statistic), float(result.pvalue)
        rows.append(
            {
                "model": model,
                "baseline": baseline,
                "seeds": seeds,
                "differences": gaps.tolist(),
                "mean": mean,
                "std": std,
                "std_ratio": mean / std if std > 0 else math.nan,  # the gap in paired stds
                "t": t,
                "p_value": p,
            }
        )
    return rows


def paired_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The paired table: per-seed differences, mean ± std, mean / std and the paired t-test."""
    rows = [r for r in rows if len(r["seeds"]) > 1]
    if not rows:
        return []
    lines = [
        "",
        f"Test AUC minus {rows[0]['baseline']}'s, paired by seed (same split), with a paired t-test:",
        "",
        "| model | per-seed difference | mean ± std | mean / std | t | p-value |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = ", ".join(f"{g:+.4f}" for g in r["differences"])
        lines.append(
            f"| {r['model']} − {r['baseline']} | {per_seed} | {r['mean']:+.4f} ± {r['std']:.4f} | "
            f"{r['std_ratio']:+.1f} | {r['t']:+.2f} | {r['p_value']:.2g} |"
        )
    return lines


def write_report(
    out: Path,
    rows: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    base: TrainConfig,
    seeds: list[int],
    labelling: str = "",
) -> None:
    write_text(out / "comparison.csv", to_csv(rows))
    write_text(out / "comparison.md", to_markdown(rows, runs, base, seeds, labelling))
    write_json(
        out / "comparison.json",
        finite(
            {
                "config": base.to_dict(),
                "seeds": seeds,
                "summary": rows,
                "paired": paired(runs, [r["model"] for r in rows]),
                "runs": runs,
            }
        ),
    )
    plot(rows, runs, out / "comparison.png", f"{base.dataset}, features {base.features}")


# Bars start from a floor that means something (AUC 0.5 = chance, logloss 0), so their heights
# compare honestly; the value is written on each bar for the digits.
FLOORS = {"test_auc": 0.5, "test_logloss": 0.0}
SEED_STYLES = ("-", "--", ":", "-.")


def plot(rows: list[dict[str, Any]], runs: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Write :func:`figure` as a PNG."""
    fig = figure(rows, runs, title)
    import matplotlib.pyplot as plt

    from deepfm.io import atomic_write

    path = atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def figure(rows: list[dict[str, Any]], runs: list[dict[str, Any]], title: str) -> Any:
    """Bars of test AUC and logloss (error bars = std over seeds) and valid AUC per epoch, one
    line per run: the model's colour, the seed's line style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    names = [r["model"] for r in rows]
    colours = {name: f"C{i}" for i, name in enumerate(names)}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    x = np.arange(len(names))
    for ax, metric, label in ((axes[0], "test_auc", "test AUC"), (axes[1], "test_logloss", "test logloss")):
        means = np.array([r[f"{metric}_mean"] for r in rows])
        stds = np.nan_to_num(np.array([r[f"{metric}_std"] for r in rows]))
        floor = FLOORS[metric]
        bars = ax.bar(x, means - floor, bottom=floor, yerr=stds, capsize=4, color=[colours[n] for n in names])
        ax.bar_label(bars, labels=[f"{m:.4f}" for m in means], label_type="center", color="white")
        finite = means[np.isfinite(means)]
        top = float((finite + stds[np.isfinite(means)]).max()) if len(finite) else floor + 1
        ax.set_ylim(floor, top + (top - floor) * 0.05)
        ax.set_xticks(x, names)
        ax.set_ylabel(f"{label} (mean ± std over seeds)")
        ax.grid(axis="y", alpha=0.3)
    ax = axes[2]
    seeds = sorted({run["seed"] for run in runs})
    style = {seed: SEED_STYLES[i % len(SEED_STYLES)] for i, seed in enumerate(seeds)}
    for run in runs:
        curve = run["valid_auc"]
        ax.plot(range(1, len(curve) + 1), curve, style[run["seed"]], color=colours[run["model"]], alpha=0.85)
    finite = [v for run in runs for v in run["valid_auc"] if not math.isnan(v)]
    if finite:
        top = max(finite)
        ax.set_ylim(max(min(finite), top - 0.05), top + 0.005)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AUC")
    handles = [Line2D([], [], color=colours[n], label=n) for n in names]
    handles += [Line2D([], [], color="0.3", linestyle=style[s], label=f"seed {s}") for s in seeds]
    # below the axes: inside, it would cover curves
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=len(handles))
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig

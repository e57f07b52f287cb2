"""The plots a run writes: learning_curve.png, comparison.png and search.png read honestly."""

from __future__ import annotations

import math

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from deepfm.evaluation.plots import learning_curve_figure  # noqa: E402
from deepfm.experiments import compare, tune  # noqa: E402

optuna = pytest.importorskip("optuna")


def _overlaps(a, b) -> bool:  # noqa: ANN001 - matplotlib Bbox
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_learning_curve_legend_sits_outside_the_curves():
    epochs = [
        {"epoch": e, "train_loss": 0.6 - 0.01 * e, "valid_logloss": 0.55, "valid_auc": 0.80 + 0.001 * e}
        for e in range(1, 21)
    ]
    fig = learning_curve_figure(epochs, "deepfm on data", best_epoch=12)
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert all(not _overlaps(legend, ax.get_window_extent()) for ax in fig.axes)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["train loss", "valid loss", "best epoch (12)", "valid AUC"]
    plt.close(fig)


def test_comparison_bars_start_at_a_floor_and_each_seed_has_its_own_labelled_line():
    rows, runs = [], []
    for m, (auc, loss) in enumerate(((0.75, 0.60), (0.77, 0.56))):
        name = ["lr", "deepfm"][m]
        rows.append({"model": name, "test_auc_mean": auc, "test_auc_std": 0.002,
                     "test_logloss_mean": loss, "test_logloss_std": 0.003})  # fmt: skip
        for seed in (0, 1, 2):
            runs.append(
                {"model": name, "seed": seed, "valid_auc": [auc - 0.02, auc - 0.01 + seed * 1e-3, auc]}
            )
    fig = compare.figure(rows, runs, "data")
    bars_auc, bars_loss, curves = fig.axes
    assert bars_auc.get_ylim()[0] == 0.5 and bars_loss.get_ylim()[0] == 0.0  # chance and perfect
    assert [t.get_text() for t in bars_auc.texts] == ["0.7500", "0.7700"]  # the values on the bars
    styles = {(line.get_color(), line.get_linestyle()) for line in curves.get_lines()}
    assert len(curves.get_lines()) == len(styles) == 6  # every (model, seed) line tells itself apart
    legend = curves.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["lr", "deepfm", "seed 0", "seed 1", "seed 2"]
    fig.canvas.draw()
    assert not _overlaps(legend.get_window_extent(), curves.get_window_extent())
    plt.close(fig)


def _trial(number: int, curve: list[float], pruned: bool = False):  # noqa: ANN202
    state = optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE
    trial = optuna.trial.create_trial(
        state=state,
        value=None if pruned else max(curve),
        params={},
        distributions={},
        intermediate_values=dict(enumerate(curve, start=1)),
    )
    trial.number = number
    return trial


def test_search_plot_integer_ticks_curves_matched_to_trials_and_no_empty_legend_entries():
    trials = [_trial(n, [0.76 + 0.003 * n, 0.77 + 0.002 * n, 0.78 + 0.001 * n]) for n in range(3)]
    fig = tune.figure(trials)
    fig.canvas.draw()
    points, curves = fig.axes
    for ax in (points, curves):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    assert [t.get_text() for t in points.get_legend().get_texts()] == ["best so far", "completed"]
    assert "pruned" not in fig._suptitle.get_text()
    dots = {int(line.get_xdata()[0]): to_rgba(line.get_color()) for line in points.get_lines()
            if line.get_marker() == "o"}  # fmt: skip
    labels = {t.get_text(): to_rgba(t.get_color()) for t in curves.texts}
    assert labels == {f"#{n}": dots[n] for n in range(3)}  # a curve's label and its dot: one colour
    plt.close(fig)

    trials.append(_trial(3, [0.775, 0.77], pruned=True))
    fig = tune.figure(trials)
    points = fig.axes[0]
    assert [t.get_text() for t in points.get_legend().get_texts()][-1] == "pruned (best epoch seen)"
    assert math.isclose(
        max(line.get_ydata()[0] for line in points.get_lines() if line.get_marker() == "x"), 0.775
    )
    plt.close(fig)

    # a trial far below the others (the axes show the top 0.05): on the floor, named with its value
    trials.append(_trial(4, [0.70, 0.69], pruned=True))
    fig = tune.figure(trials)
    points = fig.axes[0]
    low, high = points.get_ylim()
    floor = [line for line in points.get_lines() if line.get_marker() == "v"]
    assert len(floor) == 1 and floor[0].get_xdata()[0] == 4 and low <= floor[0].get_ydata()[0] <= high
    assert [t.get_text() for t in points.get_legend().get_texts()][-1] == "below the axis: #4 0.700"
    plt.close(fig)

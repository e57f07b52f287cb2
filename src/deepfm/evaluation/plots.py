"""Learning-curve plot: train and validation loss, validation AUC per epoch, best epoch marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def learning_curve_figure(
    epochs: list[dict[str, Any]], title: str = "", best_epoch: int | None = None
) -> Any:
    """The matplotlib figure: losses on the left axis, validation AUC on the right, integer epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    xs = [e["epoch"] for e in epochs]
    fig, ax_loss = plt.subplots(figsize=(6.4, 4.3))
    ax_loss.plot(xs, [e["train_loss"] for e in epochs], "o-", color="tab:blue", label="train loss")
    if epochs and "valid_logloss" in epochs[0]:
        ax_loss.plot(xs, [e["valid_logloss"] for e in epochs], "^--", color="tab:green", label="valid loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (BCE)")
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_auc = ax_loss.twinx()
    ax_auc.plot(xs, [e["valid_auc"] for e in epochs], "s-", color="tab:orange", label="valid AUC")
    ax_auc.set_ylabel("validation AUC", color="tab:orange")
    if best_epoch is not None and best_epoch in xs:
        ax_loss.axvline(best_epoch, color="tab:red", linestyle=":", label=f"best epoch ({best_epoch})")
    handles = ax_loss.get_legend_handles_labels()[0] + ax_auc.get_legend_handles_labels()[0]
    # below the axes, outside them: a legend inside covers a curve whatever corner it takes
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize="small", frameon=False)
    if title:
        ax_loss.set_title(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def learning_curve(
    epochs: list[dict[str, Any]], path: str | Path, title: str = "", best_epoch: int | None = None
) -> Path:
    import matplotlib.pyplot as plt

    from deepfm.io import atomic_write

    fig = learning_curve_figure(epochs, title, best_epoch)
    path = atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path

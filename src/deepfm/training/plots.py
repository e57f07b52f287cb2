"""Learning-curve plot: train loss and validation AUC per epoch (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def learning_curve(epochs: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepfm.training.io import atomic_write

    xs = [e["epoch"] for e in epochs]
    fig, ax_loss = plt.subplots(figsize=(6.4, 4.0))
    ax_loss.plot(xs, [e["train_loss"] for e in epochs], "o-", color="tab:blue", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss (BCE)", color="tab:blue")
    ax_auc = ax_loss.twinx()
    ax_auc.plot(xs, [e["valid_auc"] for e in epochs], "s-", color="tab:orange", label="valid AUC")
    ax_auc.set_ylabel("validation AUC", color="tab:orange")
    if title:
        ax_loss.set_title(title)
    fig.tight_layout()
    path = atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path

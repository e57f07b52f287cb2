"""The one validation layer for labels and splits, applied before any training starts.

* Labels: a label column is 0/1 (libsvm / libfm also take -1 for the negative class) unless the
  spec declares the rule that makes it 0/1 (``label: rating > 3``, ``label: {column: click,
  positive: ">= 1"}``). A 2 in ``label: click``, a 1-5 rating without a rule, or NaN is an error
  naming the file, line and field: thresholding them silently trains a useless model.
* Splits: train, valid and test must each have rows, and both classes. An empty valid split
  leaves nothing to early-stop on (no ``model.pt``); a split with one class has no AUC.

Both raise :class:`~deepfm.errors.DataError` (exit status 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deepfm.errors import DataError

SIGNED_FORMATS = ("libsvm", "libfm")  # their convention: +1 / -1


def allowed_labels(fmt: str) -> tuple[float, ...]:
    return (-1.0, 0.0, 1.0) if fmt in SIGNED_FORMATS else (0.0, 1.0)


def check_label_values(
    values: np.ndarray,
    column: str,
    fmt: str = "csv",
    path: str | Path | None = None,
    lines: np.ndarray | None = None,
) -> None:
    """Raise for the first value of ``values`` that is not an allowed 0/1 label (NaN included)."""
    x = np.asarray(values, dtype=np.float64)
    allowed = allowed_labels(fmt)
    bad = ~np.isin(x, allowed)
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    line = int(lines[i]) if lines is not None else None
    shown = "/".join(f"{v:g}" for v in allowed)
    value = "NaN" if np.isnan(x[i]) else f"{x[i]:g}"
    where = "" if line is not None or path is not None else f"row {i}: "
    raise DataError(
        f"{where}label {value} is not {shown}; declare the rule that makes it 0/1 in the spec "
        f"(e.g. 'label: {column} > 0', or 'label: {{column: {column}, positive: \">= 4\"}}')",
        path,
        line,
        column,
    )


def check_splits(name: str, labels: dict[str, Any]) -> None:
    """Every part has rows and both classes; ``labels`` maps train/valid/test to 0/1 labels."""
    for part, y in labels.items():
        y = np.asarray(y.numpy() if hasattr(y, "numpy") else y, dtype=np.float64)
        if len(y) == 0:
            raise DataError(
                f"data set {name!r}: the {part} split is empty (0 rows); "
                "give it rows (split ratios, split column, or split files)"
            )
        positives = int((y > 0.5).sum())
        if positives in (0, len(y)):
            kind = "positive" if positives else "negative"
            raise DataError(
                f"data set {name!r}: every row of the {part} split is {kind} ({len(y):,} rows); "
                "AUC needs both classes: check the label column and its rule"
            )

"""Batch prediction from files: read raw records, score them, write ``probability`` beside them.

Files are read by :mod:`deepfm.data.layouts` (records files by suffix, or the model's own layout).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepfm.artifact.trained import TrainedModel
from deepfm.data.layouts import JSONL, PARQUET, read_layout
from deepfm.errors import DataError
from deepfm.io import atomic_write


def write_scores(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` atomically as CSV, or Parquet / JSON Lines by the suffix of ``path``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PARQUET:
        return atomic_write(path, lambda f: frame.to_parquet(f, index=False))
    if suffix in JSONL:
        text = frame.to_json(orient="records", lines=True)
        return atomic_write(path, lambda f: f.write(text.encode()))
    sep = "\t" if suffix == ".tsv" else ","
    text = frame.to_csv(index=False, sep=sep)
    return atomic_write(path, lambda f: f.write(text.encode()))


def predict_file(
    model: TrainedModel, source: str | Path, output: str | Path, layout: str = "auto"
) -> pd.DataFrame:
    """Score every record of ``source``; writes the records plus a ``probability`` column.

    ``layout`` (see :mod:`deepfm.data.layouts`): ``auto`` reads records files by suffix and files
    in the model's training layout (ratings.dat, a headerless Criteo TSV, ...) as such.
    """
    check_output(output)
    frame = read_layout(model, source, layout)
    try:
        probs = model.predict(frame)
    except DataError as exc:
        if exc.path is None:  # a missing column: name the file it is missing from
            raise DataError(exc.reason, source, exc.line, exc.field) from None
        raise
    scored = frame.assign(probability=np.asarray(probs, dtype=np.float64))
    write_scores(scored, output)
    return scored


def check_output(output: str | Path) -> None:
    """A one-line error, before any work, for an output path that cannot be a file."""
    path = Path(output)
    if str(output).endswith(("/", "\\")) or path.is_dir():
        raise DataError(f"is a folder; give a file name such as {path / 'scores.csv'}", output)
    if path.exists() and not path.is_file():  # a device or FIFO: never replaced by the scores file
        raise DataError("is not a regular file; give a file name such as scores.csv", output)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise DataError(f"{parent} is a file, not a folder", output)

"""Evaluating a trained model on labelled raw data: files in its layout, a frame or records.

Reads the rows (:mod:`deepfm.data.layouts`), labels them by the training data's rule (or a given
one), encodes them with the model's feature map and side tables, scores them and computes the
model's metrics with its :class:`~deepfm.evaluation.evaluator.Evaluator`. The model is anything
with ``feature_map``, ``tables``, ``facts``, ``config``, ``module`` and ``predict_split`` (a
:class:`~deepfm.artifact.trained.TrainedModel`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from deepfm.data.batching import Split
from deepfm.data.layouts import filtered, label_rule, labels_of, parse_label, read_labelled, row_filter
from deepfm.data.records import prepare_records, records_frame
from deepfm.errors import ConfigError, DataError
from deepfm.evaluation.evaluator import for_model
from deepfm.evaluation.scoring import refuse_non_finite


def evaluate_model(
    model: Any,
    data: Any,
    label: str | None = None,
    metrics: str | None = None,
    group_by: str | None = None,
    negatives: int | None = None,
    layout: str = "auto",
) -> dict[str, Any]:
    """Metrics of a trained model on labelled raw data (files in its layout, a frame or records)."""
    if isinstance(data, (str, Path)) or (
        isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, Path)) for d in data)
    ):
        paths = [data] if isinstance(data, (str, Path)) else list(data)
        frame, labels = read_labelled(model, paths, layout, label)
        if not len(frame):  # a header-only file: no metric is defined
            raise DataError("holds no rows to evaluate", ", ".join(map(str, paths)))
    else:
        frame = filtered(_frame_of(data), row_filter(model))
        rule = parse_label(label) if label else label_rule(model)
        labels = labels_of(frame, rule)
        if not len(frame):
            raise DataError("the data holds no rows to evaluate")
    frame = prepare_records(records_frame(frame, model.feature_map), model.feature_map, model.tables)
    arrays = model.feature_map.encode(frame)
    split = Split.from_arrays(arrays, labels)
    probs = model.predict_split(split, model.config.eval_batch_size)

    def raw(row: int, column: str) -> Any:
        value = frame[column].iloc[row] if column in frame.columns else None
        return value.item() if hasattr(value, "item") else value

    refuse_non_finite(probs, arrays.get("dense"), model.feature_map, raw)
    evaluator = for_model(model, metrics, group_by, negatives)
    values = evaluator.evaluate(model.module, split, probs)
    return {
        "rows": len(split),
        "positive_rate": float(labels.mean()) if len(labels) else math.nan,
        **values,
        "evaluation": evaluator.describe(),
    }


def _frame_of(data: Any) -> pd.DataFrame:
    """A pandas frame of a DataFrame, an Arrow table, a Polars frame or a list of records."""
    if isinstance(data, pd.DataFrame):
        return data
    if hasattr(data, "to_pandas"):  # pyarrow.Table, polars.DataFrame
        return data.to_pandas()
    if isinstance(data, (list, tuple)):
        return pd.DataFrame.from_records(list(data))
    raise ConfigError(
        f"expected a DataFrame, an Arrow table, records or file paths, got {type(data).__name__}"
    )

"""Side tables: per-entity features joined onto rows by a key column (e.g. movie_id -> genres).

A data set with side features (MovieLens users.dat / movies.dat) returns its tables keyed by
the join column. Training rows are built with :func:`join_tables`; the same tables travel in the
checkpoint so a trained model can be called with only the keys (``user_id``, ``movie_id``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

Tables = dict[str, pd.DataFrame]  # key column name -> frame holding that column + side columns


def join_tables(frame: pd.DataFrame, tables: Tables) -> pd.DataFrame:
    """Left-join every table on its key; side columns already present in ``frame`` are kept."""
    for key, table in tables.items():
        if key not in frame.columns:
            continue
        side = [c for c in table.columns if c != key and c not in frame.columns]
        if not side:
            continue
        indexed = table.drop_duplicates(key).set_index(key)[side]
        joined = indexed.reindex(frame[key].to_numpy())
        for column in side:
            frame[column] = joined[column].to_numpy()
    return frame


def tables_to_payload(tables: Tables) -> dict[str, dict[str, list[Any]]]:
    """Plain lists (safe for ``torch.load(weights_only=True)``)."""
    return {
        key: {c: [_plain(v) for v in table[c].tolist()] for c in table.columns}
        for key, table in tables.items()
    }


def tables_from_payload(payload: dict[str, dict[str, list[Any]]]) -> Tables:
    return {key: pd.DataFrame(columns) for key, columns in (payload or {}).items()}


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return value.item() if hasattr(value, "item") else value

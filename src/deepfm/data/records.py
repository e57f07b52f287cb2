"""Raw records given at predict/serve time: checked before encoding, so bad input is a DataError.

A record is a mapping of field name -> raw value. Categorical fields take one scalar (string,
number, bool or null; unseen values go to OOV), sequence fields a list of scalars (or null),
numeric fields a number (or null / a numeric string). Anything else is refused with the record
number and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from deepfm.data.features import FeatureMap
from deepfm.errors import DataError

SCALARS = (str, bytes, int, float, bool, np.generic, type(None))


def records_frame(records: pd.DataFrame | list[Any], feature_map: FeatureMap) -> pd.DataFrame:
    """A DataFrame of ``records`` whose field columns hold values the feature map can encode."""
    if isinstance(records, pd.DataFrame):
        frame = records
    else:
        if not isinstance(records, (list, tuple)):
            raise DataError(f"records must be a list of objects (field: value), got {type(records).__name__}")
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise DataError(f"record {i} is a {type(record).__name__}, expected an object (field: value)")
        frame = pd.DataFrame.from_records(list(records), columns=_columns(records))
    for f in feature_map.fields:
        if f.name not in frame.columns or frame[f.name].dtype != object:
            continue
        column = frame[f.name]
        if f.kind == "sequence":
            ok = column.map(lambda v: v is None or _is_list_of_scalars(v))
            expected = "a list of values (or null)"
        else:
            ok = column.map(lambda v: isinstance(v, SCALARS))
            expected = "a single value (string, number or null)"
        if not ok.all():
            i = int(np.flatnonzero(~ok.to_numpy(dtype=bool))[0])
            got = type(column.iloc[i]).__name__
            raise DataError(f"record {i}: expected {expected}, got a {got}", field=f.name)
    return frame


def _columns(records: list[Any] | tuple[Any, ...]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(str(k) for k in record))
    return list(seen)


def _is_list_of_scalars(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(v, SCALARS) for v in value)

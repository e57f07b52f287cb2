"""Feature hashing: a field with ``hash_buckets: B`` maps each value to one of ``B`` rows, no vocabulary.

The hash is **xxHash64** (the ``xxhash`` package, https://xxhash.com) of the value's text in
UTF-8, seed 0; the field's local row is ``1 + hash % B`` (local row 0 stays the field's
out-of-vocabulary row, which a hashed field never uses), and the global row adds the field's
``offset``, exactly as for counted fields. Another runtime reproduces it with any xxHash64
implementation (C ``XXH64(text, len, 0)``, Java ``net.openhft.hashing.LongHashFunction.xx(0)``,
Go ``github.com/cespare/xxhash/v2.Sum64String``), taking the 64-bit result as unsigned.

The text is the value's token, as for counted fields (:data:`deepfm.data.transforms.TOKEN_RULE`:
text as the data files hold it, ``"a1b2"``, ``"42"``; ``true`` / ``false``; a missing value is the
empty string). Values are hashed once per distinct value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from deepfm.data.transforms import series_text
from deepfm.errors import ConfigError

HASH_NAME = "xxh64-utf8-seed0"  # written into feature_map.json beside each hashed field


def _xxh64() -> Any:
    try:
        import xxhash
    except ImportError:
        raise ConfigError(
            "hash_buckets needs the xxhash package (a deepfm dependency): pip install xxhash"
        ) from None
    return xxhash.xxh64_intdigest


def hashes(values: Any) -> np.ndarray:
    """uint64 xxHash64 of each value's token text (the one value-to-token rule,
    :func:`deepfm.data.transforms.token_text`: ``None``/NaN -> ``""``, ``True`` -> ``"true"``,
    ``6.0`` -> ``"6"``), one call per distinct value."""
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    codes, uniques = pd.factorize(series_text(series), sort=False)
    digest = _xxh64()
    table = np.fromiter((digest(u.encode("utf-8")) for u in uniques), dtype=np.uint64, count=len(uniques))
    return table[codes] if len(codes) else np.zeros(0, dtype=np.uint64)


def local_rows(values: Any, buckets: int) -> np.ndarray:
    """Local rows ``1 + xxh64(text) % buckets`` (int64) of ``values``."""
    return (hashes(values) % np.uint64(buckets)).astype(np.int64) + 1


class CollisionStats:
    """Distinct training values of a hashed field (by their 64-bit hash) and the buckets they fill."""

    MERGE_EVERY = 16

    def __init__(self, buckets: int) -> None:
        self.buckets = buckets
        self.parts: list[np.ndarray] = []
        self.seen = np.zeros(0, dtype=np.uint64)

    def add(self, values: Any) -> None:
        self.parts.append(np.unique(hashes(values)))
        if len(self.parts) >= self.MERGE_EVERY:
            self._merge()

    def _merge(self) -> None:
        if self.parts:
            self.seen = np.unique(np.concatenate([self.seen, *self.parts]))
            self.parts = []

    def summary(self) -> dict[str, Any]:
        """``distinct_values``, ``buckets_used`` and ``collision_rate`` = 1 - used / distinct."""
        self._merge()
        distinct = int(len(self.seen))
        used = int(len(np.unique(self.seen % np.uint64(self.buckets))))
        return {
            "buckets": self.buckets,
            "distinct_values": distinct,
            "buckets_used": used,
            "collision_rate": 1.0 - used / distinct if distinct else 0.0,
        }

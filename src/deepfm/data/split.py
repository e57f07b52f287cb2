"""Split rules: which rows are train, valid and test, computed the same by every engine.

**Random split.** The row numbered ``row`` (1-based, counted from the first data line, a header
line not counted) of input file number ``file`` (files in the spec's order) draws
``u = xxh64(row, xxh64(file, xxh64(seed, 42))) / 2**64`` with the
64-bit xxHash of each integer as 8 little-endian bytes, the previous hash as the seed (Apache
Spark's ``xxhash64(seed, file, row)`` column function computes the same chain). ``u < r_train``
is train, ``u < r_train + r_valid`` valid, the rest test. Same seed and files -> same split, in
any chunking, on any number of machines, with rows skipped or filtered anywhere else; the parts
hold the ratios up to sampling noise (a row count, not a quota).

**Leave-last split.** Each group's (user's) latest row is test and the one before valid; groups
with fewer than 3 rows stay in training. Rows with equal times are ordered by the same ``u``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# xxHash64's primes (https://github.com/Cyan4973/xxHash), and Spark's seed of its hash functions
P1 = np.uint64(0x9E3779B185EBCA87)
P2 = np.uint64(0xC2B2AE3D27D4EB4F)
P3 = np.uint64(0x165667B19E3779F9)
P4 = np.uint64(0x85EBCA77C2B2AE63)
P5 = np.uint64(0x27D4EB2F165667C5)
SPARK_SEED = 42


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _u64(x: np.ndarray | int) -> np.ndarray:
    """As uint64 (negative integers as their two's complement, as Java's long is hashed)."""
    a = np.asarray(x)
    return a if a.dtype == np.uint64 else a.astype(np.int64).astype(np.uint64)


def xxh64_long(value: np.ndarray | int, seed: np.ndarray | int) -> np.ndarray:
    """xxHash64 of each 64-bit integer ``value`` (8 little-endian bytes) with ``seed`` (uint64)."""
    with np.errstate(over="ignore"):
        v = _u64(value)
        h = _u64(seed) + P5 + np.uint64(8)
        h ^= _rotl(v * P2, 31) * P1
        h = _rotl(h, 27) * P1 + P4
        h ^= h >> np.uint64(33)
        h *= P2
        h ^= h >> np.uint64(29)
        h *= P3
        h ^= h >> np.uint64(32)
    return h


def row_uniforms(seed: int, file: int, rows: np.ndarray) -> np.ndarray:
    """``u`` in [0, 1) of every row number of input file number ``file`` (see the module docstring)."""
    h = xxh64_long(file, xxh64_long(seed, SPARK_SEED))
    h = xxh64_long(np.asarray(rows, dtype=np.int64), h)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def random_parts(u: np.ndarray, ratios: tuple[float, float, float]) -> np.ndarray:
    """0 (train), 1 (valid) or 2 (test) of each row's draw ``u``."""
    r0, r1, _ = ratios
    return (u >= r0).astype(np.int8) + (u >= r0 + r1).astype(np.int8)


def leave_last_parts(
    groups: np.ndarray, times: np.ndarray, ties: np.ndarray, min_rows: int = 3
) -> np.ndarray:
    """0/1/2 of every row: each group's latest row is test (2), the one before valid (1).

    Groups with fewer than ``min_rows`` rows stay in training; equal times are ordered by ``ties``.
    """
    n = len(groups)
    groups = np.asarray(groups)
    order = np.lexsort((np.asarray(ties), np.asarray(times), groups))  # by group, time, then the draw
    g = groups[order]
    start = np.r_[True, g[1:] != g[:-1]] if n else np.zeros(0, dtype=bool)
    group_no = np.cumsum(start) - 1
    sizes = np.bincount(group_no) if n else np.zeros(0, dtype=np.int64)
    last = np.r_[np.flatnonzero(start)[1:], n] - 1  # position (in order) of each group's last row
    from_end = last[group_no] - np.arange(n)  # 0 = the group's latest row
    big = sizes[group_no] >= min_rows
    part = np.where(big & (from_end == 0), 2, np.where(big & (from_end == 1), 1, 0))
    parts = np.empty(n, dtype=np.int8)
    parts[order] = part
    return parts


def linear_quantile(n: int, q: float, values_at: Callable[[list[int]], dict[int, float]]) -> float:
    """NumPy's ``quantile(a, q)`` (method linear) of ``n`` values, given the values at ranks
    (0-based, sorted order) by ``values_at``: the same floating-point steps, so the same result."""
    virtual = (n - 1) * np.float64(q)
    if virtual >= n - 1:
        below = above = n - 1
    elif virtual < 0:
        below = above = 0
    else:
        below = int(math.floor(virtual))
        above = below + 1
    gamma = virtual - np.float64(below)
    found = values_at(sorted({below, above}))
    a, b = np.float64(found[below]), np.float64(found[above])
    diff = b - a
    result = a + diff * gamma
    if gamma >= 0.5:
        result = b - diff * (1 - gamma)
    return float(result)

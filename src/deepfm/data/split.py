"""Seeded random train / valid / test split (same seed and size -> identical split)."""

from __future__ import annotations

import numpy as np

from deepfm.errors import ConfigError


def random_split(
    n: int, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the three parts of a random permutation of ``range(n)``."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not np.isclose(sum(ratios), 1.0):
        raise ConfigError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(n * ratios[0]))
    n_valid = int(round(n * ratios[1]))
    return perm[:n_train], perm[n_train : n_train + n_valid], perm[n_train + n_valid :]


def leave_last_split(
    groups: np.ndarray, times: np.ndarray, seed: int = 0, min_rows: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-last-out per group (user): its latest row is test, the one before it valid.

    Groups with fewer than ``min_rows`` rows stay in training. Rows with equal times are ordered
    by a seeded random draw, so the same seed gives the identical split.
    """
    n = len(groups)
    groups = np.asarray(groups)
    tie = np.random.default_rng(seed).random(n)
    order = np.lexsort((tie, np.asarray(times), groups))  # by group, then time, then the draw
    g = groups[order]
    start = np.r_[True, g[1:] != g[:-1]]
    group_no = np.cumsum(start) - 1
    sizes = np.bincount(group_no)
    last = np.r_[np.flatnonzero(start)[1:], n] - 1  # position (in order) of each group's last row
    from_end = last[group_no] - np.arange(n)  # 0 = the group's latest row
    big = sizes[group_no] >= min_rows
    part = np.where(big & (from_end == 0), 2, np.where(big & (from_end == 1), 1, 0))
    parts = np.empty(n, dtype=np.int8)
    parts[order] = part
    return np.flatnonzero(parts == 0), np.flatnonzero(parts == 1), np.flatnonzero(parts == 2)

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

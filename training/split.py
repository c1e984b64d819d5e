"""The shared seeded, stratified train/val/test split (every source without a split of its own uses it)."""

from __future__ import annotations

import numpy as np

from glasszoo.models.errors import ConfigError, DataError


def stratified_split(labels: np.ndarray, val_fraction: float = 0.15, test_fraction: float = 0.2,
                     seed: int = 0) -> np.ndarray:
    """A seeded, stratified train/val/test assignment: [N] strings.

    Within each class the cases are shuffled with ``seed`` and the first ``round(n * test_fraction)`` go to test,
    the next ``round(n * val_fraction)`` to val, the rest to train; so each split keeps the class proportions and the
    same seed always gives the same split. Every class needs at least 3 cases (one per split).
    """
    labels = np.asarray(labels).reshape(-1)
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ConfigError(f"data.{name} must lie in (0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(f"data.val_fraction + data.test_fraction must be < 1, got {val_fraction + test_fraction}")
    rng = np.random.default_rng(seed)
    split = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 3:
            raise DataError(f"class {c!r} has only {len(idx)} case(s); a train/val/test split needs at least 3")
        idx = idx[rng.permutation(len(idx))]
        n_test = min(max(1, round(len(idx) * test_fraction)), len(idx) - 2)
        n_val = min(max(1, round(len(idx) * val_fraction)), len(idx) - n_test - 1)
        split[idx[:n_test]] = "test"
        split[idx[n_test:n_test + n_val]] = "val"
        split[idx[n_test + n_val:]] = "train"
    return split

"""The shared seeded, stratified train/val/test split (every source without a split of its own uses it)."""

from __future__ import annotations

import numpy as np

from glasszoo.models.errors import ConfigError, DataError


def _checked(labels: np.ndarray, val_fraction: float, test_fraction: float) -> np.ndarray:
    """``labels`` flattened, once the fractions leave room for three splits and every class has a case for each."""
    labels = np.asarray(labels).reshape(-1)
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ConfigError(f"data.{name} must lie in (0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(f"data.val_fraction + data.test_fraction must be < 1, got {val_fraction + test_fraction}")
    classes, counts = np.unique(labels, return_counts=True)
    for c, n in zip(classes, counts):
        if n < 3:
            raise DataError(f"class {c!r} has only {n} case(s); a train/val/test split needs at least 3")
    return labels


def stratified_split(labels: np.ndarray, val_fraction: float = 0.15, test_fraction: float = 0.2,
                     seed: int = 0) -> np.ndarray:
    """A seeded, stratified train/val/test assignment: [N] strings.

    Within each class the cases are shuffled with ``seed`` and the first ``round(n * test_fraction)`` go to test,
    the next ``round(n * val_fraction)`` to val, the rest to train; so each split keeps the class proportions and the
    same seed always gives the same split. Every class needs at least 3 cases (one per split).
    """
    labels = _checked(labels, val_fraction, test_fraction)
    rng = np.random.default_rng(seed)
    split = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = min(max(1, round(len(idx) * test_fraction)), len(idx) - 2)
        n_val = min(max(1, round(len(idx) * val_fraction)), len(idx) - n_test - 1)
        split[idx[:n_test]] = "test"
        split[idx[n_test:n_test + n_val]] = "val"
        split[idx[n_test + n_val:]] = "train"
    return split


def grouped_stratified_split(labels: np.ndarray, groups: np.ndarray, val_fraction: float = 0.15,
                             test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """:func:`stratified_split` over groups: every case of a group (``groups``: one id per case; near-duplicate
    copies, a patient's images) lands in the same split.

    A group counts for the class most of its cases have (ties: the lowest class index). Within each class the
    groups are shuffled with ``seed`` and taken in that order into test until it holds ``round(n * test_fraction)``
    of the class's cases, then into val likewise, the rest into train; so a split's class proportions are kept up to
    the size of one group. With every group of one case this is the ungrouped split's procedure.
    """
    labels = _checked(labels, val_fraction, test_fraction)
    groups = np.asarray(groups).reshape(-1)
    if len(groups) != len(labels):
        raise DataError(f"{len(labels)} labels but {len(groups)} group ids")
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(groups, return_inverse=True)
    # the rows of each group, ascending (a stable sort of the group index, cut at each group's count)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    majority = np.array([np.bincount(labels[m]).argmax() for m in members])
    split = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        gs = np.flatnonzero(majority == c)
        gs = gs[rng.permutation(len(gs))]
        n_class = int(sum(len(members[g]) for g in gs))
        want = {"test": max(1, round(n_class * test_fraction)), "val": max(1, round(n_class * val_fraction))}
        taken = {"test": 0, "val": 0, "train": 0}
        for k, g in enumerate(gs):
            target = next((s for s in ("test", "val") if taken[s] < want[s]), "train")
            if k == len(gs) - 1 and not taken["train"]:
                target = "train"  # the class's last group goes to train rather than leave train without the class
            split[members[g]] = target
            taken[target] += len(members[g])
    return split

"""Near-duplicate images and the splits they leak across.

Public medical-imaging sets hold copies: BUSI has about 235 duplicated images and lesions filed under two classes
(Pawłowska et al., Data in Brief 2023). A seeded random split then puts one copy in training and the other in test,
and the test score measures recall of the training set.

The check (:func:`near_duplicate_groups`) compares every pair of images by the Pearson correlation of a small
high-pass thumbnail: the grey image averaged to 48 x 48 (``THUMBNAIL``), minus its own 5 x 5 box blur, so the shared
layout of a modality (the dark fan of an ultrasound image, the body outline of a phantom) counts little and the
speckle, edges and marks that an image shares with its copy count most. Pairs at or above ``threshold`` (default
``DEFAULT_THRESHOLD`` = 0.6) are linked, and the linked components are the groups.

How the threshold was chosen (BUSI at 64 px, its BreastMNIST derivative at 28 px, and 1,600 quickstart phantoms):
an image's best-match correlation is bimodal on BUSI (unrelated images mostly below 0.45; copies, re-saved,
re-cropped or with calliper marks added, above 0.5). The groups hardly move with the threshold: 144 groups of 323
images at 0.5, 141 of 316 at 0.6, 136 of 306 at 0.7, with 8 groups whose labels disagree at 0.5 and 0.6. The
phantoms, which are alike by design but hold no copies, give 3 pairs at 0.5 and none at 0.6. A 32 px thumbnail
separated BUSI as well but linked the phantoms into one chain.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from glasszoo.models.errors import ConfigError
from glasszoo.training.caseset import CaseSet

THUMBNAIL = 48
DEFAULT_THRESHOLD = 0.6
_BLOCK = 1024  # rows of the correlation matrix computed at once
_SHOWN = 20  # groups listed in a report


def fingerprints(images: np.ndarray, side: int = THUMBNAIL) -> np.ndarray:
    """The [N, side * side] unit-norm, zero-mean high-pass thumbnails the check correlates (float32).

    A constant image has an all-zero fingerprint, so it correlates 0 with everything (never a duplicate).
    """
    import torch  # heavy: pooling on the CPU
    import torch.nn.functional as F  # heavy: as above

    out = np.empty((len(images), side * side), dtype=np.float32)
    for start in range(0, len(images), _BLOCK):
        x = torch.from_numpy(np.asarray(images[start:start + _BLOCK], dtype=np.float32).mean(axis=1, keepdims=True))
        t = F.adaptive_avg_pool2d(x, side)
        t = t - F.avg_pool2d(F.pad(t, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
        t = t.reshape(len(t), -1).double()
        t = t - t.mean(dim=1, keepdim=True)
        norm = t.norm(dim=1, keepdim=True)
        t = torch.where(norm > 1e-9, t / norm.clamp_min(1e-12), torch.zeros_like(t))
        out[start:start + len(t)] = t.float().numpy()
    return out


def check_threshold(threshold: object) -> float:
    """``threshold`` if it is a correlation a near-duplicate check can use (a number in (0, 1]), else a
    :class:`ConfigError` naming ``data.duplicate_threshold``."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ConfigError(f"data.duplicate_threshold must be a number in (0, 1], got {threshold!r}")
    return float(threshold)


def duplicate_pairs(images: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> list[tuple[int, int, float]]:
    """Every pair ``(i, j, correlation)`` with ``i < j`` whose fingerprints correlate at least ``threshold``."""
    check_threshold(threshold)
    f = fingerprints(images)
    pairs = []
    for start in range(0, len(f), _BLOCK):
        c = f[start:start + _BLOCK] @ f.T
        rows, cols = np.nonzero(c >= threshold - 1e-6)
        for r, j in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if i < j:
                pairs.append((i, j, float(c[r, j])))
    return pairs


def _components(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Union-find: the component id (its smallest member) of each of ``n`` items linked by ``pairs``."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    for i, j in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(n)])


def near_duplicate_groups(images: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> list[np.ndarray]:
    """Groups (sorted row indices, two or more each) of images linked by near-duplicate pairs, in row order."""
    comp = _components(len(images), [(i, j) for i, j, _ in duplicate_pairs(images, threshold)])
    ids, counts = np.unique(comp, return_counts=True)
    return [np.flatnonzero(comp == g) for g in ids[counts > 1]]


def group_ids(n: int, groups: list[np.ndarray], extra: np.ndarray | None = None) -> np.ndarray:
    """One group id per case: the near-duplicate ``groups`` joined with ``extra`` (e.g. a patient id per case):
    cases in the same group or with the same ``extra`` value share an id; every other case is a group of its own."""
    pairs = [(int(g[0]), int(k)) for g in groups for k in g[1:]]
    if extra is not None:
        first: dict[Any, int] = {}
        for i, v in enumerate(np.asarray(extra).tolist()):
            if v in first:
                pairs.append((first[v], i))
            else:
                first[v] = i
    return _components(n, pairs)


def duplicate_report(cs: CaseSet, groups: list[np.ndarray], threshold: float, grouped: bool) -> dict:
    """What ``metrics.json`` records under ``dataset.duplicates`` and ``glasszoo data`` prints: the groups, those
    that cross splits, those whose labels disagree, and the test cases with a near-duplicate in training."""
    cross_split, cross_label = [], []
    test_with_train_copy = 0
    for g in groups:
        splits = {str(s) for s in cs.split[g]}
        labels = {int(v) for v in cs.labels[g]}
        entry = {"case_ids": [str(c) for c in cs.case_ids[g]], "splits": [str(s) for s in cs.split[g]],
                 "labels": [cs.class_names[int(v)] for v in cs.labels[g]]}
        if len(splits) > 1:
            cross_split.append(entry)
        if len(labels) > 1:
            cross_label.append(entry)
        if "train" in splits:
            test_with_train_copy += int((cs.split[g] == "test").sum())
    return {
        "method": f"Pearson correlation of {THUMBNAIL}x{THUMBNAIL} high-pass grey thumbnails",
        "threshold": threshold,
        "grouped_split": grouped,
        "n_groups": len(groups),
        "n_cases_in_groups": int(sum(len(g) for g in groups)),
        "n_groups_across_splits": len(cross_split),
        "n_groups_across_labels": len(cross_label),
        "test_cases_with_train_duplicate": test_with_train_copy,
        "n_test_cases": int((cs.split == "test").sum()),
        "groups_across_splits": cross_split[:_SHOWN],
        "groups_across_labels": cross_label,
        "largest_group": int(max((len(g) for g in groups), default=0)),
    }


def format_duplicate_report(rep: dict) -> str:
    """The report as lines of text for the terminal (``glasszoo data``)."""
    lines = [f"near-duplicates ({rep['method']} >= {rep['threshold']}): {rep['n_groups']} groups holding "
             f"{rep['n_cases_in_groups']} cases (largest {rep['largest_group']})",
             f"  groups across splits: {rep['n_groups_across_splits']}; test cases with a near-duplicate in training: "
             f"{rep['test_cases_with_train_duplicate']} of {rep['n_test_cases']}"
             + ("" if rep["grouped_split"] else " (data.group_duplicates: true keeps each group in one split)"),
             f"  groups whose labels disagree: {rep['n_groups_across_labels']}"]
    for title, key in (("across labels", "groups_across_labels"), ("across splits", "groups_across_splits")):
        for g in rep[key]:
            members = ", ".join(f"{c} ({lab}, {s})" for c, lab, s in zip(g["case_ids"], g["labels"], g["splits"]))
            lines.append(f"  {title}: {members}")
    shown = len(rep["groups_across_splits"])
    if rep["n_groups_across_splits"] > shown:
        lines.append(f"  ... and {rep['n_groups_across_splits'] - shown} more groups across splits")
    return "\n".join(lines)


"""Classification metrics with stratified bootstrap intervals, and heatmap localisation metrics.

Every classification metric is computed from per-case weights (how often each case occurs in a sample), so the
point estimate (all weights 1) and all bootstrap resamples (weights = draw counts) share one vectorised code path:
the confusion matrices of all resamples are one matrix product, and each ROC AUC is a tie-aware rank statistic over
the cases sorted once by score. A metric that is undefined on the given cases is ``nan``, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from glasszoo.models.errors import DataError

METRIC_NAMES: tuple[str, ...] = ("auc", "accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity")

# Upper bound on resamples x cases held in one weight matrix (float64), i.e. about 32 MB.
_CHUNK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------------


def _check_inputs(y_true: np.ndarray, proba: np.ndarray, positive_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and probabilities; return int64 labels [N] and float64 probabilities [N, K]."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] < 2:
        raise DataError(f"proba must be [N, K] with K >= 2 classes, got shape {proba.shape}")
    if not np.all(np.isfinite(proba)):
        raise DataError("proba contains NaN or infinite values")
    y = np.asarray(y_true)
    if y.ndim != 1 or y.shape[0] != proba.shape[0]:
        raise DataError(f"y_true must be [N] with N = {proba.shape[0]} (rows of proba), got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer) and y.dtype != bool:
        if not np.issubdtype(y.dtype, np.number) or not np.all(np.mod(y, 1) == 0):
            raise DataError(f"y_true must hold integer class labels, got dtype {y.dtype}")
    y = y.astype(np.int64)
    n_classes = proba.shape[1]
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"y_true labels must lie in [0, {n_classes - 1}] (columns of proba), got {np.unique(y)}")
    if not 0 <= positive_class < n_classes:
        raise DataError(f"positive_class must lie in [0, {n_classes - 1}], got {positive_class}")
    return y, proba


# --------------------------------------------------------------------------------------------------------------------
# Weighted (resample-batched) metric core
# --------------------------------------------------------------------------------------------------------------------


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with ``nan`` wherever ``den == 0``."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


class _AucRanker:
    """Tie-aware weighted ROC AUC of one score column, for many weight vectors at once.

    The cases are sorted once by score and grouped into runs of tied scores. For a weight matrix W [B, N] the AUC of
    resample b is ``sum_g P[b, g] * (Nbelow[b, g] + Nsame[b, g] / 2) / (n_pos[b] * n_neg[b])``, where P and Nsame are
    the positive and negative weight in tie group g and Nbelow the negative weight in lower groups: the
    Mann-Whitney statistic with mid-ranks, identical to the rank-based AUC of the resampled cases.
    """

    def __init__(self, scores: np.ndarray, positive: np.ndarray) -> None:
        self.order = np.argsort(scores, kind="stable")
        sorted_scores = scores[self.order]
        self.starts = np.concatenate(([0], np.flatnonzero(np.diff(sorted_scores)) + 1)) if scores.size else None
        self.positive = positive[self.order]

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        if self.starts is None:
            return np.full(weights.shape[0], np.nan)
        w = weights[:, self.order]
        pos = np.add.reduceat(np.where(self.positive, w, 0.0), self.starts, axis=1)
        neg = np.add.reduceat(np.where(self.positive, 0.0, w), self.starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        num = np.sum(pos * (below + 0.5 * neg), axis=1)
        return _safe_div(num, pos.sum(axis=1) * neg.sum(axis=1))


class _WeightedMetrics:
    """Precomputed per-case quantities so that the six metrics follow from a weight matrix W [B, N]."""

    def __init__(self, y: np.ndarray, proba: np.ndarray, positive_class: int) -> None:
        self.n_classes = k = proba.shape[1]
        self.positive_class = positive_class
        pred = np.argmax(proba, axis=1)
        # One-hot of the (true, predicted) cell of each case: W @ onehot gives all confusion matrices at once.
        self.cell_onehot = np.zeros((y.size, k * k))
        self.cell_onehot[np.arange(y.size), y * k + pred] = 1.0
        auc_classes = [positive_class] if k == 2 else list(range(k))
        self.rankers = {c: _AucRanker(proba[:, c], y == c) for c in auc_classes}

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Return each metric as an array [B], one value per weight vector (row of ``weights``)."""
        k = self.n_classes
        cm = (weights @ self.cell_onehot).reshape(-1, k, k)  # rows: true class, columns: predicted class
        tp = np.diagonal(cm, axis1=1, axis2=2)
        support = cm.sum(axis=2)
        predicted = cm.sum(axis=1)
        total = support.sum(axis=1)
        fn = support - tp
        fp = predicted - tp
        tn = total[:, None] - tp - fn - fp
        recall = _safe_div(tp, support)
        specificity = _safe_div(tn, tn + fp)
        f1 = _safe_div(2.0 * tp, 2.0 * tp + fp + fn)
        out = {"accuracy": _safe_div(tp.sum(axis=1), total)}
        if k == 2:
            c = self.positive_class
            out["auc"] = self.rankers[c](weights)
            out["sensitivity"] = recall[:, c]
            out["specificity"] = specificity[:, c]
            out["f1"] = f1[:, c]
            out["balanced_accuracy"] = 0.5 * (recall[:, c] + specificity[:, c])
        else:
            present = support > 0
            n_present = present.sum(axis=1)
            valid = n_present >= 2

            def macro(per_class: np.ndarray) -> np.ndarray:
                num = np.where(present, per_class, 0.0).sum(axis=1)
                return np.where(valid, _safe_div(num, n_present), np.nan)

            auc = np.stack([self.rankers[c](weights) for c in range(k)], axis=1)
            out["auc"] = macro(auc)
            out["sensitivity"] = macro(recall)
            out["balanced_accuracy"] = out["sensitivity"].copy()
            out["specificity"] = macro(specificity)
            defined = ~np.isnan(f1)
            out["f1"] = _safe_div(np.where(defined, f1, 0.0).sum(axis=1), defined.sum(axis=1))
        return {name: out[name] for name in METRIC_NAMES}


def task_metrics(y_true: np.ndarray, proba: np.ndarray, positive_class: int = 1) -> dict[str, float]:
    """Compute AUC, accuracy, balanced accuracy, F1, sensitivity and specificity; predictions are ``argmax(proba)``.

    Binary (K = 2): ``positive_class`` is the positive class of AUC (score ``proba[:, positive_class]``), F1,
    sensitivity (recall) and specificity; balanced accuracy is the mean of sensitivity and specificity.
    Multi-class (K > 2, ``positive_class`` unused): one-vs-rest macro averages over the classes present in
    ``y_true`` of ROC AUC, recall (= sensitivity = balanced accuracy) and specificity TN / (TN + FP), all ``nan``
    when fewer than two classes are present; F1 is the macro F1 over classes occurring in ``y_true`` or the
    predictions (as in scikit-learn).

    Args:
        y_true: [N] integer labels in ``[0, K)``.
        proba: [N, K] class probabilities (any scores whose argmax is the prediction).
        positive_class: positive class for binary tasks.

    Returns:
        Dict with keys ``auc, accuracy, balanced_accuracy, f1, sensitivity, specificity``; an undefined metric
        (e.g. AUC with a single class present) is ``nan``.

    Raises:
        DataError: on malformed shapes, labels or non-finite probabilities.
    """
    y, proba = _check_inputs(y_true, proba, positive_class)
    values = _WeightedMetrics(y, proba, positive_class)(np.ones((1, y.size)))
    return {name: float(v[0]) for name, v in values.items()}


# --------------------------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------------------------


def _as_rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def stratified_bootstrap_indices(y_true: np.ndarray, n_boot: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Draw stratified bootstrap resamples: within each class, as many cases with replacement as it has.

    Args:
        y_true: [N] class labels.
        n_boot: number of resamples.
        seed: seed or generator.

    Returns:
        int64 [n_boot, N] case indices; every row has exactly the class counts of ``y_true`` (cases grouped by class).
    """
    rng = _as_rng(seed)
    y = np.asarray(y_true)
    blocks = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        blocks.append(members[rng.integers(0, members.size, size=(n_boot, members.size))])
    if not blocks:
        return np.zeros((n_boot, 0), dtype=np.int64)
    return np.concatenate(blocks, axis=1).astype(np.int64, copy=False)


def _resample_weights(indices: np.ndarray, n_cases: int) -> np.ndarray:
    """Turn resample indices [B, M] into per-case draw counts [B, n_cases] (float64)."""
    n_boot = indices.shape[0]
    flat = (indices + n_cases * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n_cases).reshape(n_boot, n_cases).astype(np.float64)


def _chunks(n_boot: int, n_cases: int) -> Iterator[int]:
    """Yield chunk sizes summing to ``n_boot`` that keep each weight matrix below ``_CHUNK_ELEMENTS``."""
    size = max(1, _CHUNK_ELEMENTS // max(n_cases, 1))
    for start in range(0, n_boot, size):
        yield min(size, n_boot - start)


def _resample_metrics(
    y: np.ndarray, proba: np.ndarray, positive_class: int, indices: np.ndarray
) -> dict[str, np.ndarray]:
    """Metrics of each resample given by the rows of ``indices`` [B, M] (validated inputs)."""
    compute = _WeightedMetrics(y, proba, positive_class)
    return compute(_resample_weights(indices, y.size))


def _percentile_ci(samples: np.ndarray, level: float) -> list[float]:
    """Percentile interval of the non-NaN samples; ``[nan, nan]`` when none are left."""
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return [math.nan, math.nan]
    alpha = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(samples, [alpha, 100.0 - alpha])
    return [float(lo), float(hi)]


def _check_boot_args(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise DataError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise DataError(f"level must lie in (0, 1), got {level}")


def bootstrap_ci(
    y_true: np.ndarray,
    proba: np.ndarray,
    positive_class: int = 1,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict]:
    """Point estimates and stratified-bootstrap percentile intervals of the six :func:`task_metrics`.

    Each resample keeps the class counts of ``y_true`` (see :func:`stratified_bootstrap_indices`), so the AUC is
    defined in every resample whenever it is defined on all cases. NaN resample values are ignored.

    Args:
        y_true: [N] integer labels.
        proba: [N, K] class probabilities.
        positive_class: positive class for binary tasks.
        n_boot: number of resamples.
        level: confidence level of the percentile interval.
        seed: random seed; equal seeds give equal intervals.

    Returns:
        ``{metric: {"value": estimate_on_all_cases, "ci": [lo, hi]}}``; ci is ``[nan, nan]`` if every resample is nan.
    """
    _check_boot_args(n_boot, level)
    y, proba = _check_inputs(y_true, proba, positive_class)
    compute = _WeightedMetrics(y, proba, positive_class)
    point = compute(np.ones((1, y.size)))
    rng = np.random.default_rng(seed)
    parts = [
        compute(_resample_weights(stratified_bootstrap_indices(y, size, rng), y.size))
        for size in _chunks(n_boot, y.size)
    ]
    out = {}
    for name in METRIC_NAMES:
        samples = np.concatenate([p[name] for p in parts])
        out[name] = {"value": float(point[name][0]), "ci": _percentile_ci(samples, level)}
    return out


def bootstrap_samples(y_true: np.ndarray, proba: np.ndarray, positive_class: int = 1, n_boot: int = 1000,
                      seed: int | np.random.Generator = 0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The six :func:`task_metrics` on all cases and on each of ``n_boot`` stratified bootstrap resamples (the
    resamples of :func:`bootstrap_ci`), for statistics of several groups of cases (e.g. a difference between
    subgroups, ``glasszoo.evaluation.subgroups``).

    Returns:
        ``(point, samples)``: ``{metric: value}`` and ``{metric: float [n_boot]}`` (nan where a resample leaves a
        metric undefined).
    """
    if n_boot < 1:
        raise DataError(f"n_boot must be >= 1, got {n_boot}")
    y, proba = _check_inputs(y_true, proba, positive_class)
    compute = _WeightedMetrics(y, proba, positive_class)
    point = {name: float(v[0]) for name, v in compute(np.ones((1, y.size))).items()}
    rng = _as_rng(seed)
    parts = [compute(_resample_weights(stratified_bootstrap_indices(y, size, rng), y.size))
             for size in _chunks(n_boot, y.size)]
    return point, {name: np.concatenate([p[name] for p in parts]) for name in METRIC_NAMES}


def percentile_ci(samples: np.ndarray, level: float) -> list[float]:
    """Percentile interval of the non-NaN ``samples`` at ``level``; ``[nan, nan]`` when none are left."""
    return _percentile_ci(np.asarray(samples, dtype=np.float64), level)


def quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Cohen's kappa with quadratic weights for ordered classes 0..K-1 (Cohen, Psychol. Bull. 1968): one minus the
    ratio of the observed to the chance-expected sum of squared grade distances ``(i - j)^2 / (K - 1)^2``. 1 is
    perfect agreement, 0 chance; a grade-4 case called grade 3 costs far less than one called grade 0.
    NaN when the chance-expected disagreement is 0 (one grade only)."""
    y, p = np.asarray(y_true, dtype=np.int64).ravel(), np.asarray(y_pred, dtype=np.int64).ravel()
    if y.shape != p.shape:
        raise DataError(f"{y.size} labels but {p.size} predictions")
    if y.size and (min(y.min(), p.min()) < 0 or max(y.max(), p.max()) >= n_classes):
        raise DataError(f"grades must lie in 0..{n_classes - 1}")
    observed = np.zeros((n_classes, n_classes))
    np.add.at(observed, (y, p), 1.0)
    grades = np.arange(n_classes)
    weights = (grades[:, None] - grades[None, :]) ** 2 / max(1, n_classes - 1) ** 2
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / max(1, y.size)
    chance = float((weights * expected).sum())
    return math.nan if chance == 0 else 1.0 - float((weights * observed).sum()) / chance


def kappa_ci(y_true: np.ndarray, proba: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """:func:`quadratic_weighted_kappa` of the most probable grade with a stratified-bootstrap percentile interval
    (the resampling of :func:`bootstrap_ci`): ``{"value", "ci"}``."""
    _check_boot_args(n_boot, level)
    y = np.asarray(y_true, dtype=np.int64).ravel()
    k = int(np.asarray(proba).shape[1])
    pred = np.asarray(proba).argmax(axis=1)
    idx = stratified_bootstrap_indices(y, n_boot, seed)
    samples = np.array([quadratic_weighted_kappa(y[i], pred[i], k) for i in idx])
    return {"value": quadratic_weighted_kappa(y, pred, k), "ci": _percentile_ci(samples, level)}


def mean_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean over cases with a plain (unstratified) bootstrap percentile interval; NaN values are dropped first.

    Args:
        values: per-case values (any shape, flattened).
        n_boot: number of resamples.
        level: confidence level.
        seed: random seed.

    Returns:
        ``{"value": mean, "ci": [lo, hi]}``; all ``nan`` when no non-NaN value is left.
    """
    _check_boot_args(n_boot, level)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"value": math.nan, "ci": [math.nan, math.nan]}
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [v[rng.integers(0, v.size, size=(size, v.size))].mean(axis=1) for size in _chunks(n_boot, v.size)]
    )
    return {"value": float(v.mean()), "ci": _percentile_ci(means, level)}


def format_value(d: dict, digits: int = 3) -> str:
    """Format ``{"value", "ci"}`` as e.g. ``0.912 [0.871, 0.948]`` (nan shown as ``nan``)."""
    lo, hi = d["ci"]
    return f"{d['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


# --------------------------------------------------------------------------------------------------------------------
# Localisation of heatmaps against binary masks
# --------------------------------------------------------------------------------------------------------------------


def _check_maps(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate [N, H, W] maps and masks; return maps [N, H*W] float64 and masks [N, H*W] bool."""
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise DataError(f"maps and masks must both be [N, H, W] of equal shape, got {maps.shape} and {masks.shape}")
    if not np.all(np.isfinite(maps)):
        raise DataError("maps contain NaN or infinite values")
    n = maps.shape[0]
    return maps.reshape(n, -1), (masks != 0).reshape(n, -1)


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Pointing game: does the most relevant pixel of each map fall inside its mask?

    Ties: a case is a hit if any of the pixels sharing the maximum value lies inside the mask. Consequently a
    constant map (e.g. all zeros) is a hit whenever the mask is non-empty; check :func:`relevance_mass_in_mask`
    or the maps themselves for such degenerate explanations.

    Args:
        maps: [N, H, W] relevance maps (larger = more relevant).
        masks: [N, H, W] binary masks (non-zero = inside).

    Returns:
        float [N]: 1.0 hit, 0.0 miss, ``nan`` where the mask is empty.
    """
    flat, inside = _check_maps(maps, masks)
    if flat.shape[1] == 0:
        return np.full(flat.shape[0], np.nan)
    at_max = flat == flat.max(axis=1, keepdims=True)
    hit = np.any(at_max & inside, axis=1).astype(np.float64)
    return np.where(inside.any(axis=1), hit, np.nan)


def relevance_mass_in_mask(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of positive relevance inside the mask: sum(max(map, 0) in mask) / sum(max(map, 0)).

    Negative relevance is ignored.

    Args:
        maps: [N, H, W] relevance maps.
        masks: [N, H, W] binary masks (non-zero = inside).

    Returns:
        float [N] in [0, 1]; ``nan`` where the mask is empty or the map has no positive relevance.
    """
    flat, inside = _check_maps(maps, masks)
    positive = np.clip(flat, 0.0, None)
    share = _safe_div(np.where(inside, positive, 0.0).sum(axis=1), positive.sum(axis=1))
    return np.where(inside.any(axis=1), share, np.nan)

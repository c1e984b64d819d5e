"""Paired significance tests, multiple-comparison corrections, calibration and Pareto fronts.

These support the interpretability-accuracy trade-off report, where every model is compared with the black box on
the same test cases:

* :func:`delong_test` / :func:`delong_test_multiclass`: paired comparison of two correlated ROC AUCs
  (DeLong, DeLong & Clarke-Pearson, Biometrics 1988), computed with the midrank algorithm of Sun & Xu
  (IEEE Signal Processing Letters 2014).
* :func:`mcnemar_test`: paired comparison of two accuracies (McNemar, Psychometrika 1947).
* :func:`holm` and :func:`benjamini_hochberg`: adjusted p-values (Holm, Scand. J. Statist. 1979; Benjamini &
  Hochberg, JRSS-B 1995).
* :func:`calibration`: reliability-diagram bins, expected and maximum calibration error (Guo et al., ICML 2017) and
  the Brier score (Brier, Monthly Weather Review 1950).
* :func:`pareto_front`: non-dominated models in a two-objective plane.

A statistic that is undefined on the given cases is ``nan``, never an exception; malformed input raises
:class:`~glasszoo.models.errors.DataError` naming the argument at fault.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from glasszoo.evaluation.metrics import _check_inputs
from glasszoo.models.errors import DataError

# Below this many discordant pairs (b + c) McNemar's test uses the exact binomial distribution by default.
_MCNEMAR_EXACT_BELOW = 25


# --------------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------------


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise DataError(f"level must lie in (0, 1), got {level}")


def _check_binary(values: np.ndarray, name: str) -> np.ndarray:
    """Return ``values`` as a bool array [N], raising unless it is 1-D and holds only 0/1 (or bools)."""
    v = np.asarray(values)
    if v.ndim != 1:
        raise DataError(f"{name} must be a 1-D array [N], got shape {v.shape}")
    if v.dtype == bool:
        return v
    if not np.issubdtype(v.dtype, np.number):
        raise DataError(f"{name} must hold 0/1 values, got dtype {v.dtype}")
    if v.size and not np.all((v == 0) | (v == 1)):
        bad = np.unique(v[(v != 0) & (v != 1)])[:5]
        raise DataError(f"{name} must hold only 0/1 values, got e.g. {bad.tolist()}")
    return v == 1


def _check_scores(scores: np.ndarray, name: str, n: int) -> np.ndarray:
    """Return finite float64 scores [n]."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.shape[0] != n:
        raise DataError(f"{name} must be [N] with N = {n} (length of y_true), got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise DataError(f"{name} contains NaN or infinite values")
    return s


def _check_proba(y_true: np.ndarray, proba: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`glasszoo.evaluation.metrics._check_inputs` with the argument name prefixed to any error."""
    try:
        return _check_inputs(y_true, proba, 0)
    except DataError as err:
        raise DataError(f"{name}: {err}") from None


# --------------------------------------------------------------------------------------------------------------------
# DeLong test of correlated ROC AUCs
# --------------------------------------------------------------------------------------------------------------------


def _placement_numerators(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Midrank placement counts of Sun & Xu (2014) for several score rows over the same cases.

    With ``Tz`` the midranks of all cases, ``Tx`` those of the positives among themselves and ``Ty`` those of the
    negatives among themselves, ``Tz - Tx`` at a positive is the number of negatives scored below it plus half the
    number tied with it, and ``Tz - Ty`` at a negative is the number of positives below it plus half the ties.
    The DeLong structural components are then ``V10 = (Tz - Tx) / n`` (positives) and ``V01 = 1 - (Tz - Ty) / m``
    (negatives). The counts are half-integers and therefore exact in float64.

    Args:
        scores: [R, N] scores of R classifiers.
        positive: [N] bool, True for the m positives (the other n cases are negatives).

    Returns:
        ``(below_pos [R, m], below_neg [R, n])``: ``Tz - Tx`` at the positives and ``Tz - Ty`` at the negatives.
    """
    tz = sps.rankdata(scores, method="average", axis=1)
    tx = sps.rankdata(scores[:, positive], method="average", axis=1)
    ty = sps.rankdata(scores[:, ~positive], method="average", axis=1)
    return tz[:, positive] - tx, tz[:, ~positive] - ty


def _placements(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs [R] of the score rows [R, N] and their placement values [R, N]: V10 at positives, V01 at negatives."""
    m = int(positive.sum())
    n = positive.size - m
    below_pos, below_neg = _placement_numerators(scores, positive)
    place = np.empty_like(scores)
    place[:, positive] = below_pos / n
    place[:, ~positive] = (m - below_neg) / m
    return below_pos.sum(axis=1) / (m * n), place


def _sample_var(x: np.ndarray) -> float:
    """Unbiased (ddof = 1) sample variance; ``nan`` for fewer than two values."""
    return float(np.var(x, ddof=1)) if x.size >= 2 else math.nan


def _paired_result(auc_a: float, auc_b: float, var: float, identical: bool, level: float) -> dict:
    """Assemble the DeLong result from the two AUCs and the variance of their difference.

    ``identical`` means that the two classifiers have the same placement value at every case (e.g. identical scores),
    so the AUC difference is exactly zero in every resample: variance 0, z 0 and p 1 by convention. If the variance
    is zero while the AUCs differ (the placement differences are constant and non-zero), z is +-inf and p is 0.
    """
    diff = auc_a - auc_b
    out = {"auc_a": auc_a, "auc_b": auc_b, "diff": diff, "se": math.nan, "z": math.nan, "p_value": math.nan}
    out["ci"] = [math.nan, math.nan]
    if math.isnan(diff):
        out["p_value"] = 1.0 if identical else math.nan
        return out
    if identical:
        var = 0.0
    if math.isnan(var):
        return out
    se = math.sqrt(max(var, 0.0))
    if se == 0.0:
        z = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    else:
        z = diff / se
    half = float(sps.norm.ppf(0.5 + level / 2.0)) * se
    out.update(se=se, z=z, p_value=float(min(1.0, 2.0 * sps.norm.sf(abs(z)))), ci=[diff - half, diff + half])
    return out


def delong_test(y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, level: float = 0.95) -> dict:
    """Paired DeLong test of the ROC AUCs of two classifiers scored on the same binary cases.

    DeLong, DeLong & Clarke-Pearson (Biometrics 44:837-845, 1988): with m positives X and n negatives Y, the AUC of
    a score is the Mann-Whitney statistic ``mean_ij psi(X_i, Y_j)`` (``psi`` = 1 if X > Y, 1/2 if tied, 0 otherwise),
    with structural components ``V10(X_i) = mean_j psi(X_i, Y_j)`` and ``V01(Y_j) = mean_i psi(X_i, Y_j)``. The
    variance of ``AUC_a - AUC_b`` is estimated as ``S10 / m + S01 / n``, where S10 (S01) is the sample variance
    (ddof = 1) of ``V10_a - V10_b`` over the positives (of ``V01_a - V01_b`` over the negatives), i.e.
    ``[1, -1] S [1, -1]^T`` of the 1988 paper. The components come from midranks in O(N log N) as in Sun & Xu
    (IEEE Signal Processing Letters 21:1389-1393, 2014), so tied scores count 1/2 as in the rank-based AUC.

    ``z = diff / se`` is referred to the standard normal (two-sided p); the interval is ``diff +- z_{(1+level)/2} se``.

    Undefined cases:

    * a single class in ``y_true``: AUCs, diff, se, z and ci are ``nan``; ``p_value`` is 1.0 when the two score
      vectors are identical and ``nan`` otherwise;
    * fewer than two positives or negatives: the variance is undefined (se, z, p, ci ``nan``) unless the
      placement values are identical (below);
    * identical placement values at every case (identical scores, or e.g. two perfectly separating scores): the
      difference is exactly 0 with zero variance, reported as se 0, z 0, p 1 and ci ``[0, 0]``. This is the only way
      the variance can be zero with equal AUCs. If the variance is zero with unequal AUCs, z is +-inf and p is 0.

    Args:
        y_true: [N] binary labels (0/1 or bool); 1 is the positive class, larger scores favour it.
        score_a: [N] scores of classifier a (e.g. ``proba[:, 1]``).
        score_b: [N] scores of classifier b on the same cases.
        level: confidence level of the interval of the difference.

    Returns:
        ``{"auc_a", "auc_b", "diff" (auc_a - auc_b), "se", "z", "p_value", "ci": [lo, hi]}`` as Python floats.

    Raises:
        DataError: on non-binary labels, mismatched shapes, non-finite scores or a level outside (0, 1).
    """
    _check_level(level)
    positive = _check_binary(y_true, "y_true")
    a = _check_scores(score_a, "score_a", positive.size)
    b = _check_scores(score_b, "score_b", positive.size)
    m = int(positive.sum())
    n = positive.size - m
    if m == 0 or n == 0:
        return _paired_result(math.nan, math.nan, math.nan, bool(np.array_equal(a, b)), level)
    below_pos, below_neg = _placement_numerators(np.stack([a, b]), positive)
    auc = below_pos.sum(axis=1) / (m * n)
    # Differences of the half-integer counts are exact, so identical placements give exactly zero differences.
    d10 = (below_pos[0] - below_pos[1]) / n
    d01 = (below_neg[1] - below_neg[0]) / m
    identical = not (np.any(d10) or np.any(d01))
    var = _sample_var(d10) / m + _sample_var(d01) / n
    return _paired_result(float(auc[0]), float(auc[1]), var, identical, level)


def delong_test_multiclass(y_true: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray, level: float = 0.95) -> dict:
    """Paired DeLong-type test of two macro one-vs-rest ROC AUCs on the same multi-class cases.

    The macro AUC is the mean over the P classes present in ``y_true`` of the one-vs-rest AUC of ``proba[:, k]``
    (as in :func:`glasszoo.evaluation.metrics.task_metrics`). Its paired difference
    ``D = (1/P) sum_k (AUC_a,k - AUC_b,k)`` is tested with a variance built from the same structural components
    (placement values) as DeLong et al. (1988), propagated through the average:

    Each one-vs-rest AUC is a two-sample U-statistic whose first-order (Hajek) projection is
    ``AUC_k - theta_k ~ (1/m_k) sum_{i in class k} (V10_k(i) - theta_k) + (1/n_k) sum_{j not in k} (V01_k(j) -
    theta_k)``. A case c of true class l is therefore a positive in problem l and a negative in every other problem,
    and contributes to D through

        ``g(c) = (1/P) [ Delta10_l(c) / m_l + sum_{k != l} Delta01_k(c) / n_k ]``,

    with ``Delta = V_a - V_b`` the placement difference of the two classifiers. Treating the class counts as fixed
    (cases of each class are an i.i.d. sample of that class, as DeLong's test treats the positive and negative
    counts), the variance is estimated as ``Var(D) = sum_l m_l * s_l^2(g)``, where ``s_l^2`` is the sample variance
    (ddof = 1) of g over the cases of class l. This accounts for the correlation between the per-class AUCs (the same
    case appears in every problem) and between the two classifiers; for a single one-vs-rest problem it reduces
    exactly to DeLong's ``S10 / m + S01 / n``, and with K = 2 complementary probability columns it equals
    :func:`delong_test` on ``proba[:, 1]``. ``z = D / se`` is referred to the standard normal.

    The per-class binary DeLong tests (plain :func:`delong_test` of ``y_true == k`` on ``proba[:, k]``, unadjusted
    p-values; apply :func:`holm` if testing classes separately) are returned as well.

    Undefined cases follow :func:`delong_test`: fewer than two classes present gives ``nan`` (p 1.0 if the
    probabilities are identical); a present class with a single case leaves the variance undefined unless the
    placement values are identical; identical placements give se 0, z 0, p 1.

    Args:
        y_true: [N] integer labels in ``[0, K)``.
        proba_a: [N, K] class probabilities (or scores) of classifier a.
        proba_b: [N, K] class probabilities of classifier b on the same cases.
        level: confidence level of the interval of the difference.

    Returns:
        ``{"auc_a", "auc_b" (macro AUCs), "diff", "se", "z", "p_value", "ci", "classes": [present classes],
        "per_class": [delong_test result of each present class]}``.

    Raises:
        DataError: on mismatched shapes, labels outside ``[0, K)``, non-finite values or a bad level.
    """
    _check_level(level)
    y, pa = _check_proba(y_true, proba_a, "proba_a")
    _, pb = _check_proba(y_true, proba_b, "proba_b")
    if pa.shape != pb.shape:
        raise DataError(f"proba_a and proba_b must have the same shape, got {pa.shape} and {pb.shape}")
    classes, counts = np.unique(y, return_counts=True)
    identical_all = bool(np.array_equal(pa, pb))
    per_class = [delong_test(y == k, pa[:, k], pb[:, k], level) for k in classes]
    if classes.size < 2:
        out = _paired_result(math.nan, math.nan, math.nan, identical_all, level)
        return {**out, "classes": classes.tolist(), "per_class": per_class}
    n_total = y.size
    g = np.zeros(n_total)
    auc = np.zeros(2)
    identical = True
    for k, m_k in zip(classes, counts, strict=True):
        positive = y == k
        auc_k, place = _placements(np.stack([pa[:, k], pb[:, k]]), positive)
        auc += auc_k
        delta = place[0] - place[1]
        identical = identical and not np.any(delta)
        g += np.where(positive, delta / m_k, delta / (n_total - m_k))
    auc /= classes.size
    g /= classes.size
    var = float(sum(m_k * _sample_var(g[y == k]) for k, m_k in zip(classes, counts, strict=True)))
    out = _paired_result(float(auc[0]), float(auc[1]), var, identical, level)
    return {**out, "classes": classes.tolist(), "per_class": per_class}


# --------------------------------------------------------------------------------------------------------------------
# McNemar test of paired accuracies
# --------------------------------------------------------------------------------------------------------------------


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray, exact: bool | None = None) -> dict:
    """McNemar's test (Psychometrika 12:153-157, 1947) of two classifiers' accuracies on the same cases.

    Only discordant cases matter: ``b`` = a right and b wrong, ``c`` = a wrong and b right. Under H0 (equal
    accuracy) b ~ Binomial(b + c, 1/2) given b + c.

    * exact: two-sided ``p = min(1, 2 * BinomCDF(min(b, c); b + c, 1/2))``; ``statistic`` is ``min(b, c)``.
    * chi2_cc: Edwards' continuity-corrected ``statistic = max(|b - c| - 1, 0)^2 / (b + c)`` on 1 degree of freedom;
      the correction is clipped at zero so that it never overshoots (b = c gives statistic 0 and p 1).

    ``exact=None`` uses the exact test when ``b + c < 25`` and chi2_cc otherwise. ``b + c == 0`` gives p 1.

    Args:
        correct_a: [N] bool (or 0/1): classifier a is right on case i.
        correct_b: [N] bool (or 0/1): classifier b is right on case i.
        exact: force the exact (True) or chi-square (False) version; None chooses as above.

    Returns:
        ``{"b", "c" (ints), "statistic", "p_value", "method": "exact" | "chi2_cc", "diff_accuracy"}``, where
        ``diff_accuracy = acc_a - acc_b = (b - c) / N`` (``nan`` when N = 0).

    Raises:
        DataError: on non-binary values or mismatched shapes.
    """
    ra = _check_binary(correct_a, "correct_a")
    rb = _check_binary(correct_b, "correct_b")
    if ra.shape != rb.shape:
        raise DataError(f"correct_a and correct_b must have the same shape, got {ra.shape} and {rb.shape}")
    b = int(np.sum(ra & ~rb))
    c = int(np.sum(~ra & rb))
    n_disc = b + c
    use_exact = n_disc < _MCNEMAR_EXACT_BELOW if exact is None else bool(exact)
    if use_exact:
        statistic = float(min(b, c))
        p = 1.0 if n_disc == 0 else min(1.0, 2.0 * float(sps.binom.cdf(min(b, c), n_disc, 0.5)))
    else:
        statistic = max(abs(b - c) - 1, 0) ** 2 / n_disc if n_disc else 0.0
        p = 1.0 if n_disc == 0 else float(sps.chi2.sf(statistic, 1))
    diff = (b - c) / ra.size if ra.size else math.nan
    return {
        "b": b,
        "c": c,
        "statistic": float(statistic),
        "p_value": p,
        "method": "exact" if use_exact else "chi2_cc",
        "diff_accuracy": diff,
    }


# --------------------------------------------------------------------------------------------------------------------
# Multiple comparisons
# --------------------------------------------------------------------------------------------------------------------


def _check_p_values(p_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the p-values as float64 (flattened) and the mask of non-NaN entries; raise outside [0, 1]."""
    p = np.asarray(p_values, dtype=np.float64)
    flat = p.ravel()
    valid = ~np.isnan(flat)
    bad = flat[valid][(flat[valid] < 0.0) | (flat[valid] > 1.0)]
    if bad.size:
        raise DataError(f"p_values must lie in [0, 1] (or be NaN), got e.g. {bad[:5].tolist()}")
    return flat, valid


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm, Scand. J. Statist. 6:65-70, 1979).

    With the m non-NaN p-values sorted ascending, ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))``; rejecting
    where ``p_adj <= alpha`` controls the family-wise error rate at alpha. NaN entries stay NaN and do not count in m.

    Args:
        p_values: p-values of any shape, in [0, 1] or NaN.

    Returns:
        float64 array of the input's shape with the adjusted p-values, in the original order.

    Raises:
        DataError: on p-values outside [0, 1].
    """
    return _adjusted(p_values, lambda p, m: np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p)))


def _adjusted(p_values: np.ndarray, adjust) -> np.ndarray:
    """Apply ``adjust(sorted non-NaN p-values, m)`` and put the adjusted values back in the input's order/shape."""
    flat, valid = _check_p_values(p_values)
    out = np.full(flat.shape, np.nan)
    p = flat[valid]
    order = np.argsort(p, kind="stable")
    tmp = np.empty(p.size)
    tmp[order] = adjust(p[order], p.size)
    out[valid] = tmp
    return out.reshape(np.shape(p_values))


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (q-values; Benjamini & Hochberg, JRSS-B 57:289-300, 1995).

    With the m non-NaN p-values sorted ascending, ``p_adj(i) = min_{j >= i} min(1, m p(j) / j)``; rejecting where
    ``p_adj <= q`` controls the false discovery rate at q for independent (or positively dependent) tests. NaN
    entries stay NaN and do not count in m.

    Args:
        p_values: p-values of any shape, in [0, 1] or NaN.

    Returns:
        float64 array of the input's shape with the adjusted p-values, in the original order.

    Raises:
        DataError: on p-values outside [0, 1].
    """
    def step_up(p: np.ndarray, m: int) -> np.ndarray:
        return np.minimum.accumulate(np.minimum(1.0, m * p / np.arange(1, m + 1))[::-1])[::-1]

    return _adjusted(p_values, step_up)


# --------------------------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------------------------


def calibration(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10, positive_class: int = 1) -> dict:
    """Reliability-diagram data, expected / maximum calibration error and Brier score.

    Binary (K = 2, ``mode = "binary"``): the confidence is ``proba[:, positive_class]`` and the observed frequency is
    the fraction of cases of ``positive_class`` in each bin; the Brier score (Brier 1950) is
    ``mean_i (p_i - 1[y_i = positive_class])^2``.

    Multi-class (K > 2, ``mode = "top_label"``, ``positive_class`` unused): the confidence is the top-label
    probability ``max_k proba[i, k]`` and the observed frequency is the fraction of cases whose top label
    (``argmax``, first on ties) is correct, i.e. the reliability diagram of Guo et al. (ICML 2017); the Brier score is
    the multi-class one, ``mean_i sum_k (proba[i, k] - 1[y_i = k])^2`` (in [0, 2]).

    Bins are ``n_bins`` equal-width intervals ``[i / n_bins, (i + 1) / n_bins)`` of [0, 1], the last one closed.
    ``ece = sum_b (n_b / N) |freq_b - conf_b|`` and ``mce = max_b |freq_b - conf_b|`` over non-empty bins.

    Args:
        y_true: [N] integer labels in ``[0, K)``.
        proba: [N, K] class probabilities in [0, 1] (rows are not required to sum to 1).
        n_bins: number of bins (>= 1).
        positive_class: positive class for binary tasks.

    Returns:
        ``{"mode", "n_bins", "bins": [{"lo", "hi", "count", "mean_confidence", "fraction_positive"}, ...],
        "ece", "mce", "brier"}``. ``fraction_positive`` is the observed frequency described above (fraction correct in
        top-label mode); an empty bin has count 0 and ``nan`` means. With N = 0 the scores are ``nan``.

    Raises:
        DataError: on malformed shapes or labels, probabilities outside [0, 1] or ``n_bins < 1``.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise DataError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    y, proba = _check_inputs(y_true, proba, positive_class)
    if np.any((proba < 0.0) | (proba > 1.0)):
        raise DataError("proba must lie in [0, 1] for calibration")
    n, k = proba.shape
    onehot = np.zeros_like(proba)
    onehot[np.arange(n), y] = 1.0
    if k == 2:
        mode = "binary"
        conf = proba[:, positive_class]
        hit = (y == positive_class).astype(np.float64)
        brier = np.mean((conf - hit) ** 2) if n else math.nan
    else:
        mode = "top_label"
        conf = proba.max(axis=1)
        hit = (np.argmax(proba, axis=1) == y).astype(np.float64)
        brier = np.mean(np.sum((proba - onehot) ** 2, axis=1)) if n else math.nan
    edges = np.arange(n_bins + 1) / n_bins
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_hit = np.bincount(idx, weights=hit, minlength=n_bins)
    nonempty = count > 0
    mean_conf = np.full(n_bins, np.nan)
    freq = np.full(n_bins, np.nan)
    mean_conf[nonempty] = sum_conf[nonempty] / count[nonempty]
    freq[nonempty] = sum_hit[nonempty] / count[nonempty]
    gap = np.abs(freq - mean_conf)
    ece = float(np.sum(count[nonempty] * gap[nonempty]) / n) if n else math.nan
    mce = float(np.max(gap[nonempty])) if n else math.nan
    bins = [
        {
            "lo": float(edges[i]),
            "hi": float(edges[i + 1]),
            "count": int(count[i]),
            "mean_confidence": float(mean_conf[i]),
            "fraction_positive": float(freq[i]),
        }
        for i in range(n_bins)
    ]
    return {"mode": mode, "n_bins": int(n_bins), "bins": bins, "ece": ece, "mce": mce, "brier": float(brier)}


# --------------------------------------------------------------------------------------------------------------------
# Pareto front
# --------------------------------------------------------------------------------------------------------------------


def pareto_front(x: np.ndarray, y: np.ndarray, maximize: tuple[bool, bool] = (True, True)) -> np.ndarray:
    """Mask of the non-dominated points of a two-objective plane (e.g. accuracy vs interpretability).

    Point j dominates point i if it is at least as good in both objectives and strictly better in one. Points equal
    to each other do not dominate each other, so duplicates on the front are all kept. A point with a NaN
    coordinate is never on the front and dominates nothing.

    Args:
        x: [M] first objective.
        y: [M] second objective.
        maximize: whether larger is better, per objective.

    Returns:
        bool [M], True for the points on the Pareto front.

    Raises:
        DataError: on mismatched shapes or a ``maximize`` that is not two booleans.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape:
        raise DataError(f"x and y must be 1-D arrays of equal length, got shapes {xs.shape} and {ys.shape}")
    if len(maximize) != 2:
        raise DataError(f"maximize must give one boolean per objective (2), got {maximize!r}")
    pts = np.stack([xs if maximize[0] else -xs, ys if maximize[1] else -ys], axis=1)
    valid = ~np.isnan(pts).any(axis=1)
    p = pts[valid]
    # geq[j, i]: j at least as good as i in both; gt[j, i]: j strictly better in at least one.
    geq = np.all(p[:, None, :] >= p[None, :, :], axis=2)
    gt = np.any(p[:, None, :] > p[None, :, :], axis=2)
    dominated = np.any(geq & gt, axis=0)
    out = np.zeros(xs.shape, dtype=bool)
    out[valid] = ~dominated
    return out

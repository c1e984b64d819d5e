"""Tests of glasszoo.evaluation.stats against hand calculations and independent slow reference implementations."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy import stats as sps

from glasszoo.evaluation.stats import (
    benjamini_hochberg,
    calibration,
    delong_test,
    delong_test_multiclass,
    holm,
    mcnemar_test,
    pareto_front,
)
from glasszoo.models.errors import DataError

Z975 = NormalDist().inv_cdf(0.975)


def two_sided_p(z: float) -> float:
    """Two-sided normal p-value, independent of scipy."""
    return math.erfc(abs(z) / math.sqrt(2.0))


# --------------------------------------------------------------------------------------------------------------------
# Slow references straight from DeLong, DeLong & Clarke-Pearson (1988)
# --------------------------------------------------------------------------------------------------------------------


def psi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kernel matrix psi(X_i, Y_j): 1 if X_i > Y_j, 1/2 if tied, 0 otherwise (O(m n))."""
    return (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])


def slow_placements(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC, V10 over the positives and V01 over the negatives, with explicit double sums."""
    x, yy = s[y == 1], s[y == 0]
    k = psi(x, yy)
    return float(k.mean()), k.mean(axis=1), k.mean(axis=0)


def slow_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    """Paired DeLong test from the 1988 formulas: S = S10 / m + S01 / n, var(diff) = [1, -1] S [1, -1]^T."""
    auc_a, v10a, v01a = slow_placements(y, a)
    auc_b, v10b, v01b = slow_placements(y, b)
    m, n = v10a.size, v01a.size
    s10 = np.cov(np.stack([v10a, v10b]))  # ddof = 1
    s01 = np.cov(np.stack([v01a, v01b]))
    s = s10 / m + s01 / n
    contrast = np.array([1.0, -1.0])
    var = float(contrast @ s @ contrast)
    diff = auc_a - auc_b
    z = diff / math.sqrt(var)
    half = Z975 * math.sqrt(var)
    return {
        "auc_a": auc_a,
        "auc_b": auc_b,
        "diff": diff,
        "se": math.sqrt(var),
        "z": z,
        "p_value": two_sided_p(z),
        "ci": [diff - half, diff + half],
    }


def slow_delong_macro(y: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> dict:
    """Macro one-vs-rest AUC difference with the per-case influence g and stratified variance, via double sums."""
    classes = np.unique(y)
    p = classes.size
    g = np.zeros(y.size)
    aucs = np.zeros(2)
    for k in classes:
        pos = y == k
        m_k, n_k = pos.sum(), (~pos).sum()
        for r, proba in enumerate((pa, pb)):
            kern = psi(proba[pos, k], proba[~pos, k])
            aucs[r] += kern.mean() / p
            sign = 1.0 if r == 0 else -1.0
            g[pos] += sign * kern.mean(axis=1) / m_k / p
            g[~pos] += sign * kern.mean(axis=0) / n_k / p
    var = sum((y == k).sum() * np.var(g[y == k], ddof=1) for k in classes)
    diff = aucs[0] - aucs[1]
    z = diff / math.sqrt(var)
    return {"auc_a": aucs[0], "auc_b": aucs[1], "diff": diff, "se": math.sqrt(var), "z": z, "p_value": two_sided_p(z)}


def assert_close_result(got: dict, want: dict, tol: float = 1e-10) -> None:
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=tol, atol=tol, err_msg=key)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------------------------
# DeLong, binary
# --------------------------------------------------------------------------------------------------------------------


def test_delong_hand_example_with_ties() -> None:
    # Positives first: a = (3, 5, 2 | 1, 2, 4), b = (2, 4, 1 | 3, 1, 2); both have a positive tied with a negative.
    y = np.array([1, 1, 1, 0, 0, 0])
    a = np.array([3, 5, 2, 1, 2, 4], dtype=float)
    b = np.array([2, 4, 1, 3, 1, 2], dtype=float)
    # By hand: V10_a = (2/3, 1, 1/2), V01_a = (1, 5/6, 1/3) -> AUC_a = 13/18;
    #          V10_b = (1/2, 1, 1/6), V01_b = (1/3, 5/6, 1/2) -> AUC_b = 10/18.
    # D10 = (1/6, 0, 1/3): S10 = [(0)^2 + (1/6)^2 + (1/6)^2] / 2 = 1/36;
    # D01 = (2/3, 0, -1/6): S01 = [(1/2)^2 + (1/6)^2 + (1/3)^2] / 2 = 7/36;
    # var = S10 / 3 + S01 / 3 = 2/27, z = (1/6) / sqrt(2/27) = sqrt(3/8).
    res = delong_test(y, a, b)
    assert res["auc_a"] == pytest.approx(13 / 18, abs=1e-15)
    assert res["auc_b"] == pytest.approx(10 / 18, abs=1e-15)
    assert res["diff"] == pytest.approx(1 / 6, abs=1e-15)
    assert res["se"] ** 2 == pytest.approx(2 / 27, abs=1e-15)
    assert res["z"] == pytest.approx(math.sqrt(3 / 8), abs=1e-14)
    assert res["p_value"] == pytest.approx(math.erfc(math.sqrt(3) / 4), abs=1e-14)
    half = Z975 * math.sqrt(2 / 27)
    np.testing.assert_allclose(res["ci"], [1 / 6 - half, 1 / 6 + half], atol=1e-14)
    # Case order does not matter.
    perm = np.array([4, 0, 5, 2, 3, 1])
    assert_close_result(delong_test(y[perm], a[perm], b[perm]), res, 1e-14)


@pytest.mark.parametrize("seed", range(6))
def test_delong_matches_slow_reference_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 80))
    y = (rng.random(n) < rng.uniform(0.2, 0.7)).astype(int)
    y[:2], y[2:4] = 1, 0
    common = rng.normal(size=n)
    # Coarse rounding creates many ties, within and across classes.
    a = np.round(y * 0.8 + common + 0.5 * rng.normal(size=n), 1)
    b = np.round(y * 0.4 + common + 0.7 * rng.normal(size=n), 0)
    assert np.unique(a).size < n and np.unique(b).size < n
    assert_close_result(delong_test(y, a, b), slow_delong(y, a, b))


def test_delong_auc_matches_rank_auc_and_is_antisymmetric() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    y = np.arange(50) % 2
    a = np.round(y + rng.normal(size=50), 1)
    b = np.round(0.5 * y + rng.normal(size=50), 1)
    ab, ba = delong_test(y, a, b), delong_test(y, b, a)
    assert ab["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-14)
    assert ab["auc_b"] == pytest.approx(roc_auc_score(y, b), abs=1e-14)
    assert ba["diff"] == pytest.approx(-ab["diff"], abs=1e-15)
    assert ba["z"] == pytest.approx(-ab["z"], abs=1e-12)
    assert ba["p_value"] == pytest.approx(ab["p_value"], abs=1e-14)
    assert ab["se"] == pytest.approx(ba["se"], abs=1e-15)
    # Bool labels and a different level.
    res90 = delong_test(y.astype(bool), a, b, level=0.9)
    half = NormalDist().inv_cdf(0.95) * ab["se"]
    np.testing.assert_allclose(res90["ci"], [ab["diff"] - half, ab["diff"] + half], atol=1e-14)


def test_delong_identical_scores() -> None:
    rng = np.random.default_rng(1)
    y = np.arange(30) % 2
    s = np.round(rng.random(30), 1)
    res = delong_test(y, s, s.copy())
    assert res["diff"] == 0.0 and res["se"] == 0.0 and res["z"] == 0.0
    assert res["p_value"] == 1.0
    assert res["ci"] == [0.0, 0.0]


def test_delong_degenerate_cases() -> None:
    y = np.array([0, 0, 1, 1])
    # Two different perfectly separating scores: identical placements, exact zero difference -> p 1.
    res = delong_test(y, [0.1, 0.2, 0.8, 0.9], [0.3, 0.1, 0.5, 0.6])
    assert res["auc_a"] == res["auc_b"] == 1.0
    assert res["se"] == 0.0 and res["p_value"] == 1.0
    # Perfect vs constant: zero variance with unequal AUCs -> z = inf, p = 0.
    res = delong_test(y, [0.1, 0.2, 0.8, 0.9], [0.5, 0.5, 0.5, 0.5])
    assert res["diff"] == 0.5 and res["z"] == math.inf and res["p_value"] == 0.0
    # Single class: undefined; p 1 only for identical scores.
    one = np.ones(4, dtype=int)
    res = delong_test(one, [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])
    assert math.isnan(res["auc_a"]) and math.isnan(res["diff"]) and math.isnan(res["p_value"])
    assert delong_test(one, [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])["p_value"] == 1.0
    # A single positive: AUCs defined, variance not.
    res = delong_test([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.5, 0.3, 0.4])
    assert res["auc_a"] == 1.0 and res["auc_b"] == pytest.approx(2 / 3)
    assert math.isnan(res["se"]) and math.isnan(res["p_value"])


def test_delong_variance_matches_monte_carlo() -> None:
    # The DeLong variance should match the spread of the AUC difference over repeated samples of fixed class counts.
    rng = np.random.default_rng(11)
    y = np.repeat([0, 1], [60, 40])
    diffs, variances = [], []
    for _ in range(400):
        common = rng.normal(size=y.size)
        a = 1.0 * y + common + 0.6 * rng.normal(size=y.size)
        b = 0.7 * y + common + 0.6 * rng.normal(size=y.size)
        res = delong_test(y, a, b)
        diffs.append(res["diff"])
        variances.append(res["se"] ** 2)
    assert 0.8 < np.mean(variances) / np.var(diffs, ddof=1) < 1.25


def test_delong_input_errors() -> None:
    y = np.array([0, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(DataError, match="y_true"):
        delong_test([0, 1, 2, 1], s, s)
    with pytest.raises(DataError, match="score_b"):
        delong_test(y, s, s[:3])
    with pytest.raises(DataError, match="score_a"):
        delong_test(y, [0.1, np.nan, 0.3, 0.4], s)
    with pytest.raises(DataError, match="score_a"):
        delong_test(y, np.stack([s, s], axis=1), s)
    with pytest.raises(DataError, match="level"):
        delong_test(y, s, s, level=1.0)


# --------------------------------------------------------------------------------------------------------------------
# DeLong, multi-class macro AUC
# --------------------------------------------------------------------------------------------------------------------


def correlated_multiclass(rng: np.random.Generator, counts: list[int], k: int) -> tuple[np.ndarray, ...]:
    y = np.repeat(np.arange(len(counts)), counts)
    onehot = np.eye(k)[y]
    common = rng.normal(size=(y.size, k))
    pa = softmax(1.5 * onehot + common + 0.5 * rng.normal(size=(y.size, k)))
    pb = softmax(1.0 * onehot + common + 0.8 * rng.normal(size=(y.size, k)))
    return y, pa, pb


def test_multiclass_with_two_complementary_columns_equals_binary() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(70) < 0.4).astype(int)
    a = np.round(rng.random(70) * 0.6 + 0.4 * y, 1)
    b = np.round(rng.random(70) * 0.8 + 0.2 * y, 1)
    multi = delong_test_multiclass(y, np.stack([1 - a, a], axis=1), np.stack([1 - b, b], axis=1))
    binary = delong_test(y, a, b)
    for key in ("auc_a", "auc_b", "diff", "se", "z", "p_value"):
        assert multi[key] == pytest.approx(binary[key], rel=1e-10, abs=1e-12), key


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_matches_slow_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, pa, pb = correlated_multiclass(rng, [15, 25, 10, 20], 5)  # class 4 absent: not averaged
    pa, pb = np.round(pa, 2), np.round(pb, 2)  # ties
    res = delong_test_multiclass(y, pa, pb)
    assert res["classes"] == [0, 1, 2, 3]
    assert_close_result(res, slow_delong_macro(y, pa, pb))
    for k, per in zip(res["classes"], res["per_class"], strict=True):
        assert_close_result(per, slow_delong((y == k).astype(int), pa[:, k], pb[:, k]))


def test_multiclass_variance_matches_monte_carlo() -> None:
    rng = np.random.default_rng(5)
    diffs, variances = [], []
    for _ in range(300):
        y, pa, pb = correlated_multiclass(rng, [40, 30, 30], 3)
        res = delong_test_multiclass(y, pa, pb)
        diffs.append(res["diff"])
        variances.append(res["se"] ** 2)
    assert 0.8 < np.mean(variances) / np.var(diffs, ddof=1) < 1.25


def test_multiclass_degenerate_and_errors() -> None:
    rng = np.random.default_rng(2)
    y, pa, _ = correlated_multiclass(rng, [5, 6, 7], 3)
    res = delong_test_multiclass(y, pa, pa.copy())
    assert res["diff"] == 0.0 and res["se"] == 0.0 and res["p_value"] == 1.0
    assert all(per["p_value"] == 1.0 for per in res["per_class"])
    res = delong_test_multiclass(np.zeros(18, dtype=int), pa, pa[::-1])
    assert math.isnan(res["auc_a"]) and math.isnan(res["p_value"])
    with pytest.raises(DataError, match="same shape"):
        delong_test_multiclass(y, pa, np.concatenate([pa, np.zeros((y.size, 1))], axis=1))
    with pytest.raises(DataError, match="y_true"):
        delong_test_multiclass(y + 3, pa, pa)
    with pytest.raises(DataError, match="proba_b: .*NaN"):
        delong_test_multiclass(y, pa, np.where(pa > 0.5, np.nan, pa))
    with pytest.raises(DataError, match="level"):
        delong_test_multiclass(y, pa, pa, level=0.0)


# --------------------------------------------------------------------------------------------------------------------
# McNemar
# --------------------------------------------------------------------------------------------------------------------


def paired_correct(b: int, c: int, both: int = 5, neither: int = 3) -> tuple[np.ndarray, np.ndarray]:
    ra = np.array([True] * b + [False] * c + [True] * both + [False] * neither)
    rb = np.array([False] * b + [True] * c + [True] * both + [False] * neither)
    return ra, rb


def test_mcnemar_exact_hand_value() -> None:
    res = mcnemar_test(*paired_correct(10, 2))
    assert res["b"] == 10 and res["c"] == 2 and res["method"] == "exact"
    assert res["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 4096, abs=1e-15)  # 0.03857...
    assert res["statistic"] == 2.0
    assert res["diff_accuracy"] == pytest.approx(8 / 20)
    # Swapping the classifiers swaps b and c and keeps p.
    swapped = mcnemar_test(*paired_correct(10, 2)[::-1])
    assert (swapped["b"], swapped["c"]) == (2, 10) and swapped["p_value"] == res["p_value"]
    assert swapped["diff_accuracy"] == pytest.approx(-8 / 20)


def test_mcnemar_chi2_hand_value() -> None:
    res = mcnemar_test(*paired_correct(40, 20))
    assert res["method"] == "chi2_cc"
    assert res["statistic"] == pytest.approx(19**2 / 60, abs=1e-15)  # 6.0167
    assert res["p_value"] == pytest.approx(sps.chi2.sf(19**2 / 60, 1), rel=1e-12)
    assert res["p_value"] == pytest.approx(math.erfc(math.sqrt(19**2 / 60 / 2)), rel=1e-12)
    # Forcing the exact version on large counts.
    exact = mcnemar_test(*paired_correct(40, 20), exact=True)
    assert exact["method"] == "exact"
    assert exact["p_value"] == pytest.approx(2 * sum(math.comb(60, k) for k in range(21)) / 2**60, rel=1e-12)


def test_mcnemar_edge_cases() -> None:
    res = mcnemar_test(*paired_correct(0, 0))
    assert res["p_value"] == 1.0 and res["method"] == "exact" and res["diff_accuracy"] == 0.0
    assert mcnemar_test(*paired_correct(0, 0), exact=False)["p_value"] == 1.0
    # b = c: 2 * BinomCDF(3; 6, 1/2) = 2 * 42/64 > 1 -> capped.
    assert mcnemar_test(*paired_correct(3, 3))["p_value"] == 1.0
    # b = c with the chi-square: the continuity correction is clipped at zero.
    res = mcnemar_test(*paired_correct(20, 20))
    assert res["method"] == "chi2_cc" and res["statistic"] == 0.0 and res["p_value"] == 1.0
    # Threshold: b + c = 24 exact, 25 chi-square.
    assert mcnemar_test(*paired_correct(16, 8))["method"] == "exact"
    assert mcnemar_test(*paired_correct(17, 8))["method"] == "chi2_cc"
    # 0/1 integers are accepted; empty input gives nan accuracy difference.
    assert mcnemar_test([1, 0, 1], [0, 0, 1])["b"] == 1
    assert math.isnan(mcnemar_test([], [])["diff_accuracy"])


def test_mcnemar_input_errors() -> None:
    with pytest.raises(DataError, match="correct_b"):
        mcnemar_test([1, 0, 1], [0, 2, 1])
    with pytest.raises(DataError, match="same shape"):
        mcnemar_test([1, 0, 1], [0, 1])
    with pytest.raises(DataError, match="correct_a"):
        mcnemar_test([[1, 0]], [[0, 1]])


# --------------------------------------------------------------------------------------------------------------------
# Multiple comparisons
# --------------------------------------------------------------------------------------------------------------------


def test_holm_hand_values() -> None:
    # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> 0.06 (monotone).
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], atol=1e-15)
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    # NaN stays NaN and does not count: m = 2.
    out = holm([0.01, np.nan, 0.04])
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.04], atol=1e-15)
    # Ties get equal adjusted values; shape is kept.
    np.testing.assert_allclose(holm([[0.01, 0.01], [0.2, 0.0]]), [[0.03, 0.03], [0.2, 0.0]], atol=1e-15)
    assert holm([]).shape == (0,)


def test_benjamini_hochberg_hand_values() -> None:
    # Sorted: 0.005 * 4/1 = 0.02, 0.01 * 4/2 = 0.02, 0.03 * 4/3 = 0.04, 0.04 * 4/4 = 0.04.
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.04, 0.03, 0.005]), [0.02, 0.04, 0.04, 0.02], atol=1e-15)
    # Step-up: 0.04 * 3/1 = 0.12 is lowered to 0.041 * 3/2 = 0.0615.
    np.testing.assert_allclose(benjamini_hochberg([0.9, 0.041, 0.04]), [0.9, 0.0615, 0.0615], atol=1e-15)
    np.testing.assert_allclose(benjamini_hochberg([0.6, 0.7]), [0.7, 0.7])
    out = benjamini_hochberg([np.nan, 0.02, 0.03])
    assert math.isnan(out[0])
    np.testing.assert_allclose(out[1:], [0.03, 0.03], atol=1e-15)


def test_adjustments_are_bounded_and_validated() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(50) ** 3
    for adjust in (holm, benjamini_hochberg):
        adj = adjust(p)
        assert np.all(adj >= p) and np.all(adj <= 1.0)
        order = np.argsort(p)
        assert np.all(np.diff(adj[order]) >= 0)  # monotone in p
    assert np.all(benjamini_hochberg(p) <= holm(p))
    with pytest.raises(DataError, match="p_values"):
        holm([0.1, 1.2])
    with pytest.raises(DataError, match="p_values"):
        benjamini_hochberg([-0.1])


# --------------------------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------------------------


def test_calibration_perfectly_calibrated() -> None:
    # Confidence 0.25 with 1 of 4 positive, 0.75 with 3 of 4, 0.5 with 1 of 2: every bin matches exactly.
    p1 = np.array([0.25] * 4 + [0.75] * 4 + [0.5] * 2)
    y = np.array([1, 0, 0, 0] + [1, 1, 0, 1] + [0, 1])
    res = calibration(y, np.stack([1 - p1, p1], axis=1), n_bins=4)
    assert res["mode"] == "binary"
    assert res["ece"] == 0.0 and res["mce"] == 0.0
    assert res["brier"] == pytest.approx((8 * 0.1875 + 2 * 0.25) / 10, abs=1e-15)
    assert [b["count"] for b in res["bins"]] == [0, 4, 2, 4]
    assert math.isnan(res["bins"][0]["mean_confidence"])
    assert res["bins"][3] == {"lo": 0.75, "hi": 1.0, "count": 4, "mean_confidence": 0.75, "fraction_positive": 0.75}


def test_calibration_all_wrong_confident() -> None:
    y = np.array([0, 1, 0, 1, 1])
    p1 = 1.0 - y  # probability 1 on the wrong class, including the edges 0 and 1
    res = calibration(y, np.stack([1 - p1, p1], axis=1))
    assert res["ece"] == 1.0 and res["mce"] == 1.0 and res["brier"] == 1.0
    assert res["bins"][0]["count"] == 3 and res["bins"][-1]["count"] == 2


def test_calibration_binary_hand_example() -> None:
    p1 = np.array([0.2, 0.4, 0.7, 0.9])
    y = np.array([0, 1, 1, 0])
    res = calibration(y, np.stack([1 - p1, p1], axis=1), n_bins=2)
    # Bin [0, 0.5): conf 0.3, fraction 0.5; bin [0.5, 1]: conf 0.8, fraction 0.5.
    assert res["ece"] == pytest.approx(0.5 * 0.2 + 0.5 * 0.3, abs=1e-15)
    assert res["mce"] == pytest.approx(0.3, abs=1e-15)
    assert res["brier"] == pytest.approx((0.04 + 0.36 + 0.09 + 0.81) / 4, abs=1e-15)
    assert res["bins"][0]["mean_confidence"] == pytest.approx(0.3)
    # positive_class = 0 scores column 0 against y == 0.
    res0 = calibration(y, np.stack([1 - p1, p1], axis=1), n_bins=2, positive_class=0)
    assert res0["brier"] == pytest.approx(res["brier"], abs=1e-15)
    assert res0["bins"][1]["mean_confidence"] == pytest.approx(0.7)  # 0.8 and 0.6 (column 0)


def test_calibration_multiclass_hand_example() -> None:
    proba = np.array([[0.9, 0.05, 0.05], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.4, 0.35, 0.25]])
    y = np.array([0, 2, 2, 1])
    res = calibration(y, proba, n_bins=4)
    assert res["mode"] == "top_label"
    # Top-label confidences 0.9 (right), 0.6 (wrong), 0.6 (right), 0.4 (wrong).
    # Bins: [0.25, 0.5): conf 0.4, acc 0; [0.5, 0.75): conf 0.6, acc 0.5; [0.75, 1]: conf 0.9, acc 1.
    assert [b["count"] for b in res["bins"]] == [0, 1, 2, 1]
    assert res["ece"] == pytest.approx(0.25 * 0.4 + 0.5 * 0.1 + 0.25 * 0.1, abs=1e-15)
    assert res["mce"] == pytest.approx(0.4, abs=1e-15)
    assert res["brier"] == pytest.approx((0.015 + 0.86 + 0.24 + 0.645) / 4, abs=1e-15)


def test_calibration_input_errors() -> None:
    y = np.array([0, 1])
    proba = np.array([[0.3, 0.7], [0.6, 0.4]])
    with pytest.raises(DataError, match="n_bins"):
        calibration(y, proba, n_bins=0)
    with pytest.raises(DataError, match="proba"):
        calibration(y, proba * 2)
    with pytest.raises(DataError, match="proba"):
        calibration(y, np.array([[np.nan, 0.7], [0.6, 0.4]]))
    with pytest.raises(DataError, match="y_true"):
        calibration([0, 1, 1], proba)


# --------------------------------------------------------------------------------------------------------------------
# Pareto front
# --------------------------------------------------------------------------------------------------------------------


def test_pareto_front_hand_example() -> None:
    x = np.array([1.0, 2.0, 3.0, 3.0, 0.5, np.nan, 2.0, 4.0])
    y = np.array([1.0, 3.0, 2.0, 2.0, 4.0, 10.0, 3.0, 0.0])
    # (1, 1) is dominated by (2, 3); the equal pairs (2, 3) and (3, 2) stay; the NaN point never counts.
    expected = [False, True, True, True, True, False, True, True]
    np.testing.assert_array_equal(pareto_front(x, y), expected)


def test_pareto_front_directions_and_errors() -> None:
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 0.0])
    np.testing.assert_array_equal(pareto_front(x, y, maximize=(True, False)), [False, False, True])
    np.testing.assert_array_equal(pareto_front(x, y, maximize=(False, False)), [True, False, True])
    np.testing.assert_array_equal(pareto_front(x, y), [False, True, True])
    assert pareto_front([], []).shape == (0,)
    with pytest.raises(DataError, match="x and y"):
        pareto_front([1.0, 2.0], [1.0])
    with pytest.raises(DataError, match="maximize"):
        pareto_front(x, y, maximize=(True,))

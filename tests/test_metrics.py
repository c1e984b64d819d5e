"""Tests of glasszoo.evaluation.metrics against hand-computed values, known answers and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score, roc_auc_score

from glasszoo.evaluation.metrics import (
    METRIC_NAMES,
    _check_inputs,
    _resample_metrics,
    bootstrap_ci,
    format_value,
    mean_ci,
    pointing_game,
    relevance_mass_in_mask,
    stratified_bootstrap_indices,
    task_metrics,
)
from glasszoo.models.errors import DataError


def binary_proba(p1) -> np.ndarray:
    """Two-column probabilities from P(class 1)."""
    p1 = np.asarray(p1, dtype=float)
    return np.stack([1.0 - p1, p1], axis=1)


def synthetic_binary(n: int, seed: int, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced binary labels with noisy, informative scores."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    logits = signal * (2 * y - 1) + rng.normal(size=n)
    return y, binary_proba(1.0 / (1.0 + np.exp(-logits)))


# --------------------------------------------------------------------------------------------------------------------
# task_metrics
# --------------------------------------------------------------------------------------------------------------------


def test_binary_hand_computed():
    # Pairs (pos, neg): 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> AUC 3/4.
    # Predictions (p1 > 0.5): [0, 0, 0, 1] -> TP=1, FN=1, TN=2, FP=0.
    m = task_metrics(np.array([0, 0, 1, 1]), binary_proba([0.1, 0.4, 0.35, 0.8]))
    assert list(m) == list(METRIC_NAMES)
    assert m["auc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["sensitivity"] == pytest.approx(1 / 2)
    assert m["specificity"] == pytest.approx(1.0)
    assert m["balanced_accuracy"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))  # 2/3
    assert all(isinstance(v, float) for v in m.values())


def test_binary_positive_class_zero_flips():
    # Class 0 positive: TP=2 (cases 1, 2), FP=1 (case 3 predicted 0), FN=0, TN=1.
    m = task_metrics(np.array([0, 0, 1, 1]), binary_proba([0.1, 0.4, 0.35, 0.8]), positive_class=0)
    assert m["auc"] == pytest.approx(0.75)  # AUC of proba[:, 0] for y == 0 is the same ranking, reversed
    assert m["sensitivity"] == pytest.approx(1.0)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))  # 4/5
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx(3 / 4)


def test_auc_ties():
    y = np.array([0, 1, 0, 1, 0, 1])
    assert task_metrics(y, binary_proba(np.full(6, 0.3)))["auc"] == pytest.approx(0.5)
    # pos {0.2, 0.9}, neg {0.2, 0.1}: 0.5 (tie) + 1 + 1 + 1 = 3.5 of 4 pairs.
    y = np.array([0, 1, 0, 1])
    s = np.array([0.2, 0.2, 0.1, 0.9])
    assert task_metrics(y, binary_proba(s))["auc"] == pytest.approx(3.5 / 4)
    # Heavy ties on random data agree with scikit-learn.
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) * 0.5 + 0.3 * y, 1)
    assert task_metrics(y, binary_proba(s))["auc"] == pytest.approx(roc_auc_score(y, s))


def test_binary_agrees_with_sklearn():
    y, proba = synthetic_binary(257, seed=5, signal=0.7)
    pred = proba.argmax(axis=1)
    for pc in (0, 1):
        m = task_metrics(y, proba, positive_class=pc)
        assert m["auc"] == pytest.approx(roc_auc_score(y == pc, proba[:, pc]))
        assert m["f1"] == pytest.approx(f1_score(y, pred, pos_label=pc))
        assert m["sensitivity"] == pytest.approx(recall_score(y, pred, pos_label=pc))
        assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=1 - pc))
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))


def test_multiclass_agrees_with_sklearn():
    rng = np.random.default_rng(7)
    n, k = 400, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = proba.argmax(axis=1)
    m = task_metrics(y, proba)
    assert m["auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["accuracy"] == pytest.approx(np.mean(pred == y))
    spec = [recall_score(y != c, pred != c) for c in range(k)]  # TN / (TN + FP) of class c vs rest
    assert m["specificity"] == pytest.approx(np.mean(spec))


def test_multiclass_hand_computed_specificity():
    # y = [0, 1, 2, 2], pred = [0, 2, 2, 1].
    # class 0: TN=3, FP=0 -> 1; class 1: TN=2 (cases 0, 2), FP=1 (case 3) -> 2/3; class 2: TN=1, FP=1 -> 1/2.
    proba = np.eye(3)[[0, 2, 2, 1]] * 0.8 + 0.2 / 3
    m = task_metrics(np.array([0, 1, 2, 2]), proba)
    assert m["specificity"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert m["sensitivity"] == pytest.approx((1 + 0 + 1 / 2) / 3)
    assert m["balanced_accuracy"] == m["sensitivity"]
    assert m["accuracy"] == pytest.approx(2 / 4)
    # F1: class 0 -> 1; class 1 -> TP 0 -> 0; class 2 -> 2*1/(2+1+1) = 1/2.
    assert m["f1"] == pytest.approx((1 + 0 + 1 / 2) / 3)


@pytest.mark.parametrize("k", [2, 3])
def test_perfect_predictions_give_ones(k):
    y = np.arange(30) % k
    proba = np.eye(k)[y] * 0.9 + 0.1 / k
    assert task_metrics(y, proba) == {name: 1.0 for name in METRIC_NAMES}


def test_single_class_gives_nan_not_exception():
    y = np.ones(5, dtype=int)
    m = task_metrics(y, binary_proba([0.2, 0.6, 0.7, 0.9, 0.4]))
    assert math.isnan(m["auc"])
    assert math.isnan(m["specificity"])  # no negatives
    assert math.isnan(m["balanced_accuracy"])
    assert m["sensitivity"] == pytest.approx(3 / 5)
    assert m["accuracy"] == pytest.approx(3 / 5)
    m3 = task_metrics(np.zeros(4, dtype=int), np.full((4, 3), 1 / 3))
    assert math.isnan(m3["auc"]) and math.isnan(m3["sensitivity"]) and math.isnan(m3["specificity"])


def test_invalid_inputs_raise_data_error():
    with pytest.raises(DataError):
        task_metrics(np.array([0, 1]), np.array([0.2, 0.8]))  # 1-D proba
    with pytest.raises(DataError):
        task_metrics(np.array([0, 1, 1]), binary_proba([0.2, 0.8]))  # length mismatch
    with pytest.raises(DataError):
        task_metrics(np.array([0, 2]), binary_proba([0.2, 0.8]))  # label out of range
    with pytest.raises(DataError):
        task_metrics(np.array([0, 1]), binary_proba([0.2, np.nan]))
    with pytest.raises(DataError):
        task_metrics(np.array([0, 1]), binary_proba([0.2, 0.8]), positive_class=2)
    # Float labels holding integers are accepted.
    assert task_metrics(np.array([0.0, 1.0]), binary_proba([0.2, 0.8]))["auc"] == 1.0


# --------------------------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------------------------


def test_stratified_indices_keep_class_counts():
    y = np.array([0] * 7 + [1] * 3 + [2] * 5)
    rng = np.random.default_rng(0)
    y = rng.permutation(y)
    idx = stratified_bootstrap_indices(y, 200, seed=1)
    assert idx.shape == (200, y.size)
    counts = np.stack([np.bincount(y[row], minlength=3) for row in idx])
    assert np.all(counts == np.bincount(y))
    # Resamples really vary (with replacement), and are reproducible.
    assert len({tuple(row) for row in idx}) > 1
    assert any(len(set(row)) < y.size for row in idx)
    assert np.array_equal(idx, stratified_bootstrap_indices(y, 200, seed=1))


def test_resample_metrics_equal_task_metrics_on_resampled_cases():
    rng = np.random.default_rng(11)
    for k in (2, 3):
        y = rng.integers(0, k, 80)
        proba = rng.dirichlet(np.ones(k), 80)
        proba = np.round(proba, 1)  # ties in scores and in argmax
        y_checked, p_checked = _check_inputs(y, proba, 1)
        idx = stratified_bootstrap_indices(y, 15, seed=2)
        batched = _resample_metrics(y_checked, p_checked, 1, idx)
        for b, row in enumerate(idx):
            direct = task_metrics(y[row], proba[row])
            for name in METRIC_NAMES:
                assert batched[name][b] == pytest.approx(direct[name], nan_ok=True), (k, b, name)


def test_bootstrap_deterministic_and_seeded():
    y, proba = synthetic_binary(120, seed=1)
    a = bootstrap_ci(y, proba, n_boot=200, seed=4)
    b = bootstrap_ci(y, proba, n_boot=200, seed=4)
    c = bootstrap_ci(y, proba, n_boot=200, seed=5)
    assert a == b
    assert a["auc"]["ci"] != c["auc"]["ci"]
    assert set(a) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert a[name]["value"] == pytest.approx(task_metrics(y, proba)[name])


def test_bootstrap_ci_contains_point_estimate():
    y, proba = synthetic_binary(300, seed=2)
    res = bootstrap_ci(y, proba, n_boot=500)
    for name in METRIC_NAMES:
        lo, hi = res[name]["ci"]
        assert lo < res[name]["value"] < hi, name


def test_bootstrap_ci_shrinks_with_n():
    widths = {}
    for n in (100, 2000):
        y, proba = synthetic_binary(n, seed=3)
        lo, hi = bootstrap_ci(y, proba, n_boot=400)["auc"]["ci"]
        widths[n] = hi - lo
    # Expected ratio about sqrt(20) ~ 4.5.
    assert widths[2000] < 0.5 * widths[100]


def test_bootstrap_perfect_classifier():
    y = np.array([0] * 10 + [1] * 10)
    proba = binary_proba(np.linspace(0.0, 0.4, 20) + 0.55 * y)
    res = bootstrap_ci(y, proba, n_boot=300)
    assert res["auc"] == {"value": 1.0, "ci": [1.0, 1.0]}
    assert res["accuracy"] == {"value": 1.0, "ci": [1.0, 1.0]}


def test_bootstrap_all_nan_and_multiclass():
    # Only positives: AUC undefined in every resample -> ci [nan, nan], no exception.
    res = bootstrap_ci(np.ones(6, dtype=int), binary_proba([0.2, 0.6, 0.7, 0.9, 0.4, 0.8]), n_boot=50)
    assert math.isnan(res["auc"]["value"]) and all(math.isnan(v) for v in res["auc"]["ci"])
    assert res["sensitivity"]["value"] == pytest.approx(4 / 6)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    res = bootstrap_ci(y, rng.dirichlet(np.ones(3), 200), n_boot=100)
    assert all(res[name]["ci"][0] <= res[name]["ci"][1] for name in METRIC_NAMES)


# --------------------------------------------------------------------------------------------------------------------
# Localisation
# --------------------------------------------------------------------------------------------------------------------


def test_pointing_game_hit_miss_empty():
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0, 2:4, 2:4] = True
    masks[1, 2:4, 2:4] = True
    maps = np.zeros((3, 8, 8))
    maps[0, 3, 3] = 5.0  # peak inside
    maps[1, 6, 6] = 5.0  # peak outside
    maps[2, 1, 1] = 5.0  # empty mask
    out = pointing_game(maps, masks)
    assert out[0] == 1.0 and out[1] == 0.0 and math.isnan(out[2])


def test_pointing_game_ties_any_tied_max_counts():
    mask = np.zeros((1, 4, 4), dtype=np.uint8)
    mask[0, 0, 0] = 1
    tied = np.zeros((1, 4, 4))
    tied[0, 0, 0] = tied[0, 3, 3] = 1.0
    assert pointing_game(tied, mask)[0] == 1.0
    outside_only = np.zeros((1, 4, 4))
    outside_only[0, 3, 3] = outside_only[0, 2, 2] = 1.0
    assert pointing_game(outside_only, mask)[0] == 0.0


def test_pointing_game_random_maps_hit_rate_equals_mask_fraction():
    rng = np.random.default_rng(0)
    n = 4000
    masks = np.zeros((n, 10, 10), dtype=bool)
    masks[:, :5, :5] = True  # area fraction 0.25
    rate = np.nanmean(pointing_game(rng.random((n, 10, 10)), masks))
    assert abs(rate - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)


def test_relevance_mass():
    masks = np.zeros((4, 6, 6), dtype=bool)
    masks[:, 1:3, 1:4] = True  # 6 of 36 pixels
    maps = np.zeros((4, 6, 6))
    maps[0] = masks[0]  # equal to the mask
    maps[1] = 0.7  # uniform
    maps[2] = -1.0  # negative relevance outside is ignored
    maps[2, 1, 1] = 2.0
    maps[2, 5, 5] = 2.0
    # maps[3] all zeros -> nan
    out = relevance_mass_in_mask(maps, masks)
    assert out[0] == 1.0
    assert out[1] == pytest.approx(6 / 36)
    assert out[2] == pytest.approx(0.5)
    assert math.isnan(out[3])
    empty = relevance_mass_in_mask(np.ones((1, 6, 6)), np.zeros((1, 6, 6)))
    assert math.isnan(empty[0])


def test_localisation_shape_mismatch_raises():
    with pytest.raises(DataError):
        pointing_game(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(DataError):
        relevance_mass_in_mask(np.zeros((4, 4)), np.zeros((4, 4)))


# --------------------------------------------------------------------------------------------------------------------
# mean_ci, format_value
# --------------------------------------------------------------------------------------------------------------------


def test_mean_ci_known_values():
    res = mean_ci(np.array([1.0, 0.0, np.nan, 1.0, 0.0]))
    assert res["value"] == pytest.approx(0.5)  # NaN dropped
    lo, hi = res["ci"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert mean_ci(np.full(10, 0.3)) == {"value": pytest.approx(0.3), "ci": [pytest.approx(0.3), pytest.approx(0.3)]}
    empty = mean_ci(np.array([np.nan, np.nan]))
    assert math.isnan(empty["value"]) and all(math.isnan(v) for v in empty["ci"])
    assert mean_ci(np.arange(50.0), seed=1) == mean_ci(np.arange(50.0), seed=1)


def test_mean_ci_width_matches_standard_error():
    rng = np.random.default_rng(0)
    v = rng.random(400)
    lo, hi = mean_ci(v, n_boot=2000)["ci"]
    se = v.std() / math.sqrt(v.size)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_format_value():
    assert format_value({"value": 0.9124, "ci": [0.8706, 0.9481]}) == "0.912 [0.871, 0.948]"
    assert format_value({"value": math.nan, "ci": [math.nan, math.nan]}) == "nan [nan, nan]"
    assert format_value({"value": 0.5, "ci": [0.25, 0.75]}, digits=2) == "0.50 [0.25, 0.75]"

"""Segmentation metrics against hand-computed values: Dice, IoU, boundaries, HD95, the summary with CIs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from glasszoo.evaluation.segmentation import (
    boundaries,
    dice,
    empty_prediction_rate,
    hausdorff95,
    iou,
    segmentation_summary,
)
from glasszoo.models.errors import DataError


def rect(r0: int, r1: int, c0: int, c1: int, size: int = 12) -> np.ndarray:
    """uint8 [size, size] mask with rows r0..r1-1 and columns c0..c1-1 set."""
    m = np.zeros((size, size), np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


def test_dice_and_iou_of_two_overlapping_rectangles_by_hand():
    a = rect(1, 5, 1, 6)  # 4 x 5 = 20 pixels
    b = rect(3, 7, 3, 9)  # 4 x 6 = 24 pixels
    # overlap: rows 3..4 (2) x columns 3..5 (3) = 6 pixels; union 20 + 24 - 6 = 38
    assert dice(a[None], b[None])[0] == pytest.approx(2 * 6 / (20 + 24))
    assert iou(a[None], b[None])[0] == pytest.approx(6 / 38)
    # symmetric, and a single [H, W] pair is accepted
    assert dice(b, a)[0] == pytest.approx(12 / 44)
    # nested: a 2x2 inside a 4x4 -> Dice 2*4/(4+16) = 0.4, IoU 4/16
    inner, outer = rect(2, 4, 2, 4), rect(1, 5, 1, 5)
    assert dice(inner, outer)[0] == pytest.approx(0.4)
    assert iou(inner, outer)[0] == pytest.approx(0.25)


def test_empty_conventions_and_per_case_vectorisation():
    a, b, empty = rect(1, 5, 1, 6), rect(3, 7, 3, 9), np.zeros((12, 12), np.uint8)
    pred = np.stack([a, empty, empty, a, a])
    true = np.stack([b, empty, a, empty, a])
    np.testing.assert_allclose(dice(pred, true), [12 / 44, 1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(iou(pred, true), [6 / 38, 1.0, 0.0, 0.0, 1.0])
    # any non-zero value counts as inside
    np.testing.assert_allclose(dice(pred * 255, true.astype(bool)), dice(pred, true))
    assert empty_prediction_rate(pred, true) == pytest.approx(1 / 3)  # cases 0, 2, 4 have truth; case 2 missed
    assert np.isnan(empty_prediction_rate(empty[None], empty[None]))


def test_shape_mismatch_is_a_data_error():
    with pytest.raises(DataError, match="equal shape"):
        dice(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(DataError, match=r"\[N, H, W\]"):
        hausdorff95(np.zeros(4), np.zeros(4))


def test_boundaries_are_the_inner_4_connected_rim():
    sq = rect(2, 7, 2, 7)  # 5 x 5
    b = boundaries(sq[None])[0]
    assert b.sum() == 16  # 25 - inner 3 x 3
    assert not b[3:6, 3:6].any()
    dot = rect(4, 5, 4, 5)
    np.testing.assert_array_equal(boundaries(dot[None])[0], dot.astype(bool))
    # a mask touching the image border has its border pixels on the boundary; cases do not interact
    full = np.ones((2, 6, 6), np.uint8)
    full[1] = 0
    bf = boundaries(full)
    assert bf[0].sum() == 20 and not bf[1].any()


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("axis", [0, 1])
def test_hausdorff95_of_a_square_and_its_shift_is_the_shift(k, axis):
    # 6 x 6 squares shifted by k < 6: the farthest boundary pixels (a whole side, 25% of the boundary) lie exactly
    # k away, every other boundary pixel at most k, so both directed 95th percentiles are k.
    a = rect(3, 9, 3, 9, size=16)
    b = np.roll(a, k, axis=axis)
    assert hausdorff95(a[None], b[None])[0] == pytest.approx(k)


def test_hausdorff95_identical_empty_and_a_hand_computed_asymmetric_case():
    a = rect(3, 9, 2, 7)
    assert hausdorff95(a[None], a[None])[0] == 0.0
    empty = np.zeros_like(a)
    out = hausdorff95(np.stack([a, empty, empty]), np.stack([empty, a, empty]))
    assert np.isnan(out).all()
    # P = one pixel at (5, 2); T = that pixel and one at (5, 12): P -> T distances {0}, T -> P distances {0, 10};
    # the directed 95th percentiles are 0 and 0 + 0.95 * 10 = 9.5 (linear interpolation); the larger is reported
    p = np.zeros((16, 16), np.uint8)
    p[5, 2] = 1
    t = p.copy()
    t[5, 12] = 1
    assert hausdorff95(p[None], t[None])[0] == pytest.approx(9.5)
    assert hausdorff95(t[None], p[None])[0] == pytest.approx(9.5)


def _brute_hd95(p: np.ndarray, t: np.ndarray) -> float:
    bp, bt = np.argwhere(boundaries(p[None])[0]), np.argwhere(boundaries(t[None])[0])
    d = cdist(bp, bt)
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_hausdorff95_matches_brute_force_and_cases_do_not_leak():
    rng = np.random.default_rng(0)
    pred = (rng.random((6, 20, 20)) > 0.85).astype(np.uint8)
    true = (rng.random((6, 20, 20)) > 0.9).astype(np.uint8)
    pred[2] = 0  # an empty prediction next to non-empty cases: NaN there, the others unaffected
    true[4] = 0
    out = hausdorff95(pred, true)
    for i in range(6):
        if i in (2, 4):
            assert np.isnan(out[i])
        else:
            assert out[i] == pytest.approx(_brute_hd95(pred[i], true[i]))
            assert hausdorff95(pred[i:i + 1], true[i:i + 1])[0] == pytest.approx(out[i])  # alone == in the stack


def test_segmentation_summary_keys_and_values():
    a, b, empty = rect(1, 5, 1, 6), rect(3, 7, 3, 9), np.zeros((12, 12), np.uint8)
    pred, true = np.stack([a, a, empty]), np.stack([a, b, empty])
    s = segmentation_summary(pred, true, n_boot=200)
    assert s["n_cases"] == 3 and s["n_cases_hausdorff"] == 2
    assert s["dice"]["value"] == pytest.approx((1 + 12 / 44 + 1) / 3)
    assert s["iou"]["value"] == pytest.approx((1 + 6 / 38 + 1) / 3)
    assert s["hausdorff95"]["value"] == pytest.approx((0 + hausdorff95(a, b)[0]) / 2)
    for key in ("dice", "iou", "hausdorff95"):
        lo, hi = s[key]["ci"]
        assert lo <= s[key]["value"] <= hi
    assert s["empty_prediction_rate"] == 0.0

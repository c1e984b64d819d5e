"""Metrics that hold up: ROAD (Rong et al., ICML 2022) by hand on 4 x 4 images, and the smooth (sMPRT) and efficient
(eMPRT) model-randomisation tests of Hedstrom et al. on cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from glasszoo.evaluation.quality import (
    ROAD_FRACTIONS,
    discrete_entropy,
    noisy_linear_impute,
    randomisation_check,
    road,
    road_curves,
    road_passes,
    smoothed_explain_fn,
)
from glasszoo.models.errors import DataError

# a 4 x 4 image with distinct values, so every hand-computed mean below is a different number
IMG = np.array([[0.10, 0.20, 0.30, 0.40],
                [0.50, 0.60, 0.70, 0.80],
                [0.15, 0.25, 0.35, 0.45],
                [0.55, 0.65, 0.75, 0.85]], dtype=np.float32)[None]
S, D = 1 / 6, 1 / 12  # direct and diagonal neighbour weights


def _removed(*pixels: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((4, 4), dtype=bool)
    for r, c in pixels:
        mask[r, c] = True
    return mask


def test_one_inner_pixel_becomes_the_weighted_mean_of_its_eight_neighbours():
    out = noisy_linear_impute(IMG, _removed((1, 1)), noise=0.0)
    v = IMG[0]
    expected = S * (v[0, 1] + v[2, 1] + v[1, 0] + v[1, 2]) + D * (v[0, 0] + v[0, 2] + v[2, 0] + v[2, 2])
    assert out[0, 1, 1] == pytest.approx(expected, abs=1e-6)
    kept = ~_removed((1, 1))
    np.testing.assert_array_equal(out[0][kept], IMG[0][kept])  # the other pixels are untouched


def test_a_corner_pixel_renormalises_over_its_three_neighbours():
    out = noisy_linear_impute(IMG, _removed((0, 0)), noise=0.0)
    v = IMG[0]
    expected = (S * v[0, 1] + S * v[1, 0] + D * v[1, 1]) / (S + S + D)
    assert out[0, 0, 0] == pytest.approx(expected, abs=1e-6)


def test_two_adjacent_removed_pixels_solve_their_two_equations_together():
    out = noisy_linear_impute(IMG, _removed((1, 1), (1, 2)), noise=0.0)
    v = IMG[0]
    # p = (1, 1), q = (1, 2); each is the mean of its neighbours, the other one included:
    #   p = k_p + q / 6,  q = k_q + p / 6  ->  p = (k_p + k_q / 6) / (1 - 1 / 36)
    k_p = S * (v[0, 1] + v[2, 1] + v[1, 0]) + D * (v[0, 0] + v[0, 2] + v[2, 0] + v[2, 2])
    k_q = S * (v[0, 2] + v[2, 2] + v[1, 3]) + D * (v[0, 1] + v[0, 3] + v[2, 1] + v[2, 3])
    p = (k_p + k_q / 6) / (1 - 1 / 36)
    q = k_q + p / 6
    assert out[0, 1, 1] == pytest.approx(p, abs=1e-6) and out[0, 1, 2] == pytest.approx(q, abs=1e-6)


def test_channels_are_imputed_alike_and_the_noise_has_the_requested_spread():
    rgb = np.stack([IMG[0], 1 - IMG[0], 0.5 * IMG[0]])
    out = noisy_linear_impute(rgb, _removed((1, 1)), noise=0.0)
    for ch in range(3):
        np.testing.assert_allclose(out[ch], noisy_linear_impute(rgb[ch:ch + 1], _removed((1, 1)), noise=0.0)[0],
                                   atol=1e-6)
    big = np.full((1, 40, 40), 0.5, dtype=np.float32)
    removed = np.zeros((40, 40), dtype=bool)
    removed[::2] = True  # every other row: each removed pixel has kept neighbours
    noisy = noisy_linear_impute(big, removed, noise=0.05, rng=np.random.default_rng(1))
    deviation = noisy[0][removed] - 0.5  # the plain imputation of a flat image is flat
    assert abs(deviation.mean()) < 0.01 and deviation.std() == pytest.approx(0.05, rel=0.1)
    assert np.array_equal(noisy[0][~removed], big[0][~removed])


def test_impute_errors():
    with pytest.raises(DataError, match="every pixel is removed"):
        noisy_linear_impute(IMG, np.ones((4, 4), dtype=bool))
    with pytest.raises(DataError, match=r"image must be \[C, H, W\]"):
        noisy_linear_impute(IMG, np.zeros((3, 3), dtype=bool))


class CornerModel(nn.Module):
    """Class-1 logit = 10 * (pixel (0, 0) - 0.5); class-0 logit 0: it reads one pixel only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 10 * (x[:, 0, 0, 0] - 0.5)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_road_on_a_hand_made_4x4_case():
    x = IMG[None]  # [1, 1, 4, 4]
    # the map ranks pixel (0, 0) first, (0, 1) second, ..., (3, 3) last (row-major, decreasing)
    maps = np.arange(16, 0, -1, dtype=np.float32).reshape(1, 4, 4)
    fractions = (1 / 16, 2 / 16)
    morf, lerf = road_curves(CornerModel(), x, maps, target=1, fractions=fractions, noise=0.0)
    v = IMG[0]
    # MoRF 1/16: (0, 0) removed, imputed from (0, 1), (1, 0), (1, 1)
    one = (S * v[0, 1] + S * v[1, 0] + D * v[1, 1]) / (S + S + D)
    # MoRF 2/16: (0, 0) and (0, 1) removed; a = (0, 0), b = (0, 1):
    #   (5/12) a = S b + S v10 + D v11;  (8/12) b = S a + S v02 + S v11 + D v10 + D v12
    k_a = S * v[1, 0] + D * v[1, 1]
    k_b = S * v[0, 2] + S * v[1, 1] + D * v[1, 0] + D * v[1, 2]
    a = (k_a + S * k_b / (8 / 12)) / (5 / 12 - S * S / (8 / 12))
    np.testing.assert_allclose(morf[0], [_sigmoid(10 * (one - 0.5)), _sigmoid(10 * (a - 0.5))], atol=1e-6)
    # LeRF removes (3, 3), then (3, 2): pixel (0, 0) is never touched
    np.testing.assert_allclose(lerf[0], [_sigmoid(10 * (v[0, 0] - 0.5))] * 2, atol=1e-6)
    m_score, l_score = road(CornerModel(), x, maps, target=1, fractions=fractions, noise=0.0)
    assert m_score[0] == pytest.approx(morf[0].mean()) and l_score[0] == pytest.approx(lerf[0].mean())


def test_road_tells_a_faithful_map_from_its_reverse():
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 12, 12)).astype(np.float32)
    x[:, 0, :4, :4] += 0.5  # the model reads the top-left corner: make it bright
    x = np.clip(x, 0, 1)

    class BoxModel(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            z = 8 * (t[:, 0, :4, :4].mean(dim=(1, 2)) - 0.5)
            return torch.stack([torch.zeros_like(z), z], dim=1)

    faithful = np.zeros((6, 12, 12), dtype=np.float32)
    faithful[:, :4, :4] = 1 + rng.random((6, 4, 4))
    morf, lerf = road(BoxModel(), x, faithful, target=1, seed=0)
    r_morf, r_lerf = road(BoxModel(), x, -faithful, target=1, seed=0)
    assert (morf < r_morf).all() and (lerf > r_lerf).all()
    assert road_passes() == 2 * len(ROAD_FRACTIONS) == 18


def test_road_argument_errors():
    x, maps = IMG[None], np.ones((1, 4, 4), dtype=np.float32)
    with pytest.raises(DataError, match=r"fractions must lie in \(0, 1\)"):
        road(CornerModel(), x, maps, target=1, fractions=(0.5, 1.0))
    with pytest.raises(DataError, match="noise must be >= 0"):
        road(CornerModel(), x, maps, target=1, noise=-0.1)


# ------------------------------------------------------------------------ the smooth and efficient randomisation tests

def test_discrete_entropy_known_values():
    flat = np.ones((1, 4, 4), dtype=np.float32)
    two = np.zeros((1, 4, 4), dtype=np.float32)
    two[0, :2] = 1.0  # half the pixels at 0, half at the maximum: two equally full bins
    spread = np.arange(100, dtype=np.float32).reshape(1, 10, 10) + 0.5  # one value per bin
    h = discrete_entropy(np.concatenate([flat, two]))
    assert h[0] == 0.0 and h[1] == pytest.approx(math.log(2))
    assert discrete_entropy(-spread)[0] == pytest.approx(math.log(100))  # absolute values, scaled by the maximum


class Linear(nn.Module):
    """Class-1 logit = sum(w * x); class 0 its negative."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).sum(dim=(1, 2, 3))
        return torch.stack([-s, s], dim=1)


def _weights_map(model: nn.Module, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.repeat(model.w.detach().numpy()[0, 0][None], len(x), axis=0)  # the saliency of a linear model


def test_complexity_rise_is_the_entropy_ratio_of_the_fully_randomised_map():
    w = torch.zeros(1, 1, 8, 8)
    w[0, 0, 2:4, 2:4] = 1.0  # a structured map: two values
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    check = randomisation_check(Linear(w), _weights_map, x, target=1, stages=1, seed=3, return_maps=True)
    expected = discrete_entropy(check["maps"][-1]) / discrete_entropy(check["maps"][0])
    np.testing.assert_allclose(check["complexity_rise"], expected)
    assert (check["complexity_rise"] > 1).all()  # noise weights fill many bins: the map became disordered


def test_smoothed_explain_fn_averages_over_the_same_noisy_copies():
    calls = []

    def explain(model, x, target):
        calls.append(x.copy())
        return x[:, 0] * 2

    x = np.full((2, 1, 6, 6), 0.5, dtype=np.float32)
    fn = smoothed_explain_fn(explain, samples=4, noise=0.1, seed=7)
    a = fn(None, x, np.ones(2, int))
    b = fn(None, x, np.ones(2, int))
    np.testing.assert_array_equal(a, b)  # the same noise on every call: trained and randomised models alike
    np.testing.assert_allclose(a, np.mean([2 * c[:, 0] for c in calls[:4]], axis=0), rtol=1e-6)
    assert len(calls) == 8 and not np.array_equal(calls[0], calls[1])
    assert all(c.min() >= 0 and c.max() <= 1 for c in calls)


def test_smooth_variant_ignores_explanation_noise_that_the_plain_test_rewards():
    # a map that is pure input noise: the plain test sees it change under randomisation (noise differs call to call)
    # and passes it; averaged over noisy copies it is the same smooth map for both models and fails
    counter = {"n": 0}

    def noisy_explainer(model, x, target):
        counter["n"] += 1
        rng = np.random.default_rng(counter["n"])
        return 1.0 + 3 * rng.random((len(x), 8, 8)) + np.linspace(0, 1, 64).reshape(8, 8)[None]

    x = np.random.default_rng(1).random((3, 1, 8, 8)).astype(np.float32)
    model = Linear(torch.randn(1, 1, 8, 8))
    plain = randomisation_check(model, noisy_explainer, x, target=1, stages=1, seed=0)
    smooth = randomisation_check(model, smoothed_explain_fn(noisy_explainer, 64, 0.05), x, target=1, stages=1,
                                 seed=0)
    assert smooth["similarity"].mean() > plain["similarity"].mean() + 0.4
    assert plain["passed"].all() and not smooth["passed"].any()
    assert smooth["similarity"].mean() > 0.8  # the model-independent map is caught as model-independent

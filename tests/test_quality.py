"""Known-answer tests of glasszoo.evaluation.quality (explanation-quality metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from glasszoo.evaluation.quality import (
    _step_counts,
    cascading_groups,
    curve_auc,
    default_blur_sigma,
    default_patch,
    deletion_insertion,
    deletion_insertion_curves,
    deletion_insertion_passes,
    faithfulness_correlation,
    faithfulness_correlation_passes,
    max_sensitivity,
    randomisation_check,
    randomised_models,
    relevance_rank_accuracy,
    sparseness,
    spearman_per_case,
    ssim,
)
from glasszoo.models.errors import DataError


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


class RegionModel(nn.Module):
    """Class-1 logit = a * mean of the image over rows/cols [r0, r1) x [c0, c1) + b; class-0 logit 0.

    Counts forward calls and images, and records the mode it ran in.
    """

    def __init__(self, a: float, box: tuple[int, int, int, int], b: float = 0.0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))
        self.b = nn.Parameter(torch.tensor(float(b)))
        self.box = box
        self.calls = 0
        self.images = 0
        self.seen_training: list[bool] = []
        self.seen_grad: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += len(x)
        self.seen_training.append(self.training)
        self.seen_grad.append(torch.is_grad_enabled())
        r0, r1, c0, c1 = self.box
        z = self.a * x[:, :, r0:r1, c0:c1].mean(dim=(1, 2, 3)) + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


class LinearModel(nn.Module):
    """Additive model: class-1 logit = sum(w * x), class-0 logit 0."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.weight * x).sum(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(z), z], dim=1)


def small_convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )


def gradient_explain(model: nn.Module, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Plain input-gradient saliency |d logit_target / d x| summed over channels."""
    model.eval()
    xt = torch.as_tensor(x, dtype=torch.float32).requires_grad_(True)
    logits = model(xt)
    logits.gather(1, torch.as_tensor(target)[:, None]).sum().backward()
    return xt.grad.abs().sum(dim=1).numpy()


# --------------------------------------------------------------------------------------------------------------------
# Relevance rank accuracy
# --------------------------------------------------------------------------------------------------------------------


def box_mask(n: int, size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((n, size, size), dtype=bool)
    r0, r1, c0, c1 = box
    m[:, r0:r1, c0:c1] = True
    return m


def test_rank_accuracy_perfect_inverted_random_and_constant():
    masks = box_mask(3, 16, (2, 7, 3, 9))
    perfect = masks.astype(np.float32)
    assert np.allclose(relevance_rank_accuracy(perfect, masks), 1.0)
    assert np.allclose(relevance_rank_accuracy(1.0 - perfect, masks), 0.0)
    # Graded map ranking the mask last.
    ramp = np.random.default_rng(0).random((3, 16, 16)) + 2.0 * ~masks
    assert np.allclose(relevance_rank_accuracy(ramp, masks), 0.0)
    # Ties split evenly: a constant map scores exactly the mask fraction.
    frac = masks[0].mean()
    assert np.allclose(relevance_rank_accuracy(np.zeros((3, 16, 16)), masks), frac)
    # A random map scores about the mask fraction on average.
    rng = np.random.default_rng(1)
    many = box_mask(400, 16, (2, 7, 3, 9))
    values = relevance_rank_accuracy(rng.random((400, 16, 16)), many)
    assert values.mean() == pytest.approx(frac, abs=0.01)


def test_rank_accuracy_hand_computed_and_empty_mask():
    # Mask of 2 pixels; the two largest values are 0.9 (inside) and 0.8 (outside) -> 1/2.
    m = np.array([[[0.9, 0.8], [0.1, 0.2]]])
    mask = np.array([[[1, 0], [1, 0]]])
    assert relevance_rank_accuracy(m, mask)[0] == pytest.approx(0.5)
    # Tie at the K-th value: values [1, 0.5, 0.5, 0]; mask {pixel 0, pixel 1}: 1 + 1 * (1/2) = 1.5 of 2.
    m2 = np.array([[[1.0, 0.5], [0.5, 0.0]]])
    mask2 = np.array([[[1, 1], [0, 0]]])
    assert relevance_rank_accuracy(m2, mask2)[0] == pytest.approx(0.75)
    empty = relevance_rank_accuracy(m, np.zeros_like(mask))
    assert np.isnan(empty[0])


def test_rank_accuracy_validation():
    with pytest.raises(DataError, match="masks"):
        relevance_rank_accuracy(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    bad = np.zeros((1, 4, 4))
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="maps"):
        relevance_rank_accuracy(bad, np.ones((1, 4, 4)))


# --------------------------------------------------------------------------------------------------------------------
# Sparseness
# --------------------------------------------------------------------------------------------------------------------


def test_sparseness_known_values():
    n = 16 * 16
    uniform = np.full((1, 16, 16), 0.3)
    onehot = np.zeros((1, 16, 16))
    onehot[0, 5, 7] = -2.0  # absolute value is used
    assert sparseness(uniform)[0] == pytest.approx(0.0, abs=1e-12)
    assert sparseness(onehot)[0] == pytest.approx((n - 1) / n)
    # 2x2 map |.| sorted = [0, 1, 2, 3], n = 4: sum (2k - 5) c_k = -1 + 2 + 9 = 10; / (4 * 6) = 5/12.
    small = np.array([[[3.0, -1.0], [0.0, 2.0]]])
    assert sparseness(small)[0] == pytest.approx(5 / 12)
    # Hurley & Rickard form: 1 - 2 sum_k (c_k / ||c||_1) (n - k + 1/2) / n.
    c = np.array([0.0, 1.0, 2.0, 3.0])
    hr = 1 - 2 * sum(c[k - 1] / c.sum() * (4 - k + 0.5) / 4 for k in range(1, 5))
    assert sparseness(small)[0] == pytest.approx(hr)
    assert np.isnan(sparseness(np.zeros((1, 3, 3)))[0])
    with pytest.raises(DataError, match="maps"):
        sparseness(np.zeros((3, 3)))


# --------------------------------------------------------------------------------------------------------------------
# Deletion / insertion
# --------------------------------------------------------------------------------------------------------------------


def test_defaults_and_step_counts():
    assert default_patch(224, 224) == 18
    assert default_patch(28, 28) == 2
    assert default_patch(8, 8) == 1
    assert default_blur_sigma(16, 24) == 2.0
    assert _step_counts(2, 4).tolist() == [0, 2, 4]
    assert _step_counts(3, 10).tolist() == [0, 3, 7, 10]
    assert deletion_insertion_passes(16) == 34
    assert faithfulness_correlation_passes(32) == 33
    assert curve_auc(np.array([[1.0, 0.0, 0.0]]))[0] == pytest.approx(0.25)


def test_deletion_insertion_hand_computed_tiny_case():
    # 4x4 image of ones, patch 2 -> 4 patches (TL, TR, BL, BR); the model looks at the TL patch only.
    a = 3.0
    model = RegionModel(a, (0, 2, 0, 2))
    x = np.ones((1, 1, 4, 4), dtype=np.float32)
    perfect = np.array([[[4, 4, 3, 3], [4, 4, 3, 3], [2, 2, 1, 1], [2, 2, 1, 1]]], dtype=np.float32)
    # steps=2 -> 0, 2, 4 patches changed. Deletion (zero): TL survives only step 0.
    # probabilities sigma(a), 0.5, 0.5 -> trapezoid mean (s/2 + 0.5 + 0.25) / 2.
    s = sigmoid(a)
    dele, ins = deletion_insertion(model, x, perfect, 1, steps=2, patch=2, insertion_baseline="zero")
    assert dele[0] == pytest.approx((s / 2 + 0.5 + 0.25) / 2, abs=1e-6)
    # Insertion from black: 0.5, sigma(a), sigma(a) -> (0.25 + s + s / 2) / 2.
    assert ins[0] == pytest.approx((0.25 + s + s / 2) / 2, abs=1e-6)
    # Inverted map: TL is deleted last and inserted last.
    dele_inv, ins_inv = deletion_insertion(model, x, -perfect, 1, steps=2, patch=2, insertion_baseline="zero")
    assert dele_inv[0] == pytest.approx((s / 2 + s + 0.25) / 2, abs=1e-6)
    assert ins_inv[0] == pytest.approx((0.25 + 0.5 + s / 2) / 2, abs=1e-6)
    # Target class 0 gives the complementary probabilities.
    dele0, _ = deletion_insertion(model, x, perfect, np.array([0]), steps=2, patch=2)
    assert dele0[0] == pytest.approx(1 - dele[0], abs=1e-6)


def test_deletion_insertion_perfect_beats_inverted_and_counts_passes():
    rng = np.random.default_rng(0)
    n, size, steps = 5, 16, 8
    box = (4, 10, 6, 12)
    model = RegionModel(8.0, box, b=-4.0)  # logit 8 * (region mean - 0.5)
    model.train()
    inside = box_mask(n, size, box)
    # A bright region on a dark background: blurring or deleting the region lowers the probability.
    x = np.where(inside, rng.uniform(0.8, 1.0, size=inside.shape), rng.uniform(0.0, 0.2, size=inside.shape))
    x = x[:, None].astype(np.float32)
    perfect = inside.astype(np.float32) + 0.01 * rng.random((n, size, size))
    dele, ins = deletion_insertion(model, x, perfect, np.ones(n, dtype=int), steps=steps, patch=2, batch_size=7,
                                   baseline="zero")
    # Forward passes: 2 * (steps + 1) images per case, batched over cases.
    assert model.images == n * deletion_insertion_passes(steps)
    assert model.calls == 2 * math.ceil(n * (steps + 1) / 7)
    assert model.training and not any(model.seen_training) and not any(model.seen_grad)
    dele_inv, ins_inv = deletion_insertion(model, x, -perfect, 1, steps=steps, patch=2, baseline="zero")
    assert np.all(dele < dele_inv - 0.1)
    assert np.all(ins > ins_inv + 0.1)
    for baseline in ("mean", "blur"):
        d, i = deletion_insertion(model, x, perfect, 1, steps=steps, baseline=baseline)
        di, ii = deletion_insertion(model, x, -perfect, 1, steps=steps, baseline=baseline)
        assert d.shape == i.shape == (n,)
        assert np.all(d < di) and np.all(i > ii)


def test_deletion_insertion_curve_endpoints_use_the_baselines():
    rng = np.random.default_rng(3)
    n, size, steps = 3, 16, 4
    model = RegionModel(5.0, (0, 16, 0, 16))  # looks at the whole image
    x = rng.random((n, 2, size, size)).astype(np.float32)
    maps = rng.random((n, size, size)).astype(np.float32)

    def prob(imgs: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-5.0 * imgs.reshape(len(imgs), -1).mean(axis=1)))

    blurred = ndimage.gaussian_filter(x, sigma=(0, 0, 2.0, 2.0), mode="reflect")
    dele, ins = deletion_insertion_curves(model, x, maps, 1, steps=steps, baseline="mean")
    assert dele.shape == ins.shape == (n, steps + 1)
    assert np.allclose(dele[:, 0], prob(x), atol=1e-6)
    # Every pixel replaced by its channel mean: the model's image mean is unchanged.
    assert np.allclose(dele[:, -1], prob(x), atol=1e-6)
    # Insertion starts from the blurred image (sigma = 16 / 8 = 2) and ends at the original.
    assert np.allclose(ins[:, 0], prob(blurred), atol=1e-6)
    assert np.allclose(ins[:, -1], prob(x), atol=1e-6)
    d_zero, _ = deletion_insertion_curves(model, x, maps, 1, steps=steps, baseline="zero")
    assert np.allclose(d_zero[:, -1], 0.5, atol=1e-6)


def test_deletion_insertion_validation():
    model = RegionModel(1.0, (0, 2, 0, 2))
    x = np.ones((2, 1, 8, 8), dtype=np.float32)
    maps = np.ones((2, 8, 8))
    with pytest.raises(DataError, match="maps"):
        deletion_insertion(model, x, np.ones((2, 8, 7)), 1)
    with pytest.raises(DataError, match="maps"):
        deletion_insertion(model, x, np.full((2, 8, 8), np.nan), 1)
    with pytest.raises(DataError, match="target"):
        deletion_insertion(model, x, maps, np.array([1, 0, 1]))
    with pytest.raises(DataError, match="target"):
        deletion_insertion(model, x, maps, 2)
    with pytest.raises(DataError, match="baseline"):
        deletion_insertion(model, x, maps, 1, baseline="noise")
    with pytest.raises(DataError, match="x"):
        deletion_insertion(model, x[:, 0], maps, 1)


# --------------------------------------------------------------------------------------------------------------------
# Faithfulness correlation
# --------------------------------------------------------------------------------------------------------------------


def test_faithfulness_correlation_additive_model():
    rng = np.random.default_rng(0)
    n, c, size = 4, 2, 16
    weight = torch.as_tensor(rng.normal(0.0, 0.01, size=(1, c, size, size)), dtype=torch.float32)
    model = LinearModel(weight)
    x = rng.random((n, c, size, size)).astype(np.float32)
    # True contribution of each pixel to the class-1 logit relative to the zero baseline.
    contribution = (weight.numpy() * x).sum(axis=1)
    exact = faithfulness_correlation(model, x, contribution, 1, n_subsets=24, patch=2, score="logit")
    assert np.allclose(exact, 1.0, atol=1e-4)
    near = faithfulness_correlation(model, x, contribution, 1, n_subsets=24, patch=2)
    assert np.all(near > 0.99)
    negated = faithfulness_correlation(model, x, -contribution, 1, n_subsets=24, patch=2)
    assert np.all(negated < -0.99)
    # Equal seeds give equal values; a random map correlates weakly.
    again = faithfulness_correlation(model, x, contribution, 1, n_subsets=24, patch=2)
    assert np.array_equal(near, again)
    noise = faithfulness_correlation(model, x, rng.normal(size=(n, size, size)), 1, n_subsets=24, patch=2)
    assert np.all(np.abs(noise) < 0.9)


def test_faithfulness_correlation_nan_when_constant_and_pass_count():
    model = RegionModel(4.0, (0, 4, 0, 4))
    x = np.random.default_rng(1).random((2, 1, 16, 16)).astype(np.float32)
    # Constant relevance with one-patch subsets: the subset relevance never varies -> nan.
    out = faithfulness_correlation(model, x, np.ones((2, 16, 16)), 1, n_subsets=8, subset_fraction=1 / 64, patch=2)
    assert np.all(np.isnan(out))
    # A model that ignores the removed patches: drop is constant (zero) -> nan.
    blind = RegionModel(4.0, (0, 0, 0, 0))
    blind.forward = lambda t: torch.zeros(len(t), 2)  # type: ignore[method-assign]
    maps = np.random.default_rng(2).random((2, 16, 16))
    assert np.all(np.isnan(faithfulness_correlation(blind, x, maps, 1, n_subsets=8, patch=2)))
    model.images = 0
    faithfulness_correlation(model, x, maps, 1, n_subsets=8, patch=2, batch_size=5)
    assert model.images == 2 * faithfulness_correlation_passes(8)
    with pytest.raises(DataError, match="subset_fraction"):
        faithfulness_correlation(model, x, maps, 1, subset_fraction=0.0)


# --------------------------------------------------------------------------------------------------------------------
# Max-sensitivity
# --------------------------------------------------------------------------------------------------------------------


def test_max_sensitivity_constant_and_identity():
    rng = np.random.default_rng(0)
    x = np.full((3, 2, 16, 16), 0.5, dtype=np.float32)
    t = np.zeros(3, dtype=int)
    const = max_sensitivity(lambda xx, tt: np.ones((len(xx), 16, 16)), x, t, radius=0.05)
    assert np.allclose(const, 0.0)
    # e(x) = x[:, 0] at 0.5 (no clipping): ||d||_F / ||x0||_F <= r sqrt(HW) / (0.5 sqrt(HW)) = 2r, and for many
    # pixels ||d||_F concentrates at r sqrt(HW / 3), i.e. the ratio at 2r / sqrt(3).
    r = 0.04
    ident = max_sensitivity(lambda xx, tt: xx[:, 0], x, t, radius=r, n_samples=5)
    assert np.all(ident <= 2 * r)
    assert np.allclose(ident, 2 * r / math.sqrt(3), rtol=0.1)
    # Clipping at the border of [0, 1] only shrinks the change.
    xb = rng.random((3, 1, 16, 16)).astype(np.float32) * 0.01 + 0.99
    clipped = max_sensitivity(lambda xx, tt: xx[:, 0], xb, t, radius=r, n_samples=5)
    bound = r * math.sqrt(256) / np.sqrt((xb[:, 0] ** 2).reshape(3, -1).sum(axis=1))
    assert np.all(clipped <= bound)
    assert np.all(clipped < 0.8 * 2 * r / math.sqrt(3))
    zero = max_sensitivity(lambda xx, tt: np.zeros((len(xx), 16, 16)), x, t)
    assert np.all(np.isnan(zero))
    with pytest.raises(DataError, match="explain_fn"):
        max_sensitivity(lambda xx, tt: np.zeros((len(xx), 8, 8)), x, t)


# --------------------------------------------------------------------------------------------------------------------
# Spearman and SSIM
# --------------------------------------------------------------------------------------------------------------------


def test_spearman_known_values():
    rng = np.random.default_rng(0)
    a = rng.random((4, 8, 8))
    assert np.allclose(spearman_per_case(a, np.exp(3 * a) + 1), 1.0)
    assert np.allclose(spearman_per_case(a, -a), -1.0)
    assert np.isnan(spearman_per_case(a, np.zeros_like(a))).all()
    # Ties: ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4] -> Pearson of the ranks.
    x = np.array([[[0.0, 1.0], [1.0, 2.0]]])
    y = np.array([[[0.0, 1.0], [2.0, 3.0]]])
    ra, rb = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4.0])
    assert spearman_per_case(x, y)[0] == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    with pytest.raises(DataError, match="equal shapes"):
        spearman_per_case(a, a[:, :4])


def test_ssim_known_values():
    rng = np.random.default_rng(0)
    a = rng.random((3, 20, 20))
    assert np.allclose(ssim(a, a), 1.0)
    # Constant maps: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) everywhere.
    c1 = 0.01 ** 2
    s = ssim(np.full((1, 10, 10), 0.2), np.full((1, 10, 10), 0.6))[0]
    assert s == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1))
    assert np.all(ssim(a, 1 - a) < 0)
    assert np.all(ssim(a, rng.random((3, 20, 20))) < 0.2)
    # With an 11 x 11 window it equals scikit-image's Gaussian SSIM with population statistics.
    skm = pytest.importorskip("skimage.metrics")
    b = np.clip(a + 0.2 * rng.normal(size=a.shape), 0, 1)
    ref = [skm.structural_similarity(a[i], b[i], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False) for i in range(3)]
    assert np.allclose(ssim(a, b, radius=5), ref, atol=1e-10)
    # Maps smaller than the window still work.
    assert np.allclose(ssim(a[:, :4, :4], a[:, :4, :4]), 1.0)


# --------------------------------------------------------------------------------------------------------------------
# Cascading randomisation
# --------------------------------------------------------------------------------------------------------------------


def test_cascading_groups_from_output_end():
    assert cascading_groups(6, 3) == [[5, 4], [3, 2], [1, 0]]
    assert cascading_groups(7, 3) == [[6, 5, 4], [3, 2], [1, 0]]
    assert cascading_groups(2, 3) == [[1], [0], []]


def test_randomisation_model_independent_explanation_fails():
    model = small_convnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = np.random.default_rng(0).random((4, 1, 16, 16)).astype(np.float32)
    out = randomisation_check(model, lambda m, xx, tt: xx[:, 0], x, np.zeros(4, dtype=int), stages=3)
    n_tensors = len(list(model.parameters()))  # 8: conv w/b, bn w/b, conv w/b, linear w/b
    assert out["stages"] == pytest.approx([3 / n_tensors, 6 / n_tensors, 1.0])
    assert len(out["spearman"]) == len(out["ssim"]) == 3
    for rho, s in zip(out["spearman"], out["ssim"]):
        assert np.allclose(rho, 1.0) and np.allclose(s, 1.0)
    assert out["passed"].dtype == bool and not out["passed"].any()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_randomisation_gradient_explanation_passes_and_cascades_from_the_top():
    model = small_convnet(1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    original = [p.detach().clone() for p in model.parameters()]
    seen: list[list[torch.Tensor]] = []

    def explain(m: nn.Module, xx: np.ndarray, tt: np.ndarray) -> np.ndarray:
        seen.append([p.detach().clone() for p in m.parameters()])
        return gradient_explain(m, xx, tt)

    x = np.random.default_rng(0).random((6, 1, 16, 16)).astype(np.float32)
    out = randomisation_check(model, explain, x, 1, stages=2, seed=3)
    assert np.all(out["spearman"][-1] < 0.5)
    assert np.nanmean(out["spearman"][-1]) < 0.3
    assert out["passed"].all()
    # Original untouched (weights and BN running statistics).
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # seen[0]: the original; stage 1: the last 4 tensors changed only; stage 2: all changed.
    assert len(seen) == 3
    assert all(torch.equal(a, b) for a, b in zip(seen[0], original))
    stage1 = [not torch.equal(a, b) for a, b in zip(seen[1], original)]
    assert stage1 == [False] * 4 + [True] * 4
    assert all(not torch.equal(a, b) for a, b in zip(seen[2], original))
    # The BatchNorm weight (all ones) got N(1, 0.1) values, not a constant.
    bn_weight = seen[2][2]
    assert 0.02 < float(bn_weight.std()) < 0.3 and abs(float(bn_weight.mean()) - 1.0) < 0.15
    # The seed fixes the random weights.
    again = randomisation_check(model, gradient_explain, x, 1, stages=2, seed=3)
    assert np.allclose(again["spearman"][-1], out["spearman"][-1])


def test_randomised_copies_shared_by_two_methods_give_each_its_own_results():
    """One model's randomised copies (drawn once) serve the checks of two methods exactly as each method's own
    draw: the same weights per stage, cascading from the output end, and the trained model untouched."""
    model = small_convnet(1)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    x = np.random.default_rng(1).random((3, 1, 16, 16)).astype(np.float32)
    copies = randomised_models(model, stages=2, seed=3)
    base = list(model.parameters())
    n = len(base)
    first = set(cascading_groups(n, 2)[0])  # the tensors nearest the output, randomised from stage 1 on
    assert [f for f, _ in copies] == [len(first) / n, 1.0]
    params = [list(m.parameters()) for _, m in copies]
    for i in range(n):
        assert torch.equal(params[0][i], params[1][i]) == (i in first)  # stage 2 adds the rest, keeps stage 1's
        assert torch.equal(params[0][i], base[i]) == (i not in first)
        assert not torch.equal(params[1][i], base[i])
    for method in (gradient_explain, lambda m, xx, tt: gradient_explain(m, xx, tt) * xx[:, 0]):
        alone = randomisation_check(model, method, x, 1, stages=2, seed=3)
        shared = randomisation_check(model, method, x, 1, stages=2, seed=3, randomised=copies)
        assert alone["stages"] == shared["stages"]
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(alone["spearman"], shared["spearman"]))
        assert np.array_equal(alone["similarity"], shared["similarity"])
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    with pytest.raises(DataError, match="2 randomised models for 3 stages"):
        randomisation_check(model, gradient_explain, x, 1, stages=3, randomised=copies)


def test_a_given_reference_replaces_the_first_call_and_changes_nothing():
    """``reference`` (the trained model's maps, which the randomisation test and max-sensitivity share) saves one
    explanation each and gives the very results of computing it."""
    model = small_convnet(1)
    x = np.random.default_rng(1).random((3, 1, 16, 16)).astype(np.float32)
    calls = []

    def explain(m: nn.Module, xx: np.ndarray, tt: np.ndarray) -> np.ndarray:
        calls.append(len(xx))
        return gradient_explain(m, xx, tt)

    plain = randomisation_check(model, explain, x, 1, stages=2, seed=3, return_maps=True)
    assert len(calls) == 3
    reference = plain["maps"][0]
    calls.clear()
    shared = randomisation_check(model, explain, x, 1, stages=2, seed=3, return_maps=True, reference=reference)
    assert len(calls) == 2  # the two stages only
    for key in ("spearman", "ssim"):
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(plain[key], shared[key]))
    assert np.array_equal(plain["similarity"], shared["similarity"])
    assert np.array_equal(plain["complexity_rise"], shared["complexity_rise"], equal_nan=True)

    calls.clear()
    sens = max_sensitivity(lambda xx, tt: explain(model, xx, tt), x, np.ones(3, dtype=int), n_samples=2, seed=5)
    assert len(calls) == 3
    calls.clear()
    again = max_sensitivity(lambda xx, tt: explain(model, xx, tt), x, np.ones(3, dtype=int), n_samples=2, seed=5,
                            reference=reference)
    assert len(calls) == 2 and np.array_equal(sens, again)
    with pytest.raises(DataError, match="explain_fn"):  # a reference of the wrong shape is named as the maps
        max_sensitivity(lambda xx, tt: explain(model, xx, tt), x, 1, reference=reference[:, :8])


def test_randomisation_flat_maps_by_hand():
    """A structured map that the randomised model turns flat has changed completely (similarity 0, passes); a map
    flat for both models has not changed (similarity 1, fails); otherwise the similarity is the Spearman rank
    correlation at full randomisation."""
    model = small_convnet()
    x = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    sparse = np.zeros((8, 8), np.float32)
    sparse[3, 4] = 1.0  # one hot pixel: flat almost everywhere

    def explain(m: nn.Module, xx: np.ndarray, tt: np.ndarray) -> np.ndarray:
        trained = m is model
        maps = np.stack([sparse if trained else np.zeros((8, 8), np.float32),  # case 0: turns flat
                         np.full((8, 8), 0.5, np.float32),                      # case 1: flat for both
                         xx[2, 0] if trained else -xx[2, 0] ** 3])              # case 2: same ranking of |map|
        return maps

    out = randomisation_check(model, explain, x, 0, stages=2)
    assert np.isnan(out["spearman"][-1][:2]).all() and out["spearman"][-1][2] == pytest.approx(1.0)
    np.testing.assert_allclose(out["similarity"], [0.0, 1.0, 1.0])
    assert out["passed"].tolist() == [True, False, False]


def test_randomisation_validation():
    model = small_convnet()
    x = np.zeros((2, 1, 8, 8), dtype=np.float32)
    with pytest.raises(DataError, match="explain_fn"):
        randomisation_check(model, lambda m, xx, tt: np.zeros((2, 4, 4)), x, 0)
    with pytest.raises(DataError, match="target"):
        randomisation_check(model, lambda m, xx, tt: xx[:, 0], x, np.zeros(3, dtype=int))

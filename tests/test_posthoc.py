"""Post-hoc explainers: known answers on hand-built models, LRP conservation, determinism, pass counts, errors."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from glasszoo.evaluation.explain_eval import occlusion_agreement
from glasszoo.evaluation.posthoc import (
    DEFAULT_METHODS,
    POSTHOC_METHODS,
    PassCounter,
    TimmResNetCanonizer,
    cam_layer,
    expected_passes,
    explain_posthoc,
    grid_mask,
)
from glasszoo.models.blackbox import BlackBoxCNN


class Additive(nn.Module):
    """logit_1 = sum(w * x) + bias, logit_0 = -sum(w * x): exactly additive over pixels."""

    def __init__(self, w: torch.Tensor, bias: float = 0.5) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).sum(dim=(1, 2, 3))
        return torch.stack([-s, s + self.bias], dim=1)


def _additive(c: int = 1, side: int = 12, seed: int = 0) -> tuple[Additive, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, side, side, generator=g)
    x = torch.rand(3, c, side, side, generator=g)
    return Additive(w), x


def _tiny_cnn(seed: int = 0, c: int = 1, classes: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(6, classes))


# Small parameters so every method is quick on 12 px images.
SMALL = {
    "gradcam": {}, "hirescam": {}, "saliency": {},
    "integrated_gradients": {"n_steps": 8},
    "deeplift": {},
    "smoothgrad": {"nt_samples": 6, "nt_samples_batch_size": 4},
    "occlusion": {"window": 4, "stride": 2, "perturbations_per_eval": 3},
    "kernel_shap": {"grid": 3, "n_samples": 20},
    "shapley_sampling": {"grid": 3, "n_samples": 2},
    "lime": {"grid": 3, "n_samples": 20},
    "lrp": {},
}


# -------------------------------------------------------------------------------------------------- known answers

def test_saliency_of_additive_model_is_abs_weight_max_over_channels():
    model, x = _additive(c=2)
    h = explain_posthoc(model, x, "saliency", target=np.ones(3, int))
    expected = model.w.detach().abs().amax(dim=0).numpy()
    np.testing.assert_allclose(h.maps, np.broadcast_to(expected, h.maps.shape), rtol=1e-6)
    assert h.method == "saliency" and h.maps.dtype == np.float32


def test_integrated_gradients_equals_w_times_x_and_is_complete():
    model, x = _additive(c=2)
    h = explain_posthoc(model, x, "integrated_gradients", target=np.ones(3, int))
    expected = (model.w.detach() * x).sum(dim=1).numpy()
    np.testing.assert_allclose(h.maps, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        gap = (model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]).numpy()
    np.testing.assert_allclose(h.maps.sum(axis=(1, 2)), gap, rtol=1e-4, atol=1e-4)  # completeness


def test_deeplift_on_a_linear_model_is_gradient_times_input_minus_baseline():
    model, x = _additive(c=2)
    h = explain_posthoc(model, x, "deeplift", target=np.ones(3, int), params={"baseline": 0.25})
    # d logit_1 / dx = w everywhere, so DeepLIFT's multiplier is w and the map is sum_c w * (x - 0.25)
    expected = (model.w.detach() * (x - 0.25)).sum(dim=1).numpy()
    np.testing.assert_allclose(h.maps, expected, rtol=1e-4, atol=1e-5)
    neg = explain_posthoc(model, x, "deeplift", target=np.zeros(3, int), params={"baseline": 0.25})
    np.testing.assert_allclose(neg.maps, -expected, rtol=1e-4, atol=1e-5)  # logit_0 = -s


def test_deeplift_sums_to_the_logit_difference_on_a_relu_network():
    model = _tiny_cnn(seed=4).eval()
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    h = explain_posthoc(model, x, "deeplift")
    with torch.no_grad():
        t = torch.as_tensor(h.target)
        delta = (model(x) - model(torch.zeros_like(x)))[torch.arange(4), t].numpy()
    # summation-to-delta (Shrikumar et al. 2017, eq. 1) holds for the Rescale rule through ReLUs and pooling
    np.testing.assert_allclose(h.maps.sum(axis=(1, 2)), delta, rtol=1e-4, atol=1e-5)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xr)[torch.arange(4), t].sum(), xr)
    assert not np.allclose(h.maps, (grad * x).sum(dim=1).numpy(), atol=1e-4)  # not the plain gradient x input


def test_deeplift_on_the_blackbox_sums_to_the_logit_difference():
    model = BlackBoxCNN(2, 1, 16, backbone="resnet10t", stem="standard").eval()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    h = explain_posthoc(model, x, "deeplift")
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x)))[torch.arange(2), torch.as_tensor(h.target)].numpy()
    np.testing.assert_allclose(h.maps.sum(axis=(1, 2)), delta, rtol=1e-3, atol=1e-5)


def test_deeplift_on_the_cpu_is_silent_and_repeatable_under_deterministic_mode():
    """The training's deterministic mode makes torch warn at DeepLIFT's max-unpooling (10 lines in every quickstart
    run); on the CPU the op is a sequential loop per channel, so the warning is dropped there and the maps repeat."""
    model = BlackBoxCNN(2, 1, 16, backbone="resnet10t", stem="standard").eval()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    was, was_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = explain_posthoc(model, x, "deeplift").maps
        second = explain_posthoc(model, x, "deeplift").maps
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)
    assert not [w for w in caught if "deterministic" in str(w.message)], [str(w.message) for w in caught]
    np.testing.assert_array_equal(first, second)


def _cell_sums(values: np.ndarray, cell: int) -> np.ndarray:
    """Each pixel replaced by the sum of ``values`` over its (cell x cell) block; values [N, H, W]."""
    n, h, w = values.shape
    sums = values.reshape(n, h // cell, cell, w // cell, cell).sum(axis=(2, 4))
    return np.repeat(np.repeat(sums, cell, axis=1), cell, axis=2)


def test_occlusion_equals_hand_computed_logit_drop():
    model, x = _additive(c=1)
    h = explain_posthoc(model, x, "occlusion", target=np.ones(3, int), params={"window": 4, "stride": 4})
    # the windows tile the image: a pixel's value is f(x) - f(x with its window set to 0) = sum of w * x there
    expected = _cell_sums((model.w.detach() * x).sum(dim=1).numpy(), 4)
    np.testing.assert_allclose(h.maps, expected, rtol=1e-4, atol=1e-4)


def test_occlusion_takes_the_window_drop_once_for_multichannel_images():
    model, x = _additive(c=3)
    h = explain_posthoc(model, x, "occlusion", target=np.ones(3, int), params={"window": 6, "stride": 6})
    expected = _cell_sums((model.w.detach() * x).sum(dim=1).numpy(), 6)
    np.testing.assert_allclose(h.maps, expected, rtol=1e-4, atol=1e-4)


def test_grid_mask_tiles_the_image():
    m = grid_mask(12, 12, 3)
    assert m.shape == (12, 12) and sorted(np.unique(m)) == list(range(9))
    assert (m[:4, :4] == 0).all() and (m[8:, 4:8] == 7).all()
    uneven = grid_mask(13, 10, 6)
    assert len(np.unique(uneven)) == 36
    counts = np.bincount(uneven.ravel())
    assert counts.min() >= 2 and counts.max() <= 6


@pytest.mark.parametrize("method,params", [("kernel_shap", {"grid": 3, "n_samples": 60}),
                                           ("lime", {"grid": 3, "n_samples": 60, "lasso_alpha": 0.0})])
def test_superpixel_methods_recover_additive_contributions(method, params):
    model, x = _additive(c=1)
    h = explain_posthoc(model, x, method, target=np.ones(3, int), params=params)
    expected = _cell_sums((model.w.detach() * x).sum(dim=1).numpy(), 4)  # 12 px / 3 cells
    np.testing.assert_allclose(h.maps, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("n_samples", [1, 3])
def test_shapley_sampling_recovers_each_superpixel_contribution_of_an_additive_model(n_samples):
    model, x = _additive(c=2)
    h = explain_posthoc(model, x, "shapley_sampling", target=np.ones(3, int),
                        params={"grid": 3, "n_samples": n_samples, "baseline": 0.0})
    # additive model: every ordering gives each superpixel its own sum of w * x, painted over its 4 x 4 cell
    expected = _cell_sums((model.w.detach() * x).sum(dim=1).numpy(), 4)
    np.testing.assert_allclose(h.maps, expected, rtol=1e-4, atol=1e-4)


def test_shapley_sampling_is_efficient_and_ignores_dummy_superpixels():
    class Product(nn.Module):  # logit_1 = (mean of the top-left quadrant) * (mean of the bottom-right quadrant)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = x[:, 0, :6, :6].mean(dim=(1, 2)) * x[:, 0, 6:, 6:].mean(dim=(1, 2))
            return torch.stack([-v, v], dim=1)

    x = torch.ones(1, 1, 12, 12)
    x[..., :6, :6] = 0.5
    h = explain_posthoc(Product(), x, "shapley_sampling", target=1,
                        params={"grid": 2, "n_samples": 40, "baseline": 0.0})
    cells = h.maps[0, ::6, ::6]  # [[top-left, top-right], [bottom-left, bottom-right]]
    # every ordering hands out exactly f(x) - f(0) = 0.5 (efficiency) and nothing to the two quadrants the model
    # never reads (dummy players); the product's value is shared, 0.25 each in expectation over the orderings
    assert cells[0, 0] + cells[1, 1] == pytest.approx(0.5, abs=1e-6)
    assert cells[0, 1] == 0 and cells[1, 0] == 0
    assert 0.1 < cells[0, 0] < 0.4


def test_lime_default_lasso_keeps_the_additive_ranking():
    model, x = _additive(c=1)
    h = explain_posthoc(model, x, "lime", target=np.ones(3, int), params={"grid": 3, "n_samples": 64})
    expected = _cell_sums((model.w.detach() * x).sum(dim=1).numpy(), 4)
    for got, want in zip(h.maps, expected):
        assert np.corrcoef(got[::4, ::4].ravel(), want[::4, ::4].ravel())[0, 1] > 0.95


class CamNet(nn.Module):
    """A 4x4/stride-4 averaging conv (12 px -> 3x3 map), global average pooling, logits (-a, +a)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 1, 4, stride=4, bias=False)
        self.head = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.features.weight.fill_(1 / 16)
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))

    def cam_layer(self) -> nn.Module:
        return self.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_gradcam_peaks_where_the_evidence_is_and_matches_hand_value():
    model = CamNet()
    x = 0.05 * torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    x[0, 0, 8:12, 4:8] = 1.0   # evidence in feature cell (2, 1)
    x[1, 0, 0:4, 8:12] = 1.0   # evidence in feature cell (0, 2)
    h = explain_posthoc(model, x, "gradcam", target=np.ones(2, int))
    for m, (r, c) in zip(h.maps, [(2, 1), (0, 2)]):
        row, col = np.unravel_index(np.argmax(m), m.shape)
        assert (row // 4, col // 4) == (r, c)
    # Grad-CAM = ReLU(mean gradient (1/9) x feature map), bilinearly upsampled
    with torch.no_grad():
        expected = F.interpolate(torch.relu(model.features(x) / 9), size=(12, 12), mode="bilinear")[:, 0].numpy()
    np.testing.assert_allclose(h.maps, expected, rtol=1e-5, atol=1e-7)
    neg = explain_posthoc(model, x, "gradcam", target=np.zeros(2, int))
    assert np.all(neg.maps == 0)  # negative evidence everywhere: ReLU removes it
    # with global average pooling and a linear head, HiResCAM coincides with Grad-CAM (Draelos & Carin 2020)
    hires = explain_posthoc(model, x, "hirescam", target=np.ones(2, int))
    np.testing.assert_allclose(hires.maps, h.maps, rtol=1e-5, atol=1e-7)
    by_name = explain_posthoc(model, x, "gradcam", target=np.ones(2, int), params={"layer": "features"})
    np.testing.assert_array_equal(by_name.maps, h.maps)


def test_cam_layer_resolution():
    cam_net = CamNet()
    assert cam_layer(cam_net) is cam_net.features  # the model's own cam_layer()
    bb = BlackBoxCNN(2, 1, 16)
    assert cam_layer(bb) is bb.net.layer4
    cnn = _tiny_cnn()
    assert cam_layer(cnn) is cnn[2]


# ---------------------------------------------------------------------------------------------------------- LRP

def test_lrp0_equals_gradient_times_input_on_relu_net():
    model = _tiny_cnn(seed=3).eval()
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    h = explain_posthoc(model, x, "lrp", params={"composite": "epsilon", "epsilon": 1e-9})
    xr = x.clone().requires_grad_(True)
    out = model(xr)
    (grad,) = torch.autograd.grad(out[torch.arange(4), torch.as_tensor(h.target)].sum(), xr)
    expected = (grad * x).sum(dim=1).numpy()
    np.testing.assert_allclose(h.maps, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def _resnet_zero_bias(seed: int = 0) -> nn.Module:
    """timm ResNet-18 (1 channel, 2 classes) whose merged conv/bn biases are zero but whose BN scales are not."""
    torch.manual_seed(seed)
    net = timm.create_model("resnet18", num_classes=2, in_chans=1).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
        net.fc.bias.zero_()
    return net


@pytest.mark.parametrize("composite,rtol", [("epsilon", 1e-3), ("epsilon_plus_flat", 1e-3)])
def test_lrp_conserves_relevance_on_timm_resnet(composite, rtol):
    net = _resnet_zero_bias()
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = net(x)
    h = explain_posthoc(net, x, "lrp", params={"composite": composite})
    target_logit = logits[torch.arange(2), torch.as_tensor(h.target)].numpy()
    np.testing.assert_allclose(h.maps.sum(axis=(1, 2)), target_logit, rtol=rtol)


def test_lrp_leaves_timm_resnet_bit_identical():
    net = _resnet_zero_bias(seed=1)
    before = copy.deepcopy(net.state_dict())
    eps_before = [m.eps for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        out_before = net(x)
    for composite in ("epsilon_plus_flat", "epsilon_alpha2_beta1_flat"):
        h = explain_posthoc(net, x, "lrp", params={"composite": composite})
        assert np.isfinite(h.maps).all() and np.abs(h.maps).sum() > 0
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net.conv1.bias is None and net.layer1[0].conv1.bias is None
    assert [m.eps for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == eps_before
    assert not hasattr(net.layer1[0], "canonizer_sum") and "forward" not in vars(net.layer1[0])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    with torch.no_grad():
        assert torch.equal(net(x), out_before)


def test_timm_canonizer_keeps_the_function():
    net = timm.create_model("resnet50", num_classes=3, in_chans=1).eval()  # Bottleneck blocks
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.1, 0.1)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        ref = net(x)
        instances = TimmResNetCanonizer().apply(net)
        try:
            assert sum(hasattr(m, "canonizer_sum") for m in net.modules()) == 16  # 3 + 4 + 6 + 3 blocks
            assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))  # all merged
            canon = net(x)
        finally:
            for inst in instances:
                inst.remove()
    torch.testing.assert_close(canon, ref, rtol=1e-4, atol=1e-5)


def test_lrp_on_blackbox_cnn_small_stem():
    model = BlackBoxCNN(2, 1, 16).eval()
    with torch.no_grad():
        model.net.fc.bias.zero_()  # fresh BN: zero mean and shift, so merged biases are zero
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        logits = model(x)
    h = explain_posthoc(model, x, "lrp")
    assert h.maps.shape == (2, 16, 16)
    np.testing.assert_allclose(h.maps.sum(axis=(1, 2)), logits.max(dim=1).values.numpy(), rtol=1e-3)


def test_lrp_rejects_unsupported_models():
    model, x = _additive()
    with pytest.raises(ValueError, match="lrp needs a timm ResNet backbone.*Additive has no timm ResNet"):
        explain_posthoc(model, x, "lrp")

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = timm.create_model("resnet18", num_classes=2, in_chans=1)
            self.temperature = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x) / self.temperature

    with pytest.raises(ValueError, match="parameters outside its timm ResNet: temperature"):
        explain_posthoc(Wrapped(), torch.rand(1, 1, 16, 16), "lrp")
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(200, 2))
    with pytest.raises(ValueError, match="without a sound LRP rule: Sigmoid"):
        explain_posthoc(seq, torch.rand(1, 1, 12, 12), "lrp")


# ----------------------------------------------------------------------------------------- determinism, state, API

@pytest.mark.parametrize("method", ["smoothgrad", "kernel_shap", "shapley_sampling", "lime"])
def test_same_seed_same_maps_different_seed_different(method):
    model = _tiny_cnn(seed=5)
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    params = {**SMALL[method], **({"lasso_alpha": 0.0} if method == "lime" else {})}
    a = explain_posthoc(model, x, method, params=params, seed=7, batch_size=2)
    b = explain_posthoc(model, x, method, params=params, seed=7, batch_size=2)
    c = explain_posthoc(model, x, method, params=params, seed=8, batch_size=2)
    np.testing.assert_array_equal(a.maps, b.maps)
    assert not np.array_equal(a.maps, c.maps)
    if method != "smoothgrad":  # seeded per case: the chunking does not matter
        d = explain_posthoc(model, x, method, params=params, seed=7, batch_size=3)
        np.testing.assert_allclose(d.maps, a.maps, rtol=1e-4, atol=1e-5)


def test_global_random_state_is_untouched():
    model = _tiny_cnn()
    x = torch.rand(2, 1, 12, 12)
    torch.manual_seed(123)
    np.random.seed(123)
    explain_posthoc(model, x, "kernel_shap", params=SMALL["kernel_shap"], seed=0)
    after_t, after_n = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    assert torch.equal(after_t, torch.rand(3)) and np.array_equal(after_n, np.random.rand(3))


@pytest.mark.parametrize("method", DEFAULT_METHODS)
def test_model_state_grads_and_requires_grad_are_restored(method):
    model = _tiny_cnn(seed=1).train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    model[0].bias.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(3, 1, 12, 12).numpy()
    h = explain_posthoc(model, x, method, params=SMALL[method], batch_size=2, case_ids=["a", "b", "c"])
    assert model.training
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in model.parameters())
    assert model[0].bias.requires_grad is False and model[0].weight.requires_grad is True
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # output contract: [N, H, W] float32 at input resolution; target = the (eval-mode) prediction
    assert h.maps.shape == (3, 12, 12) and h.maps.dtype == np.float32 and np.isfinite(h.maps).all()
    assert h.method == method and list(h.case_ids) == ["a", "b", "c"]
    with torch.no_grad():
        np.testing.assert_array_equal(h.target, model.eval()(torch.as_tensor(x)).argmax(1).numpy())


def test_given_target_is_explained():
    model = _tiny_cnn()
    x = torch.rand(3, 1, 12, 12)
    h = explain_posthoc(model, x, "saliency", target=2)
    assert list(h.target) == [2, 2, 2]
    h2 = explain_posthoc(model, x, "saliency", target=[0, 1, 2])
    assert list(h2.target) == [0, 1, 2]
    with pytest.raises(ValueError, match="target has 2 entries for 3 images"):
        explain_posthoc(model, x, "saliency", target=[0, 1])


def test_unknown_method_and_param_errors():
    model = _tiny_cnn()
    x = torch.rand(1, 1, 12, 12)
    with pytest.raises(ValueError, match=r"unknown post-hoc method 'gradcam\+\+'.*gradcam, hirescam.*lrp"):
        explain_posthoc(model, x, "gradcam++")
    with pytest.raises(ValueError, match=r"unknown parameter 'n_step' .*'integrated_gradients'.*n_steps, method"):
        explain_posthoc(model, x, "integrated_gradients", params={"n_step": 4})
    with pytest.raises(ValueError, match="unknown parameter 'layer'.*saliency.*known parameters: none"):
        explain_posthoc(model, x, "saliency", params={"layer": "0"})
    with pytest.raises(ValueError, match="unknown post-hoc method 'shap'"):
        expected_passes("shap")
    with pytest.raises(ValueError, match="unknown composite 'zplus'"):
        explain_posthoc(model, x, "lrp", params={"composite": "zplus"})


def test_methods_table():
    assert DEFAULT_METHODS == ("gradcam", "hirescam", "saliency", "integrated_gradients", "deeplift", "smoothgrad",
                               "occlusion", "kernel_shap", "shapley_sampling", "lime", "lrp")
    assert set(POSTHOC_METHODS) == set(DEFAULT_METHODS)
    assert POSTHOC_METHODS["integrated_gradients"]["n_steps"] == 32
    assert POSTHOC_METHODS["smoothgrad"] == {"nt_samples": 16, "stdevs": 0.15, "nt_samples_batch_size": 4}
    assert POSTHOC_METHODS["kernel_shap"]["grid"] == 6 and POSTHOC_METHODS["kernel_shap"]["n_samples"] == 64


# ------------------------------------------------------------------------------------------------------ pass counts

def test_expected_passes_formulas():
    assert expected_passes("integrated_gradients", {"n_steps": 8}) == {"forward": 9, "backward": 8}
    assert expected_passes("integrated_gradients", {"n_steps": 8}, predicted_target=False) == {"forward": 8,
                                                                                               "backward": 8}
    # 48 px: window 8, stride 4 -> (ceil(40 / 4) + 1)^2 = 121 windows, + unoccluded + prediction
    assert expected_passes("occlusion") == {"forward": 123, "backward": 0}
    assert expected_passes("occlusion", image_shape=(3, 28, 28)) == {"forward": 13 * 13 + 2, "backward": 0}
    assert expected_passes("kernel_shap", {"n_samples": 20}) == {"forward": 21, "backward": 0}
    assert expected_passes("smoothgrad") == {"forward": 17, "backward": 16}
    assert expected_passes("lrp") == {"forward": 2, "backward": 1}
    assert expected_passes("deeplift") == {"forward": 3, "backward": 2}
    # 6 x 6 superpixels, 8 orderings: 1 baseline + 8 * 36 forward passes, + the prediction
    assert expected_passes("shapley_sampling") == {"forward": 1 + 8 * 36 + 1, "backward": 0}
    assert expected_passes("shapley_sampling", {"grid": 9}, image_shape=(1, 6, 6),
                           predicted_target=False) == {"forward": 1 + 8 * 36, "backward": 0}


def test_pass_counter_ig_and_kernel_shap_exact_counts():
    model = _tiny_cnn()
    x = torch.rand(3, 1, 12, 12)
    with PassCounter(model) as pc:
        explain_posthoc(model, x, "integrated_gradients", params={"n_steps": 8})
    exp = expected_passes("integrated_gradients", {"n_steps": 8}, (1, 12, 12))
    assert (pc.forward_images, pc.backward_images) == (exp["forward"] * 3, exp["backward"] * 3) == (27, 24)
    with PassCounter(model) as pc:
        explain_posthoc(model, x, "kernel_shap", target=[0, 1, 2], params={"n_samples": 20, "grid": 3})
    assert pc.forward_images == expected_passes("kernel_shap", {"n_samples": 20}, predicted_target=False)[
        "forward"] * 3 == 60
    assert pc.backward_images == 0
    assert pc.forward_calls < pc.forward_images  # perturbations are batched, not one image per call
    assert pc.per_image(3) == {"forward": 20.0, "backward": 0.0}


def test_shapley_sampling_batches_each_ordering_into_one_call_with_the_same_values():
    # Shapley sampling's n_samples counts orderings (2 here), not perturbations: each of the 9 superpixels of an
    # ordering is one perturbed image, and the 9 go into one forward call (batch_size 64 >= 9), not 2-image calls
    model = _tiny_cnn(seed=3)
    x = torch.rand(2, 1, 12, 12)
    params = {"grid": 3, "n_samples": 2}
    with PassCounter(model) as pc:
        batched = explain_posthoc(model, x, "shapley_sampling", target=[0, 1], params=params)
    # per case: the baseline's call, then one call of 9 images per ordering
    assert (pc.forward_calls, pc.forward_images) == (2 * (1 + 2), 2 * (1 + 2 * 9))
    with PassCounter(model) as pc:
        single = explain_posthoc(model, x, "shapley_sampling", target=[0, 1],
                                 params={**params, "perturbations_per_eval": 1})
    assert (pc.forward_calls, pc.forward_images) == (2 * (1 + 2 * 9), 2 * (1 + 2 * 9))
    # the same orderings (seeded per case), so the same values up to the batched sums' rounding
    np.testing.assert_allclose(batched.maps, single.maps, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", DEFAULT_METHODS)
@pytest.mark.parametrize("given_target", [False, True])
def test_pass_counter_matches_expected_passes(method, given_target):
    model = _tiny_cnn(seed=2)
    x = torch.rand(3, 1, 12, 12)
    target = [1, 0, 2] if given_target else None
    with PassCounter(model) as pc:
        explain_posthoc(model, x, method, target=target, params=SMALL[method], batch_size=2)
    exp = expected_passes(method, SMALL[method], (1, 12, 12), predicted_target=not given_target)
    assert pc.per_image(3) == {"forward": float(exp["forward"]), "backward": float(exp["backward"])}
    # counts are bounded by the configured sample counts
    bound = {"integrated_gradients": 8, "smoothgrad": 6, "kernel_shap": 20, "lime": 20, "deeplift": 2,
             "shapley_sampling": 1 + 2 * 9, "occlusion": 1 + 5 * 5}.get(method, 1)
    assert pc.forward_images <= 3 * (bound + 1)
    assert pc.backward_images <= 3 * bound


# ---------------------------------------------------------------------------------------- agreement with occlusion

def test_occlusion_agreement_is_the_per_case_rank_correlation_on_the_shared_cases():
    rng = np.random.default_rng(0)
    occ = rng.random((4, 6, 6)) - 0.5  # signed, as occlusion's logit drops are
    same_order = -3 * occ[:2]  # the same magnitudes, the sign flipped: rho = 1 on its 2 cases (absolute values)
    reversed_map = 1 / (0.1 + np.abs(occ))  # large where occlusion is small: rho = -1 on all 4
    out = occlusion_agreement({"occlusion": occ, "a": same_order, "b": reversed_map}, (200, 0.95, 0))
    assert set(out) == {"a", "b"}
    a, b = out["a"]["occlusion_rank_correlation"], out["b"]["occlusion_rank_correlation"]
    assert a["value"] == pytest.approx(1.0) and a["n_cases"] == 2
    assert b["value"] == pytest.approx(-1.0) and b["n_cases"] == 4
    # an unrelated map: the mean of the per-case Spearman correlations computed by hand with scipy
    other = rng.random((4, 6, 6)) - 0.5
    got = occlusion_agreement({"occlusion": occ, "c": other}, (200, 0.95, 0))["c"]["occlusion_rank_correlation"]
    by_hand = np.mean([spearmanr(np.abs(o).ravel(), np.abs(c).ravel())[0] for o, c in zip(occ, other)])
    assert got["value"] == pytest.approx(by_hand) and got["ci"][0] <= got["value"] <= got["ci"][1]

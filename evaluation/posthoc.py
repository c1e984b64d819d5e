"""Post-hoc heatmap explainers for any image model of the zoo.

Every explainer takes a torch model whose ``forward(x)`` maps images float32 [N, C, H, W] in [0, 1] to class logits
[N, classes], and returns a :class:`~glasszoo.models.explanations.Heatmap` (float32 [N, H, W] at input resolution,
``method`` = the explainer's name, ``target`` = the explained class). Attributions come from captum (and zennit for
LRP); this module only chooses documented defaults, batches the cases, seeds the randomness and reduces the channels.

Methods and their documented defaults (also in :data:`POSTHOC_METHODS`; references in :data:`POSTHOC_REFERENCES`):

* ``gradcam`` -- Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
  Localization", ICCV 2017): captum ``LayerGradCam`` on ``layer`` (None -> :func:`cam_layer`), ReLU, bilinear
  upsampling to the input size. With the default layer, a model whose logits come from a global-average-pooled
  linear head on it (every timm ResNet, e.g. the black box) gets the same map from one forward pass and no backward
  pass: it is the class activation map (``glasszoo.models._backbones.cam_forward``).
* ``hirescam`` -- HiResCAM (Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
  convolutional neural networks", arXiv:2011.08891, 2020): captum ``LayerGradientXActivation`` on the same layer,
  i.e. the element-wise gradient x activation summed over the channels, ReLU, bilinear upsampling.
* ``saliency`` -- gradient saliency (Simonyan et al., "Deep Inside Convolutional Networks", ICLR workshop 2014):
  |d logit / d x|, maximum over the channels.
* ``integrated_gradients`` -- Integrated Gradients (Sundararajan et al., "Axiomatic Attribution for Deep
  Networks", ICML 2017): baseline 0 (a black image), ``n_steps=32`` Gauss-Legendre steps, internal batches of
  ``4 * batch_size`` images (``internal_batch_size=None``); signed, summed over the channels.
* ``deeplift`` -- DeepLIFT (Shrikumar, Greenside & Kundaje, "Learning Important Features Through Propagating
  Activation Differences", ICML 2017): captum ``DeepLift`` with the Rescale rule, baseline 0 (a black image),
  multiplied by (input - baseline), signed, summed over the channels. One forward and one backward call on the
  images and their baselines together (2 + 2 passes per image). Its maps sum to the logit difference between the
  image and the baseline (summation-to-delta).
* ``smoothgrad`` -- SmoothGrad (Smilkov et al., "SmoothGrad: removing noise by adding noise", arXiv:1706.03825,
  2017): captum ``NoiseTunnel(Saliency)``, ``nt_samples=16`` noisy copies with Gaussian noise of standard deviation
  ``stdevs=0.15`` (15 % of the [0, 1] intensity range, inside the 10-20 % the paper recommends), |gradient|
  averaged over the copies, maximum over the channels; ``nt_samples_batch_size=4`` copies per forward call.
* ``occlusion`` -- occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014):
  captum ``Occlusion`` with a square window of side ``window`` (None -> image side // 6, at least 2) over all
  channels, ``stride`` (None -> window // 2, at least 1), baseline 0, ``perturbations_per_eval=32`` occluded
  copies per forward call. A pixel's value is the mean logit drop of the windows covering it; the window spans all
  channels, so each channel carries the same value and the map keeps it once (channel mean).
* ``kernel_shap`` -- KernelSHAP (Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS
  2017): captum ``KernelShap`` on a ``grid`` x ``grid`` mask of square superpixels (``grid=6`` -> 36 segments),
  ``n_samples=64`` coalitions (captum's first two are all-on and all-off), baseline 0,
  ``perturbations_per_eval=None`` -> ``batch_size`` coalitions per forward call.
* ``shapley_sampling`` -- Shapley value sampling (Castro, Gomez & Tejada, "Polynomial calculation of the Shapley
  value based on sampling", Computers & Operations Research 2009; Strumbelj & Kononenko, JMLR 2010) over the same
  ``grid`` x ``grid`` superpixels: captum ``ShapleyValueSampling``, ``n_samples=8`` random orderings, each adding the
  superpixels one at a time to the baseline-0 image, so each ordering costs one forward pass per superpixel (plus
  one for the baseline); a superpixel's value is its mean marginal change of the logit. Exact on a model additive in
  the superpixels, whatever the orderings. ``perturbations_per_eval=None`` -> up to ``batch_size`` steps of one
  ordering per forward call (at most one call per ordering: captum does not batch across orderings).
* ``lime`` -- LIME (Ribeiro et al., "Why Should I Trust You?", KDD 2016): captum ``Lime`` on the same superpixels,
  ``n_samples=64``, baseline 0, captum's exponential kernel on the cosine distance (``kernel_width=1.0``) and its
  default Lasso surrogate (captum ``SkLearnLasso``, ``lasso_alpha=0.01``; ``lasso_alpha=0`` -> unregularised
  weighted least squares, ``SkLearnLinearRegression``). The Lasso penalty is in logit units: on a model whose
  logits barely move when superpixels are removed (e.g. untrained), every weight can shrink to 0.
* ``lrp`` -- Layer-wise Relevance Propagation (Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier
  Decisions by Layer-Wise Relevance Propagation", PLoS ONE 2015) with zennit, composite ``epsilon_plus_flat``
  (Montavon et al., "Layer-Wise Relevance Propagation: An Overview", in *Explainable AI*, LNCS 11700, 2019: LRP-eps
  on dense layers, LRP-z+ on convolutions, the flat rule on the first layer). Also ``epsilon_alpha2_beta1_flat``
  (LRP-alpha2beta1 on convolutions) and ``epsilon`` (LRP-eps on every layer; LRP-0 as ``epsilon`` -> 0).
  ``epsilon=1e-6``. Relevance starts as the one-hot target times the target logit; the map is the input relevance
  summed over the channels. Supported models: a timm ResNet (``model`` itself or ``model.net``, e.g.
  :class:`~glasszoo.models.blackbox.BlackBoxCNN`) holding all the model's parameters, canonized by
  :class:`TimmResNetCanonizer` (batch norms merged into the preceding convolutions, residual additions made zennit
  ``Sum`` modules); or an ``nn.Sequential`` of convolutions, linear layers, batch norms, ReLUs and pooling.

Every method explains the model's predicted class unless ``target`` is given (one extra forward pass per image),
processes the cases in chunks of ``batch_size``, is deterministic given ``seed`` (the global torch and numpy
generators are seeded inside a fork and restored afterwards), puts the model in ``eval()`` and restores its
training mode, and leaves the parameters' ``.grad`` and ``requires_grad`` as they were.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression
from captum.attr import (
    DeepLift,
    IntegratedGradients,
    KernelShap,
    LayerGradCam,
    LayerGradientXActivation,
    Lime,
    NoiseTunnel,
    Occlusion,
    Saliency,
    ShapleyValueSampling,
)
from captum.attr._core.lime import get_exp_kernel_similarity_function
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, MergeBatchNorm, SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonPlusFlat, LayerMapComposite, layer_map_base
from zennit.layer import Sum
from zennit.rules import Epsilon
from zennit.types import Convolution

from glasszoo.models._backbones import cam_forward, has_cam_head, last_feature_module
from glasszoo.models.base import as_tensor
from glasszoo.models.explanations import Heatmap

__all__ = [
    "DEFAULT_METHODS",
    "LRP_COMPOSITES",
    "POSTHOC_METHODS",
    "POSTHOC_REFERENCES",
    "PassCounter",
    "TimmResNetCanonizer",
    "cam_layer",
    "expected_passes",
    "explain_posthoc",
    "grid_mask",
]

DEFAULT_METHODS: tuple[str, ...] = ("gradcam", "hirescam", "saliency", "integrated_gradients", "deeplift",
                                    "smoothgrad", "occlusion", "kernel_shap", "shapley_sampling", "lime", "lrp")
"""Every post-hoc method, in the order the pipeline runs and reports them."""

POSTHOC_METHODS: dict[str, dict] = {
    # layer: None -> cam_layer(model); else a name for model.get_submodule (or the module itself).
    "gradcam": {"layer": None},
    "hirescam": {"layer": None},
    "saliency": {},
    # baseline: constant image (0 = black); internal_batch_size: images per forward, None -> 4 * batch_size.
    "integrated_gradients": {"n_steps": 32, "method": "gausslegendre", "baseline": 0.0, "internal_batch_size": None},
    # baseline: constant image the differences are taken from (0 = black).
    "deeplift": {"baseline": 0.0},
    # stdevs: noise standard deviation in intensity units (inputs in [0, 1]).
    "smoothgrad": {"nt_samples": 16, "stdevs": 0.15, "nt_samples_batch_size": 4},
    # window None -> max(2, min(H, W) // 6); stride None -> max(1, window // 2).
    "occlusion": {"window": None, "stride": None, "baseline": 0.0, "perturbations_per_eval": 32},
    # grid: superpixels per side; perturbations_per_eval None -> batch_size; lasso_alpha 0 -> weighted least squares.
    "kernel_shap": {"grid": 6, "n_samples": 64, "baseline": 0.0, "perturbations_per_eval": None},
    # n_samples: random orderings of the superpixels (each one forward pass per superpixel).
    "shapley_sampling": {"grid": 6, "n_samples": 8, "baseline": 0.0, "perturbations_per_eval": None},
    "lime": {"grid": 6, "n_samples": 64, "baseline": 0.0, "perturbations_per_eval": None, "kernel_width": 1.0,
             "lasso_alpha": 0.01},
    "lrp": {"composite": "epsilon_plus_flat", "epsilon": 1e-6},
}
"""Method name -> its documented default parameters (the only keys ``params`` may set)."""

POSTHOC_REFERENCES: dict[str, str] = {
    "gradcam": "Selvaraju et al., ICCV 2017",
    "hirescam": "Draelos & Carin, arXiv:2011.08891, 2020",
    "saliency": "Simonyan et al., ICLR workshop 2014",
    "integrated_gradients": "Sundararajan et al., ICML 2017",
    "deeplift": "Shrikumar et al., ICML 2017",
    "smoothgrad": "Smilkov et al., arXiv:1706.03825, 2017",
    "occlusion": "Zeiler & Fergus, ECCV 2014",
    "kernel_shap": "Lundberg & Lee, NeurIPS 2017",
    "shapley_sampling": "Castro et al., Comput. Oper. Res. 2009; Strumbelj & Kononenko, JMLR 2010",
    "lime": "Ribeiro et al., KDD 2016",
    "lrp": "Bach et al., PLoS ONE 2015; Montavon et al., LNCS 11700, 2019 (composite rules)",
}

LRP_COMPOSITES: tuple[str, ...] = ("epsilon_plus_flat", "epsilon_alpha2_beta1_flat", "epsilon")

_IG_BATCH_FACTOR = 4  # IG evaluates about this many path steps per case in one forward call

# Leaf modules LRP handles soundly (a rule, an identity, or a gradient that conserves relevance).
_LRP_LEAVES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.Identity, nn.MaxPool2d,
               nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout)


# ----------------------------------------------------------------------------------------------------------- helpers

def cam_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM and HiResCAM read.

    The model's own ``cam_layer()`` method when it has one; else, for a timm classifier in ``model.net``, its last
    feature stage (:func:`glasszoo.models._backbones.last_feature_module`); else the model's last ``nn.Conv2d``.
    """
    own = getattr(model, "cam_layer", None)
    if callable(own):
        return own()
    net = getattr(model, "net", None)
    if isinstance(net, nn.Module):
        return last_feature_module(net)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution layer for Grad-CAM; pass params={{'layer': ...}}")
    return convs[-1]


def grid_mask(height: int, width: int, grid: int) -> np.ndarray:
    """Square-grid superpixels: int64 [H, W] with labels 0 .. g*g - 1 in row-major order, g = min(grid, H, W).

    Pixel row ``r`` lies in cell row ``r * g // H`` (likewise for columns), so the cells tile the image even when
    the side is not a multiple of g (their sides then differ by at most one pixel).
    """
    g = max(1, min(int(grid), height, width))
    rows = np.arange(height) * g // height
    cols = np.arange(width) * g // width
    return (rows[:, None] * g + cols[None, :]).astype(np.int64)


def _occlusion_geometry(image_shape: tuple[int, ...], window: int | None, stride: int | None) -> tuple[int, int]:
    side = min(int(image_shape[-2]), int(image_shape[-1]))
    w = max(2, side // 6) if window is None else int(window)
    w = max(1, min(w, side))
    s = max(1, w // 2) if stride is None else int(stride)
    if s < 1 or s > w:
        raise ValueError(f"occlusion stride must be in [1, window={w}], got {s}")
    return w, s


def _occlusion_windows(image_shape: tuple[int, ...], window: int, stride: int) -> int:
    """Number of window positions captum's Occlusion evaluates: prod over H, W of ceil((side - w) / s) + 1."""
    return int(np.prod([math.ceil((int(side) - window) / stride) + 1 for side in image_shape[-2:]]))


def _resolve_params(method: str, params: dict | None) -> dict:
    if method not in POSTHOC_METHODS:
        raise ValueError(f"unknown post-hoc method {method!r}; known methods: {', '.join(DEFAULT_METHODS)}")
    params = dict(params or {})
    known = POSTHOC_METHODS[method]
    for key in params:
        if key not in known:
            listed = ", ".join(known) if known else "none"
            raise ValueError(f"unknown parameter {key!r} for post-hoc method {method!r}; known parameters: {listed}")
    cfg = {**known, **params}
    for key in ("n_steps", "nt_samples", "n_samples", "grid", "nt_samples_batch_size"):
        if key in cfg and (not isinstance(cfg[key], (int, np.integer)) or cfg[key] < 1):
            raise ValueError(f"{method}: {key} must be a positive integer, got {cfg[key]!r}")
    if method == "lrp" and cfg["composite"] not in LRP_COMPOSITES:
        raise ValueError(f"lrp: unknown composite {cfg['composite']!r}; known composites: {', '.join(LRP_COMPOSITES)}")
    return cfg


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global torch and numpy generators, restoring their previous states on exit."""
    devices = [device.index or 0] if device.type == "cuda" else []
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(np_state)


@contextmanager
def _model_guard(model: nn.Module) -> Iterator[None]:
    """``eval()`` inside; training mode, parameter ``.grad`` and ``requires_grad`` restored on exit."""
    was_training = model.training
    saved = [(p, p.requires_grad, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()]
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        for p, req, grad in saved:
            p.grad = grad
            if p.requires_grad != req:
                p.requires_grad_(req)


@dataclass
class _Chunk:
    """What an explainer needs besides the images and targets of one chunk."""

    start: int  # index of the chunk's first case
    seed: int
    batch_size: int


# -------------------------------------------------------------------------------------------------------- explainers

def _layer_of(model: nn.Module, layer: Any) -> nn.Module:
    if layer is None:
        return cam_layer(model)
    if isinstance(layer, nn.Module):
        return layer
    return model.get_submodule(str(layer))


def _upsample(attr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(attr, size=size, mode="bilinear", align_corners=False)[:, 0]


def _gradcam(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cfg: dict, chunk: _Chunk) -> torch.Tensor:
    net = getattr(model, "net", None)
    if cfg["layer"] is None and not callable(getattr(model, "cam_layer", None)) and isinstance(net, nn.Module) \
            and has_cam_head(net):
        # Grad-CAM of a global-average-pooled linear head is its class activation map: one forward pass, no
        # backward (models/_backbones.cam_forward), when the model's logits are that head's outputs
        try:
            with torch.no_grad():
                return cam_forward(model, net, x, lambda _out: t, logits_are_outputs=True)[2]
        except ValueError:
            pass
    cam = LayerGradCam(model, _layer_of(model, cfg["layer"]))
    attr = cam.attribute(x, target=t, relu_attributions=True)
    return _upsample(attr, x.shape[-2:])


def _hirescam(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cfg: dict, chunk: _Chunk) -> torch.Tensor:
    gxa = LayerGradientXActivation(model, _layer_of(model, cfg["layer"]), multiply_by_inputs=True)
    attr = gxa.attribute(x, target=t)
    attr = torch.relu(attr.sum(dim=1, keepdim=True))
    return _upsample(attr, x.shape[-2:])


def _saliency(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cfg: dict, chunk: _Chunk) -> torch.Tensor:
    return Saliency(model).attribute(x.requires_grad_(), target=t, abs=True).amax(dim=1)


def _integrated_gradients(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cfg: dict,
                          chunk: _Chunk) -> torch.Tensor:
    internal = cfg["internal_batch_size"] or _IG_BATCH_FACTOR * chunk.batch_size
    ig = IntegratedGradients(model, multiply_by_inputs=True)
    attr = ig.attribute(x, baselines=torch.full_like(x, float(cfg["baseline"])), target=t, n_steps=int(cfg["n_steps"]),
                        method=cfg["method"], internal_batch_size=max(int(internal), len(x)))
    return attr.sum(dim=1)


def _deeplift(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cfg: dict, chunk: _Chunk) -> torch.Tensor:
    with warnings.catch_warnings():  # captum announces its temporary hooks on the activations every call
        warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
        if x.device.type == "cpu":  # DeepLIFT's max-pool rule unpools; torch flags the op under deterministic mode
            # (the training's `deterministic: warn`), but on the CPU each channel is unpooled by one sequential loop
            warnings.filterwarnings("ignore", message="max_unpooling2d_forward_out does not have a deterministic")
        attr = DeepLift(model, multiply_by_inputs=True).attribute(
            x.requires_grad_(), baselines=torch.full_like(x, float(cfg["baseline"])), target=t)
    return attr.sum(dim=1)


def _smoothgrad(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cfg: dict, chunk: _Chunk) -> torch.Tensor:
    nt = NoiseTunnel(Saliency(model))
    attr = nt.attribute(x, nt_type="smoothgrad", nt_samples=int(cfg["nt_samples"]),
                        nt_samples_batch_size=int(cfg["nt_samples_batch_size"]), stdevs=float(cfg["stdevs"]),
                        target=t, abs=True)
    return attr.amax(dim=1)


def _occlusion(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cfg: dict, chunk: _Chunk) -> torch.Tensor:
    w, s = _occlusion_geometry(tuple(x.shape[1:]), cfg["window"], cfg["stride"])
    c = x.shape[1]
    attr = Occlusion(model).attribute(x, sliding_window_shapes=(c, w, w), strides=(1, s, s),
                                      baselines=float(cfg["baseline"]), target=t,
                                      perturbations_per_eval=max(1, int(cfg["perturbations_per_eval"])))
    return attr.mean(dim=1)  # identical channels: the window spans all of them


def _superpixel_attribution(explainer_cls: Callable, model: nn.Module, x: torch.Tensor, t: torch.Tensor, cfg: dict,
                            chunk: _Chunk, **init_kwargs: Any) -> torch.Tensor:
    height, width = x.shape[-2:]
    mask = torch.as_tensor(grid_mask(height, width, cfg["grid"]), device=x.device)
    n_samples = int(cfg["n_samples"])
    per_eval = int(cfg["perturbations_per_eval"] or chunk.batch_size)
    # KernelSHAP and LIME evaluate n_samples coalitions in all; Shapley sampling evaluates each of its n_samples
    # orderings one superpixel at a time, so a forward call holds at most one ordering's steps (capping it at
    # n_samples, the number of orderings, made the quickstart's calls 2 images each)
    most = int(mask.max()) + 1 if explainer_cls is ShapleyValueSampling else n_samples
    per_eval = max(1, min(per_eval, most))
    explainer = explainer_cls(model, **init_kwargs)
    maps = []
    for i in range(len(x)):  # captum's KernelShap / Lime fit one surrogate per example
        torch.manual_seed(chunk.seed + chunk.start + i)
        if explainer_cls is ShapleyValueSampling:  # returns the superpixel values painted at input shape
            painted = explainer.attribute(x[i:i + 1], baselines=float(cfg["baseline"]), target=int(t[i]),
                                          feature_mask=mask[None, None], n_samples=n_samples,
                                          perturbations_per_eval=per_eval)
            maps.append(torch.as_tensor(painted, dtype=torch.float32, device=x.device)[0].mean(dim=0))
            continue
        coefs = explainer.attribute(x[i:i + 1], baselines=float(cfg["baseline"]), target=int(t[i]),
                                    feature_mask=mask[None, None], n_samples=n_samples,
                                    perturbations_per_eval=per_eval, return_input_shape=False)
        coefs = torch.as_tensor(coefs, dtype=torch.float32, device=x.device).reshape(-1)
        weights = torch.zeros(int(mask.max()) + 1, dtype=torch.float32, device=x.device)
        weights[:len(coefs)] = coefs
        maps.append(weights[mask])  # each superpixel's weight painted over its pixels
    return torch.stack(maps)


def _kernel_shap(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cfg: dict, chunk: _Chunk) -> torch.Tensor:
    return _superpixel_attribution(KernelShap, model, x, t, cfg, chunk)


def _shapley_sampling(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cfg: dict, chunk: _Chunk) -> torch.Tensor:
    return _superpixel_attribution(ShapleyValueSampling, model, x, t, cfg, chunk)


def _lime(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cfg: dict, chunk: _Chunk) -> torch.Tensor:
    alpha = float(cfg["lasso_alpha"])
    surrogate = SkLearnLasso(alpha=alpha) if alpha > 0 else SkLearnLinearRegression()
    return _superpixel_attribution(
        Lime, model, x, t, cfg, chunk, interpretable_model=surrogate,
        similarity_func=get_exp_kernel_similarity_function("cosine", float(cfg["kernel_width"])))


# ---------------------------------------------------------------------------------------------------------------- LRP

class _MergeBatchNormExact(MergeBatchNorm):
    """zennit's batch-norm merge, plus ``eps = 0`` on the emptied batch norm so it is an exact identity."""

    def __init__(self) -> None:
        super().__init__()
        self.saved_eps: float | None = None

    def register(self, linears: list[nn.Module], batch_norm: nn.Module) -> None:
        self.saved_eps = batch_norm.eps
        super().register(linears, batch_norm)
        batch_norm.eps = 0.0

    def remove(self) -> None:
        super().remove()
        self.batch_norm.eps = self.saved_eps


def _conv_bn_pairs(modules: list[nn.Module]) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Adjacent (Conv2d, BatchNorm2d) pairs in a list of modules applied in order."""
    return [(a, b) for a, b in zip(modules, modules[1:])
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d)]


class TimmResNetMergeBatchNorm(_MergeBatchNormExact):
    """Merge every batch norm of a timm ResNet into the convolution before it (eval-mode statistics).

    Pairs: the stem ``conv1``/``bn1`` (the last convolution of a deep stem, and the pairs inside it), each block's
    ``conv1``/``bn1``, ``conv2``/``bn2`` (``conv3``/``bn3`` for a Bottleneck) and the ``downsample`` conv/bn.
    """

    def apply(self, root_module: nn.Module) -> list[MergeBatchNorm]:
        pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []
        for module in root_module.modules():
            if isinstance(module, ResNet):
                stem = module.conv1
                if isinstance(stem, nn.Sequential):
                    pairs += _conv_bn_pairs(list(stem))
                    stem = list(stem)[-1] if len(stem) else stem
                pairs += _conv_bn_pairs([stem, module.bn1])
            elif isinstance(module, (BasicBlock, Bottleneck)):
                for k in (1, 2, 3):
                    pairs += _conv_bn_pairs([getattr(module, f"conv{k}", None), getattr(module, f"bn{k}", None)])
                if isinstance(module.downsample, nn.Sequential):
                    pairs += _conv_bn_pairs(list(module.downsample))
        instances = []
        for conv, bn in pairs:
            instance = self.copy()
            instance.register([conv], bn)
            instances.append(instance)
        return instances


class _SequentialMergeBatchNormExact(SequentialMergeBatchNorm, _MergeBatchNormExact):
    """zennit's SequentialMergeBatchNorm with the exact-identity batch norm."""


def _basic_block_forward(self: BasicBlock, x: torch.Tensor) -> torch.Tensor:
    """timm BasicBlock forward with the residual addition done by ``self.canonizer_sum`` (a zennit ``Sum``)."""
    shortcut = self.downsample(x) if self.downsample is not None else x
    out = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
    out = self.bn2(self.conv2(out))
    if self.se is not None:
        out = self.se(out)
    if self.drop_path is not None:
        out = self.drop_path(out)
    return self.act2(self.canonizer_sum(torch.stack([out, shortcut], dim=-1)))


def _bottleneck_forward(self: Bottleneck, x: torch.Tensor) -> torch.Tensor:
    """timm Bottleneck forward with the residual addition done by ``self.canonizer_sum`` (a zennit ``Sum``)."""
    shortcut = self.downsample(x) if self.downsample is not None else x
    out = self.act1(self.bn1(self.conv1(x)))
    out = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(out)))))
    out = self.bn3(self.conv3(out))
    if self.se is not None:
        out = self.se(out)
    if self.drop_path is not None:
        out = self.drop_path(out)
    return self.act3(self.canonizer_sum(torch.stack([out, shortcut], dim=-1)))


def _timm_block_attributes(name: str, module: nn.Module) -> dict | None:
    if isinstance(module, Bottleneck):
        return {"forward": _bottleneck_forward.__get__(module), "canonizer_sum": Sum()}
    if isinstance(module, BasicBlock):
        return {"forward": _basic_block_forward.__get__(module), "canonizer_sum": Sum()}
    return None


class TimmResNetCanonizer(CompositeCanonizer):
    """zennit canonizer for timm ResNets (``timm.models.resnet``): batch norms merged into their convolutions and
    each block's residual addition replaced by a zennit ``Sum`` module, so LRP rules apply to both. zennit's own
    ``ResNetCanonizer`` targets torchvision's blocks, whose attribute names differ."""

    def __init__(self) -> None:
        super().__init__((TimmResNetMergeBatchNorm(), AttributeCanonizer(_timm_block_attributes)))


def _unsupported_leaves(module: nn.Module) -> list[str]:
    """Type names of the leaf modules of ``module`` that have no sound LRP treatment here."""
    return sorted({type(m).__name__ for m in module.modules()
                   if not list(m.children()) and not isinstance(m, _LRP_LEAVES)})


def _lrp_plan(model: nn.Module) -> list:
    """The canonizers LRP needs for ``model``, or a ValueError when the model is not supported."""
    leaves = "/".join(t.__name__ for t in _LRP_LEAVES)
    prefix = (f"lrp needs a timm ResNet backbone (BlackBoxCNN) or an nn.Sequential of {leaves}; "
              f"{type(model).__name__} has")
    if isinstance(model, nn.Sequential):
        bad = _unsupported_leaves(model)
        if bad:
            raise ValueError(f"{prefix} layers without a sound LRP rule: {', '.join(bad)}")
        return [_SequentialMergeBatchNormExact()]
    root = model if isinstance(model, ResNet) else getattr(model, "net", None)
    if not isinstance(root, ResNet):
        raise ValueError(f"{prefix} no timm ResNet (as the model or as model.net)")
    inside = {id(p) for p in root.parameters()}
    outside = [name for name, p in model.named_parameters() if id(p) not in inside]
    if outside:
        raise ValueError(f"{prefix} parameters outside its timm ResNet: {', '.join(outside[:5])}")
    bad = _unsupported_leaves(root)
    if bad:
        raise ValueError(f"{prefix} layers without a sound LRP rule in its ResNet: {', '.join(bad)}")
    if getattr(root, "grad_checkpointing", False):
        raise ValueError(f"{prefix} gradient checkpointing on; switch it off for LRP")
    return [TimmResNetCanonizer()]


def _lrp_composite(name: str, epsilon: float, canonizers: list) -> Any:
    if name == "epsilon_plus_flat":
        return EpsilonPlusFlat(epsilon=epsilon, canonizers=canonizers)
    if name == "epsilon_alpha2_beta1_flat":
        return EpsilonAlpha2Beta1Flat(epsilon=epsilon, canonizers=canonizers)
    layer_map = layer_map_base() + [(Convolution, Epsilon(epsilon=epsilon)), (nn.Linear, Epsilon(epsilon=epsilon))]
    return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)


def _lrp(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cfg: dict, chunk: _Chunk) -> torch.Tensor:
    composite = _lrp_composite(cfg["composite"], float(cfg["epsilon"]), _lrp_plan(model))
    xr = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), composite.context(model) as canonized:
        out = canonized(xr)
        start = torch.zeros_like(out)
        start[torch.arange(len(out)), t] = out.detach()[torch.arange(len(out)), t]
        (relevance,) = torch.autograd.grad(out, xr, grad_outputs=start)
    return relevance.sum(dim=1).detach()


_EXPLAINERS: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor, dict, _Chunk], torch.Tensor]] = {
    "gradcam": _gradcam,
    "hirescam": _hirescam,
    "saliency": _saliency,
    "integrated_gradients": _integrated_gradients,
    "deeplift": _deeplift,
    "smoothgrad": _smoothgrad,
    "occlusion": _occlusion,
    "kernel_shap": _kernel_shap,
    "shapley_sampling": _shapley_sampling,
    "lime": _lime,
    "lrp": _lrp,
}


# ------------------------------------------------------------------------------------------------------------ public

def explain_posthoc(model: nn.Module, x: np.ndarray | torch.Tensor, method: str,
                    target: np.ndarray | torch.Tensor | list | int | None = None, params: dict | None = None,
                    seed: int = 0, batch_size: int = 32, case_ids: np.ndarray | list | None = None) -> Heatmap:
    """Explain ``model`` on ``x`` with the post-hoc ``method``.

    Args:
        model: torch model mapping float32 [N, C, H, W] in [0, 1] to logits [N, classes].
        x: images [N, C, H, W] (numpy or tensor).
        method: one of :data:`DEFAULT_METHODS`.
        target: [N] class indices (or one int for all cases); None -> the model's predicted class.
        params: overrides of the method's defaults (keys of ``POSTHOC_METHODS[method]``).
        seed: seeds the torch and numpy generators the method uses; same seed (and batch_size) -> identical maps.
            KernelSHAP, Shapley sampling and LIME reseed with ``seed + case index`` for each case, so their maps do not
            depend on ``batch_size``; SmoothGrad's noise is drawn chunk by chunk from one seeded stream.
        batch_size: cases per chunk; see the module docstring for how many images each forward call sees.
        case_ids: [N] case ids stored in the Heatmap.

    Returns:
        Heatmap with maps float32 [N, H, W], ``method`` = ``method`` and ``target`` = the explained classes.

    Raises:
        ValueError: unknown method or parameter, a malformed input or target, or a model LRP cannot handle.
    """
    cfg = _resolve_params(method, params)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    xt = as_tensor(x).detach()
    if xt.ndim != 4:
        raise ValueError(f"x must be [N, C, H, W], got shape {tuple(xt.shape)}")
    n = len(xt)
    if target is not None:
        tgt = np.asarray(target.detach().cpu() if isinstance(target, torch.Tensor) else target, dtype=np.int64)
        tgt = np.full(n, int(tgt), np.int64) if tgt.ndim == 0 else tgt.reshape(-1)
        if len(tgt) != n:
            raise ValueError(f"target has {len(tgt)} entries for {n} images")
    if method == "lrp":
        _lrp_plan(model)  # fail before any computation
    device = _model_device(model)
    explain = _EXPLAINERS[method]
    maps, targets = [], []
    with _model_guard(model), _seeded(seed, device):
        for start in range(0, n, batch_size):
            xb = xt[start:start + batch_size].clone().to(device)
            if target is None:
                with torch.no_grad():
                    tb = model(xb).argmax(dim=1)
            else:
                tb = torch.as_tensor(tgt[start:start + batch_size], device=device)
            chunk = _Chunk(start=start, seed=seed, batch_size=batch_size)
            attr = explain(model, xb, tb, cfg, chunk)
            maps.append(attr.detach().float().cpu().numpy())
            targets.append(tb.cpu().numpy())
    h, w = xt.shape[-2:]
    out = np.concatenate(maps) if maps else np.zeros((0, h, w), np.float32)
    tout = np.concatenate(targets) if targets else np.zeros(0, np.int64)
    return Heatmap(maps=out.astype(np.float32), method=method, target=tout, case_ids=case_ids)


def expected_passes(method: str, params: dict | None = None, image_shape: tuple[int, ...] = (1, 48, 48),
                    predicted_target: bool = True) -> dict:
    """Forward and backward passes per image that ``explain_posthoc(method, params)`` performs.

    Counted in images (a forward call on B images counts B), as :class:`PassCounter` measures them:

    * gradcam, hirescam, saliency, lrp: 1 forward + 1 backward;
    * integrated_gradients: ``n_steps`` forward + ``n_steps`` backward;
    * deeplift: 2 forward + 2 backward (the image and its baseline go through in one call);
    * smoothgrad: ``nt_samples`` forward + ``nt_samples`` backward;
    * occlusion: 1 (unoccluded) + number of windows forward, where the windows are
      prod over H, W of ``ceil((side - window) / stride) + 1``; no backward;
    * kernel_shap, lime: ``n_samples`` forward (captum's KernelSHAP counts its all-on and all-off coalitions among
      them, and evaluates no extra baseline); no backward;
    * shapley_sampling: 1 (the baseline) + ``n_samples`` x superpixels forward (g x g superpixels,
      g = min(grid, H, W)); no backward;

    plus 1 forward when ``predicted_target`` (``target=None``: the prediction that picks the explained class).

    Args:
        method: a post-hoc method name.
        params: the same overrides as for :func:`explain_posthoc`.
        image_shape: (C, H, W) of one image (occlusion's window count depends on it).
        predicted_target: whether the target is the model's prediction (one more forward pass).

    Returns:
        ``{"forward": f, "backward": b}`` per image.
    """
    cfg = _resolve_params(method, params)
    if method in ("gradcam", "hirescam", "saliency", "lrp"):
        fwd, bwd = 1, 1
    elif method == "integrated_gradients":
        fwd = bwd = int(cfg["n_steps"])
    elif method == "deeplift":
        fwd, bwd = 2, 2
    elif method == "smoothgrad":
        fwd = bwd = int(cfg["nt_samples"])
    elif method == "occlusion":
        w, s = _occlusion_geometry(tuple(image_shape), cfg["window"], cfg["stride"])
        fwd, bwd = 1 + _occlusion_windows(tuple(image_shape), w, s), 0
    elif method == "shapley_sampling":
        g = max(1, min(int(cfg["grid"]), int(image_shape[-2]), int(image_shape[-1])))
        fwd, bwd = 1 + int(cfg["n_samples"]) * g * g, 0
    else:  # kernel_shap, lime
        fwd, bwd = int(cfg["n_samples"]), 0
    return {"forward": fwd + int(bool(predicted_target)), "backward": bwd}


class PassCounter:
    """Count the images that go through ``model.forward`` and through its backward, inside a ``with`` block.

    A forward call on a batch of B images adds B to ``forward_images`` (and 1 to ``forward_calls``); when a
    gradient flows back through that call's output, B is added to ``backward_images`` (and 1 to
    ``backward_calls``).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.forward_images = 0
        self.backward_images = 0
        self.forward_calls = 0
        self.backward_calls = 0
        self._handle: Any = None

    def _on_backward(self, n: int) -> None:
        self.backward_images += n
        self.backward_calls += 1

    def _on_forward(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        first = inputs[0] if inputs else None
        n = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim > 0 else 1
        self.forward_images += n
        self.forward_calls += 1
        if isinstance(output, torch.Tensor) and output.requires_grad:
            def hook(grad: torch.Tensor) -> None:
                self._on_backward(n)

            output.register_hook(hook)

    def __enter__(self) -> PassCounter:
        self._handle = self.model.register_forward_hook(self._on_forward)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def per_image(self, n: int) -> dict:
        """``{"forward": forward_images / n, "backward": backward_images / n}``."""
        return {"forward": self.forward_images / n, "backward": self.backward_images / n}

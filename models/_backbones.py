"""timm backbones adapted to the small images of medical-imaging benchmarks, from scratch or from pretrained weights.

``pretrained`` (every image family with a timm backbone takes it):

* ``False`` (default): random initialisation; nothing is read or downloaded.
* ``True``: timm's own weights for the backbone (its default pretrained tag, e.g. ``resnet18.a1_in1k``), from the
  Hugging Face cache, or downloaded by timm when a network exists. Offline and not cached: a :class:`ConfigError`
  naming the file to fetch and the ``pretrained: PATH`` alternative, before anything trains.
* a path to a ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` file of the backbone's state dict, loaded through
  timm's own pretrained loader (``pretrained_cfg_overlay={"file": PATH}``), so timm adapts it as it adapts its own
  weights: a classifier of another size is dropped, and for ``in_chans=1`` the first convolution's RGB filters are
  summed (timm's ``adapt_input_conv``).

The weights expect their own input: ``normalize: imagenet`` standardises the [0, 1] image with the ImageNet mean and
sd (their channel means for grey inputs, matching the summed filters), and ``input_size: S`` resizes it bilinearly
to S x S inside the model (e.g. 224 for weights trained at that size); both happen in the model's first step
(:class:`InputPrep`), so every explanation, metric and map still sees the image at the data's size. A ``small`` or
``nopool`` stem replaces the first convolution or pooling, so the pretrained ``conv1`` is lost with ``small``.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from glasszoo.models.errors import ConfigError

STEMS = ("auto", "standard", "small", "nopool")
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
NORMALIZATIONS = ("none", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _weights_file(value: str | os.PathLike) -> Path:
    path = Path(value).expanduser()
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ConfigError(f"pretrained: {path} is not a weights file (expected {', '.join(WEIGHT_SUFFIXES)})")
    if not path.is_file():
        raise ConfigError(f"pretrained: weights file {path} not found")
    return path


def _hub_offline() -> bool:
    """Whether the Hugging Face hub is unreachable: ``HF_HUB_OFFLINE`` set, or its host name does not resolve
    (answered at once offline, instead of timm's five retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        return True
    return False


def _cached_hub_file(hub_id: str) -> str | None:
    """The backbone's weights file in the local Hugging Face cache, if it is there."""
    try:
        from huggingface_hub import try_to_load_from_cache  # optional: installed with timm
    except ImportError:
        return None
    for fname in _HUB_FILES:
        found = try_to_load_from_cache(hub_id, fname)
        if isinstance(found, str) and Path(found).is_file():
            return found
    return None


def resolve_pretrained(pretrained: bool | str | os.PathLike | None, name: str) -> dict:
    """The ``timm.create_model`` keywords that load ``pretrained`` for backbone ``name`` (see the module docstring);
    a :class:`ConfigError` in one line when they cannot be had. Reads nothing but the file system."""
    if pretrained is None or pretrained is False:
        return {"pretrained": False}
    if pretrained is True:
        cfg = getattr(timm.models, "get_pretrained_cfg", None)
        pcfg = cfg(name) if cfg else None
        hub_id = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
        if not hub_id:
            raise ConfigError(f"pretrained: true: timm has no pretrained weights for '{name}'; give pretrained: PATH "
                              f"to a weights file")
        cached = _cached_hub_file(hub_id)
        if cached:
            return {"pretrained": True, "pretrained_cfg_overlay": {"file": cached}}
        if _hub_offline():
            raise ConfigError(f"pretrained: true needs timm's weights for '{name}' (https://huggingface.co/{hub_id}, "
                              f"file model.safetensors), which are not in the Hugging Face cache and cannot be "
                              f"downloaded here (no network); fetch that file elsewhere and set pretrained: PATH")
        return {"pretrained": True}
    if isinstance(pretrained, (str, os.PathLike)):
        return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(_weights_file(pretrained))}}
    raise ConfigError(f"pretrained must be true, false or the path of a weights file, got {pretrained!r}")


def timm_model(name: str, pretrained: bool | str | os.PathLike | None = False, **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with ``pretrained`` resolved by :func:`resolve_pretrained`; a file that
    does not fit the backbone is a :class:`ConfigError` naming it."""
    if name not in timm.list_models():
        raise ValueError(f"unknown timm backbone {name!r} (see timm.list_models())")
    source = resolve_pretrained(pretrained, name)
    try:
        return timm.create_model(name, **source, **kwargs)
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        if not source["pretrained"]:
            raise
        where = source.get("pretrained_cfg_overlay", {}).get("file", f"timm's '{name}' weights")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"pretrained: {where} does not fit timm backbone '{name}' ({first[:300]})") from None


class InputPrep(nn.Module):
    """What pretrained weights expect of their input, applied first: a bilinear resize to ``input_size`` and the
    ImageNet standardisation (``normalize="imagenet"``). Its buffers are not saved: checkpoints are unchanged."""

    def __init__(self, in_chans: int, normalize: str = "none", input_size: int | None = None) -> None:
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                       or input_size < 8):
            raise ValueError(f"input_size must be an integer >= 8 or null, got {input_size!r}")
        self.normalize, self.input_size = normalize, input_size
        mean = torch.tensor(IMAGENET_MEAN if in_chans == 3 else [sum(IMAGENET_MEAN) / 3] * in_chans)
        std = torch.tensor(IMAGENET_STD if in_chans == 3 else [sum(IMAGENET_STD) / 3] * in_chans)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    @property
    def active(self) -> bool:
        return self.normalize != "none" or self.input_size is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        if self.normalize == "imagenet":
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x


def attach_input_prep(net: nn.Module, in_chans: int, normalize: str = "none",
                      input_size: int | None = None) -> InputPrep:
    """An :class:`InputPrep` run on every input of ``net`` (a forward pre-hook, so ``net``'s parameter names and
    checkpoints stay as they are); keep the returned module as an attribute so it moves with the model."""
    prep = InputPrep(in_chans, normalize, input_size)
    if prep.active:
        net.register_forward_pre_hook(lambda module, args: (prep(args[0]), *args[1:]))
    return prep


def effective_size(img_size: tuple[int, int], input_size: int | None) -> tuple[int, int]:
    """The side the backbone sees: ``input_size`` when set, else the data's."""
    return (input_size, input_size) if input_size else img_size


def warn_lost_conv1(pretrained: object, stem: str) -> None:
    if pretrained not in (None, False) and stem == "small":
        warnings.warn("stem 'small' replaces the pretrained first convolution by a new 3x3 one (random); use "
                      "stem: standard or nopool (or input_size) to keep it", stacklevel=3)


def resolve_stem(stem: str, img_size: tuple[int, int]) -> str:
    """``auto`` picks ``small`` up to 32 px (the MedMNIST-28 variant) and ``standard`` above."""
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if stem != "auto":
        return stem
    side = min(img_size)
    return "small" if side <= 32 else "standard"


def adapt_stem(net: nn.Module, stem: str, in_chans: int) -> nn.Module:
    """Adapt a ResNet-style stem (``conv1`` + ``maxpool``) in place.

    * ``standard``: timm's own stem (7x7 stride-2 conv + 3x3 stride-2 max-pool; /4).
    * ``small``: 3x3 stride-1 conv, no max-pool (/1) — the MedMNIST v2 ResNet-18 (28) variant.
    * ``nopool``: timm's conv, no max-pool (/2).

    Backbones without ``conv1``/``maxpool`` are left as they are for any stem but ``standard`` and ``auto``.
    """
    if stem == "standard":
        return net
    has_resnet_stem = isinstance(getattr(net, "conv1", None), nn.Conv2d) and hasattr(net, "maxpool")
    if not has_resnet_stem:
        raise ValueError(f"stem={stem!r} needs a ResNet-style backbone with conv1 and maxpool; "
                         f"{type(net).__name__} has none (use stem='standard')")
    if stem == "small":
        out = net.conv1.out_channels
        net.conv1 = nn.Conv2d(in_chans, out, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def create_backbone(name: str, num_classes: int, in_chans: int, img_size: tuple[int, int], stem: str = "auto",
                    drop_rate: float = 0.0, output_stride: int = 32,
                    pretrained: bool | str | None = False) -> tuple[nn.Module, str]:
    """A timm classifier ``name`` (random, or ``pretrained``: see the module docstring) and the stem actually used.

    ``output_stride`` 16 or 8 replaces the strides of the last stage(s) by dilation (timm), so the last feature map
    (the one Grad-CAM reads) keeps 2x or 4x the resolution, at a higher compute cost.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    extra = {"output_stride": output_stride} if output_stride != 32 else {}
    net = timm_model(name, pretrained, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, **extra)
    resolved = resolve_stem(stem, img_size)
    if stem == "auto" and not (isinstance(getattr(net, "conv1", None), nn.Conv2d) and hasattr(net, "maxpool")):
        resolved = "standard"
    warn_lost_conv1(pretrained, resolved)
    return adapt_stem(net, resolved, in_chans), resolved


def _last_feature_info(net: nn.Module) -> dict | None:
    """timm's ``feature_info`` entry (module name, channels, reduction) of the net's last feature stage, if any."""
    info = getattr(net, "feature_info", None)
    if not info:
        return None
    return info[-1] if isinstance(info, list) else info.info[-1]


def last_feature_module(net: nn.Module) -> nn.Module:
    """The module producing the last feature map (timm ``feature_info``), used for Grad-CAM."""
    last = _last_feature_info(net)
    if last is not None:
        return net.get_submodule(last["module"])
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(net).__name__} has no convolution layer for Grad-CAM")
    return convs[-1]


def _pooled_linear_head(net: nn.Module) -> nn.Linear | None:
    """The classifier of a timm net whose head is global average pooling then one linear layer, else None."""
    pool = getattr(net, "global_pool", None)
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    if not (hasattr(net, "forward_features") and hasattr(net, "forward_head") and isinstance(head, nn.Linear)):
        return None
    # the pooled features must be the classifier's input: no layer between them (MobileNetV3's conv_head, ...)
    width = getattr(net, "num_features", None)
    if getattr(pool, "pool_type", None) != "avg" or width != head.in_features:
        return None
    if getattr(net, "head_hidden_size", None) not in (None, width):
        return None
    # and the last feature stage must be what is pooled (EfficientNet's conv_head and bn2 follow its last stage)
    last = _last_feature_info(net)
    if last is not None and last.get("num_chs") != width:
        return None
    return head


def has_cam_head(net: nn.Module) -> bool:
    """Whether :func:`cam_forward` applies: a timm net ending in global average pooling and one linear layer."""
    return _pooled_linear_head(net) is not None


def gradcam_forward(model: nn.Module, net: nn.Module, x: torch.Tensor,
                    select: Callable[[torch.Tensor], torch.Tensor], outputs: Callable[[torch.Tensor], torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grad-CAM on ``net``'s last feature stage of the output :func:`select` picks, as :func:`cam_forward` returns it.

    A pooled-linear head (:func:`has_cam_head`) takes :func:`cam_forward` (one forward pass of ``model``, no
    backward); any other head takes captum's ``LayerGradCam`` of ``outputs`` (the function giving ``net``'s outputs,
    e.g. ``net`` itself): a forward pass to select, then a forward and a backward pass.
    """
    from captum.attr import LayerGradCam  # heavy: captum, only for heads that are not pooled-linear

    if has_cam_head(net):
        with torch.no_grad():
            return cam_forward(model, net, x, select)
    with torch.no_grad():
        out = outputs(x)
        k = select(out)
    attr = LayerGradCam(outputs, last_feature_module(net)).attribute(x, target=k, relu_attributions=True)
    cam = F.interpolate(attr, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return out, k, cam.detach()


def cam_forward(model: nn.Module, net: nn.Module, x: torch.Tensor, select: Callable[[torch.Tensor], torch.Tensor],
                logits_are_outputs: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs of ``net`` and their class activation maps from one ordinary forward pass of ``model``, no backward.

    For a head ``y_k = sum_c W_kc * mean_ij A_cij + b_k`` (global average pooling, then linear), the gradient of
    ``y_k`` with respect to ``A_cij`` is ``W_kc / (h w)`` everywhere, so Grad-CAM's channel weights (Selvaraju et al.,
    ICCV 2017: the spatial mean of that gradient) are ``W_kc / (h w)`` and Grad-CAM of output k is exactly
    ``ReLU(sum_c W_kc A_c / (h w))``: the CAM of Zhou et al. ("Learning Deep Features for Discriminative
    Localization", CVPR 2016) divided by ``h w``. This computes it from the feature map of the forward pass itself.

    Args:
        model: the module whose forward pass runs (``model(x)``; it calls ``net`` once, e.g. the model itself, or a
            concept bottleneck whose label head reads ``net``'s outputs). Calling it, rather than ``net``'s parts,
            keeps the pass visible to forward hooks such as the pass counter of the post-hoc explainers.
        net: a timm classifier inside ``model`` (:func:`has_cam_head` must hold).
        x: images [N, C, H, W].
        select: maps ``net``'s outputs [N, K] to the explained output index per case [N] (e.g. ``argmax``).
        logits_are_outputs: require that ``model(x)`` returns ``net``'s outputs themselves (a ValueError otherwise),
            i.e. that the explained outputs are the model's logits (a post-hoc Grad-CAM of a class).

    Returns:
        ``(outputs [N, K], selected [N], maps [N, H, W])``, the maps ReLU'd and bilinearly upsampled to the input
        (as captum's ``LayerGradCam`` with ``relu_attributions=True`` on the last feature stage, then upsampled).
    """
    head = _pooled_linear_head(net)
    if head is None:
        raise ValueError(f"{type(net).__name__} does not end in global average pooling and one linear layer")
    seen: dict[str, torch.Tensor] = {}
    feature_module = last_feature_module(net)
    hooks = [feature_module.register_forward_hook(lambda m, i, o: seen.__setitem__("features", o)),
             net.global_pool.register_forward_pre_hook(lambda m, i: seen.__setitem__("pooled", i[0])),
             net.register_forward_hook(lambda m, i, o: seen.__setitem__("outputs", o))]
    try:
        result = model(x)
    finally:
        for h in hooks:
            h.remove()
    if len(seen) < 3:
        raise ValueError(f"a forward pass of {type(model).__name__} did not run {type(net).__name__} through its "
                         f"last feature stage, global pooling and head (saw only {sorted(seen)})")
    if logits_are_outputs and result is not seen.get("outputs"):
        raise ValueError(f"{type(model).__name__}'s logits are not the outputs of {type(net).__name__}")
    if seen["pooled"] is not seen["features"]:
        raise ValueError(f"{type(net).__name__} pools a tensor other than the output of its last feature stage "
                         f"({type(feature_module).__name__}): Grad-CAM there is not its CAM")
    feats, out = seen["features"], seen["outputs"]
    k = select(out)
    h, w = feats.shape[-2:]
    cam = torch.einsum("nchw,nc->nhw", feats, head.weight[k]) / (h * w)
    cam = F.interpolate(cam.clamp_min(0)[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return out, k, cam

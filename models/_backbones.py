"""timm backbones adapted to the small images of medical-imaging benchmarks."""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import nn

STEMS = ("auto", "standard", "small", "nopool")


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
                    drop_rate: float = 0.0, output_stride: int = 32) -> tuple[nn.Module, str]:
    """A randomly initialised timm classifier ``name`` and the stem actually used.

    ``output_stride`` 16 or 8 replaces the strides of the last stage(s) by dilation (timm), so the last feature map
    (the one Grad-CAM reads) keeps 2x or 4x the resolution, at a higher compute cost.
    Never downloads weights: glasszoo trains from scratch and runs offline.
    """
    if name not in timm.list_models():
        raise ValueError(f"unknown timm backbone {name!r} (see timm.list_models())")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    extra = {"output_stride": output_stride} if output_stride != 32 else {}
    net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                            **extra)
    resolved = resolve_stem(stem, img_size)
    if stem == "auto" and not (isinstance(getattr(net, "conv1", None), nn.Conv2d) and hasattr(net, "maxpool")):
        resolved = "standard"
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

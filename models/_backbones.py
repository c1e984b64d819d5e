"""timm backbones adapted to the small images of medical-imaging benchmarks."""

from __future__ import annotations

import timm
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


def last_feature_module(net: nn.Module) -> nn.Module:
    """The module producing the last feature map (timm ``feature_info``), used for Grad-CAM."""
    info = getattr(net, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, list) else info.info[-1]
        return net.get_submodule(last["module"])
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(net).__name__} has no convolution layer for Grad-CAM")
    return convs[-1]

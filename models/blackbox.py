"""The black-box baseline: any timm CNN, with no explanation of its own (it is explained post hoc)."""

from __future__ import annotations

import torch

from glasszoo.models._backbones import attach_input_prep, create_backbone, effective_size
from glasszoo.models._registry import register_model
from glasszoo.models.base import ImageModel


@register_model("blackbox", family="black-box",
                paper="He et al., CVPR 2016 (ResNet); Selvaraju et al., ICCV 2017 (Grad-CAM, applied post hoc)",
                test_kwargs={"backbone": "resnet18"})
class BlackBoxCNN(ImageModel):
    """A convolutional classifier with no built-in explanation: ``explain`` returns nothing of its own, and the run's
    post-hoc explainers (Grad-CAM first, ``glasszoo.evaluation.posthoc``) explain it like any other image model.

    The default is ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) with its stem
    adapted to small inputs, as in the MedMNIST v2 benchmark (Yang et al., Scientific Data 2023). Grad-CAM
    (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization", ICCV 2017)
    on the last feature stage is its usual post-hoc map.

    Args:
        num_classes: number of classes.
        in_chans: 1 or 3 input channels.
        img_size: input side (or (H, W)); used to choose the stem.
        backbone: any timm model name; trained from scratch.
        stem: ``auto``, ``standard``, ``small`` or ``nopool`` (see ``glasszoo.models._backbones.adapt_stem``).
        drop_rate: dropout before the classifier.
        output_stride: 32 (the backbone as designed), or 16 / 8: the last stage(s) dilated instead of strided, so
            the last feature map, and with it Grad-CAM, has 2x / 4x the resolution (at a higher compute cost).
        pretrained: ``False`` (random initialisation), ``True`` (timm's own weights; offline they must be in the
            Hugging Face cache) or the path of a weights file (see :mod:`glasszoo.models._backbones`).
        normalize: ``"none"`` or ``"imagenet"``: the standardisation pretrained weights expect, applied in the model.
        input_size: resize inputs to this side inside the model (e.g. 224 for weights trained there); None: as given.
    """

    explanation_kinds = ()

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int | tuple[int, int] = 28,
                 backbone: str = "resnet18", stem: str = "auto", drop_rate: float = 0.0,
                 output_stride: int = 32,
                 pretrained: bool | str = False, normalize: str = "none", input_size: int | None = None) -> None:
        super().__init__(num_classes, in_chans, img_size)
        self.backbone_name = backbone
        self.pretrained = pretrained
        side = effective_size(self.img_size, input_size)  # what the backbone sees
        self.net, self.stem = create_backbone(backbone, num_classes, in_chans, side, stem, drop_rate, output_stride,
                                              pretrained)
        self.input_prep = attach_input_prep(self.net, in_chans, normalize, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

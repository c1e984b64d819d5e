"""The black-box baseline: any timm CNN, explained post hoc with Grad-CAM."""

from __future__ import annotations

import numpy as np
import torch

from glasszoo.models._backbones import create_backbone, gradcam_forward
from glasszoo.models._registry import register_model
from glasszoo.models.base import ImageModel, as_tensor
from glasszoo.models.explanations import Heatmap


class BlackBoxCNN(ImageModel):
    """A convolutional classifier with no built-in explanation; ``explain`` is Grad-CAM.

    The default is ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) with its stem
    adapted to small inputs, as in the MedMNIST v2 benchmark (Yang et al., Scientific Data 2023). Grad-CAM follows
    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization", ICCV 2017,
    computed with captum's ``LayerGradCam`` on the last feature stage.

    Args:
        num_classes: number of classes.
        in_chans: 1 or 3 input channels.
        img_size: input side (or (H, W)); used to choose the stem.
        backbone: any timm model name; trained from scratch.
        stem: ``auto``, ``standard``, ``small`` or ``nopool`` (see ``glasszoo.models._backbones.adapt_stem``).
        drop_rate: dropout before the classifier.
        output_stride: 32 (the backbone as designed), or 16 / 8: the last stage(s) dilated instead of strided, so
            the last feature map, and with it Grad-CAM, has 2x / 4x the resolution (at a higher compute cost).
    """

    explanation_kinds = ("heatmap",)

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int | tuple[int, int] = 28,
                 backbone: str = "resnet18", stem: str = "auto", drop_rate: float = 0.0,
                 output_stride: int = 32) -> None:
        super().__init__(num_classes, in_chans, img_size)
        self.backbone_name = backbone
        self.net, self.stem = create_backbone(backbone, num_classes, in_chans, self.img_size, stem, drop_rate,
                                              output_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def explain(self, x: np.ndarray | torch.Tensor, target: np.ndarray | None = None, batch_size: int = 64,
                case_ids: np.ndarray | None = None) -> Heatmap:
        """Grad-CAM maps [N, H, W] (ReLU'd, bilinearly upsampled to the input) for ``target`` (default: predicted).

        For a backbone ending in global average pooling and one linear layer (every timm ResNet), Grad-CAM equals
        the class activation map and comes from the predicting forward pass itself
        (:func:`~glasszoo.models._backbones.cam_forward`); other backbones get captum's ``LayerGradCam``.
        """
        was_training = self.training
        self.eval()
        maps, targets = [], []
        try:
            for i in range(0, len(x), batch_size):
                xb = as_tensor(x[i:i + batch_size], self.device)
                given = None if target is None else torch.as_tensor(np.asarray(target)[i:i + batch_size],
                                                                    device=xb.device, dtype=torch.long)

                def select(logits: torch.Tensor, given: torch.Tensor | None = given) -> torch.Tensor:
                    return logits.argmax(dim=1) if given is None else given

                _, tb, attr = gradcam_forward(self, self.net, xb, select, self)
                maps.append(attr.detach().cpu().numpy())
                targets.append(tb.cpu().numpy())
        finally:
            self.train(was_training)
        if not maps:
            return Heatmap(maps=np.zeros((0, *self.img_size), np.float32), method="gradcam",
                           target=np.zeros(0, np.int64), case_ids=case_ids)
        return Heatmap(maps=np.concatenate(maps), method="gradcam", target=np.concatenate(targets), case_ids=case_ids)


@register_model(
    "blackbox",
    family="black-box",
    input_kind="image",
    explanations=("heatmap",),
    paper="He et al., CVPR 2016 (ResNet); Selvaraju et al., ICCV 2017 (Grad-CAM)",
    test_kwargs={"backbone": "resnet18"},
)
def blackbox(num_classes: int, in_chans: int = 1, img_size: int | tuple[int, int] = 28, backbone: str = "resnet18",
             stem: str = "auto", drop_rate: float = 0.0, output_stride: int = 32) -> BlackBoxCNN:
    """Black-box timm CNN (default ResNet-18 with a small-input stem), explained by Grad-CAM."""
    return BlackBoxCNN(num_classes, in_chans, img_size, backbone, stem, drop_rate, output_stride)

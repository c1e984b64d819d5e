"""The black-box baseline: stems, Grad-CAM values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glasszoo.models import BlackBoxCNN, create_model
from glasszoo.models._backbones import resolve_stem

torch.set_num_threads(2)


@pytest.mark.parametrize("stem,side,expected_hw", [("small", 28, 4), ("standard", 64, 2), ("nopool", 64, 4)])
def test_stems_set_the_feature_map_size(stem, side, expected_hw):
    model = BlackBoxCNN(2, 1, side, stem=stem).eval()
    feats = model.net.forward_features(torch.rand(1, 1, side, side))
    assert feats.shape[-1] == expected_hw
    assert model.stem == stem


def test_auto_stem():
    assert resolve_stem("auto", (28, 28)) == "small"
    assert resolve_stem("auto", (64, 64)) == "standard"
    with pytest.raises(ValueError, match="stem must be one of"):
        resolve_stem("tiny", (28, 28))


def test_non_resnet_backbone_keeps_its_stem():
    model = create_model("blackbox", num_classes=3, in_chans=3, img_size=32, backbone="mobilenetv3_small_050")
    assert model.stem == "standard"
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="unknown timm backbone"):
        create_model("blackbox", num_classes=2, backbone="not_a_net")


def test_gradcam_equals_hand_computed_value():
    """Grad-CAM = ReLU(sum_k mean(dY/dA_k) * A_k), upsampled; compare with a manual autograd computation."""
    torch.manual_seed(0)
    model = BlackBoxCNN(2, 1, 28, stem="small").eval()
    x = torch.rand(2, 1, 28, 28)
    hm = model.explain(x.numpy(), target=np.array([1, 0]))
    acts = {}
    handle = model.net.layer4.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    logits = model(x)
    handle.remove()
    a = acts["a"]
    score = logits[0, 1] + logits[1, 0]
    grads = torch.autograd.grad(score, a)[0]
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(hm.maps, cam.detach().numpy(), rtol=1e-4, atol=1e-6)
    assert list(hm.target) == [1, 0]
    assert hm.method == "gradcam"

"""The black-box baseline: stems, no explanation of its own, and its post-hoc Grad-CAM's values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glasszoo.models import BlackBoxCNN, create_model
from glasszoo.models._backbones import resolve_stem


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


def test_the_black_box_explains_nothing_itself():
    model = BlackBoxCNN(2, 1, 28, stem="small")
    assert model.explain(np.zeros((2, 1, 28, 28), np.float32)) == [] and BlackBoxCNN.explanation_kinds == ()


def test_gradcam_equals_hand_computed_value():
    """Post-hoc Grad-CAM of the black box = ReLU(sum_k mean(dY/dA_k) * A_k), upsampled; compare with a manual
    autograd computation (the map comes from the one-pass CAM of its pooled-linear head)."""
    from glasszoo.evaluation.posthoc import explain_posthoc

    torch.manual_seed(0)
    model = BlackBoxCNN(2, 1, 28, stem="small").eval()
    x = torch.rand(2, 1, 28, 28)
    hm = explain_posthoc(model, x.numpy(), "gradcam", target=np.array([1, 0]))
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


def _cbm(backbone: str = "resnet18"):
    return create_model("cbm", num_classes=2, in_chans=1, img_size=48, concept_names=["a", "b", "c"],
                        backbone=backbone, stem="standard", mode="independent")


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv3_small_050", "efficientnet_b0"])
def test_own_gradcam_equals_captum_gradcam(backbone):
    """The one-pass CAM of a pooled-linear head (ResNet) and the LayerGradCam fallback (MobileNetV3, whose head has a
    convolution after the pooling; EfficientNet, whose conv_head and bn2 sit between its last feature stage and the
    pooling) both equal captum's Grad-CAM on the last feature stage, for the black box's classes (its post-hoc
    ``gradcam``) and for the CBM's top concept (its own map)."""
    from captum.attr import LayerGradCam

    from glasszoo.evaluation.posthoc import explain_posthoc
    from glasszoo.models._backbones import has_cam_head, last_feature_module

    torch.manual_seed(0)
    x = torch.rand(5, 1, 48, 48)
    bb = create_model("blackbox", num_classes=3, in_chans=1, img_size=48, backbone=backbone, stem="standard").eval()
    assert has_cam_head(bb.net) == (backbone == "resnet18")
    target = np.array([0, 1, 2, 1, 0])
    own = explain_posthoc(bb, x.numpy(), "gradcam", target=target, batch_size=2)
    cam = LayerGradCam(bb, last_feature_module(bb.net)).attribute(x, target=torch.as_tensor(target),
                                                                  relu_attributions=True)
    ref = torch.nn.functional.interpolate(cam, size=(48, 48), mode="bilinear", align_corners=False)[:, 0]
    ref = ref.detach().numpy()
    assert own.maps.max() > 0
    np.testing.assert_allclose(own.maps, ref, rtol=1e-4, atol=1e-6 * float(ref.max()))
    np.testing.assert_array_equal(own.target, target)

    cbm = _cbm(backbone).eval()
    ev, hm = cbm.explain(x.numpy(), batch_size=2)
    top = torch.as_tensor(np.abs(ev.contribution).argmax(1))
    attr = LayerGradCam(cbm.concept_outputs, last_feature_module(cbm.net)).attribute(x, target=top,
                                                                                   relu_attributions=True)
    attr = torch.nn.functional.interpolate(attr, size=(48, 48), mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(hm.maps, attr.detach().numpy(), rtol=1e-4, atol=1e-6 * float(attr.max()) + 1e-12)


def test_cam_forward_refuses_a_net_that_pools_something_else():
    """The one-pass CAM is Grad-CAM only when the last feature stage's output is the pooled tensor; a layer slipped
    in between is caught with an error naming the net, not turned into a wrong map."""
    from glasszoo.models._backbones import cam_forward

    bb = create_model("blackbox", num_classes=2, in_chans=1, img_size=48, backbone="resnet18", stem="standard").eval()
    features = bb.net.forward_features
    bb.net.forward_features = lambda x: features(x) * 2.0  # a layer after the last stage: pooled is a new tensor
    with pytest.raises(ValueError, match="ResNet pools a tensor other than the output of its last feature stage"):
        cam_forward(bb, bb.net, torch.rand(2, 1, 48, 48), lambda out: out.argmax(1))


@pytest.mark.parametrize("make", [lambda: BlackBoxCNN(2, 1, 48, stem="standard"), _cbm], ids=["blackbox", "cbm"])
def test_cam_maps_cost_one_forward_pass_and_no_backward(make):
    """The CBM's own map, and the black box's post-hoc Grad-CAM for given targets: each image goes through the model's
    forward, and its first layer, exactly once, and nothing flows back (the run's pass counter sees that one pass)."""
    from glasszoo.evaluation.posthoc import PassCounter, explain_posthoc

    torch.manual_seed(0)
    model = make().eval()
    x = torch.rand(7, 1, 48, 48)
    with PassCounter(model) as counter, PassCounter(model.net.conv1) as first_layer:
        if model.explanation_kinds:
            model.explain(x.numpy(), batch_size=4)
        else:
            explain_posthoc(model, x.numpy(), "gradcam", target=np.zeros(7, int), batch_size=4)
    assert (counter.forward_images, counter.backward_images) == (7, 0)
    assert (first_layer.forward_images, first_layer.backward_images) == (7, 0)

"""Registry-wide model tests: every registered image model is checked the moment it is registered."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from glasszoo.models import EXPLANATION_KINDS, Heatmap, ImageModel, create_model, list_models, model_info
from glasszoo.models.errors import ConfigError

IMAGE_MODELS = list_models(input_kind="image")
SHAPES = [(1, 32, 2), (3, 28, 3)]  # (channels, side, classes)


def _make(name: str, in_chans: int, side: int, classes: int) -> ImageModel:
    torch.manual_seed(0)
    info = model_info(name)
    return create_model(name, num_classes=classes, in_chans=in_chans, img_size=side, **info.test_kwargs)


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("in_chans,side,classes", SHAPES)
def test_forward_shape_and_finite(name, in_chans, side, classes):
    model = _make(name, in_chans, side, classes).eval()
    x = torch.rand(3, in_chans, side, side)
    logits = model(x)
    assert logits.shape == (3, classes)
    assert torch.isfinite(logits).all()
    proba = model.predict_proba(x.numpy())
    assert proba.shape == (3, classes)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_every_parameter_gets_a_gradient(name):
    model = _make(name, 1, 32, 2).train()
    x = torch.rand(4, 1, 32, 32)
    y = torch.tensor([0, 1, 0, 1])
    logits = model(x)
    batch = {"image": x, "label": y, "mask": (torch.rand(4, 32, 32) > 0.5).to(torch.uint8)}
    n_concepts = len(model_info(name).test_kwargs.get("concept_names", []))
    if n_concepts:
        batch["concepts"] = (torch.rand(4, n_concepts) > 0.5).float()
    loss = torch.nn.functional.cross_entropy(logits, y) + sum(model.extra_losses(batch, logits).values())
    loss.backward()
    # every parameter is reached by backprop (timm zero-initialises the last BN of residual blocks, so some
    # gradients are legitimately exactly zero at initialisation: reached, not necessarily non-zero)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    first = next(p for p in model.parameters() if p.requires_grad)
    assert first.grad.abs().sum() > 0, "the gradient must flow back to the first layer"


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_state_dict_round_trip(name):
    model = _make(name, 1, 32, 2).eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)  # a differently initialised twin
    twin = create_model(name, num_classes=2, in_chans=1, img_size=32, **model_info(name).test_kwargs).eval()
    twin.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(model(x), twin(x))


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("in_chans,side,classes", SHAPES)
def test_explain_returns_declared_kind_with_input_shape(name, in_chans, side, classes):
    model = _make(name, in_chans, side, classes).eval()
    x = np.random.default_rng(0).random((3, in_chans, side, side), dtype=np.float32)
    exps = model.explain(x, case_ids=np.array(["a", "b", "c"]))
    exps = exps if isinstance(exps, list) else [exps]
    kinds = {e.kind for e in exps}
    declared = set(model_info(name).explanations)
    assert kinds <= declared and model_info(name).explanations[0] in kinds
    assert all(k in EXPLANATION_KINDS for k in declared)
    heatmaps = [e for e in exps if isinstance(e, Heatmap)]
    assert heatmaps, "every image model must give at least one Heatmap"
    for hm in heatmaps:
        assert hm.maps.shape == (3, side, side)
        assert np.isfinite(hm.maps).all()
        assert list(hm.case_ids) == ["a", "b", "c"]
        assert hm.target.shape == (3,)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_registry_info_matches_model(name):
    info = model_info(name)
    model = _make(name, 1, 32, 2)
    assert isinstance(model, ImageModel)
    assert tuple(model.explanation_kinds) == info.explanations
    assert info.paper, "every model cites its paper"


def test_unknown_name_and_kwarg_fail_loudly():
    with pytest.raises(ConfigError, match="unknown model 'resnet_typo'"):
        create_model("resnet_typo")
    with pytest.raises(ConfigError, match=r"unknown keyword\(s\) \['backbon'\]"):
        create_model("blackbox", num_classes=2, backbon="resnet18")


def test_list_models_filters():
    assert "blackbox" in list_models()
    assert list_models("black*") == ["blackbox"]
    assert list_models("zzz*") == []
    assert "blackbox" in list_models(family="black-box")
    assert "blackbox" not in list_models(input_kind="features")

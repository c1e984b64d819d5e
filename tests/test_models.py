"""Registry-wide model tests: every registered model, image or tabular, is checked the moment it is registered.

(scikit-learn's estimator checks over every registered tabular model are in ``test_glassbox.py``.)
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from glasszoo.models import (
    EXPLANATION_KINDS,
    REQUIREMENTS,
    FeatureAttribution,
    Heatmap,
    ImageModel,
    TabularModel,
    create_model,
    list_models,
    model_info,
)
from glasszoo.models.errors import ConfigError

ALL_MODELS = list_models()
IMAGE_MODELS = list_models(input_kind="image")
TABULAR_MODELS = list_models(input_kind="features")
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
    info = model_info(name)
    exps = model.explain(x, case_ids=np.array(["a", "b", "c"]))
    assert isinstance(exps, list), "explain() always returns a list"
    if not info.intrinsic:  # no explanation of its own: explained post hoc only
        assert exps == [], f"{name} declares no explanation kinds, so its explain() must return []"
        return
    kinds = {e.kind for e in exps}
    declared = set(info.explanations)
    assert kinds <= declared and info.explanations[0] in kinds
    assert all(k in EXPLANATION_KINDS for k in declared)
    heatmaps = [e for e in exps if isinstance(e, Heatmap)]
    assert heatmaps, "every image model with an explanation of its own must give at least one Heatmap"
    for hm in heatmaps:
        assert hm.maps.shape == (3, side, side)
        assert np.isfinite(hm.maps).all()
        assert list(hm.case_ids) == ["a", "b", "c"]
        assert hm.target.shape == (3,)


# ------------------------------------------------------------------------------------------------ tabular models
def _table(classes: int = 2, n: int = 120, n_features: int = 6, seed: int = 0):
    """A seeded synthetic table: the label depends on f1 and f4 only (``classes`` balanced classes)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features))
    s = 1.5 * X[:, 1] - X[:, 4] + 0.3 * rng.normal(size=n)
    y = np.digitize(s, np.quantile(s, np.arange(1, classes) / classes))
    return X, y, [f"f{j}" for j in range(n_features)]


def _make_tabular(name: str) -> TabularModel:
    return create_model(name, **model_info(name).test_kwargs)


def _check_attribution(exps, info, X, names, classes: int) -> FeatureAttribution:
    assert isinstance(exps, list) and exps, "explain() returns a non-empty list"
    assert all(e.kind in info.explanations for e in exps)
    e = exps[0]
    assert isinstance(e, FeatureAttribution)
    n_cols = len(e.feature_names)
    # one column per feature, or per term (EBM interactions "a & b", point-score items "a > t"), each built of
    # input features
    assert n_cols >= 1 and (e.feature_names == names or all(set(c.split()) & set(names) for c in e.feature_names))
    assert e.contribution.shape == e.values.shape == (len(X), n_cols)
    assert np.isfinite(e.contribution).all()
    assert e.target.shape == (len(X),) and set(np.unique(e.target)) <= set(range(classes))
    return e


@pytest.mark.parametrize("name", TABULAR_MODELS)
def test_tabular_fit_predict_explain_complexity(name):
    info = model_info(name)
    X, y, names = _table()
    model = _make_tabular(name)
    assert model.fit(X, y, feature_names=names) is model
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 2) and np.isfinite(proba).all() and (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    assert roc_auc_score(y, proba[:, 1]) > 0.7, "the fitted model must beat chance on its training data"
    e = _check_attribution(model.explain(X), info, X, names, 2)
    np.testing.assert_array_equal(e.target, proba.argmax(1))  # default: the predicted class
    top = e.feature_names[int(np.argmax(np.abs(e.contribution).mean(0)))]
    assert {"f1", "f4"} & set(top.split()), f"the largest contribution ({top}) must come from f1 or f4"
    complexity = model.complexity_()
    assert isinstance(complexity, dict) and complexity
    blocks = model.extra_metrics(None, None)
    assert blocks.pop("complexity") == complexity
    # the only other block a tabular model adds: the settings it was fitted with below full strength (the EBM with
    # its small test settings), each against its default
    assert set(blocks) <= {"settings"}
    for setting in blocks.get("settings", {}).get("reduced", {}).values():
        assert set(setting) == {"value", "default"} and setting["value"] != setting["default"]


@pytest.mark.parametrize("name", TABULAR_MODELS)
def test_tabular_binary_requirement(name):
    info = model_info(name)
    X, y, names = _table(classes=3)
    assert np.bincount(y).tolist() == [40, 40, 40]
    model = _make_tabular(name)
    if "binary" in info.requirements({}):
        with pytest.raises(ValueError, match="binary"):
            model.fit(X, y, feature_names=names)
        return
    model.fit(X, y, feature_names=names)
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 3) and np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    assert roc_auc_score(y, proba, multi_class="ovr") > 0.7
    _check_attribution(model.explain(X), info, X, names, 3)


# ------------------------------------------------------------------------------------------------ every model
@pytest.mark.parametrize("name", ALL_MODELS)
def test_registry_info_matches_model(name):
    info = model_info(name)
    assert issubclass(info.cls, ImageModel) != issubclass(info.cls, TabularModel), "exactly one base class"
    base = ImageModel if info.input_kind == "image" else TabularModel
    assert info.input_kind == ("image" if issubclass(info.cls, ImageModel) else "features")
    model = _make(name, 1, 32, 2) if info.input_kind == "image" else _make_tabular(name)
    assert isinstance(model, base) and type(model) is info.cls
    assert info.explanations == tuple(info.cls.explanation_kinds) == tuple(model.explanation_kinds)
    assert info.intrinsic == bool(info.explanations)
    assert all(k in EXPLANATION_KINDS for k in info.explanations)
    assert set(info.requirements({})) <= set(REQUIREMENTS)
    assert info.paper, "every model cites its paper"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_create_model_rejects_an_unknown_keyword(name):
    with pytest.raises(ConfigError, match=rf"model '{name}' got unknown keyword\(s\) \['not_a_parameter'\]"):
        create_model(name, **model_info(name).test_kwargs, not_a_parameter=1)


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
    assert {"sparse_logreg", "decision_tree", "ebm", "point_score"} <= set(TABULAR_MODELS)
    assert set(IMAGE_MODELS).isdisjoint(TABULAR_MODELS) and sorted(IMAGE_MODELS + TABULAR_MODELS) == ALL_MODELS


# models whose decision a reader can follow from their explanation, and the unit of what they take in (the trade-off
# chart's x axis); every other image model is drawn as a band (no reading load)
FOLLOWABLE = {"protopnet": "prototypes", "pipnet": "prototypes", "cbm": "concepts"}


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_reading_load_of_image_models(name):
    model = _make(name, 1, 32, 2).eval()
    load = model.reading_load(np.random.default_rng(0).random((4, 1, 32, 32), dtype=np.float32))
    if name not in FOLLOWABLE:
        assert load is None
        return
    assert set(load) == {"count", "unit", "definition"} and load["unit"] == FOLLOWABLE[name]
    assert 0 <= load["count"] and load["definition"]


def test_protopnet_reading_load_counts_the_predicted_class_connections():
    model = _make("protopnet", 1, 32, 2).eval()
    with torch.no_grad():
        w = model.last_layer.weight
        w.zero_()
        w[0, :3] = 1.0  # class 0 weighs 3 prototypes
        w[1, :] = 0.5   # class 1 weighs all of them
        w[1, 0] = 1e-4  # ... but one only negligibly
    x = np.random.default_rng(0).random((5, 1, 32, 32), dtype=np.float32)
    pred = model.predict_proba(x).argmax(1)
    expected = np.where(pred == 0, 3, w.shape[1] - 1).mean()
    assert model.reading_load(x)["count"] == pytest.approx(expected)


@pytest.mark.parametrize("name", TABULAR_MODELS)
def test_reading_load_of_tabular_models(name):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    model = create_model(name, **model_info(name).test_kwargs).fit(X[:80], y[:80], X[80:], y[80:])
    load = model.reading_load(X[80:])
    assert set(load) == {"count", "unit", "definition"} and load["count"] > 0 and load["definition"]

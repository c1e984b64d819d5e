"""Counterfactuals: the analytic minimal change of hand-set linear models, the fewest concept flips of a hand-set
label head, and properties on the zoo's fitted glass-box models and concept bottleneck."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from glasszoo.models import Counterfactual, create_model
from glasszoo.models.counterfactuals import concept_counterfactual, feature_counterfactual


def linear_proba(w: np.ndarray, b: float):
    """p(class 1) = sigmoid(w . x + b)."""

    def fn(rows: np.ndarray) -> np.ndarray:
        z = rows @ w + b
        p1 = 1 / (1 + np.exp(-z))
        return np.stack([1 - p1, p1], axis=1)

    return fn


W = np.array([0.5, -2.0, 1.0, 0.0])
SD = np.array([1.0, 0.5, 3.0, 1.0])  # |w| * sd = 0.5, 1.0, 3.0, 0: feature 2 is the cheapest per unit of margin
NAMES = ["f0", "f1", "f2", "f3"]


def test_one_feature_analytic_minimal_change():
    x = np.array([1.0, -1.0, 2.0, 0.0])
    b = -1.0
    logit = float(x @ W + b)  # 0.5 + 2 + 2 - 1 = 3.5: class 1
    lo, hi = np.full(4, -10.0), np.full(4, 10.0)
    cf = feature_counterfactual(linear_proba(W, b), x, lo, hi, SD, NAMES)
    assert (cf["from_class"], cf["to_class"], cf["found"]) == (1, 0, True)
    # the L1-minimal change in sd units moves only the feature of largest |w_j| sd_j to the boundary w . x + b = 0
    assert [c["name"] for c in cf["changes"]] == ["f2"]
    delta = -logit / W[2]  # -3.5
    change = cf["changes"][0]
    assert change["delta"] == pytest.approx(delta, abs=1e-6)
    assert change["scaled_delta"] == pytest.approx(delta / SD[2], abs=1e-6)
    assert cf["cost"] == pytest.approx(abs(delta) / SD[2], abs=1e-6)
    assert cf["proba_after"][0] == pytest.approx(0.5, abs=1e-6) and cf["proba_after"][0] > 0.5


def test_range_bound_saturates_the_cheapest_feature_then_uses_the_next():
    x = np.array([1.0, -1.0, 2.0, 0.0])
    b = -1.0
    lo = np.array([-10.0, -10.0, 1.0, -10.0])  # f2 may only fall to 1: 1.0 of the 3.5 logits
    hi = np.full(4, 10.0)
    cf = feature_counterfactual(linear_proba(W, b), x, lo, hi, SD, NAMES)
    # fractional knapsack: f2 to its bound (margin -1), then f1 (|w| sd = 1.0, next best) covers the other 2.5
    assert [c["name"] for c in cf["changes"]] == ["f2", "f1"] and cf["found"]
    assert cf["changes"][0]["after"] == pytest.approx(1.0)
    assert cf["changes"][1]["delta"] == pytest.approx(2.5 / 2.0, abs=1e-6)  # w1 = -2: f1 rises by 1.25
    assert cf["cost"] == pytest.approx(1.0 / 3.0 + 1.25 / 0.5, abs=1e-6)


def test_no_counterfactual_within_the_range_is_reported_as_such():
    x = np.array([1.0, -1.0, 2.0, 0.0])
    lo, hi = x - 0.01, x + 0.01
    cf = feature_counterfactual(linear_proba(W, -1.0), x, lo, hi, SD, NAMES, max_changes=2)
    assert not cf["found"] and len(cf["changes"]) == 2
    for c in cf["changes"]:
        j = NAMES.index(c["name"])
        assert lo[j] <= c["after"] <= hi[j]
    text = Counterfactual(space="features", cases=[cf], class_names=["benign", "malignant"]).text(0)
    assert text.startswith("predicted malignant; would still not be benign")


def test_multiclass_target_and_text():
    def proba(rows):  # three classes whose logits are x0, x1 and 0
        z = np.stack([rows[:, 0], rows[:, 1], np.zeros(len(rows))], axis=1)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    x = np.array([2.0, -3.0])  # class 0 predicted; class 1 is far behind
    cf = feature_counterfactual(proba, x, np.array([-5.0, -5.0]), np.array([5.0, 5.0]), np.ones(2), ["a", "b"],
                                target=2, descriptions={"a": "first"})
    # class 2 (logit 0) wins once a drops below 0 and stays above b: a moves by -2, to the flip point
    assert (cf["from_class"], cf["to_class"], cf["found"]) == (0, 2, True)
    assert [c["name"] for c in cf["changes"]] == ["a"]
    assert cf["changes"][0]["after"] == pytest.approx(0.0, abs=1e-6)
    text = Counterfactual(space="features", cases=[cf], class_names=["x", "y", "z"]).text()
    assert "would be z" in text and "[first]" in text and " sd)" in text


def test_concept_counterfactual_finds_the_fewest_flips():
    w = np.array([[0.0, 0.0, 0.0, 0.0, 0.0], [2.0, 1.5, 1.0, -3.0, 0.5]])  # class 1 logit; class 0 logit 0
    bias = np.array([0.0, -1.0])

    def logits(rows):
        return rows @ w.T + bias

    a = np.array([0.9, 0.8, 0.1, 0.0, 0.3])  # logit 1: 1.8 + 1.2 + 0.1 + 0 + 0.15 - 1 = 2.25 -> class 1
    binary = [True, True, True, True, False]
    cf = concept_counterfactual(logits, a, list("abcde"), binary, (-2.0, 2.0))
    assert cf["from_class"] == 1 and cf["to_class"] == 0 and cf["found"]
    # one move suffices: d (absent -> present) moves the logit by -3; flipping a alone gives 0.45, b alone 1.05
    assert [c["name"] for c in cf["changes"]] == ["d"] and cf["cost"] == 1.0
    assert cf["changes"][0]["before"] == 0.0 and cf["changes"][0]["after"] == 1.0

    # without d, the fewest flips by brute force over every subset of moves
    w2 = w.copy()
    w2[1, 3] = 0.0
    cf2 = concept_counterfactual(lambda r: r @ w2.T + bias, a, list("abcde"), binary, (-2.0, 2.0))
    moves = np.array([0.0, 0.0, 1.0, 1.0, -2.0])  # e (continuous, w > 0) goes to the low end
    sizes = []
    for size in range(1, 4):
        for sub in itertools.combinations(range(5), size):
            row = a.copy()
            row[list(sub)] = moves[list(sub)]
            if (row @ w2[1] + bias[1]) < 0:
                sizes.append(size)
    assert cf2["found"] and len(cf2["changes"]) == min(sizes)
    assert {c["name"] for c in cf2["changes"]} <= set("abe")


def _table(seed: int = 0, n: int = 200):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = (X[:, 0] - 0.8 * X[:, 2] + 0.3 * rng.normal(size=n) > 0).astype(int)
    return X, y


@pytest.mark.parametrize("name", ["sparse_logreg", "decision_tree", "figs"])
def test_fitted_glass_box_counterfactuals_flip_the_prediction_within_the_range(name):
    X, y = _table()
    model = create_model(name)
    model.fit(X[:150], y[:150], feature_names=[f"v{j}" for j in range(5)])
    cf = model.counterfactual(X[150:160], class_names=["neg", "pos"], case_ids=np.arange(10))
    assert isinstance(cf, Counterfactual) and len(cf) == 10 and cf.space == "features"
    for i, c in enumerate(cf.cases):
        row = X[150 + i].copy()
        for ch in c["changes"]:
            j = int(ch["name"][1:])
            assert model.feature_lo_[j] - 1e-9 <= ch["after"] <= model.feature_hi_[j] + 1e-9
            row[j] = ch["after"]
        p = model.predict_proba(row[None])[0]
        if c["found"]:
            assert p.argmax() == c["to_class"] != c["from_class"]
        np.testing.assert_allclose(p, c["proba_after"])
    assert sum(c["found"] for c in cf.cases) >= 8  # the decisive features have room to move


def test_cbm_counterfactual_flips_through_its_label_head():
    model = create_model("cbm", num_classes=2, in_chans=1, img_size=32, concept_names=["a", "b", "c"],
                         concept_kinds=["binary", "binary", "continuous"], concept_center=[0.0, 0.0, 10.0],
                         concept_scale=[1.0, 1.0, 2.0], stem="standard").eval()
    x = torch.rand(2, 1, 32, 32)
    act = model.predict_concepts(x)
    with torch.no_grad():
        model.label_head.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
        model.label_head.weight[1, 1] = 8.0  # class 1 rises with b
        b_on = act[:, 1] >= 0.5
        model.label_head.bias.copy_(torch.tensor([0.0, -4.0]))
    cf = model.counterfactual(x, class_names=["n", "p"])
    for i, c in enumerate(cf.cases):
        assert c["found"] and [ch["name"] for ch in c["changes"]] == ["b"]
        assert c["changes"][0]["after"] == (0.0 if b_on[i] else 1.0)
        assert c["to_class"] != c["from_class"]
    assert "would be" in cf.text(0)

"""Global surrogates of an image model's predictions: fidelity, accuracy, rules, the config and the report."""

from __future__ import annotations

import re

import numpy as np
import pytest

from glasszoo.evaluation.report import _surrogates_section
from glasszoo.evaluation.surrogates import surrogate_block
from glasszoo.models.errors import ConfigError, DataError

FAST = {"tree": {"model": "decision_tree", "params": {"max_depth": 3}},
        "sparse_linear": {"model": "sparse_logreg", "params": {"max_features": 3, "n_Cs": 8}}}


def _data(n=600, seed=0):
    """6 features; the imitated model predicts class 1 iff f0 > 0.2 (a rule a depth-1 tree states exactly); the
    labels follow f0 + f3, so the model is right on most but not all cases."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    pred = (X[:, 0] > 0.2).astype(int)
    proba = np.column_stack([1 - pred, pred]).astype(float) * 0.8 + 0.1
    labels = (X[:, 0] + 0.7 * X[:, 3] + 0.3 * rng.normal(size=n) > 0.2).astype(int)
    idx = rng.permutation(n)
    train, val, test = np.sort(idx[:360]), np.sort(idx[360:450]), np.sort(idx[450:])
    return X, proba, labels, train, val, test, [f"f{i}" for i in range(6)]


def test_a_rule_the_target_follows_is_found_with_full_fidelity():
    X, proba, labels, train, val, test, names = _data()
    block = surrogate_block(proba, X, labels, train, val, test, names, {n: "" for n in names}, FAST, n_boot=200)
    tree = block["surrogates"]["tree"]
    assert tree["fidelity"]["agreement"]["value"] == 1.0
    assert tree["fidelity"]["auc"]["value"] == 1.0
    # the rule, in words: one split on f0 between the training cases on either side of 0.2
    (threshold,) = {float(t) for t in re.findall(r"f0 <= (-?[0-9.]+)", tree["rules"])}
    assert tree["complexity"]["n_features_used"] == 1 and 0.15 < threshold <= 0.2
    # against the labels the surrogate is exactly as good as the target it copies
    assert tree["task"]["auc"]["value"] == pytest.approx(block["target_test_auc"]["value"], abs=1e-12)
    lin = block["surrogates"]["sparse_linear"]
    assert lin["fidelity"]["agreement"]["value"] > 0.85  # a logistic ramp approximates the step
    assert lin["reading_load"]["unit"] == "terms" and 1 <= lin["reading_load"]["count"] <= 3
    lo, hi = lin["fidelity"]["agreement"]["ci"]
    assert lo <= lin["fidelity"]["agreement"]["value"] <= hi
    # the base rate: the share of the target's most frequent predicted test class
    counts = np.bincount(proba[test].argmax(1))
    assert block["agreement_base_rate"] == pytest.approx(counts.max() / len(test))


def test_agreement_is_the_share_of_matching_predictions():
    X, proba, labels, train, val, test, names = _data(seed=1)
    # the target now predicts by f0 > 0.2 XOR f5 > 1.5: a depth-1 stump cannot copy the f5 part
    flip = X[:, 5] > 1.5
    pred = (X[:, 0] > 0.2).astype(int) ^ flip
    proba = np.column_stack([1 - pred, pred]).astype(float)
    stump = {"stump": {"model": "decision_tree", "params": {"max_depth": 1}}}
    block = surrogate_block(proba, X, labels, train, val, test, names, {}, stump, n_boot=100)
    s = block["surrogates"]["stump"]
    expected = np.mean((X[test, 0] > 0.2).astype(int) == pred[test])  # what the f0 stump gets right
    assert s["fidelity"]["agreement"]["value"] == pytest.approx(expected)


def test_a_target_with_one_class_fails_that_surrogate_only():
    X, proba, labels, train, val, test, names = _data()
    one = np.column_stack([np.ones(len(X)), np.zeros(len(X))])
    block = surrogate_block(one, X, labels, train, val, test, names, {}, FAST, n_boot=50)
    assert all("one class only" in s["error"] for s in block["surrogates"].values())
    with pytest.raises(DataError, match="one class only"):
        from glasszoo.evaluation.surrogates import fit_surrogate
        fit_surrogate("decision_tree", {}, X, one.argmax(1), train, val, names, {})


def test_report_section_lists_every_surrogate_and_its_rules():
    X, proba, labels, train, val, test, names = _data()
    block = surrogate_block(proba, X, labels, train, val, test, names, {}, FAST, n_boot=50)
    html = _surrogates_section({"surrogates": {"blackbox": block}})
    assert html.count("<tr>") >= 3 and "tree (decision_tree)" in html and "sparse_linear (sparse_logreg)" in html
    assert "<pre>" in html and "agreement" in html
    assert _surrogates_section({}) == ""


def test_config_checks_the_surrogates(tmp_path):
    from glasszoo.evaluation.experiment.config import parse_config

    base = {"experiment": "x", "data": {"source": "synthetic", "n_cases": 40}, "models": ["blackbox", "ebm"]}
    cfg = parse_config(base)
    assert cfg.evaluation.surrogates.of == ["black-box"]
    assert set(cfg.evaluation.surrogates.models) == {"tree", "sparse_linear", "ebm"}
    bad = [({"of": ["nosuch"]}, "surrogates.of\\[0\\]"),
           ({"models": {"t": {"model": "blackbox"}}}, "surrogates.models.t.model: 'blackbox' is an image model"),
           ({"models": {"t": {"model": "nosuch"}}}, "surrogates.models.t.model: unknown model"),
           ({"models": {"t": {"model": "decision_tree", "params": {"depth": 2}}}}, "surrogates.models.t.params"),
           ({"models": {"t": "decision_tree"}}, "surrogates.models.t: expected")]
    for sg, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_config({**base, "evaluation": {"surrogates": sg}})

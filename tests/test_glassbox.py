"""Glass-box tabular models: scikit-learn compliance, selection, explanation identities, a hand-made point score."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from scipy.special import expit, logsumexp
from sklearn.utils.estimator_checks import parametrize_with_checks

from glasszoo.models import FeatureAttribution, GlobalExplanation, create_model, list_models, model_info
from glasszoo.models.glassbox import EBM, PointScore, ScoreItem, ShallowTree, SparseLogReg, plot_shape_functions
from glasszoo.training.features import feature_descriptions

# every registered tabular model, built with its registry test_kwargs (small settings, so the ~55 checks per
# estimator stay fast): a new tabular model is checked the moment it registers
TABULAR = list_models(input_kind="features")
CHECKED = [create_model(n, **model_info(n).test_kwargs) for n in TABULAR]
REGISTRY_NAME = {model_info(n).cls: n for n in TABULAR}
# Checks expected to fail, per registry name, with the reason beside each: {check name: reason}. All checks
# currently pass, so there are none (xfail_strict makes a listed check that starts passing fail loudly, so the list
# cannot go stale; a model not listed here is expected to pass every check). Checks sklearn does not yield: the
# sample_weight checks (fit takes no sample_weight), check_class_weight_classifiers for the models without a
# class_weight parameter (ebm, point_score) and, for point_score (tag multi_class=False), the multiclass variants --
# replaced by check_classifier_not_supporting_multiclass. check_array_api_input skips itself unless SCIPY_ARRAY_API
# is set.
EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {}


def expected_failed_checks(estimator) -> dict[str, str]:
    return EXPECTED_FAILED_CHECKS.get(REGISTRY_NAME[type(estimator)], {})


def test_every_tabular_model_is_checked():
    assert TABULAR and sorted(REGISTRY_NAME.values()) == TABULAR == sorted(REGISTRY_NAME[type(e)] for e in CHECKED)
    assert set(EXPECTED_FAILED_CHECKS) <= set(TABULAR)


@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failed_checks, xfail_strict=True)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ------------------------------------------------------------------------------------------------ data
def two_informative(n=300, seed=0):
    """10 features; the label depends on f2 and f7 only."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 10))
    y = (1.5 * X[:, 2] - X[:, 7] + 0.3 * rng.normal(size=n) > 0).astype(int)
    return X, y, [f"f{i}" for i in range(10)]


@pytest.fixture(scope="module")
def data():
    X, y, names = two_informative()
    return X[:200], y[:200], X[200:], y[200:], names


def fitted(cls, data, **kw):
    Xtr, ytr, Xva, yva, names = data
    return cls(**kw).fit(Xtr, ytr, Xva, yva, feature_names=names)


# ------------------------------------------------------------------------------------------------ sparse logreg
def test_sparse_logreg_picks_the_informative_features(data):
    m = fitted(SparseLogReg, data, max_features=2)
    assert set(m.nonzero_features()) == {"f2", "f7"}
    assert m.complexity_()["n_nonzero"] == 2 and m.selection_ == "validation"
    # the default budget keeps the two informative ones as the largest weights
    m10 = fitted(SparseLogReg, data)
    w = np.abs(m10.coef_[0])
    assert {m10.feature_names_[j] for j in np.argsort(-w)[:2]} == {"f2", "f7"}
    assert m10.complexity_()["n_nonzero"] <= 10


def test_sparse_logreg_path_is_monotone_ish(data):
    m = fitted(SparseLogReg, data)
    Cs, nnz, scores = (np.asarray(v) for v in zip(*m.path_))
    assert np.all(np.diff(Cs) > 0) and len(Cs) == m.n_Cs
    assert nnz[0] <= 1 and nnz[-1] == 10
    assert np.sum(np.diff(nnz) < 0) <= 2  # the lasso path may drop a feature now and then, rarely
    assert np.corrcoef(np.arange(len(nnz)), nnz)[0, 1] > 0.9
    assert np.all((scores >= 0) & (scores <= 1))
    assert m.C_ in Cs and m.n_iter_ >= 1


def test_sparse_logreg_contributions_add_up_to_the_logit(data):
    m = fitted(SparseLogReg, data, max_features=3)
    X = data[2][:20]
    p = m.predict_proba(X)
    for target in (None, 0, 1):
        [e] = m.explain(X, target=target)
        t = e.target
        logit = np.log(p[np.arange(len(X)), t] / p[np.arange(len(X)), 1 - t])
        np.testing.assert_allclose(e.contribution.sum(1) + e.intercept, logit, atol=1e-8)
    [e1] = m.explain(X, target=1)
    assert isinstance(e1.intercept, float) and e1.intercept == pytest.approx(m.intercept_[0])
    assert np.all(e1.contribution[:, ~np.isin(m.feature_names_, m.nonzero_features())] == 0)
    np.testing.assert_allclose(m.explain(X, target=0)[0].contribution, -e1.contribution)


def test_sparse_logreg_multiclass_and_global_text(data):
    X, _, _, _, names = data
    y = np.digitize(X[:, 2] - X[:, 7], [-0.7, 0.7])
    m = SparseLogReg(max_features=4, n_Cs=10).fit(X, y, feature_names=names,
                                                     feature_descriptions={"f2": "the second signal"})
    assert m.selection_ == "3-fold CV" and m.coef_.shape == (3, 10)
    p = m.predict_proba(X[:10])
    e = [m.explain(X[:10], target=k)[0] for k in range(3)]
    scores = np.stack([ek.contribution.sum(1) + ek.intercept for ek in e], axis=1)
    np.testing.assert_allclose(np.exp(scores - logsumexp(scores, axis=1, keepdims=True)), p, atol=1e-8)
    g = m.explain_global()
    assert g.form == "weights" and "the second signal" in g.text and "z(f2)" in g.text
    assert {w["feature"] for w in g.content["weights"]} == set(m.nonzero_features())


# ------------------------------------------------------------------------------------------------ tree
def test_tree_rules_name_the_informative_feature(data):
    m = fitted(ShallowTree, data)
    g = m.explain_global()
    assert g.form == "rules" and "f2" in g.text
    assert g.content["n_leaves"] == m.complexity_()["n_leaves"] == len(g.content["rules"])
    assert 1 <= m.depth_ <= 4 and [d for d, _, _ in m.depth_path_] == [1, 2, 3, 4]
    assert m.selection_ == "validation"


@pytest.mark.parametrize("target", [None, 1, 0])
def test_tree_path_contributions_sum_to_leaf_minus_root(data, target):
    m = fitted(ShallowTree, data, class_weight="balanced")
    X = data[2][:25]
    [e] = m.explain(X, target=target)
    p = m.predict_proba(X)
    root = m._node_proba()[0]
    np.testing.assert_allclose(np.asarray(e.intercept) * np.ones(len(X)), root[e.target], atol=1e-12)
    np.testing.assert_allclose(e.contribution.sum(1), p[np.arange(len(X)), e.target] - root[e.target], atol=1e-12)
    used = {int(f) for f in m.tree_.tree_.feature if f >= 0}
    assert np.all(e.contribution[:, sorted(set(range(10)) - used)] == 0)


# ------------------------------------------------------------------------------------------------ EBM
def test_ebm_binary_contributions_plus_intercept_are_the_logit(data, tmp_path):
    m = fitted(EBM, data, outer_bags=2, max_rounds=300, interactions=2)
    X = data[2][:15]
    p = m.predict_proba(X)
    [e] = m.explain(X)
    t = e.target
    logit = np.log(p[np.arange(len(X)), t] / p[np.arange(len(X)), 1 - t])
    np.testing.assert_allclose(e.contribution.sum(1) + e.intercept, logit, atol=1e-6)
    assert e.feature_names == m.term_names_ and any(" & " in n for n in e.feature_names)
    assert np.isnan(e.values[:, [len(tf) > 1 for tf in m.term_features_]]).all()
    c = m.complexity_()
    assert c["n_interactions"] == 2 and c["n_terms"] == 12 and m.n_params_ > 0
    g = m.explain_global()
    main = next(t for t in g.content["terms"] if t["type"] == "main")
    assert len(main["scores"]) == len(main["bin_edges"][0]) + 1
    assert g.content["terms"][0]["name"] in ("f2", "f7")
    out = plot_shape_functions(m, tmp_path / "shapes.png", top_k=4)
    assert out.exists() and out.stat().st_size > 1000


def test_ebm_multiclass(data):
    X, _, Xv, _, names = data
    y = np.digitize(X[:, 2] - X[:, 7], [-0.7, 0.7])
    yv = np.digitize(Xv[:, 2] - Xv[:, 7], [-0.7, 0.7])
    m = EBM(outer_bags=1, max_rounds=200, interactions=1).fit(X, y, Xv, yv, feature_names=names)
    p = m.predict_proba(Xv[:8])
    assert p.shape == (8, 3)
    scores = np.stack([(lambda e: e.contribution.sum(1) + e.intercept)(m.explain(Xv[:8], target=k)[0])
                       for k in range(3)], axis=1)
    np.testing.assert_allclose(np.exp(scores - logsumexp(scores, axis=1, keepdims=True)), p, atol=1e-6)
    assert np.asarray(m.explain_global().content["terms"][0]["scores"]).shape[-1] == 3


# ------------------------------------------------------------------------------------------------ point score
def hand_score():
    items = [{"feature": 0, "threshold": 0.5, "direction": ">", "points": 2},
             {"feature": 1, "threshold": 1.0, "direction": "<=", "points": 1},
             ScoreItem(feature=2, threshold=0.0, direction=">", points=1)]
    return PointScore.from_table(items, intercept=-2.0, scale=0.8, feature_names=["a", "b", "c"])


def test_point_score_known_answer():
    m = hand_score()
    X = np.array([[1.0, 0.0, 1.0],    # 2 + 1 + 1
                  [0.0, 2.0, 1.0],    # 0 + 0 + 1
                  [0.6, 1.0, -1.0],   # 2 + 1 (b <= 1 holds at the boundary) + 0
                  [0.5, 5.0, 0.0]])   # a > 0.5 fails at the boundary; c > 0 fails at 0
    np.testing.assert_array_equal(m.total_points(X), [4, 1, 3, 0])
    assert [r["total"] for r in m.risk_table_] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([r["risk"] for r in m.risk_table_], expit(-2.0 + 0.8 * np.arange(5)))
    p = m.predict_proba(X)
    np.testing.assert_allclose(p[:, 1], expit(-2.0 + 0.8 * np.array([4, 1, 3, 0])))
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_array_equal(m.predict(X), [1, 0, 1, 0])  # risk > 0.5 iff total >= 3
    [e] = m.explain(X, target=1)
    assert e.feature_names == ["a > 0.5", "b <= 1", "c > 0"]
    np.testing.assert_array_equal(e.contribution, [[2, 1, 1], [0, 0, 1], [2, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(e.contribution.sum(1), m.total_points(X))
    np.testing.assert_array_equal(m.explain(X, target=0)[0].contribution, -e.contribution)
    assert m.complexity_() == {"n_items": 3, "points": [2, 1, 1], "total_points": 4, "n_features_used": 3,
                               "n_params": 8}
    g = m.explain_global()
    assert g.form == "score_table"
    assert "a > 0.5 | +2" in g.text and "b <= 1  | +1" in g.text and "c > 0   | +1" in g.text
    assert [row["total"] for row in g.content["risk_table"]] == [0, 1, 2, 3, 4]


def test_point_score_learns_planted_items():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 6))
    logit = -2.0 + 2.0 * (X[:, 1] > 0) + 1.2 * (X[:, 4] <= -0.6) + 0.0 * X[:, 0]
    y = (rng.random(600) < expit(logit)).astype(int)
    m = PointScore(max_terms=4).fit(X[:400], y[:400], X[400:], y[400:])
    feats = {it.feature for it in m.items_}
    assert {1, 4} <= feats and all(1 <= it.points <= 3 for it in m.items_)
    item1 = next(it for it in m.items_ if it.feature == 1)
    assert item1.direction == ">" and abs(item1.threshold) < 0.2
    assert next(it for it in m.items_ if it.feature == 4).direction == "<="
    obs = [r for r in m.risk_table_ if r["n_train"]]
    assert sum(r["n_train"] for r in obs) == 400
    assert obs[-1]["risk"] > obs[0]["risk"]


def test_point_score_rejects_multiclass():
    X = np.random.default_rng(0).normal(size=(30, 3))
    with pytest.raises(ValueError, match="Only binary classification is supported"):
        PointScore().fit(X, np.arange(30) % 3)


# ------------------------------------------------------------------------------------------------ all models
@pytest.mark.parametrize("name", TABULAR)
def test_registered_explanations_shapes_and_pickle(name, data):
    info = model_info(name)
    assert info.input_kind == "features" and info.explanations == ("feature_attribution",) and info.paper
    m = create_model(name, **info.test_kwargs)
    Xtr, ytr, Xva, yva, names = data
    m.fit(Xtr, ytr, Xva, yva, feature_names=names)
    X = Xva[:7]
    ids = np.array([f"case{i}" for i in range(7)], dtype=object)
    exps = m.explain(X, case_ids=ids)
    assert isinstance(exps, list) and len(exps) == 1
    e = exps[0]
    assert isinstance(e, FeatureAttribution)
    f = len(e.feature_names)
    assert e.values.shape == e.contribution.shape == (7, f) and e.target.shape == (7,)
    np.testing.assert_array_equal(e.target, m.predict_proba(X).argmax(1))
    assert list(e.case_ids) == list(ids) and np.isfinite(e.contribution).all()
    json.dumps(e.to_dict(), allow_nan=True)
    g = m.explain_global()
    assert isinstance(g, GlobalExplanation) and g.text
    json.dumps(g.to_dict(), allow_nan=True)
    c = m.complexity_()
    assert isinstance(c, dict) and c["n_params"] == m.n_params_ > 0
    twin = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(twin.predict_proba(X), m.predict_proba(X))


def test_feature_descriptions_come_from_the_caller_only(data):
    Xtr, ytr, Xva, yva, _ = data
    names = ["original_glcm_Contrast", "original_firstorder_Mean"] + [f"x{i}" for i in range(8)]
    X = Xtr[:, [2, 7, 0, 1, 3, 4, 5, 6, 8, 9]]
    # the model knows nothing of radiomics: without descriptions it names the features only
    bare = SparseLogReg(max_features=10).fit(X, ytr, feature_names=names)
    g = bare.explain_global()
    desc = {w["feature"]: w["description"] for w in g.content["weights"]}
    assert {"original_glcm_Contrast", "original_firstorder_Mean"} <= set(desc) and not any(desc.values())
    assert "GLCM contrast" not in g.text and " -- " not in g.text
    # the pipeline passes the feature table's descriptions (glasszoo.training.features.feature_descriptions)
    m = SparseLogReg(max_features=10).fit(X, ytr, feature_names=names, feature_descriptions=feature_descriptions(names))
    g = m.explain_global()
    desc = {w["feature"]: w["description"] for w in g.content["weights"]}
    assert desc["original_glcm_Contrast"].startswith("GLCM contrast:")
    assert desc["original_firstorder_Mean"].startswith("First-order mean:")
    assert "GLCM contrast:" in g.text
    m.set_feature_descriptions({"original_glcm_Contrast": "my words"})
    assert "my words" in m.explain_global().text


def test_reading_loads_count_what_the_explanation_shows(data):
    Xtr, ytr, Xva, yva, names = data
    lr = fitted(SparseLogReg, data, n_Cs=8)
    assert lr.reading_load(Xva)["count"] == np.count_nonzero(np.any(lr.coef_ != 0, axis=0))
    tree = fitted(ShallowTree, data, max_depth=3)
    paths = [sum(1 for c in r["conditions"]) for r in tree.rules()]  # conditions per leaf
    leaf = tree.tree_.apply(Xva)
    leaves = [i for i in range(tree.tree_.tree_.node_count)
              if tree.tree_.tree_.children_left[i] == tree.tree_.tree_.children_right[i]]
    per_leaf = dict(zip(leaves, paths))  # rules() walks the leaves left to right, as their ids increase
    assert tree.reading_load(Xva)["count"] == pytest.approx(np.mean([per_leaf[i] for i in leaf]))
    score = PointScore.from_table([{"feature": 0, "threshold": 0.0, "direction": ">", "points": 2},
                                   {"feature": 3, "threshold": 1.0, "direction": "<=", "points": 1}],
                                  intercept=-1.0, scale=0.5, feature_names=names)
    assert score.reading_load(Xva) == {"count": 2, "unit": "items", "definition": score.reading_load(Xva)["definition"]}


def test_ebm_validation_modes_use_the_validation_cases_as_documented(data):
    Xtr, ytr, Xva, yva, names = data
    kw = {"outer_bags": 1, "max_rounds": 100, "interactions": 0, "max_bins": 32, "n_jobs": 1}
    folded = EBM(validation="train", **kw).fit(Xtr, ytr, Xva, yva, feature_names=names)
    ignored = EBM(validation="ignore", **kw).fit(Xtr, ytr, Xva, yva, feature_names=names)
    alone = EBM(validation="train", **kw).fit(Xtr, ytr, feature_names=names)  # no validation cases given
    # "ignore" fits exactly what a fit without validation cases fits; "train" sees more cases, so another model
    np.testing.assert_allclose(ignored.predict_proba(Xva), alone.predict_proba(Xva))
    assert not np.allclose(folded.predict_proba(Xva), ignored.predict_proba(Xva))
    assert folded.ebm_.bins_ is not None and "training + validation" in folded.selection_
    with pytest.raises(ValueError, match="validation must be one of"):
        EBM(validation="val").fit(Xtr, ytr, Xva, yva)


def test_ebm_reports_settings_below_full_strength():
    assert EBM().reduced_settings() == {}
    assert EBM(interactions="5x").reduced_settings() == {}
    cheap = EBM(outer_bags=4, max_rounds=2000, interactions=3).reduced_settings()
    assert cheap == {"outer_bags": {"value": 4, "default": 14}, "max_rounds": {"value": 2000, "default": 50000},
                     "interactions": {"value": 3, "default": "3x"}}
    # main effects only is a model of its own (the data-set configs' validated choice), not a cheap EBM; fewer bags
    # beside it still are
    assert EBM(interactions=0).reduced_settings() == {}
    assert EBM(interactions=0, outer_bags=2).reduced_settings() == {"outer_bags": {"value": 2, "default": 14}}
    assert EBM(interactions=1).reduced_settings() == {"interactions": {"value": 1, "default": "3x"}}

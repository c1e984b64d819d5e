"""Rule models (FIGS, RuleFit): planted structure recovered, printed rules that reproduce the predictions by hand,
exact explanation identities, selection along the growth / regularisation path, reading load, storage."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy.special import expit, logsumexp

from glasszoo.models import model_info
from glasszoo.models.rules import FIGS, RuleFit
from glasszoo.training.storage import allowed_types, load_tabular, save_tabular


# ------------------------------------------------------------------------------------------------ data
def additive(n=1200, seed=1):
    """8 features; P(y=1) = 0.1 + 0.45 [x0 > 0] + 0.4 [x3 > 1]: an additive structure of two stumps."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8))
    y = (rng.random(n) < 0.1 + 0.45 * (X[:, 0] > 0) + 0.4 * (X[:, 3] > 1)).astype(int)
    return X, y


def planted_rule(n=600, seed=0):
    """10 features; y = 1 iff x1 > 0.5 and x4 <= 0."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 10))
    return X, ((X[:, 1] > 0.5) & (X[:, 4] <= 0)).astype(int)


def three_classes(n=900, seed=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    return X, np.digitize(X[:, 2] - X[:, 5] + 0.3 * rng.normal(size=n), [-0.7, 0.7])


@pytest.fixture(scope="module")
def figs_additive():
    X, y = additive()
    return FIGS(max_rules=12).fit(X[:800], y[:800], X[800:], y[800:]), X


@pytest.fixture(scope="module")
def figs_multi():
    X, y = three_classes()
    return FIGS(max_rules=10).fit(X[:600], y[:600], X[600:], y[600:]), X, y


@pytest.fixture(scope="module")
def rulefit_planted():
    X, y = planted_rule()
    return RuleFit().fit(X[:400], y[:400], X[400:], y[400:]), X


@pytest.fixture(scope="module")
def rulefit_multi():
    X, y = three_classes()
    return RuleFit(max_rules=15, n_estimators=40).fit(X[:600], y[:600], X[600:], y[600:]), X, y


def meets(x: np.ndarray, conditions: list[dict]) -> bool:
    """Whether the case ``x`` meets every printed condition (written out here, not taken from the model)."""
    ok = True
    for c in conditions:
        v = x[c["feature_index"]]
        ok &= (v > c["threshold"]) if c["op"] == ">" else (v <= c["threshold"])
    return bool(ok)


def test_registered_as_rules_family():
    for name, cls in (("figs", FIGS), ("rulefit", RuleFit)):
        info = model_info(name)
        assert info.cls is cls and info.family == "rules" and info.input_kind == "features" and info.paper


# ------------------------------------------------------------------------------------------------ FIGS
def test_figs_recovers_the_planted_additive_stumps(figs_additive):
    m, X = figs_additive
    # the first split is x0 near 0; the second starts a new tree on x3 near 1 (the growth is the same whatever
    # max_rules is: a smaller budget only cuts it short)
    assert m.selection_ == "validation" and 2 <= m.n_splits_ <= 4 and list(m.tree_roots_[:2]) == [0, 3]
    assert m.node_feature_[0] == 0 and abs(m.node_threshold_[0]) < 0.15
    assert m.node_feature_[3] == 3 and abs(m.node_threshold_[3] - 1.0) < 0.15
    assert {0, 3} <= set(m.node_feature_[m.node_left_ >= 0].tolist())
    # the path starts at 0 splits (the class frequency: AUC 0.5), is recorded in growth order, and the two planted
    # splits make the big step
    assert [k for k, _, _ in m.path_] == list(range(13)) and m.path_[0][2] == 0.5
    assert m.best_score_ == max(s for *_, s in m.path_) and m.path_[2][2] > m.path_[1][2] + 0.05
    two = FIGS(max_rules=2).fit(X[:800], additive()[1][:800], X[800:], additive()[1][800:])
    assert two.n_splits_ == 2 and two.n_trees_ == 2
    np.testing.assert_array_equal(two.node_feature_[[0, 3]], m.node_feature_[[0, 3]])
    np.testing.assert_array_equal(two.node_threshold_[[0, 3]], m.node_threshold_[[0, 3]])
    v = two.node_value_[:, 0]
    assert v[2] - v[1] == pytest.approx(0.45, abs=0.1)  # x0 > 0 adds ~0.45 to P(1)
    assert v[5] - v[4] == pytest.approx(0.40, abs=0.1)  # x3 > 1 adds ~0.40
    assert two.complexity_() == {"n_splits": 2, "n_trees": 2, "n_leaves": 4, "max_depth": 1, "n_features_used": 2,
                                 "n_params": 2 * 2 + 4}
    # two stumps: every case checks exactly one condition per tree
    load = two.reading_load(X)
    assert load["count"] == 2.0 and load["unit"] == "conditions" and load["definition"]


def test_figs_global_rules_reproduce_predict_proba(figs_additive, figs_multi):
    for m, X in (figs_additive, figs_multi[:2]):
        X = X[:150]
        g = m.explain_global()
        assert g.form == "rules"
        trees = g.content["trees"]
        assert len(trees) == m.n_trees_ and sum(t["n_splits"] for t in trees) == m.n_splits_
        k = len(m.classes_)
        raw = np.zeros((len(X), len(g.content["score_rows"])))
        for i, x in enumerate(X):
            for t in trees:
                hit = [r for r in t["rules"] if meets(x, r["conditions"])]
                assert len(hit) == 1  # a case meets exactly one rule per tree
                raw[i] += hit[0]["value"]
        if k == 2:
            p1 = np.clip(raw[:, 0], 0, 1)
            expected = np.column_stack([1 - p1, p1])
        else:
            clipped = np.clip(raw, 0, 1)
            expected = clipped / clipped.sum(1, keepdims=True)
        np.testing.assert_allclose(m.predict_proba(X), expected, rtol=0, atol=1e-9)
        np.testing.assert_allclose(m.unclipped_scores(X)[:, -1], raw[:, -1], rtol=0, atol=1e-9)


def test_figs_global_text_reads_as_rules():
    X, y = additive()
    m = FIGS(max_rules=2).fit(X[:800], y[:800], X[800:], y[800:], feature_names=[f"f{j}" for j in range(8)],
                              feature_descriptions={"f0": "the first signal", "f3": "the second signal"})
    g = m.explain_global()
    t0, t3 = m.node_threshold_[0], m.node_threshold_[3]
    v = m.node_value_[:, 0]
    assert f"IF f0 > {t0:.4g} THEN {v[2]:+.3f} to P(1)" in g.text
    assert f"IF f3 <= {t3:.4g} THEN {v[4]:+.3f} to P(1)" in g.text
    assert "f0 -- the first signal" in g.text and "f3 -- the second signal" in g.text
    assert {f["feature"]: f["description"] for f in g.content["features"]} == {"f0": "the first signal",
                                                                              "f3": "the second signal"}
    assert g.content["trees"][0]["rules"][1]["conditions"][0]["description"] == "the first signal"


@pytest.mark.parametrize("target", [None, 0, 1])
def test_figs_contributions_add_up_to_the_unclipped_score(figs_additive, target):
    m, X = figs_additive
    X = X[:200]
    [e] = m.explain(X, target=target)
    t = e.target
    s = m.unclipped_scores(X)
    np.testing.assert_allclose(e.contribution.sum(1) + e.intercept, s[np.arange(len(X)), t], atol=1e-12)
    # predict_proba is that score clipped to [0, 1]
    np.testing.assert_allclose(m.predict_proba(X)[np.arange(len(X)), t], np.clip(s[np.arange(len(X)), t], 0, 1))
    # only features on a path get a contribution; the root values are the intercept
    unused = sorted(set(range(8)) - set(m.node_feature_[m.node_left_ >= 0].tolist()))
    assert np.all(e.contribution[:, unused] == 0)
    roots = m.node_value_[m.tree_roots_, 0].sum()
    np.testing.assert_allclose(np.asarray(e.intercept) * np.ones(len(X)), np.where(t == 1, roots, 1 - roots))


def test_figs_multiclass(figs_multi):
    m, X, y = figs_multi
    Xt, yt = X[600:], y[600:]
    p = m.predict_proba(Xt)
    assert p.shape == (len(Xt), 3) and m.node_value_.shape[1] == 3
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert (m.predict(Xt) == yt).mean() > 0.75
    assert {int(f) for f in m.node_feature_[m.node_left_ >= 0]} >= {2, 5}
    s = m.unclipped_scores(Xt)
    for k in range(3):
        [e] = m.explain(Xt, target=k)
        np.testing.assert_allclose(e.contribution.sum(1) + e.intercept, s[:, k], atol=1e-12)
    # the class sums start from the class frequencies
    np.testing.assert_allclose(m.node_value_[m.tree_roots_].sum(0).sum(), 1.0, atol=1e-12)


def test_figs_validation_picks_fewer_splits_when_the_extra_ones_do_not_help():
    # training labels follow x0 > 0, except that they are flipped where x5 > 1.2 -- a pattern only the training
    # split has: the growth learns it with further splits, the clean validation split does not reward them
    rng = np.random.default_rng(3)
    X = rng.normal(size=(800, 6))
    clean = (X[:, 0] > 0).astype(int)
    y_train = np.where(X[:400, 5] > 1.2, 1 - clean[:400], clean[:400])
    m = FIGS(max_rules=8).fit(X[:400], y_train, X[400:], clean[400:])
    scores = [s for *_, s in m.path_]
    assert len(m.path_) > 2 and m.path_[-1][0] > 1  # the growth went on past the first split
    assert m.n_splits_ == 1 and m.node_feature_[0] == 0
    assert all(s < scores[1] for s in scores[2:])
    # on the training data alone the extra splits look useful
    on_train = FIGS(max_rules=8, cv=0).fit(X[:400], y_train)
    assert on_train.selection_ == "train" and on_train.n_splits_ > 1
    cv = FIGS(max_rules=8).fit(X[:400], y_train)
    assert cv.selection_ == "3-fold CV" and len(cv.path_) == len(on_train.path_)


def test_figs_stops_when_no_split_lowers_the_error_enough():
    X, y = additive()
    # [x0 > 0] lowers the mean squared error by ~0.05, every other split by less than 0.03
    m = FIGS(max_rules=12, min_impurity_decrease=0.03).fit(X[:800], y[:800], X[800:], y[800:])
    assert [k for k, _, _ in m.path_] == [0, 1] and m.n_splits_ == 1 and m.node_feature_[0] == 0
    # a perfectly split training set has nothing left to split
    pure = (X[:, 0] > 0).astype(int)
    m = FIGS(max_rules=12).fit(X[:800], pure[:800], X[800:], pure[800:])
    assert len(m.path_) == 2 and m.n_splits_ == 1


def hand_figs() -> FIGS:
    """A FIGS model written by hand: tree 1 splits a at 0, then (a > 0) b at 1; tree 2 splits c at 0.5."""
    m = FIGS()
    m.classes_ = np.array([0, 1])
    m.n_features_in_ = 3
    m.feature_names_, m.feature_descriptions_ = ["a", "b", "c"], {}
    #                            0    1    2    3    4    5    6    7
    m.node_feature_ = np.array([0, -2, 1, -2, -2, 2, -2, -2])
    m.node_threshold_ = np.array([0.0, -2, 1.0, -2, -2, 0.5, -2, -2])
    m.node_left_ = np.array([1, -1, 3, -1, -1, 6, -1, -1])
    m.node_right_ = np.array([2, -1, 4, -1, -1, 7, -1, -1])
    m.node_value_ = np.array([[0.5], [0.2], [0.7], [0.6], [0.9], [0.0], [-0.1], [0.3]])
    m.node_n_samples_ = np.array([10, 4, 6, 3, 3, 10, 5, 5])
    m.tree_roots_ = np.array([0, 5])
    m.n_splits_, m.n_trees_, m.n_params_ = 3, 2, 2 * 3 + 5
    m.selection_, m.best_score_, m.path_ = "hand-made", float("nan"), []
    return m


def test_figs_known_answer_on_a_hand_made_model():
    m = hand_figs()
    X = np.array([[-1.0, 5.0, 0.0],   # tree 1: a <= 0 (0.2);          tree 2: c <= 0.5 (-0.1) -> 0.1
                  [1.0, 2.0, 1.0],    # tree 1: a > 0, b > 1 (0.9);    tree 2: c > 0.5 (0.3)   -> 1.2, clipped to 1
                  [0.5, 1.0, 0.5]])   # tree 1: a > 0, b <= 1 (0.6);   tree 2: c <= 0.5 (-0.1) -> 0.5
    np.testing.assert_allclose(m.unclipped_scores(X)[:, 1], [0.1, 1.2, 0.5])
    np.testing.assert_allclose(m.predict_proba(X), [[0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    [e] = m.explain(X, target=1)
    # a: 0.2 - 0.5 | 0.7 - 0.5; b: 0.9 - 0.7 | 0.6 - 0.7; c: -0.1 - 0 | 0.3 - 0; intercept 0.5 + 0
    np.testing.assert_allclose(e.contribution, [[-0.3, 0, -0.1], [0.2, 0.2, 0.3], [0.2, -0.1, -0.1]], atol=1e-12)
    assert e.intercept == pytest.approx(0.5)
    [e0] = m.explain(X, target=0)
    np.testing.assert_allclose(e0.contribution, -e.contribution)
    assert e0.intercept == pytest.approx(0.5)  # 1 - 0.5
    # conditions on the paths: 1 + 1, 2 + 1, 2 + 1
    assert m.reading_load(X)["count"] == pytest.approx(8 / 3)
    assert m.reading_load(X[:1])["count"] == 2.0
    g = m.explain_global()
    assert "IF a > 0 AND b > 1 THEN +0.900 to P(1)" in g.text and "IF c <= 0.5 THEN -0.100 to P(1)" in g.text


# ------------------------------------------------------------------------------------------------ RuleFit
def test_rulefit_recovers_the_planted_rule(rulefit_planted):
    m, _ = rulefit_planted
    top = m.terms()[0]
    assert top["kind"] == "rule" and top["weight"][0] > 0
    conds = {(c["feature_index"], c["op"]): c["threshold"] for c in top["conditions"]}
    assert set(conds) == {(1, ">"), (4, "<=")}
    assert conds[(1, ">")] == pytest.approx(0.5, abs=0.1) and conds[(4, "<=")] == pytest.approx(0.0, abs=0.1)
    assert top["support"] == pytest.approx(m.rule_support_[m.term_names_.index(top["term"])])
    assert m.selection_ == "validation" and m.best_score_ > 0.99
    assert m.n_candidate_rules_ > 50 and m.complexity_()["n_terms"] <= m.max_rules


def test_rulefit_sparsity_respects_max_rules():
    X, y = planted_rule()
    y = (X[:, 1] + X[:, 4] - X[:, 7] + 0.5 * (X[:, 0] > 0) > 0).astype(int)  # many useful terms
    m = RuleFit(max_rules=3, n_estimators=50).fit(X[:400], y[:400], X[400:], y[400:])
    assert m.complexity_()["n_terms"] <= 3 == m.max_rules
    assert any(n > 3 for _, n, _ in m.path_)  # denser points existed: the budget was binding
    assert len(m.term_names_) == m.coef_.shape[1] == len(m.rules_) + len(m.linear_features_)
    assert np.all(m.coef_ != 0)  # only the selected terms are kept
    C, n, s = m.path_[[c for c, _, _ in m.path_].index(m.C_)]
    assert n == len(m.term_names_) and s == m.best_score_
    assert s == max(sc for _, k, sc in m.path_ if k <= 3)


def test_rulefit_reading_load_and_known_answer_on_a_tiny_model():
    X, y = planted_rule()
    m = RuleFit(max_rules=1, include_linear=False, n_estimators=50).fit(X[:400], y[:400], X[400:], y[400:])
    assert len(m.rules_) == 1 and len(m.linear_features_) == 0
    assert {(j, op) for j, op, _ in m.rules_[0]} == {(1, ">"), (4, "<=")}
    load = m.reading_load(X)
    assert load == {"count": 2.0, "unit": "conditions", "definition": load["definition"]}  # the rule's 2 conditions
    assert m.complexity_()["n_conditions"] == 2 and m.n_params_ == 1 + 1 + 2 * 2
    # the logit is intercept + weight x [the rule holds]
    (j1, _, t1), (j4, _, t4) = sorted(m.rules_[0])
    holds = (X[:, j1] > t1) & (X[:, j4] <= t4)
    np.testing.assert_allclose(m.predict_proba(X)[:, 1], expit(m.intercept_[0] + m.coef_[0, 0] * holds), atol=1e-12)


def rulefit_by_hand(g, x: np.ndarray) -> np.ndarray:
    """The logits of one case from ``explain_global().content`` only: rules by their printed conditions, linear
    terms by their printed bounds, mean and sd."""
    out = np.array(g.content["intercept"], dtype=np.float64)
    for t in g.content["terms"]:
        if t["kind"] == "rule":
            value = 1.0 if meets(x, t["conditions"]) else 0.0
        else:
            value = 0.4 * (min(max(x[t["feature_index"]], t["low"]), t["high"]) - t["mean"]) / t["sd"]
        out += np.asarray(t["weight"]) * value
    return out


def test_rulefit_global_terms_reproduce_predict_proba(rulefit_planted, rulefit_multi):
    m, X = rulefit_planted
    X = X[:100]
    g = m.explain_global()
    assert g.form == "rules" and "IF x1 > " in g.text and "support" in g.text
    logit = np.array([rulefit_by_hand(g, x)[0] for x in X])
    np.testing.assert_allclose(m.predict_proba(X)[:, 1], expit(logit), rtol=0, atol=1e-9)
    m, X, _ = rulefit_multi
    X = X[:100]
    g = m.explain_global()
    assert len(g.content["score_rows"]) == 3
    logits = np.array([rulefit_by_hand(g, x) for x in X])
    np.testing.assert_allclose(m.predict_proba(X), np.exp(logits - logsumexp(logits, 1, keepdims=True)),
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("target", [None, 0, 1])
def test_rulefit_contributions_add_up_to_the_logit(rulefit_planted, target):
    m, X = rulefit_planted
    X = X[400:]
    p = m.predict_proba(X)
    [e] = m.explain(X, target=target)
    t = e.target
    logit = np.log(p[np.arange(len(X)), t] / p[np.arange(len(X)), 1 - t])
    np.testing.assert_allclose(e.contribution.sum(1) + e.intercept, logit, atol=1e-8)
    assert e.feature_names == m.term_names_
    n_rules = len(m.rules_)
    assert set(np.unique(e.values[:, :n_rules])) <= {0.0, 1.0}  # rule indicators
    np.testing.assert_array_equal(e.values[:, n_rules:], X[:, m.linear_features_])  # raw values of linear terms


def test_rulefit_multiclass(rulefit_multi):
    m, X, y = rulefit_multi
    Xt, yt = X[600:], y[600:]
    p = m.predict_proba(Xt)
    assert p.shape == (len(Xt), 3) and m.coef_.shape[0] == 3 and len(m.term_names_) <= 15
    assert (m.predict(Xt) == yt).mean() > 0.72  # one class in three: 0.33
    scores = np.stack([(lambda e: e.contribution.sum(1) + e.intercept)(m.explain(Xt, target=k)[0])
                       for k in range(3)], axis=1)
    np.testing.assert_allclose(np.exp(scores - logsumexp(scores, axis=1, keepdims=True)), p, atol=1e-8)
    used = {j for r in m.rules_ for j, _, _ in r} | set(m.linear_features_.tolist())
    assert {2, 5} <= used


def test_rulefit_linear_terms_are_winsorised_and_scaled():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(500, 3))
    X[:5, 0] = 50.0  # outliers: clipped at the 97.5 % quantile
    y = (X[:, 0] + 0.2 * rng.normal(size=500) > 0).astype(int)
    m = RuleFit(n_estimators=0, max_rules=1).fit(X[:400], y[:400], X[400:], y[400:])  # linear terms only
    assert m.n_candidate_rules_ == 0 and list(m.linear_features_) == [0]
    lo, hi = np.quantile(X[:400, 0], [0.025, 0.975])
    w = np.clip(X[:400, 0], lo, hi)
    assert (m.linear_low_[0], m.linear_high_[0]) == (lo, hi) and hi < 3
    assert m.linear_mean_[0] == pytest.approx(w.mean()) and m.linear_sd_[0] == pytest.approx(w.std())
    [e] = m.explain(np.array([[50.0, 0, 0], [hi, 0, 0]]), target=1)
    assert e.contribution[0, 0] == e.contribution[1, 0]  # beyond the bound nothing changes
    np.testing.assert_allclose(m._terms(X[:400])[:, 0].std(), 0.4)


# ------------------------------------------------------------------------------------------------ both
@pytest.mark.parametrize("which", ["figs", "figs_multi", "rulefit", "rulefit_multi"])
def test_pickle_and_skops_round_trips_give_identical_predictions(which, request, tmp_path):
    fixture = {"figs": "figs_additive", "figs_multi": "figs_multi", "rulefit": "rulefit_planted",
               "rulefit_multi": "rulefit_multi"}[which]
    m, X = request.getfixturevalue(fixture)[:2]
    X = X[:50]
    save_tabular(m, tmp_path / "model.skops")
    back = load_tabular(tmp_path / "model.skops", type(m))  # refuses any type outside the class's stored_types
    twin = pickle.loads(pickle.dumps(m))
    assert allowed_types(type(m)) == {f"glasszoo.models.rules.{type(m).__name__}"}
    for other in (back, twin):
        np.testing.assert_array_equal(other.predict_proba(X), m.predict_proba(X))
        np.testing.assert_array_equal(other.explain(X)[0].contribution, m.explain(X)[0].contribution)
        assert other.explain_global().text == m.explain_global().text
        assert other.reading_load(X) == m.reading_load(X)

"""FasterRisk integer risk score: the card reproduces the predictions, planted items, the box, the three stages
(beam search, diverse pool, sequential rounding), the comparison with point_score, storage."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from glasszoo.models import create_model, model_info
from glasszoo.models.glassbox import PointScore, ScoreItem
from glasszoo.models.riskscore import FasterRisk, _Problem, beam_search, diverse_pool, sequential_round
from glasszoo.training.storage import load_tabular, save_tabular


# ------------------------------------------------------------------------------------------------ data
def planted(seed: int = 0, n: int = 900, n_features: int = 8):
    """y ~ sigmoid(-0.5 + 2 [x0 > 0] - 2 [x3 > 1] + 1.5 [x5 > -0.7]); 600 training and 300 validation cases."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features))
    logit = -0.5 + 2.0 * (X[:, 0] > 0) - 2.0 * (X[:, 3] > 1) + 1.5 * (X[:, 5] > -0.7)
    y = (rng.random(n) < expit(logit)).astype(int)
    return X[:600], y[:600], X[600:], y[600:], [f"f{j}" for j in range(n_features)]


@pytest.fixture(scope="module")
def fitted():
    Xtr, ytr, Xva, yva, names = planted()
    return FasterRisk(max_items=4).fit(Xtr, ytr, Xva, yva, feature_names=names), (Xtr, ytr, Xva, yva, names)


def train_loss(model, X, y) -> float:
    p = model.predict_proba(X)[np.arange(len(y)), y]
    return float(-np.log(p).sum())


def hand_card() -> FasterRisk:
    items = [{"feature": 0, "threshold": 0.5, "points": 2},
             {"feature": 1, "threshold": 1.0, "points": -3},
             ScoreItem(feature=2, threshold=0.0, direction=">", points=1)]
    return FasterRisk.from_table(items, intercept=-1.0, multiplier=2.0, feature_names=["a", "b", "c"])


# ------------------------------------------------------------------------------------------------ known answers
def test_hand_made_card_known_answer():
    m = hand_card()
    X = np.array([[1.0, 0.0, 1.0],    # a, c hold: 2 + 1 = 3
                  [0.0, 2.0, 1.0],    # b, c: -3 + 1 = -2
                  [0.6, 1.5, -1.0],   # a, b: 2 - 3 = -1
                  [0.5, 1.0, 0.0]])   # none (every threshold fails at its boundary): 0
    np.testing.assert_array_equal(m.total_points(X), [3, -2, -1, 0])
    # risk = 1 / (1 + exp(-(total - 1) / 2)), by hand: totals 3, -2, -1, 0 -> margins 1, -1.5, -1, -0.5
    expected = [0.7310585786300049, 0.18242552380635635, 0.2689414213699951, 0.3775406687981454]
    np.testing.assert_allclose(m.predict_proba(X)[:, 1], expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(m.predict_proba(X).sum(1), 1.0)
    np.testing.assert_array_equal(m.predict(X), [1, 0, 0, 0])
    # the risk table lists every total the points add up to: subset sums of {2, -3, 1}
    assert [r["total"] for r in m.risk_table_] == [-3, -2, -1, 0, 1, 2, 3]
    np.testing.assert_allclose([r["risk"] for r in m.risk_table_], expit((np.arange(-3, 4) - 1.0) / 2.0))
    [e] = m.explain(X, target=1)
    assert e.feature_names == ["a > 0.5", "b > 1", "c > 0"] and e.intercept == 0.0
    np.testing.assert_array_equal(e.values, [[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(e.contribution, [[2, 0, 1], [0, -3, 1], [2, -3, 0], [0, 0, 0]])
    np.testing.assert_array_equal(m.explain(X, target=0)[0].contribution, -e.contribution)
    [e_default] = m.explain(X)  # the predicted class: 1 for the first case only
    np.testing.assert_array_equal(e_default.target, [1, 0, 0, 0])
    np.testing.assert_array_equal(e_default.contribution[1], [0, 3, -1])
    assert m.complexity_() == {"n_items": 3, "points": [2, -3, 1], "total_points": 6, "n_features_used": 3,
                               "n_params": 8}
    assert m.reading_load(X) == {"count": 3, "unit": "items", "definition": m.reading_load(X)["definition"]}
    assert "adds the points" in m.reading_load(X)["definition"]
    g = m.explain_global()
    assert g.form == "score_table"
    assert "a > 0.5 | +2" in g.text and "b > 1   | -3" in g.text and "c > 0   | +1" in g.text
    assert "with b0 = -1 and m = 2" in g.text
    assert [row["total"] for row in g.content["risk_table"]] == [-3, -2, -1, 0, 1, 2, 3]


def parse_card(text: str, names: list[str]) -> tuple[list[tuple[int, float, int]], float, float]:
    """The items (column, threshold, points) and b0, m, read off the printed card only."""
    items = []
    for line in text.splitlines():
        hit = re.fullmatch(r"(\S+) > (\S+)\s*\| ([+-]\d+)", line.strip())
        if hit:
            items.append((names.index(hit[1]), float(hit[2]), int(hit[3])))
    formula = re.search(r"risk = 1 / \(1 \+ exp\(-\(total \+ b0\) / m\)\) with b0 = (\S+) and m = (\S+)", text)
    return items, float(formula[1]), float(formula[2])


def test_the_printed_card_reproduces_predict_proba(fitted):
    m, (Xtr, _, Xva, _, names) = fitted
    text = m.explain_global().text
    items, b0, mult = parse_card(text, names)
    assert len(items) == len(m.items_) >= 2
    X = np.vstack([Xtr[:100], Xva])
    for row, p in zip(X, m.predict_proba(X)[:, 1]):
        total = 0
        for col, threshold, points in items:  # by hand, one case at a time
            if row[col] > threshold:
                total += points
        risk = 1.0 / (1.0 + np.exp(-(total + b0) / mult))
        assert abs(risk - p) < 1e-9
    # the risk table of the card: modelled risk to 0.1 %, observed training frequency n_pos / n
    rows = [r for r in m.risk_table_ if r["n_train"]]
    assert sum(r["n_train"] for r in rows) == len(Xtr)
    for r in m.risk_table_:
        line = next(li for li in text.splitlines() if re.match(rf"\s*{r['total']} \|", li))
        assert f"{100 * expit((r['total'] + b0) / mult):6.1f}%" in line
        if r["n_train"]:
            assert f"{r['n_train_positive']}/{r['n_train']}" in line


# ------------------------------------------------------------------------------------------------ what it learns
def test_planted_items_are_recovered():
    Xtr, ytr, Xva, yva, names = planted(seed=1)
    m = FasterRisk(max_items=3).fit(Xtr, ytr, Xva, yva, feature_names=names)
    assert [it.feature for it in m.items_] == [0, 3, 5] and m.selection_ == "validation AUC"
    by_feature = {it.feature: it for it in m.items_}
    x0, x3, x5 = by_feature[0], by_feature[3], by_feature[5]
    assert x0.points > 0 and abs(x0.threshold) < 0.1
    assert x3.points < 0 and 0.6 < x3.threshold < 1.3
    assert x5.points > 0 and abs(x5.threshold + 0.7) < 0.1
    # points / multiplier is the item's weight on the logit: near the planted 2, -2 (a lower threshold dilutes
    # it), 1.5
    assert 1.0 < x0.points / m.multiplier_ < 3.0
    assert -3.0 < x3.points / m.multiplier_ < -0.8
    assert 0.8 < x5.points / m.multiplier_ < 2.5
    assert all(it.direction == ">" and it.name == f"f{it.feature} > {it.threshold:.4g}" for it in m.items_)


@pytest.mark.parametrize("max_items,max_coef", [(2, 5), (4, 2), (5, 3)])
def test_points_are_integers_in_the_box(max_items, max_coef):
    Xtr, ytr, _, _, names = planted(seed=2)
    m = FasterRisk(max_items=max_items, max_coef=max_coef).fit(Xtr, ytr, feature_names=names)
    assert 1 <= len(m.items_) <= max_items and m.selection_ == "training AIC"
    for it in m.items_:
        assert isinstance(it.points, int) and it.points != 0 and -max_coef <= it.points <= max_coef
    assert np.gcd.reduce([abs(it.points) for it in m.items_]) == 1  # (2, -4) would be printed as (1, -2)
    # the multiplier keeps the points' logit weights in the coefficient box
    assert m.multiplier_ >= max(abs(it.points) for it in m.items_) / max_coef - 1e-12
    for alt in m.pool_:
        assert len(alt["points"]) <= max_items and all(isinstance(p, int) and 0 < abs(p) <= max_coef
                                                       for p in alt["points"])
    totals = m.total_points(Xtr)
    assert totals.dtype == np.int64 and set(np.unique(totals)) <= {r["total"] for r in m.risk_table_}
    assert [r["k"] for r in m.selection_path_] == list(range(max_items + 1))


def test_selection_by_validation_auc_prefers_fewer_items_on_ties(fitted):
    m, _ = fitted
    path = m.selection_path_[1:]
    best = max(r["score"] for r in path)
    assert m.best_score_ == pytest.approx(best)
    assert len(m.items_) == min(r["n_items"] for r in path if r["score"] >= best - 1e-12)
    # each size's integer loss is close to its continuous one and falls with the size
    for r in path:
        assert r["continuous_loss"] <= r["train_loss"] <= 1.02 * r["continuous_loss"]
    losses = [r["train_loss"] for r in path]
    assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:]))


def test_the_path_losses_are_the_models_losses(fitted):
    m, (Xtr, ytr, _, _, _) = fitted
    chosen = next(r for r in m.selection_path_ if r["k"] == m.k_)
    assert train_loss(m, Xtr, ytr) == pytest.approx(chosen["train_loss"], rel=1e-9)
    assert m.pool_[0]["train_loss"] == pytest.approx(chosen["train_loss"], rel=1e-12)
    assert [a["train_loss"] for a in m.pool_] == sorted(a["train_loss"] for a in m.pool_)


@pytest.mark.parametrize("seed", [0, 3])
def test_no_worse_than_point_score(seed):
    """Size for size, FasterRisk's integer score has a training loss no larger than point_score's (greedy items,
    1..3 positive points, one item per feature): beam search and the wider integer range find at least as good a
    score. Both choose their size by the same training AIC."""
    Xtr, ytr, _, _, names = planted(seed=seed)
    fr = FasterRisk(max_items=5).fit(Xtr, ytr, feature_names=names)
    ps = PointScore(max_terms=5, min_deviance_drop=0.0).fit(Xtr, ytr, feature_names=names)
    ps_dev = {r["k_greedy"]: r["train_deviance"] for r in ps.selection_path_}
    fr_dev = {r["k"]: 2 * r["train_loss"] for r in fr.selection_path_}
    for k in range(1, 6):
        assert fr_dev[k] <= ps_dev[k] + 1e-6, f"size {k}: fasterrisk {fr_dev[k]:.6f} > point_score {ps_dev[k]:.6f}"
    assert fr_dev[5] < ps_dev[5] - 1.0  # and strictly better where point_score's greedy runs out
    assert fr.best_score_ >= ps.best_score_ - 1e-9
    assert train_loss(fr, Xtr, ytr) <= train_loss(ps, Xtr, ytr) + 1e-6


# ------------------------------------------------------------------------------------------------ the stages
def exact_loss(A: np.ndarray, y: np.ndarray) -> float:
    lr = LogisticRegression(C=1e10, max_iter=10000, tol=1e-12).fit(A, y)
    eta = lr.decision_function(A)
    return float(np.sum(np.logaddexp(0, eta) - y * eta))


def small_problem(seed: int = 0, n: int = 300, p: int = 7):
    rng = np.random.default_rng(seed)
    Z = (rng.random((n, p)) < rng.uniform(0.2, 0.7, p)).astype(float)
    y = (rng.random(n) < expit(Z[:, :4] @ np.array([1.5, -1.2, 0.8, 0.6]) - 0.4)).astype(float)
    return Z, y


def test_beam_search_with_a_full_beam_finds_the_best_pair():
    """With the beam as wide as the items, every pair is a child at size 2: the best pair by exact logistic
    regression (the box does not bind) is found, with its loss."""
    Z, y = small_problem()
    levels = beam_search(_Problem(Z, y, 5.0, 200), 2, beam_size=Z.shape[1])
    pairs = {(i, j): exact_loss(Z[:, [i, j]], y) for i, j in itertools.combinations(range(Z.shape[1]), 2)}
    best_pair = min(pairs, key=pairs.get)
    assert levels[1].key == best_pair
    assert levels[1].loss == pytest.approx(pairs[best_pair], abs=1e-6)
    singles = {j: exact_loss(Z[:, [j]], y) for j in range(Z.shape[1])}
    assert levels[0].key == (min(singles, key=singles.get),)


def test_beam_search_keeps_the_coefficients_in_the_box():
    Z, y = small_problem(seed=1)
    y = Z[:, 0].copy()  # item 0 separates the classes: its unconstrained weight is infinite
    y[:3] = 1 - y[:3]
    for sol in beam_search(_Problem(Z, y, 2.0, 50), 3, beam_size=3):
        assert np.all(np.abs(sol.coef) <= 2.0 + 1e-12)
    assert 0 in beam_search(_Problem(Z, y, 2.0, 50), 1, 3)[0].support


def test_diverse_pool_is_one_swap_from_the_best_and_within_the_gap():
    Z, y = small_problem(seed=2, p=9)
    problem = _Problem(Z, y, 5.0, 100)
    best = beam_search(problem, 3, beam_size=5)[-1]
    pool = diverse_pool(problem, best, pool_size=6, gap_tolerance=0.05)
    assert pool[0] is best and 1 < len(pool) <= 6
    assert len({s.key for s in pool}) == len(pool)
    for sol in pool[1:]:
        assert len(set(sol.key) - set(best.key)) == 1 and len(sol.key) == 3
        assert best.loss <= sol.loss + 1e-9 and sol.loss <= 1.05 * best.loss
        assert sol.loss == pytest.approx(exact_loss(Z[:, list(sol.support)], y), abs=1e-5)
    assert [s.loss for s in pool[1:]] == sorted(s.loss for s in pool[1:])
    tight = diverse_pool(problem, best, pool_size=6, gap_tolerance=0.0)
    assert all(s.loss <= best.loss + 1e-12 for s in tight)


def refitted_loss(Z: np.ndarray, y: np.ndarray, points: np.ndarray, m: float) -> float:
    """Training loss of sigmoid((Z points + b0) / m) at its best intercept b0 (scipy, independent of the model)."""
    total = Z @ points

    def loss(b):
        eta = (total + b) / m
        return float(np.sum(np.logaddexp(0, eta) - y * eta))

    return float(minimize_scalar(loss, bounds=(-80, 80), method="bounded", options={"xatol": 1e-10}).fun)


def rounding_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Four binary items, 400 cases, and the unpenalised logistic regression on them: ``(Z, y, w, b)``."""
    rng = np.random.default_rng(seed)
    Z = (rng.random((400, 4)) < rng.uniform(0.2, 0.8, 4)).astype(float)
    w_true = rng.uniform(-2.5, 2.5, 4)
    y = (rng.random(400) < expit(Z @ w_true - 0.3)).astype(float)
    lr = LogisticRegression(C=1e8, max_iter=5000).fit(Z, y)
    return Z, y, lr.coef_[0], float(lr.intercept_[0])


def test_sequential_rounding_against_naive_rounding():
    """Same continuous solution, same multiplier: sequential rounding vs rounding every coordinate to the nearest
    integer, both with the intercept refitted. The greedy order is not guaranteed to win every time, but it wins or
    ties almost always, and by more on average."""
    seq_losses, naive_losses = [], []
    for seed in range(12):
        Z, y, w, b = rounding_case(seed)
        for mult in np.linspace(1.0, max(1.0, 5.0 / np.abs(w).max()), 6):
            seq = sequential_round(Z, y, w, b, mult, 5)
            assert seq.dtype == np.int64 and np.all(np.abs(seq) <= 5)
            # every coordinate goes to its floor or its ceiling (in the box)
            assert np.all(np.abs(seq - np.clip(mult * w, -5, 5)) < 1.0)
            seq_losses.append(refitted_loss(Z, y, seq, mult))
            naive_losses.append(refitted_loss(Z, y, np.clip(np.rint(mult * w), -5, 5), mult))
    seq_losses, naive_losses = np.array(seq_losses), np.array(naive_losses)
    assert np.mean(seq_losses <= naive_losses + 1e-7) >= 0.95
    assert np.sum(seq_losses < naive_losses - 1e-3) >= 5
    assert seq_losses.mean() < naive_losses.mean()


def test_sequential_rounding_beats_naive_rounding_on_a_known_case():
    """Seed 9 at multiplier 1: the continuous solution (-1.487, 1.333, 1.880, 1.502) rounds to the nearest
    (-1, 1, 2, 2); sequential rounding takes the last one down, (-1, 1, 2, 1), a training loss lower by 1.2."""
    Z, y, w, b = rounding_case(9)
    mult = 1.0
    np.testing.assert_allclose(mult * w, [-1.487, 1.333, 1.880, 1.502], atol=5e-3)
    naive = np.rint(mult * w)
    np.testing.assert_array_equal(naive, [-1, 1, 2, 2])
    seq = sequential_round(Z, y, w, b, mult, 5)
    np.testing.assert_array_equal(seq, [-1, 1, 2, 1])
    assert refitted_loss(Z, y, seq, mult) < refitted_loss(Z, y, naive, mult) - 1.0


# ------------------------------------------------------------------------------------------------ contract
def test_multiclass_raises():
    X = np.random.default_rng(0).normal(size=(30, 3))
    with pytest.raises(ValueError, match="Only binary classification is supported"):
        FasterRisk().fit(X, np.arange(30) % 3)
    assert "binary" in model_info("fasterrisk").requirements({})


@pytest.mark.parametrize("bad", [{"max_items": 0}, {"max_coef": 0}, {"beam_size": 2.5}, {"gap_tolerance": -1},
                                 {"quantiles": (0.0, 0.5)}, {"quantiles": ()}])
def test_bad_parameters_raise(bad):
    Xtr, ytr, _, _, _ = planted()
    with pytest.raises(ValueError, match=next(iter(bad))):
        FasterRisk(**bad).fit(Xtr[:50], ytr[:50])


def test_constant_features_give_the_base_rate():
    X = np.ones((40, 3))
    y = np.r_[np.ones(12, int), np.zeros(28, int)]
    m = FasterRisk().fit(X, y)
    assert m.items_ == [] and m.n_candidates_ == 0 and m.selection_.startswith("no usable item")
    np.testing.assert_allclose(m.predict_proba(X[:2])[:, 1], 0.3, atol=1e-9)
    assert m.reading_load(X)["count"] == 0 and m.complexity_()["n_items"] == 0


def test_descriptions_on_the_card(fitted):
    m, (_, _, _, _, names) = fitted
    used = names[m.items_[0].feature]
    m2 = FasterRisk(max_items=2).fit(*fitted[1][:4], feature_names=names,
                                    feature_descriptions={used: "the first planted signal"})
    g = m2.explain_global()
    assert f"  {used}: the first planted signal" in g.text
    assert {d["feature_name"]: d["description"] for d in g.content["items"]}[used] == "the first planted signal"
    assert "the first planted signal" not in m.explain_global().text


def test_reading_load_counts_the_items(fitted):
    m, (_, _, Xva, _, _) = fitted
    load = m.reading_load(Xva)
    assert load["count"] == len(m.items_) == m.complexity_()["n_items"] and load["unit"] == "items"


def test_skops_round_trip(fitted, tmp_path):
    m, (_, _, Xva, _, _) = fitted
    path = tmp_path / "model.skops"
    save_tabular(m, path)
    twin = load_tabular(path, FasterRisk)
    np.testing.assert_array_equal(twin.predict_proba(Xva), m.predict_proba(Xva))
    assert twin.explain_global().text == m.explain_global().text
    assert twin.items_ == m.items_ and twin.pool_ == m.pool_


def test_registry_entry():
    info = model_info("fasterrisk")
    assert info.family == "score" and info.cls is FasterRisk and "FasterRisk" in info.paper
    assert isinstance(create_model("fasterrisk", **info.test_kwargs), FasterRisk)

"""Rule-based glass-box models on a named feature table: FIGS (a sum of a few small greedy trees) and RuleFit (a sparse
logistic regression over rules read off a tree ensemble, plus winsorised linear terms).

Both keep the contract of :mod:`glasszoo.models.glassbox` (scikit-learn classifiers and glasszoo ``TabularModel``\\ s):
``fit(X, y, X_val=None, y_val=None, feature_names=None, feature_descriptions=None)`` selects the model's size on the
validation split when it is given (else a stratified CV, else the training data); ``predict_proba``;
``explain(X, target=None, case_ids=None) -> [FeatureAttribution]`` (exact additive contributions plus an intercept);
``explain_global() -> GlobalExplanation(form="rules")``; ``complexity_()``, ``n_params_`` and ``reading_load(X)``.

A condition is the tuple ``(feature index, op, threshold)`` with ``op`` ``"<="`` or ``">"``, evaluated on the float64
feature values exactly as written (``x <= t`` or ``x > t``), so a printed rule can be checked by hand.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, softmax
from sklearn.svm import l1_min_c
from sklearn.tree import DecisionTreeRegressor
from sklearn.utils.validation import check_is_fitted

from glasszoo.models._registry import register_model
from glasszoo.models.explanations import FeatureAttribution, GlobalExplanation
from glasszoo.models.glassbox import _GlassBox, distinct_binary_columns, l1_logistic_path, linear_proba, selection_score

Condition = tuple[int, str, float]
"""``(feature index, ">" or "<=", threshold)``."""


# ------------------------------------------------------------------------------------------------ shared helpers
def _holds(X: np.ndarray, conditions: list[Condition]) -> np.ndarray:
    """bool [N]: the rows of ``X`` that meet every condition (all rows for no condition)."""
    out = np.ones(len(X), dtype=bool)
    for j, op, t in conditions:
        out &= (X[:, j] > t) if op == ">" else (X[:, j] <= t)
    return out


def _first_best(scores: list[float]) -> int:
    """The index of the best score; ties (within 1e-12) go to the earliest."""
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best] + 1e-12:
            best = i
    return best


# ------------------------------------------------------------------------------------------------ FIGS
def _figs_targets(y_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """Regression targets [N, d]: the indicator of class 1 (d = 1) for 2 classes, else the one-hot classes."""
    if n_classes == 2:
        return (y_idx == 1).astype(np.float64)[:, None]
    return np.eye(n_classes)[y_idx]


def _clipped_proba(raw: np.ndarray) -> np.ndarray:
    """Class probabilities from tree sums [N, d]: binary ``p1 = clip(s, 0, 1)``, ``p0 = 1 - p1``; else each class's
    sum clipped to [0, 1] and renormalised (uniform when every class clips to 0)."""
    if raw.shape[1] == 1:
        p1 = np.clip(raw[:, 0], 0.0, 1.0)
        return np.column_stack([1.0 - p1, p1])
    p = np.clip(raw, 0.0, 1.0)
    s = p.sum(axis=1, keepdims=True)
    return np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / raw.shape[1])


def _figs_walk(X: np.ndarray, state: dict, out: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Walk every row of ``X`` through every tree of a FIGS ``state``.

    Returns ``(raw [N, d], contrib [N, F] or None, intercept [N] or None, n_conditions [N])``: the tree sums, and with
    ``out`` (the output column per row) the Saabas decomposition of that column's sum -- the roots' values as
    intercept, each step's change of node value credited to the split's feature -- and the number of conditions on
    the rows' paths summed over the trees.
    """
    n = len(X)
    feature, threshold, left, right, value = (state[k] for k in ("feature", "threshold", "left", "right", "value"))
    raw = np.zeros((n, value.shape[1]))
    depth = np.zeros(n, dtype=np.int64)
    contrib = np.zeros(X.shape) if out is not None else None
    intercept = np.zeros(n) if out is not None else None
    for root in state["roots"]:
        node = np.full(n, int(root))
        if out is not None:
            intercept += value[root, out]
        while True:
            rows = np.flatnonzero(left[node] >= 0)
            if not len(rows):
                break
            nd = node[rows]
            f = feature[nd]
            child = np.where(X[rows, f] <= threshold[nd], left[nd], right[nd])
            if out is not None:
                contrib[rows, f] += value[child, out[rows]] - value[nd, out[rows]]  # one (row, feature) per row
            depth[rows] += 1
            node[rows] = child
        raw += value[node]
    return raw, contrib, intercept, depth


class _FigsGrower:
    """The greedy growth of FIGS on one training set (used by ``fit`` only; nothing of it is stored).

    Nodes of all trees share one numbering (children after their parent). Every node keeps the mask of the training
    cases that reach it, so its value can be re-set to the mean residual of those cases.
    """

    def __init__(self, X: np.ndarray, Y: np.ndarray, min_samples_leaf: int) -> None:
        self.X, self.Y = X, Y
        self.n, self.p = X.shape
        self.min_leaf = max(1, int(min_samples_leaf))
        self.order = np.argsort(X, axis=0, kind="stable")  # presorted once: a node's order is a subsequence
        self.feature: list[int] = []
        self.threshold: list[float] = []
        self.left: list[int] = []
        self.right: list[int] = []
        self.masks: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.trees: list[list[int]] = []  # node ids per tree, root first
        self.pred: list[np.ndarray] = []  # per tree, its prediction on the training cases [N, d]

    def _new_node(self, mask: np.ndarray) -> int:
        self.feature.append(-2)
        self.threshold.append(-2.0)
        self.left.append(-1)
        self.right.append(-1)
        self.masks.append(mask)
        self.values.append(np.zeros(self.Y.shape[1]))
        return len(self.masks) - 1

    def _new_tree(self) -> int:
        root = self._new_node(np.ones(self.n, dtype=bool))
        self.trees.append([root])
        self.pred.append(np.zeros_like(self.Y))
        return root

    def best_split(self, mask: np.ndarray, R: np.ndarray) -> tuple[float, int, float] | None:
        """The split of the cases ``mask`` that most lowers the squared error of the residuals ``R`` [N, d] (summed
        over the outputs) around their means on both sides: ``(SSE reduction, feature, threshold)`` or None."""
        m = int(mask.sum())
        lo, hi = self.min_leaf, m - self.min_leaf  # allowed sizes of the left side
        if hi < lo:
            return None
        o = self.order.T[mask[self.order].T].reshape(self.p, m)  # [F, m] each feature's cases in sorted order
        xs = self.X[o, np.arange(self.p)[:, None]]  # [F, m]
        cs = np.cumsum(R[o], axis=1)  # [F, m, d]
        total = cs[:, -1]  # [F, d]
        nl = np.arange(lo, hi + 1, dtype=np.float64)
        SL = cs[:, lo - 1:hi]  # left sums for left sizes lo..hi
        SR = total[:, None, :] - SL
        gain = ((SL ** 2).sum(-1) / nl + (SR ** 2).sum(-1) / (m - nl) - (total ** 2).sum(-1)[:, None] / m)
        valid = xs[:, lo:hi + 1] > xs[:, lo - 1:hi]  # a threshold can fall between the two values
        if not valid.any():
            return None
        gain = np.where(valid, gain, -np.inf)
        j, i = np.unravel_index(int(np.argmax(gain)), gain.shape)
        a, b = float(xs[j, lo - 1 + i]), float(xs[j, lo + i])
        thr = (a + b) / 2.0
        if not a <= thr < b:  # rounding of neighbouring floats
            thr = a
        return float(gain[j, i]), int(j), thr

    def _sweep(self, first: int) -> None:
        """One backfitting sweep: tree by tree (``first`` first), every node's value becomes the mean residual of its
        training cases given the other trees' current predictions."""
        total = np.sum(self.pred, axis=0)
        for t in [first] + [s for s in range(len(self.trees)) if s != first]:
            R = self.Y - (total - self.pred[t])
            new = np.zeros_like(self.Y)
            for node in self.trees[t]:
                self.values[node] = R[self.masks[node]].mean(axis=0)
                if self.left[node] < 0:
                    new[self.masks[node]] = self.values[node]
            total += new - self.pred[t]
            self.pred[t] = new

    def state(self) -> dict:
        return {"feature": np.asarray(self.feature, dtype=np.int64),
                "threshold": np.asarray(self.threshold, dtype=np.float64),
                "left": np.asarray(self.left, dtype=np.int64), "right": np.asarray(self.right, dtype=np.int64),
                "value": np.asarray(self.values, dtype=np.float64).reshape(len(self.values), self.Y.shape[1]),
                "n_samples": np.asarray([int(m.sum()) for m in self.masks], dtype=np.int64),
                "roots": np.asarray([nodes[0] for nodes in self.trees], dtype=np.int64)}

    def grow(self, max_splits: int, min_impurity_decrease: float) -> list[dict]:
        """The states after 0, 1, 2, ... splits (0: one tree that is a single leaf, the class frequencies)."""
        self._new_tree()
        self._sweep(0)
        states = [self.state()]
        for _ in range(max(0, int(max_splits))):
            total = np.sum(self.pred, axis=0)
            best = None  # (gain, feature, threshold, tree, leaf or None for a new tree)
            # a later candidate must gain clearly more (ties, e.g. the single first leaf and a new stump, which are
            # the same split, go to the earlier: existing trees in order, then a new tree)
            for t, nodes in enumerate(self.trees):
                R = self.Y - (total - self.pred[t])
                for node in nodes:
                    if self.left[node] < 0:
                        s = self.best_split(self.masks[node], R)
                        if s is not None and (best is None or s[0] > best[0] * (1 + 1e-9) + 1e-12):
                            best = (*s, t, node)
            s = self.best_split(np.ones(self.n, dtype=bool), self.Y - total)  # a new tree's root stump
            if s is not None and (best is None or s[0] > best[0] * (1 + 1e-9) + 1e-12):
                best = (*s, len(self.trees), None)
            if best is None or best[0] / self.n <= max(float(min_impurity_decrease), 1e-12):
                break
            _, j, thr, t, node = best
            if node is None:
                node = self._new_tree()
            mask = self.masks[node]
            go_left = mask & (self.X[:, j] <= thr)
            self.feature[node], self.threshold[node] = j, thr
            lc, rc = self._new_node(go_left), self._new_node(mask & ~go_left)
            self.left[node], self.right[node] = lc, rc
            self.trees[t] += [lc, rc]
            self._sweep(t)
            states.append(self.state())
        return states


@register_model("figs", family="rules", test_kwargs={"max_rules": 6},
                paper="Tan, Singh, Nasseri, Agarwal & Yu 2022, Fast interpretable greedy-tree sums (FIGS), "
                      "arXiv:2201.11931; PNAS 2025")
class FIGS(_GlassBox):
    """Fast Interpretable Greedy-tree Sums: a sum of a few small CART-style regression trees grown greedily together
    (Tan, Singh, Nasseri, Agarwal & Yu 2022, "Fast interpretable greedy-tree sums", arXiv:2201.11931; PNAS 2025).

    Targets: for 2 classes the indicator of class 1 (one output); for K > 2 classes the K one-hot indicators
    (vector-valued leaves, the split criterion summed over the outputs).

    Fit (the growth): the model starts as one tree that is a single leaf (the class frequencies). At each step every
    leaf of every current tree, and a new tree's root stump, is offered its best split (thresholds halfway between
    neighbouring training values, at least ``min_samples_leaf`` cases per side) on the residuals of the targets given
    all *other* trees' predictions (for the new tree: given all trees); the one split that most lowers the squared
    error (summed over the outputs) is made (a later candidate must gain more by a relative 1e-9: ties go to the
    existing trees in order, then to a new tree). A leaf's value is the mean residual of its training cases; after every
    split one backfitting sweep re-sets every node's value, tree by tree (the tree just split first), to the mean
    residual of its cases given the other trees, so the training squared error never rises. Growth stops after
    ``max_rules`` splits in all, or when the best split lowers the training mean squared error by no more than
    ``min_impurity_decrease``.

    Selection: the model after k = 0, 1, ... splits along that growth is scored by the validation AUC
    (:func:`~glasszoo.models.glassbox.selection_score` of ``predict_proba``) when ``X_val``/``y_val`` are given,
    else by the mean AUC of a ``cv``-fold stratified CV (each fold grows its own path; a fold whose growth stopped
    early keeps its last model), else (a class with fewer than ``cv`` cases) on the training data. The best k wins
    (ties: fewer splits); ``path_`` keeps ``(n_splits, n_trees, score)`` for every k, ``n_splits_`` the chosen one.

    ``predict_proba``: each class's score is the sum over the trees of the value of the leaf the case reaches
    (:meth:`unclipped_scores`); for 2 classes ``P(1) = clip(score, 0, 1)`` and ``P(0) = 1 - P(1)``; for more classes
    every score is clipped to [0, 1] and the row renormalised (uniform when all clip to 0).

    Explanation (Saabas-style, per tree): a case walks from each root to its leaf; at every split the change of the
    explained class's node value (training mean residual) from the node to the child taken is credited to the split's
    feature, and the roots' values summed over the trees are the intercept. So ``contribution.sum(1) + intercept``
    equals the explained class's *unclipped* score -- for class 0 of a binary model ``1 - score`` (contributions
    negated, intercept ``1 - sum of the roots``) -- and ``predict_proba`` is that score clipped to [0, 1] (and, for
    K > 2, renormalised). Contributions are on the probability scale; features on no path get 0.

    Fitted trees: flat node arrays shared by all trees (children numbered after their parent; a leaf has
    ``node_left_ == -1``): ``node_feature_``, ``node_threshold_`` (left: ``x <= t``), ``node_left_``, ``node_right_``,
    ``node_value_`` [nodes, outputs] (every node's training mean residual), ``node_n_samples_``, and ``tree_roots_``.

    Complexity: splits (the "rules" of ``max_rules``), trees, leaves; ``n_params_`` = 2 per split (feature,
    threshold) + one value per leaf and output.
    """

    def __init__(self, max_rules: int = 12, min_impurity_decrease: float = 0.0, min_samples_leaf: int = 5,
                 cv: int = 3, random_state: int | None = 0) -> None:
        self.max_rules = max_rules
        self.min_impurity_decrease = min_impurity_decrease
        self.min_samples_leaf = min_samples_leaf
        self.cv = cv
        self.random_state = random_state

    def _grow(self, X: np.ndarray, y_idx: np.ndarray) -> list[dict]:
        Y = _figs_targets(y_idx, len(self.classes_))
        return _FigsGrower(X, Y, self.min_samples_leaf).grow(self.max_rules, self.min_impurity_decrease)

    @staticmethod
    def _n_splits(state: dict) -> int:
        return int((state["left"] >= 0).sum())

    def fit(self, X, y, X_val=None, y_val=None, feature_names=None, feature_descriptions=None):
        X, y, Xv, yv = self._prepare(X, y, X_val, y_val, feature_names, feature_descriptions)
        states = self._grow(X, y)
        if Xv is not None:
            scores = [selection_score(yv, _clipped_proba(_figs_walk(Xv, s)[0])) for s in states]
            self.selection_ = "validation"
        else:
            folds = self._cv_splits(y, self.cv, self.random_state)
            if folds is None:
                scores = [selection_score(y, _clipped_proba(_figs_walk(X, s)[0])) for s in states]
                self.selection_ = "train"
            else:
                per_fold = []
                for tr, te in folds:
                    fold_states = self._grow(X[tr], y[tr])
                    fs = [selection_score(y[te], _clipped_proba(_figs_walk(X[te], s)[0])) for s in fold_states]
                    per_fold.append([fs[min(k, len(fs) - 1)] for k in range(len(states))])
                scores = [float(v) for v in np.mean(per_fold, axis=0)]
                self.selection_ = f"{len(folds)}-fold CV"
        self.path_ = [(self._n_splits(s), len(s["roots"]), float(sc)) for s, sc in zip(states, scores)]
        best = _first_best(scores)
        st = states[best]
        self.node_feature_, self.node_threshold_ = st["feature"], st["threshold"]
        self.node_left_, self.node_right_, self.node_value_ = st["left"], st["right"], st["value"]
        self.node_n_samples_, self.tree_roots_ = st["n_samples"], st["roots"]
        self.n_splits_ = self._n_splits(st)
        self.n_trees_ = len(st["roots"])
        self.best_score_ = float(scores[best])
        n_leaves = len(st["left"]) - self.n_splits_
        self.n_params_ = int(2 * self.n_splits_ + n_leaves * st["value"].shape[1])
        return self

    # ---------------------------------------------------------------- predictions
    def _state(self) -> dict:
        return {"feature": self.node_feature_, "threshold": self.node_threshold_, "left": self.node_left_,
                "right": self.node_right_, "value": self.node_value_, "roots": self.tree_roots_}

    def unclipped_scores(self, X) -> np.ndarray:
        """Each class's tree sum before clipping, [N, classes] (binary: ``[1 - s, s]`` with ``s`` the sum for
        class 1) -- what the explanation's contributions and intercept add up to."""
        X = self._check_X(X)
        raw = _figs_walk(X, self._state())[0]
        return np.column_stack([1.0 - raw[:, 0], raw[:, 0]]) if raw.shape[1] == 1 else raw

    def predict_proba(self, X) -> np.ndarray:
        X = self._check_X(X)
        return _clipped_proba(_figs_walk(X, self._state())[0])

    def _attribution(self, X, target=None, case_ids=None) -> FeatureAttribution:
        """Saabas decomposition of the explained class's unclipped score (see the class doc)."""
        proba = self.predict_proba(X)
        X = self._check_X(X)
        t = self._targets(proba, target)
        binary = self.node_value_.shape[1] == 1
        out = np.zeros(len(X), dtype=np.int64) if binary else t
        _, contrib, intercept, _ = _figs_walk(X, self._state(), out)
        if binary:
            neg = t == 0
            contrib[neg] *= -1.0
            intercept = np.where(neg, 1.0 - intercept, intercept)
        return FeatureAttribution(list(self.feature_names_), X, contrib, t, self._intercept(intercept), case_ids)

    def reading_load(self, X) -> dict:
        """The mean over the rows of ``X`` of the conditions on the path each case takes, summed over the trees."""
        X = self._check_X(X)
        depth = _figs_walk(X, self._state())[3]
        return {"count": float(depth.mean()) if len(depth) else 0.0, "unit": "conditions",
                "definition": "The 'feature <= threshold' or 'feature > threshold' checks on the path one case takes "
                              "from the root to a leaf of every tree of the sum, added up over the trees and "
                              "averaged over the cases."}

    # ---------------------------------------------------------------- the model itself
    def _score_rows(self) -> list[str]:
        return [str(self.classes_[1])] if self.node_value_.shape[1] == 1 else [str(c) for c in self.classes_]

    def rules(self) -> list[dict]:
        """One dict per tree: ``tree`` (1-based), ``n_splits`` and ``rules`` -- one per leaf: ``conditions`` (each
        ``feature``, ``feature_index``, ``op``, ``threshold`` and the feature's ``description``), ``value`` (what the
        leaf adds to each score row: the class-1 probability for 2 classes, else every class) and ``n_samples``
        (training cases reaching the leaf). A case meets exactly one rule per tree."""
        check_is_fitted(self)
        out = []
        for i, root in enumerate(self.tree_roots_):
            leaves = self._leaf_rules(int(root), [])
            out.append({"tree": i + 1, "n_splits": len(leaves) - 1, "rules": leaves})
        return out

    def _leaf_rules(self, node: int, conds: list[dict]) -> list[dict]:
        """The rules of the leaves under ``node``, reached with the conditions ``conds``."""
        if self.node_left_[node] < 0:
            return [{"conditions": conds, "value": self.node_value_[node].tolist(),
                     "n_samples": int(self.node_n_samples_[node])}]
        j, thr = int(self.node_feature_[node]), float(self.node_threshold_[node])
        name = self.feature_names_[j]
        base = {"feature": name, "feature_index": j, "threshold": thr, "description": self._describe(name)}
        return (self._leaf_rules(int(self.node_left_[node]), [*conds, {**base, "op": "<="}])
                + self._leaf_rules(int(self.node_right_[node]), [*conds, {**base, "op": ">"}]))

    def complexity_(self) -> dict:
        check_is_fitted(self)
        inner = self.node_left_ >= 0
        depth = np.zeros(len(self.node_left_), dtype=np.int64)
        for node in range(len(depth)):  # children come after their parent
            if inner[node]:
                depth[[self.node_left_[node], self.node_right_[node]]] = depth[node] + 1
        return {"n_splits": self.n_splits_, "n_trees": self.n_trees_, "n_leaves": int((~inner).sum()),
                "max_depth": int(depth.max()), "n_features_used": len(set(self.node_feature_[inner].tolist())),
                "n_params": self.n_params_}

    def explain_global(self) -> GlobalExplanation:
        """``form="rules"``: ``content`` has ``classes``, ``score_rows`` (what each leaf value adds to), ``trees``
        (:meth:`rules`), ``n_splits``, ``n_trees``, ``selection``, ``path`` and the ``features`` used with their
        descriptions; ``text`` prints every tree as "IF ... THEN +v to P(class)" rules and how they combine."""
        check_is_fitted(self)
        trees = self.rules()
        rows = self._score_rows()
        used = sorted({c["feature"] for t in trees for r in t["rules"] for c in r["conditions"]})
        lines = [f"FIGS: {self.n_splits_} splits in {self.n_trees_} tree(s); chosen by {self.selection_} "
                 f"AUC {self.best_score_:.3f}",
                 "Each case meets exactly one rule per tree; the values of the rules it meets are added up."]
        if len(rows) == 1:
            lines.append(f"P({rows[0]}) = the sum clipped to [0, 1]; P({self.classes_[0]}) = 1 - P({rows[0]}).")
        else:
            lines.append("P(class) = that class's sum clipped to [0, 1], then divided by the total over the classes.")
        for t in trees:
            lines.append(f"Tree {t['tree']} ({t['n_splits']} splits):")
            for r in t["rules"]:
                adds = ", ".join(f"{v:+.3f} to P({c})" for v, c in zip(r["value"], rows))
                cond = " AND ".join(f"{c['feature']} {c['op']} {c['threshold']:.4g}" for c in r["conditions"])
                lines.append(f"  {'IF ' + cond + ' THEN' if cond else 'ALWAYS'} {adds}   "
                             f"[{r['n_samples']} training cases]")
        desc = [(n, self._describe(n)) for n in used]
        if any(d for _, d in desc):
            lines.append("Features:")
            lines += [f"  {n} -- {d}" for n, d in desc if d]
        content = {"classes": [str(c) for c in self.classes_], "score_rows": rows, "trees": trees,
                   "n_splits": self.n_splits_, "n_trees": self.n_trees_, "selection": self.selection_,
                   "path": [list(p) for p in self.path_],
                   "features": [{"feature": n, "description": d} for n, d in desc]}
        return GlobalExplanation(form="rules", content=content, text="\n".join(lines))


# ------------------------------------------------------------------------------------------------ RuleFit
def _simplify(conditions: list[Condition]) -> list[Condition]:
    """The same rule with one bound per feature and direction (the tightest), in order of first appearance."""
    lower: dict[int, float] = {}
    upper: dict[int, float] = {}
    order: list[tuple[int, str]] = []
    for j, op, t in conditions:
        bounds = lower if op == ">" else upper
        if j not in bounds:
            order.append((j, op))
            bounds[j] = t
        else:
            bounds[j] = max(bounds[j], t) if op == ">" else min(bounds[j], t)
    return [(j, op, (lower if op == ">" else upper)[j]) for j, op in order]


def _tree_rules(tree: DecisionTreeRegressor) -> list[list[Condition]]:
    """One rule per non-root node of a fitted tree: the conditions on the path to it (simplified)."""
    t = tree.tree_
    out: list[list[Condition]] = []

    def walk(node: int, conds: list[Condition]) -> None:
        if t.children_left[node] < 0:
            return
        j, thr = int(t.feature[node]), float(t.threshold[node])
        for child, op in ((int(t.children_left[node]), "<="), (int(t.children_right[node]), ">")):
            rule = [*conds, (j, op, thr)]
            out.append(_simplify(rule))
            walk(child, rule)

    walk(0, [])
    return out


@register_model("rulefit", family="rules", test_kwargs={"n_estimators": 10, "n_Cs": 6, "max_iter": 100, "cv": 2},
                paper="Friedman & Popescu 2008, Predictive learning via rule ensembles, Ann Appl Stat 2(3): 916-954")
class RuleFit(_GlassBox):
    """RuleFit: an L1 logistic regression over rules read off a shallow tree ensemble, plus linear terms (Friedman &
    Popescu 2008, "Predictive learning via rule ensembles", Annals of Applied Statistics 2(3): 916-954).

    Fit:

    1. Rule generation (the paper's ISLE ensemble, sect. 3): ``n_estimators`` regression trees grown by gradient
       boosting of the logistic loss -- each on the residuals ``y - p`` (one-hot minus softmax for K > 2 classes, a
       multi-output tree) of a random subsample of ``min(N / 2, 100 + 6 sqrt(N))`` training cases, added with
       shrinkage ``learning_rate`` -- each tree with at most ``2 + floor(g)`` leaves, ``g`` exponential with mean
       ``tree_size - 2`` (seeded by ``random_state``), at least ``min_samples_leaf`` cases per leaf. Every non-root
       node of every tree gives one rule: the conjunction of the conditions on its path (several bounds on one
       feature merged into the tightest). Rules that hold for no or every training case are dropped, and of rules
       with identical support on the training data only the one with the fewest conditions (then the first) is
       kept.
    2. Linear terms (``include_linear``, sect. 5): each feature winsorised at its training ``winsor_quantile`` and
       ``1 - winsor_quantile`` quantiles (2.5 / 97.5 %), centred on its training mean and scaled by ``0.4 / sd`` (the
       average sd of a rule, so rules and linear terms get the same prior influence); constant ones are dropped.
       Rules are 0/1 and not scaled.
    3. An L1 logistic regression over rules + linear terms along a path: the intercept-only model (the training
       class frequencies, recorded as C = 0), then ``n_Cs`` values of C, log-spaced from ``sklearn.svm.l1_min_c`` up
       to ``path_ratio`` times it, fitted in increasing order with warm starts (saga, pure L1 ``l1_ratio=1``;
       multinomial for > 2 classes), ending at the first C with more than ``2 * max_rules``
       non-zero terms (no denser point can be chosen) or after a fit that separates the training classes without
       converging in ``max_iter`` epochs (larger C then only inflates the weights). Each C is scored by the
       validation AUC when ``X_val``/``y_val`` are given, else by the mean AUC of a ``cv``-fold stratified CV of the
       L1 fit (on the rules and term scaling from all training cases; a fold whose path ends early keeps its last
       score), else on the training data. Among the points with at most ``max_rules`` non-zero terms (rules and
       linear terms together) the best score wins (ties: fewer terms, then the larger C -- unlike ``SparseLogReg``,
       so that of equally good fits with the same terms the less shrunk one is kept). ``path_`` keeps ``(C,
       n_terms, score)``. Only the selected terms are kept.

    ``predict_proba``: the logistic (2 classes) or softmax of ``intercept + sum_k coef_k x term_k(x)``.

    Explanation: one column per selected term (the rule's text, e.g. ``"x1 > 0.5 AND x4 <= 0"``, or the feature name
    of a linear term); ``contribution = coef x term value`` (a rule's value is 1 when the case meets it, else 0; a
    linear term's is its winsorised, centred, scaled value), so ``sum + intercept`` is exactly the explained class's
    logit -- for 2 classes the log-odds of class 1, negated when class 0 is explained; else the multinomial logit.
    ``values`` are the rule indicators (0/1) and, for linear terms, the raw feature values.

    Fitted terms: ``rules_`` (per selected rule its conditions ``(feature index, op, threshold)``), ``rule_support_``,
    ``linear_features_`` with ``linear_low_`` / ``linear_high_`` / ``linear_mean_`` / ``linear_sd_``, ``coef_``
    [score rows, terms] (rules first, then linear terms), ``intercept_`` and ``term_names_``.

    Complexity: terms (rules, linear), conditions, candidates; ``n_params_`` = non-zero weights + intercepts + 2 per
    rule condition (feature, threshold).
    """

    def __init__(self, max_rules: int = 15, n_estimators: int = 100, tree_size: float = 4.0,
                 learning_rate: float = 0.01, min_samples_leaf: int = 5, include_linear: bool = True,
                 winsor_quantile: float = 0.025, n_Cs: int = 25, path_ratio: float = 1e3, cv: int = 3,
                 max_iter: int = 2000, tol: float = 1e-4, random_state: int | None = 0) -> None:
        self.max_rules = max_rules
        self.n_estimators = n_estimators
        self.tree_size = tree_size
        self.learning_rate = learning_rate
        self.min_samples_leaf = min_samples_leaf
        self.include_linear = include_linear
        self.winsor_quantile = winsor_quantile
        self.n_Cs = n_Cs
        self.path_ratio = path_ratio
        self.cv = cv
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    # ---------------------------------------------------------------- fit
    def _candidate_rules(self, X: np.ndarray, y: np.ndarray) -> list[list[Condition]]:
        """Every rule of the boosted trees (step 1 of the class doc, before de-duplication)."""
        rng = np.random.default_rng(self.random_state)
        n, k = len(X), len(self.classes_)
        Y = _figs_targets(y, k)
        prior = np.clip(np.bincount(y, minlength=k) / n, 1e-6, 1.0)
        F = np.tile(np.log(prior[1] / prior[0]) if k == 2 else np.log(prior), (n, 1))
        eta = int(np.clip(min(n // 2, 100 + 6 * np.sqrt(n)), 2, n))
        mean_extra = max(float(self.tree_size) - 2.0, 0.0)
        rules: list[list[Condition]] = []
        for _ in range(max(0, int(self.n_estimators))):
            size = 2 + (int(np.floor(rng.exponential(mean_extra))) if mean_extra > 0 else 0)
            rows = rng.choice(n, eta, replace=False)
            P = expit(F) if k == 2 else softmax(F, axis=1)
            tree = DecisionTreeRegressor(max_leaf_nodes=size, min_samples_leaf=max(1, int(self.min_samples_leaf)),
                                         random_state=int(rng.integers(2 ** 31 - 1)))
            tree.fit(X[rows], (Y - P)[rows])
            rules += _tree_rules(tree)
            F = F + self.learning_rate * tree.predict(X).reshape(n, -1)
        return rules

    @staticmethod
    def _dedupe(rules: list[list[Condition]], X: np.ndarray) -> tuple[list[list[Condition]], np.ndarray]:
        """Rules with a support of their own (neither empty nor everything), shortest first: (rules, R bool [N, k])."""
        order = sorted(range(len(rules)), key=lambda i: (len(rules[i]), i))
        cols = [_holds(X, rules[i]) for i in order]
        keep = distinct_binary_columns(cols)
        R = np.column_stack([cols[i] for i in keep]) if keep else np.zeros((len(X), 0), dtype=bool)
        return [rules[order[i]] for i in keep], R

    def _linear_stats(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per feature: (index, low and high winsorising bounds, mean and sd of the winsorised value), non-constant
        features only."""
        if not self.include_linear:
            empty = np.zeros(0)
            return np.zeros(0, dtype=np.int64), empty, empty, empty, empty
        q = float(self.winsor_quantile)
        lo, hi = np.quantile(X, [q, 1.0 - q], axis=0)
        W = np.clip(X, lo, hi)
        mu, sd = W.mean(axis=0), W.std(axis=0)
        keep = np.flatnonzero(sd > 1e-12 * np.maximum(1.0, np.abs(mu)))
        return keep, lo[keep], hi[keep], mu[keep], sd[keep]

    @staticmethod
    def _linear_terms(X: np.ndarray, feats, lo, hi, mu, sd) -> np.ndarray:
        return 0.4 * (np.clip(X[:, feats], lo, hi) - mu) / sd

    def _path(self, Z: np.ndarray, y: np.ndarray, Cs: np.ndarray,
              stop_above: int | None = None) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """The intercept-only model (the class frequencies; C = 0), then the L1 fits along ``Cs`` (warm-started);
        with ``stop_above``, ending at the first fit with more non-zero terms than that. The path also ends after a
        fit that separates the training classes and reaches ``max_iter`` without converging: beyond it the weights
        only grow with C, and every fit is as slow."""
        k = len(self.classes_)
        log_prior = np.log(np.clip(np.bincount(y, minlength=k) / len(y), 1e-12, None))
        null = np.array([log_prior[1] - log_prior[0]]) if k == 2 else log_prior - log_prior.mean()
        null_fit = (np.zeros((1 if k == 2 else k, Z.shape[1])), null, 0)

        def separated(clf, n_iter: int) -> bool:
            return n_iter >= self.max_iter and np.array_equal(np.argmax(linear_proba(Z, clf.coef_, clf.intercept_), 1),
                                                              y)

        return [null_fit, *l1_logistic_path(Z, y, Cs, max_iter=self.max_iter, tol=self.tol,
                                            random_state=self.random_state, stop_above=stop_above, stop=separated)]

    _proba = staticmethod(linear_proba)

    def fit(self, X, y, X_val=None, y_val=None, feature_names=None, feature_descriptions=None):
        X, y, Xv, yv = self._prepare(X, y, X_val, y_val, feature_names, feature_descriptions)
        rules, R = self._dedupe(self._candidate_rules(X, y), X)
        feats, lo, hi, mu, sd = self._linear_stats(X)
        self.n_candidate_rules_, self.n_candidate_linear_ = len(rules), len(feats)
        n_terms = len(rules) + len(feats)

        def design(A: np.ndarray) -> np.ndarray:
            """All candidate terms of the rows ``A`` (one zero column when there are none: an intercept-only fit)."""
            if n_terms == 0:
                return np.zeros((len(A), 1))
            cols = [_holds(A, r).astype(np.float64)[:, None] for r in rules]
            return np.hstack([*cols, self._linear_terms(A, feats, lo, hi, mu, sd)])

        Z = design(X)
        try:
            c0 = float(l1_min_c(Z, y, loss="log"))
        except ValueError:  # every term constant: no C gives a non-zero weight
            c0 = 1.0
        grid = c0 * np.logspace(0, np.log10(self.path_ratio), max(1, int(self.n_Cs)))
        # points denser than max_rules can never be chosen, and the densest are the slowest to fit
        path = self._path(Z, y, grid, stop_above=2 * int(self.max_rules))
        grid = grid[:len(path) - 1]  # the CV folds use the same, shortened grid
        Cs = np.concatenate([[0.0], grid])  # C = 0: the intercept-only model
        nnz = [int(np.any(coef != 0, axis=0).sum()) for coef, _, _ in path]
        if Xv is not None:
            Zv = design(Xv)
            scores = [selection_score(yv, self._proba(Zv, c, b)) for c, b, _ in path]
            self.selection_ = "validation"
        else:
            folds = self._cv_splits(y, self.cv, self.random_state)
            if folds is None:
                scores = [selection_score(y, self._proba(Z, c, b)) for c, b, _ in path]
                self.selection_ = "train"
            else:
                per_fold = []
                for tr, te in folds:  # a fold whose path ended early (separated) keeps its last fit's score
                    fold_path = self._path(Z[tr], y[tr], grid)
                    fold = [selection_score(y[te], self._proba(Z[te], c, b)) for c, b, _ in fold_path]
                    per_fold.append([fold[min(i, len(fold) - 1)] for i in range(len(path))])
                scores = [float(v) for v in np.mean(per_fold, axis=0)]
                self.selection_ = f"{len(folds)}-fold CV"
        self.path_ = [(float(C), n, float(s)) for C, n, s in zip(Cs, nnz, scores)]
        best = None
        for i, (_C, n, s) in enumerate(self.path_):
            if n > self.max_rules or (i > 0 and n == 0):  # a fit without terms: the exact intercept-only model stands
                continue
            if best is None or s > self.path_[best][2] + 1e-12 or (
                    abs(s - self.path_[best][2]) <= 1e-12 and n <= self.path_[best][1]):
                best = i  # ties: fewer terms, then the larger C (the same sparsity, less shrunk weights)
        if best is None:  # even the intercept-only model is too dense (max_rules < 0)
            best = int(np.argmin(nnz))
        coef, intercept, n_iter = path[best]
        if n_terms == 0:
            coef = np.zeros((coef.shape[0], 0))
        sel = np.flatnonzero(np.any(coef != 0, axis=0))
        sel_rules = [int(i) for i in sel if i < len(rules)]
        sel_lin = np.asarray([int(i) - len(rules) for i in sel if i >= len(rules)], dtype=np.int64)
        self.rules_ = [list(rules[i]) for i in sel_rules]
        self.rule_support_ = R[:, sel_rules].mean(axis=0) if sel_rules else np.zeros(0)
        self.linear_features_ = feats[sel_lin]
        self.linear_low_, self.linear_high_ = lo[sel_lin], hi[sel_lin]
        self.linear_mean_, self.linear_sd_ = mu[sel_lin], sd[sel_lin]
        self.coef_ = coef[:, sel]
        self.intercept_ = intercept
        self.n_iter_ = max(1, n_iter)
        self.C_ = float(Cs[best])
        self.best_score_ = float(scores[best])
        self.term_names_ = self._term_names()
        n_conditions = sum(len(r) for r in self.rules_)
        self.n_params_ = int(np.count_nonzero(self.coef_) + self.intercept_.size + 2 * n_conditions)
        return self

    def _rule_text(self, rule: list[Condition], digits: int = 4) -> str:
        return " AND ".join(f"{self.feature_names_[j]} {op} {t:.{digits}g}" for j, op, t in rule)

    def _term_names(self) -> list[str]:
        names: list[str] = []
        for rule in self.rules_:
            digits, name = 4, self._rule_text(rule)
            while name in names and digits < 17:  # two rules that print alike: print more digits
                digits += 2
                name = self._rule_text(rule, digits)
            names.append(name)
        return names + [self.feature_names_[j] for j in self.linear_features_]

    # ---------------------------------------------------------------- predictions
    def _terms(self, X: np.ndarray) -> np.ndarray:
        """The selected terms' values [N, terms]: rule indicators, then linear terms."""
        cols = [_holds(X, r).astype(np.float64)[:, None] for r in self.rules_]
        cols.append(self._linear_terms(X, self.linear_features_, self.linear_low_, self.linear_high_,
                                       self.linear_mean_, self.linear_sd_))
        return np.hstack(cols)

    def predict_proba(self, X) -> np.ndarray:
        X = self._check_X(X)
        return self._proba(self._terms(X), self.coef_, self.intercept_)

    def _class_weights(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per case: the weight row and intercept of the logit of class ``t``."""
        if self.coef_.shape[0] == 1:
            sign = np.where(t == 1, 1.0, -1.0)
            return sign[:, None] * self.coef_[0][None, :], sign * self.intercept_[0]
        return self.coef_[t], self.intercept_[t]

    def _attribution(self, X, target=None, case_ids=None) -> FeatureAttribution:
        """Per-case ``coef x term value`` of the explained class's logit (see the class doc)."""
        proba = self.predict_proba(X)
        X = self._check_X(X)
        t = self._targets(proba, target)
        T = self._terms(X)
        w, b = self._class_weights(t)
        values = T.copy()
        values[:, len(self.rules_):] = X[:, self.linear_features_]
        return FeatureAttribution(list(self.term_names_), values, T * w, t, self._intercept(b), case_ids)

    def reading_load(self, X) -> dict:
        """Every condition of every selected rule plus one per selected linear term (the same for every case)."""
        check_is_fitted(self)
        count = sum(len(r) for r in self.rules_) + len(self.linear_features_)
        return {"count": float(count), "unit": "conditions",
                "definition": "The conditions a reader checks to score one case: every condition of every selected "
                              "rule (to know whether the rule applies), plus one per selected linear term (its value "
                              "read off); the same for every case."}

    # ---------------------------------------------------------------- the model itself
    def complexity_(self) -> dict:
        check_is_fitted(self)
        used = {j for r in self.rules_ for j, _, _ in r} | set(self.linear_features_.tolist())
        return {"n_terms": len(self.term_names_), "n_rules": len(self.rules_),
                "n_linear": len(self.linear_features_), "n_conditions": sum(len(r) for r in self.rules_),
                "n_features_used": len(used), "n_candidate_rules": self.n_candidate_rules_,
                "n_params": self.n_params_, "C": self.C_}

    def terms(self) -> list[dict]:
        """The selected terms by decreasing importance (the paper's: ``|weight| x sd of the term`` on the training
        data, the largest over the score rows): ``term``, ``kind`` (rule / linear), ``weight`` (per score row),
        ``importance`` and for a rule its ``conditions`` (``feature``, ``feature_index``, ``op``, ``threshold``,
        ``description``) and ``support`` (fraction of training cases it covers); for a linear term its ``feature``,
        ``description``, winsorising bounds ``low`` / ``high``, training ``mean`` and ``sd`` and ``weight_raw``
        (per raw unit inside the bounds)."""
        check_is_fitted(self)
        out = []
        for k, (rule, s) in enumerate(zip(self.rules_, self.rule_support_)):
            w = self.coef_[:, k]
            conds = [{"feature": self.feature_names_[j], "feature_index": int(j), "op": op, "threshold": float(t),
                      "description": self._describe(self.feature_names_[j])} for j, op, t in rule]
            out.append({"term": self.term_names_[k], "kind": "rule", "weight": w.tolist(),
                        "importance": float(np.abs(w).max() * np.sqrt(s * (1 - s))), "conditions": conds,
                        "support": float(s)})
        for m, j in enumerate(self.linear_features_):
            w = self.coef_[:, len(self.rules_) + m]
            name = self.feature_names_[j]
            out.append({"term": name, "kind": "linear", "weight": w.tolist(),
                        "importance": float(np.abs(w).max() * 0.4), "feature": name, "feature_index": int(j),
                        "description": self._describe(name),
                        "low": float(self.linear_low_[m]), "high": float(self.linear_high_[m]),
                        "mean": float(self.linear_mean_[m]), "sd": float(self.linear_sd_[m]),
                        "weight_raw": (w * 0.4 / self.linear_sd_[m]).tolist()})
        out.sort(key=lambda d: -d["importance"])
        return out

    def explain_global(self) -> GlobalExplanation:
        """``form="rules"``: ``content`` has ``classes``, ``score_rows`` (one logit per row: class 1 for 2 classes,
        else every class), ``intercept``, ``terms`` (:meth:`terms`), ``C``, ``selection``, ``path``, the candidate
        counts and the ``features`` used with their descriptions; ``text`` lists, per logit, the terms with their
        weights and rules' supports."""
        check_is_fitted(self)
        terms = self.terms()
        rows = [str(self.classes_[1])] if self.coef_.shape[0] == 1 else [str(c) for c in self.classes_]
        n_rules = sum(t["kind"] == "rule" for t in terms)
        lines = [f"RuleFit: {len(terms)} terms ({n_rules} rules, {len(terms) - n_rules} linear) from "
                 f"{self.n_candidate_rules_} candidate rules and {self.n_candidate_linear_} linear terms; "
                 f"C={self.C_:.4g} chosen by {self.selection_} AUC {self.best_score_:.3f}"]
        for r, cls in enumerate(rows):
            lines.append(f"logit P({cls}) = {self.intercept_[r]:+.4f}")
            for t in terms:
                if t["weight"][r] == 0:
                    continue
                if t["kind"] == "rule":
                    lines.append(f"    {t['weight'][r]:+.4f}  IF {t['term']}   "
                                 f"(support {100 * t['support']:.1f}% of training cases)")
                else:
                    lines.append(f"    {t['weight'][r]:+.4f}  x lin({t['term']})")
        if any(t["kind"] == "linear" for t in terms):
            q = 100 * float(self.winsor_quantile)
            lines.append(f"lin(f) = 0.4 x (f clipped to its training {q:g}-{100 - q:g}% quantiles - training mean) "
                         "/ training sd")
        names = sorted({c["feature"] for t in terms for c in t.get("conditions", [])}
                       | {t["feature"] for t in terms if t["kind"] == "linear"})
        desc = [(n, self._describe(n)) for n in names]
        if any(d for _, d in desc):
            lines.append("Features:")
            lines += [f"  {n} -- {d}" for n, d in desc if d]
        content = {"classes": [str(c) for c in self.classes_], "score_rows": rows,
                   "intercept": self.intercept_.tolist(), "terms": terms, "C": self.C_, "selection": self.selection_,
                   "path": [list(p) for p in self.path_], "n_candidate_rules": self.n_candidate_rules_,
                   "n_candidate_linear": self.n_candidate_linear_,
                   "features": [{"feature": n, "description": d} for n, d in desc]}
        return GlobalExplanation(form="rules", content=content, text="\n".join(lines))


__all__ = ["FIGS", "RuleFit"]

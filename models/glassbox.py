"""Glass-box models on a named feature table: sparse logistic regression, a shallow tree, an EBM and a point score.

Every model is a scikit-learn classifier (``ClassifierMixin, BaseEstimator``) and a glasszoo :class:`TabularModel`:

* ``fit(X, y, X_val=None, y_val=None, feature_names=None, feature_descriptions=None)`` -- the validation split, when
  given, selects the model's size (regularisation, depth, number of items, early stopping); the extra arguments are
  optional so ``fit(X, y)`` works (then an internal stratified CV, or the training data, stands in -- see each model).
* ``predict_proba(X)`` [N, classes] with columns in ``classes_`` order; ``predict``; ``score``.
* ``explain(X, target=None, case_ids=None)`` -> ``[FeatureAttribution]``. ``target`` is the explained class as an
  index into ``classes_`` (default: the predicted class). Because a model's intercept depends on the explained
  class, ``FeatureAttribution.intercept`` is a float when every case is explained for the same class and a float64
  [N] array of per-case intercepts otherwise.
* ``explain_global()`` -> :class:`GlobalExplanation` (weights, rules, shape functions or a score table, with a text
  rendering).
* ``complexity_()`` -> dict (non-zero weights / leaves / terms / items and points) and the attribute ``n_params_``.
* Feature descriptions: ``fit(..., feature_descriptions={name: text})`` or ``set_feature_descriptions(d)``; the
  pipeline passes those of its feature table (:func:`glasszoo.training.features.feature_descriptions`). A model
  knows nothing of radiomics: without descriptions, ``explain_global`` names the features only.

Labels may be any values scikit-learn accepts; internally the models work on class indices ``0..K-1``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import l1_min_c
from sklearn.tree import DecisionTreeClassifier, export_text
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from glasszoo.models._registry import register_model
from glasszoo.models.base import TabularModel
from glasszoo.models.counterfactuals import robust_scale
from glasszoo.models.explanations import FeatureAttribution, GlobalExplanation


# ------------------------------------------------------------------------------------------------ shared helpers
def selection_score(y_idx: np.ndarray, proba: np.ndarray) -> float:
    """The score models are selected by: ROC AUC (binary: of class 1; multiclass: macro one-vs-rest). When ``y_idx``
    holds a single class (AUC undefined) the negative mean log-loss is used instead."""
    y_idx = np.asarray(y_idx)
    k = proba.shape[1]
    if len(np.unique(y_idx)) < 2:
        p = np.clip(proba[np.arange(len(y_idx)), y_idx], 1e-12, 1.0)
        return float(np.log(p).mean())
    if k == 2:
        return float(roc_auc_score(y_idx, proba[:, 1]))
    present = np.unique(y_idx)
    pr = proba[:, present]
    pr = pr / np.clip(pr.sum(1, keepdims=True), 1e-12, None)
    if len(present) == 2:
        return float(roc_auc_score(y_idx == present[1], pr[:, 1]))
    return float(roc_auc_score(y_idx, pr, multi_class="ovr", average="macro", labels=present))


def distinct_binary_columns(columns: list[np.ndarray]) -> list[int]:
    """The indices of the 0/1 (or bool) columns [N] that are neither constant nor a copy of an earlier kept column,
    in order: the candidate items and rules the glass-box models search over."""
    kept, seen = [], set()
    for i, col in enumerate(columns):
        col = np.asarray(col, dtype=bool)
        if col.all() or not col.any():
            continue
        key = np.packbits(col).tobytes()
        if key not in seen:
            seen.add(key)
            kept.append(i)
    return kept


def linear_proba(Z: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Class probabilities [N, K] of a fitted (multinomial) logistic model: one weight row means two classes (the
    row scores class 1), K rows a softmax over K classes."""
    logits = Z @ coef.T + intercept
    if coef.shape[0] == 1:
        p1 = expit(logits[:, 0])
        return np.column_stack([1 - p1, p1])
    return softmax(logits, axis=1)


def l1_logistic_path(Z: np.ndarray, y: np.ndarray, Cs: np.ndarray, *, max_iter: int, tol: float, random_state,
                     class_weight=None, stop_above: int | None = None,
                     stop=None) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """L1 logistic regressions along ``Cs`` in increasing order, warm-started (saga, pure L1: ``l1_ratio=1``;
    multinomial for > 2 classes): ``(coef, intercept, iterations)`` per C. The path ends after the first fit with
    more than ``stop_above`` non-zero features, or when ``stop(fitted classifier, iterations)`` holds."""
    clf = LogisticRegression(C=float(Cs[0]), l1_ratio=1.0, solver="saga", warm_start=True, max_iter=max_iter,
                             tol=tol, class_weight=class_weight, random_state=random_state)
    out = []
    for C in Cs:
        clf.set_params(C=float(C))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(Z, y)
        n_iter = int(np.max(clf.n_iter_))
        out.append((clf.coef_.copy(), clf.intercept_.copy(), n_iter))
        if stop_above is not None and int(np.any(clf.coef_ != 0, axis=0).sum()) > stop_above:
            break
        if stop is not None and stop(clf, n_iter):
            break
    return out


class _GlassBox(ClassifierMixin, BaseEstimator, TabularModel):
    """Shared input checking, label encoding, validation handling and explanation plumbing."""

    explanation_kinds = ("feature_attribution",)

    # ---------------------------------------------------------------- fit helpers
    def _prepare(self, X, y, X_val, y_val, feature_names, feature_descriptions):
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes in y; got 1 class "
                             f"({self.classes_[0]!r})")
        if feature_names is None:
            feature_names = getattr(self, "feature_names_in_", None)
        if feature_names is None:
            feature_names = [f"x{j}" for j in range(X.shape[1])]
        feature_names = [str(n) for n in feature_names]
        if len(feature_names) != X.shape[1]:
            raise ValueError(f"{type(self).__name__}: {len(feature_names)} feature_names for {X.shape[1]} columns")
        self.feature_names_ = feature_names
        self.feature_descriptions_ = dict(feature_descriptions or {})
        # each feature's training range and robust spread: the space counterfactuals search (and their unit)
        self.feature_lo_, self.feature_hi_ = X.min(axis=0), X.max(axis=0)
        self.feature_scale_ = robust_scale(X)
        Xv = yv = None
        if X_val is not None and y_val is not None and len(y_val):
            Xv = check_array(X_val, dtype=np.float64)
            if Xv.shape[1] != X.shape[1]:
                raise ValueError(f"X_val has {Xv.shape[1]} features, but X has {X.shape[1]}")
            y_val = np.asarray(y_val).reshape(-1)
            unseen = sorted(set(y_val.tolist()) - set(self.classes_.tolist()))
            if unseen:
                raise ValueError(f"y_val holds class(es) {unseen} that are not in the training labels "
                                 f"{self.classes_.tolist()}")
            yv = np.searchsorted(self.classes_, y_val)
        return X, y_idx, Xv, yv

    def _cv_splits(self, y_idx: np.ndarray, cv: int, seed: Any) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """Stratified folds when every class has at least ``cv`` cases, else None (select on the training data)."""
        if cv is None or cv < 2 or np.bincount(y_idx).min() < cv:
            return None
        rs = seed if isinstance(seed, (int, np.integer)) else 0
        return list(StratifiedKFold(cv, shuffle=True, random_state=rs).split(np.zeros(len(y_idx)), y_idx))

    def _check_X(self, X) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=np.float64)

    # ---------------------------------------------------------------- predictions
    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def _targets(self, proba: np.ndarray, target) -> np.ndarray:
        if target is None:
            return np.argmax(proba, axis=1).astype(np.int64)
        t = np.asarray(target).reshape(-1)
        if t.size == 1 and len(proba) != 1:
            t = np.full(len(proba), t.item())
        if len(t) != len(proba):
            raise ValueError(f"target has {len(t)} entries for {len(proba)} cases")
        t = t.astype(np.int64)
        if t.min() < 0 or t.max() >= len(self.classes_):
            raise ValueError(f"target must hold class indices in 0..{len(self.classes_) - 1}, got {np.unique(t)}")
        return t

    @staticmethod
    def _intercept(per_case: np.ndarray) -> float | np.ndarray:
        per_case = np.asarray(per_case, dtype=np.float64)
        if len(per_case) and np.allclose(per_case, per_case[0], rtol=0, atol=0):
            return float(per_case[0])
        return per_case if len(per_case) else 0.0

    def explain(self, X, target=None, case_ids=None) -> list[FeatureAttribution]:
        """``[FeatureAttribution]``: per case, each feature's (or term's) additive contribution to the explained
        class's score (``target``, default: the predicted class)."""
        return [self._attribution(X, target, case_ids)]

    # ---------------------------------------------------------------- descriptions
    def set_feature_descriptions(self, descriptions: dict[str, str]):
        """Plain-language descriptions of the features (used by ``explain_global``); returns ``self``."""
        self.feature_descriptions_ = dict(descriptions)
        return self

    def _describe(self, name: str) -> str:
        """The plain-language description of feature ``name`` given at fit time, or ``""``."""
        return str((getattr(self, "feature_descriptions_", {}) or {}).get(name, ""))


# ------------------------------------------------------------------------------------------------ sparse logreg
@register_model("sparse_logreg", family="linear", test_kwargs={"n_Cs": 8},
                paper="Tibshirani 1996, Regression shrinkage and selection via the lasso (L1 logistic regression)")
class SparseLogReg(_GlassBox):
    """L1-penalised (lasso) logistic regression on standardised features, sized to at most ``max_features`` non-zero
    features (Tibshirani 1996, "Regression shrinkage and selection via the lasso", JRSS-B 58(1): 267-288).

    Fit: features are standardised with the training mean / standard deviation (a constant feature keeps sd 1). The
    whole L1 path is computed on the training data -- ``n_Cs`` values of C, log-spaced from
    ``sklearn.svm.l1_min_c`` (the smallest C with any non-zero weight) up to ``path_ratio`` times it, fitted in
    increasing order with warm starts (saga solver, pure L1: ``l1_ratio=1``; multinomial for > 2 classes), and
    ending early at the first C with more than ``2 * max_features`` non-zero features (no denser point can be
    chosen, and those are the slowest to fit). Each C is
    scored by the validation AUC (:func:`selection_score`) when ``X_val``/``y_val`` are given, else by the mean AUC of
    a ``cv``-fold stratified CV on the training data (each fold computes its own path on the same C grid), else (a
    class with fewer than ``cv`` cases) on the training data itself. Among the path points with at most
    ``max_features`` non-zero features the best score wins (ties: fewer non-zero features, then the smaller C), and
    the training-data fit at that C is the model. ``path_`` keeps ``(C, n_nonzero, score)`` for every C.

    Explanation: ``contribution[i, j] = coef[target, j] * z[i, j]`` with ``z`` the standardised value, and the
    intercept of the target class, so ``sum_j contribution + intercept`` is the target class's logit -- for 2 classes
    the log-odds of class 1, negated when class 0 is explained; for more classes the multinomial (softmax) logit.
    ``values`` are the raw feature values.

    Complexity: ``n_nonzero`` features; ``n_params_`` = non-zero weights + intercepts.
    """

    def __init__(self, max_features: int = 10, n_Cs: int = 25, path_ratio: float = 1e3, class_weight=None,
                 cv: int = 3, max_iter: int = 2000, tol: float = 1e-4, random_state: int | None = 0) -> None:
        self.max_features = max_features
        self.n_Cs = n_Cs
        self.path_ratio = path_ratio
        self.class_weight = class_weight
        self.cv = cv
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def _path(self, Z: np.ndarray, y: np.ndarray, Cs: np.ndarray,
              stop_above: int | None = None) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """The fits along ``Cs`` (warm-started); with ``stop_above``, the path ends at the first fit with more
        non-zero features than that."""
        return l1_logistic_path(Z, y, Cs, max_iter=self.max_iter, tol=self.tol, random_state=self.random_state,
                                class_weight=self.class_weight, stop_above=stop_above)

    _proba = staticmethod(linear_proba)

    def fit(self, X, y, X_val=None, y_val=None, feature_names=None, feature_descriptions=None):

        X, y, Xv, yv = self._prepare(X, y, X_val, y_val, feature_names, feature_descriptions)
        self.mean_ = X.mean(axis=0)
        sd = X.std(axis=0)
        self.scale_ = np.where(sd > 0, sd, 1.0)
        Z = (X - self.mean_) / self.scale_
        try:
            c0 = float(l1_min_c(Z, y, loss="log"))
        except ValueError:  # every feature constant: no C gives a non-zero weight
            c0 = 1.0
        Cs = c0 * np.logspace(0, np.log10(self.path_ratio), int(self.n_Cs))
        # points denser than max_features can never be chosen, and the densest are the slowest to fit: the path
        # stops once it has twice the allowed features (the CV folds use the same, shortened grid)
        path = self._path(Z, y, Cs, stop_above=2 * int(self.max_features))
        Cs = Cs[:len(path)]
        nnz = [int(np.any(coef != 0, axis=0).sum()) for coef, _, _ in path]
        if Xv is not None:
            Zv = (Xv - self.mean_) / self.scale_
            scores = [selection_score(yv, self._proba(Zv, c, b)) for c, b, _ in path]
            self.selection_ = "validation"
        else:
            folds = self._cv_splits(y, self.cv, self.random_state)
            if folds is None:
                scores = [selection_score(y, self._proba(Z, c, b)) for c, b, _ in path]
                self.selection_ = "train"
            else:
                per_fold = []
                for tr, te in folds:
                    mu, s = X[tr].mean(0), X[tr].std(0)
                    s = np.where(s > 0, s, 1.0)
                    fold_path = self._path((X[tr] - mu) / s, y[tr], Cs)
                    per_fold.append([selection_score(y[te], self._proba((X[te] - mu) / s, c, b))
                                     for c, b, _ in fold_path])
                scores = list(np.mean(per_fold, axis=0))
                self.selection_ = f"{len(folds)}-fold CV"
        self.path_ = [(float(C), n, float(s)) for C, n, s in zip(Cs, nnz, scores)]
        best = None
        for i, (_C, n, s) in enumerate(self.path_):
            if n > self.max_features:
                continue
            if best is None or s > self.path_[best][2] + 1e-12 or (
                    abs(s - self.path_[best][2]) <= 1e-12 and n < self.path_[best][1]):
                best = i
        if best is None:  # even the sparsest point is too dense (max_features < 1 or a degenerate grid)
            best = int(np.argmin(nnz))
        self.C_ = float(Cs[best])
        self.coef_, self.intercept_, self.n_iter_ = path[best][0], path[best][1], max(1, path[best][2])
        self.best_score_ = float(scores[best])
        self.n_params_ = int(np.count_nonzero(self.coef_) + self.intercept_.size)
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = self._check_X(X)
        return self._proba((X - self.mean_) / self.scale_, self.coef_, self.intercept_)

    def _class_weights(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per case: the weight row and intercept of the score of class ``t``."""
        if self.coef_.shape[0] == 1:
            sign = np.where(t == 1, 1.0, -1.0)
            return sign[:, None] * self.coef_[0][None, :], sign * self.intercept_[0]
        return self.coef_[t], self.intercept_[t]

    def _attribution(self, X, target=None, case_ids=None) -> FeatureAttribution:
        """Per-case contributions ``coef x standardised value`` to the explained class's logit (see the class doc)."""
        proba = self.predict_proba(X)
        X = self._check_X(X)
        t = self._targets(proba, target)
        w, b = self._class_weights(t)
        contrib = ((X - self.mean_) / self.scale_) * w
        return FeatureAttribution(list(self.feature_names_), X, contrib, t, self._intercept(b), case_ids)

    def nonzero_features(self) -> list[str]:
        return [n for n, nz in zip(self.feature_names_, np.any(self.coef_ != 0, axis=0)) if nz]

    def complexity_(self) -> dict:
        check_is_fitted(self)
        return {"n_nonzero": len(self.nonzero_features()), "n_features": int(self.n_features_in_),
                "n_params": self.n_params_, "C": self.C_}

    def reading_load(self, X) -> dict:
        check_is_fitted(self)
        return {"count": len(self.nonzero_features()), "unit": "terms",
                "definition": "non-zero weights: each a feature's standardised value times its weight, summed"}

    def explain_global(self) -> GlobalExplanation:
        """``form="weights"``. ``content``: ``classes``, ``C``, ``selection``, ``intercept`` (per score row) and
        ``weights``: one entry per non-zero feature with ``weight`` (per training standard deviation), ``weight_raw``
        (per raw unit), the training ``mean`` and ``sd`` and a ``description``; ``path`` the L1 path."""
        check_is_fitted(self)
        rows = [str(self.classes_[1])] if self.coef_.shape[0] == 1 else [str(c) for c in self.classes_]
        weights = []
        for j in np.flatnonzero(np.any(self.coef_ != 0, axis=0)):
            name = self.feature_names_[j]
            weights.append({"feature": name, "weight": self.coef_[:, j].tolist(),
                            "weight_raw": (self.coef_[:, j] / self.scale_[j]).tolist(),
                            "mean": float(self.mean_[j]), "sd": float(self.scale_[j]),
                            "description": self._describe(name)})
        weights.sort(key=lambda w: -max(abs(v) for v in w["weight"]))
        lines = [f"Sparse logistic regression (L1, C={self.C_:.4g}, {len(weights)} non-zero of "
                 f"{self.n_features_in_} features; chosen by {self.selection_} AUC {self.best_score_:.3f})"]
        for r, cls in enumerate(rows):
            lines.append(f"logit P({cls}) = {self.intercept_[r]:+.4f}")
            for w in weights:
                if w["weight"][r] != 0:
                    desc = f"  -- {w['description']}" if w["description"] else ""
                    lines.append(f"    {w['weight'][r]:+.4f} x z({w['feature']}){desc}")
        lines.append("z(f) = (f - training mean) / training sd")
        content = {"classes": [str(c) for c in self.classes_], "score_rows": rows, "C": self.C_,
                   "selection": self.selection_, "intercept": self.intercept_.tolist(), "weights": weights,
                   "path": [list(p) for p in self.path_]}
        return GlobalExplanation(form="weights", content=content, text="\n".join(lines))


# ------------------------------------------------------------------------------------------------ decision tree
@register_model("decision_tree", family="tree", test_kwargs={"max_depth": 3},
                paper="Breiman, Friedman, Olshen & Stone 1984, Classification and Regression Trees")
class ShallowTree(_GlassBox):
    """A shallow CART decision tree (Breiman, Friedman, Olshen & Stone 1984, "Classification and Regression Trees").

    Fit: a ``DecisionTreeClassifier`` for every depth 1..``max_depth`` on the training data; the depth with the best
    validation AUC wins (ties: the shallower), else the best mean AUC of a ``cv``-fold stratified CV, else (too few
    cases per class) ``max_depth``. ``depth_path_`` keeps ``(depth, n_leaves, score)``.

    Explanation (Saabas-style path decomposition): each case walks from the root to its leaf; at every split the
    change of the explained class's probability (node class fractions, training data, class-weighted) from the node
    to the child taken is credited to the split's feature. So ``contribution.sum(1) + intercept`` equals the leaf
    probability (= ``predict_proba``) with ``intercept`` the root's probability of the explained class; features not
    on the path get 0; contributions are on the probability scale.

    Complexity: depth, leaves, splits; ``n_params_`` = 2 per split (feature, threshold) + (classes - 1) per leaf.
    """

    stored_types = ("sklearn.tree._tree.Tree",)

    def __init__(self, max_depth: int = 4, min_samples_leaf: int = 5, min_weight_fraction_leaf: float = 0.0,
                 criterion: str = "gini", class_weight=None, cv: int = 3, random_state: int | None = 0) -> None:
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.min_weight_fraction_leaf = min_weight_fraction_leaf
        self.criterion = criterion
        self.class_weight = class_weight
        self.cv = cv
        self.random_state = random_state

    def _tree(self, depth: int):

        return DecisionTreeClassifier(max_depth=depth, min_samples_leaf=self.min_samples_leaf,
                                      min_weight_fraction_leaf=self.min_weight_fraction_leaf, criterion=self.criterion,
                                      class_weight=self.class_weight, random_state=self.random_state)

    def _full_proba(self, tree, X: np.ndarray) -> np.ndarray:
        p = np.zeros((len(X), len(self.classes_)))
        p[:, tree.classes_] = tree.predict_proba(X)
        return p

    def fit(self, X, y, X_val=None, y_val=None, feature_names=None, feature_descriptions=None):
        X, y, Xv, yv = self._prepare(X, y, X_val, y_val, feature_names, feature_descriptions)
        depths = list(range(1, max(1, int(self.max_depth)) + 1))
        trees = [self._tree(d).fit(X, y) for d in depths]
        folds = None if Xv is not None else self._cv_splits(y, self.cv, self.random_state)
        if Xv is not None:
            scores = [selection_score(yv, self._full_proba(t, Xv)) for t in trees]
            self.selection_ = "validation"
        elif folds is not None:
            scores = [float(np.mean([selection_score(y[te], self._full_proba(self._tree(d).fit(X[tr], y[tr]), X[te]))
                                     for tr, te in folds])) for d in depths]
            self.selection_ = f"{len(folds)}-fold CV"
        else:
            scores = [np.nan] * len(depths)
            self.selection_ = "max_depth (too few cases for validation)"
        self.depth_path_ = [(d, int(t.get_n_leaves()), float(s)) for d, t, s in zip(depths, trees, scores)]
        best = len(depths) - 1
        if not np.all(np.isnan(scores)):
            best = None
            for i, s in enumerate(scores):
                if best is None or s > scores[best] + 1e-12:
                    best = i
        self.tree_ = trees[best]
        self.depth_ = int(self.tree_.get_depth())
        self.best_score_ = float(scores[best])
        t = self.tree_.tree_
        n_leaves = int(self.tree_.get_n_leaves())
        self.n_params_ = int(2 * (t.node_count - n_leaves) + n_leaves * (len(self.classes_) - 1))
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = self._check_X(X)
        return self._full_proba(self.tree_, X)

    def _node_proba(self) -> np.ndarray:
        t = self.tree_.tree_
        v = np.zeros((t.node_count, len(self.classes_)))
        v[:, self.tree_.classes_] = t.value[:, 0, :]
        return v / np.clip(v.sum(1, keepdims=True), 1e-300, None)

    def _attribution(self, X, target=None, case_ids=None) -> FeatureAttribution:
        """Saabas path decomposition of the explained class's probability (see the class doc)."""
        proba = self.predict_proba(X)
        X = self._check_X(X)
        t = self._targets(proba, target)
        tree = self.tree_.tree_
        node_p = self._node_proba()
        paths = self.tree_.decision_path(X).tocsr()
        contrib = np.zeros(X.shape)
        for i in range(len(X)):
            nodes = np.sort(paths.indices[paths.indptr[i]:paths.indptr[i + 1]])  # children have larger ids
            for parent, child in zip(nodes[:-1], nodes[1:]):
                contrib[i, tree.feature[parent]] += node_p[child, t[i]] - node_p[parent, t[i]]
        return FeatureAttribution(list(self.feature_names_), X, contrib, t, self._intercept(node_p[0, t]), case_ids)

    def rules(self) -> list[dict]:
        """One dict per leaf: the conditions on its path, the class probabilities and the training cases."""
        tree = self.tree_.tree_
        node_p = self._node_proba()
        out = []

        def walk(node: int, conds: list[str]) -> None:
            if tree.children_left[node] == tree.children_right[node]:
                out.append({"conditions": conds, "proba": node_p[node].tolist(),
                            "n_samples": int(tree.n_node_samples[node])})
                return
            name, thr = self.feature_names_[tree.feature[node]], float(tree.threshold[node])
            walk(int(tree.children_left[node]), [*conds, f"{name} <= {thr:.4g}"])
            walk(int(tree.children_right[node]), [*conds, f"{name} > {thr:.4g}"])

        walk(0, [])
        return out

    def complexity_(self) -> dict:
        check_is_fitted(self)
        n_leaves = int(self.tree_.get_n_leaves())
        used = {int(f) for f in self.tree_.tree_.feature if f >= 0}
        return {"depth": self.depth_, "n_leaves": n_leaves, "n_splits": int(self.tree_.tree_.node_count - n_leaves),
                "n_features_used": len(used), "n_params": self.n_params_}

    def reading_load(self, X) -> dict:
        """The mean number of conditions on the root-to-leaf paths of the rows of ``X``."""
        X = self._check_X(X)
        conditions = np.asarray(self.tree_.decision_path(X).sum(axis=1)).ravel() - 1
        return {"count": float(conditions.mean()) if len(X) else float(self.depth_), "unit": "conditions",
                "definition": "conditions on the case's path from the root to its leaf (mean over the cases)"}

    def explain_global(self) -> GlobalExplanation:
        """``form="rules"``: ``text`` is ``sklearn.tree.export_text``; ``content`` has ``n_leaves``, ``depth``,
        ``classes``, ``rules`` (per leaf: conditions, class probabilities, training cases), ``depth_path`` and the
        ``features`` used with their descriptions."""

        check_is_fitted(self)
        text = export_text(self.tree_, feature_names=list(self.feature_names_), decimals=4, show_weights=False)
        used = sorted({self.feature_names_[int(f)] for f in self.tree_.tree_.feature if f >= 0})
        content = {"n_leaves": int(self.tree_.get_n_leaves()), "depth": self.depth_,
                   "classes": [str(c) for c in self.classes_], "rules": self.rules(),
                   "depth_path": [list(p) for p in self.depth_path_], "selection": self.selection_,
                   "features": [{"feature": n, "description": self._describe(n)} for n in used]}
        header = (f"Decision tree (depth {self.depth_}, {content['n_leaves']} leaves; chosen by {self.selection_})\n"
                  f"classes (index -> label): {dict(enumerate(content['classes']))}\n")
        return GlobalExplanation(form="rules", content=content, text=header + text)


# ------------------------------------------------------------------------------------------------ EBM
@register_model("ebm", family="additive", test_kwargs={"outer_bags": 1, "max_rounds": 200, "interactions": 1,
                                                    "max_bins": 64, "max_interaction_bins": 16, "n_jobs": 1},
                paper="Lou et al. 2013, Accurate intelligible models with pairwise interactions (GA2M); "
                      "Nori et al. 2019, InterpretML")
class EBM(_GlassBox):
    """Explainable Boosting Machine: a GA2M, additive shape functions of single features plus a few pairwise
    interactions, learnt by cyclic gradient boosting of shallow trees with bagging (Lou, Caruana, Gehrke & Hooker
    2013, "Accurate intelligible models with pairwise interactions", KDD; Nori, Jenkins, Koch & Caruana 2019,
    "InterpretML: a unified framework for machine learning interpretability", arXiv:1909.09223). Wraps
    ``interpret.glassbox.ExplainableBoostingClassifier``.

    Defaults are interpret's own (``interactions="3x"``: up to three times as many pairs as features, chosen by
    FAST; ``outer_bags=14``, ``max_bins=1024``, ``max_interaction_bins=64``, ``max_rounds=50000``,
    ``early_stopping_rounds=100``, ``learning_rate=0.015``, ``min_samples_leaf=4``, ``validation_size=0.15``), except
    ``n_jobs=-1`` (every core) and a fixed ``random_state``. Smaller settings (fewer bags, bins, rounds and pairs) fit
    faster and score lower; a fitted model whose settings are below these defaults says so in ``metrics.json``
    (``settings.reduced``), and the report marks its row. Every feature is continuous. Works for 2 and more classes
    (interpret fits a multinomial EBM; pairs included).

    Validation (``validation``):

    * ``"train"`` (default): the validation cases join the training cases, and every outer bag stops early on its own
      random ``validation_size`` share of them (interpret's own procedure, as its documentation fits it). On
      BreastMNIST this was the best use of the 78 validation cases (docs/models/glassbox.md).
    * ``"early_stopping"``: the validation cases are the early-stopping set of every outer bag (interpret's ``bags``;
      the training cases are each left out of a bag with probability ``validation_size`` for bagging diversity and
      never used for stopping). All bags then stop on the same few cases.
    * ``"ignore"``: the validation cases are not used; interpret draws its stopping sets from the training cases.

    Explanation: the per-case term scores (``eval_terms``) of the explained class's logit, one column per term
    (features, and interactions named ``"a & b"``), plus the intercept -- ``sum + intercept`` is the log-odds of class
    1 for 2 classes (negated for class 0), else the multinomial logit. ``values`` is the feature value for main terms
    and NaN for interaction terms.

    Complexity: terms (main, interactions); ``n_params_`` = number of bin scores (without interpret's missing/unknown
    bins) times the score dimension, plus the intercept(s).
    """

    stored_types = ("interpret.glassbox._ebm._ebm.ExplainableBoostingClassifier",)

    VALIDATION = ("train", "early_stopping", "ignore")
    # the settings that trade accuracy for time, and their full-strength values (interpret's defaults)
    FULL_STRENGTH = {"interactions": "3x", "outer_bags": 14, "max_bins": 1024, "max_interaction_bins": 64,
                     "max_rounds": 50000, "early_stopping_rounds": 100}

    def __init__(self, interactions: int | float | str = "3x", outer_bags: int = 14, max_bins: int = 1024,
                 max_interaction_bins: int = 64, learning_rate: float = 0.015, max_rounds: int = 50000,
                 early_stopping_rounds: int = 100, validation_size: float = 0.15, min_samples_leaf: int = 4,
                 validation: str = "train", n_jobs: int = -1, random_state: int | None = 0) -> None:
        self.interactions = interactions
        self.outer_bags = outer_bags
        self.max_bins = max_bins
        self.max_interaction_bins = max_interaction_bins
        self.learning_rate = learning_rate
        self.max_rounds = max_rounds
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_size = validation_size
        self.min_samples_leaf = min_samples_leaf
        self.validation = validation
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None, feature_names=None, feature_descriptions=None):
        from interpret.glassbox import ExplainableBoostingClassifier  # heavy: interpret (plotly, dash)

        if self.validation not in self.VALIDATION:
            raise ValueError(f"validation must be one of {list(self.VALIDATION)}, got {self.validation!r}")
        X, y, Xv, yv = self._prepare(X, y, X_val, y_val, feature_names, feature_descriptions)
        ebm = ExplainableBoostingClassifier(
            feature_names=list(self.feature_names_), feature_types=["continuous"] * X.shape[1],
            max_bins=self.max_bins, max_interaction_bins=self.max_interaction_bins, interactions=self.interactions,
            outer_bags=self.outer_bags, learning_rate=self.learning_rate, max_rounds=self.max_rounds,
            early_stopping_rounds=self.early_stopping_rounds, validation_size=self.validation_size,
            min_samples_leaf=self.min_samples_leaf, n_jobs=self.n_jobs, random_state=self.random_state)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*cannot currently visualize pairs.*")
            warnings.filterwarnings("ignore", message=".*Missing values detected.*")
            if Xv is not None and self.validation == "early_stopping":
                rng = np.random.default_rng(self.random_state if isinstance(self.random_state, int) else 0)
                n_bags = max(1, int(self.outer_bags))
                keep = rng.random((n_bags, len(X))) >= self.validation_size
                keep[:, :] |= ~keep.any(axis=1, keepdims=True)  # never an empty bag
                bags = np.concatenate([keep.astype(np.int8), -np.ones((n_bags, len(Xv)), np.int8)], axis=1)
                ebm.fit(np.vstack([X, Xv]), np.concatenate([y, yv]), bags=bags.T)
                self.selection_ = "validation (early stopping)"
            elif Xv is not None and self.validation == "train":
                ebm.fit(np.vstack([X, Xv]), np.concatenate([y, yv]))
                self.selection_ = "training + validation cases, each bag's own stopping split"
            else:
                ebm.fit(X, y)
                self.selection_ = "internal validation split (early stopping)"
        self.ebm_ = ebm
        self.term_names_ = [str(n) for n in ebm.term_names_]
        self.term_features_ = [tuple(int(f) for f in tf) for tf in ebm.term_features_]
        k = 1 if len(self.classes_) == 2 else len(self.classes_)
        n_scores = sum(int(np.prod([s - 2 for s in np.shape(ts)[:len(tf)]])) for ts, tf
                       in zip(ebm.term_scores_, self.term_features_))
        self.n_params_ = int(n_scores * k + k)
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = self._check_X(X)
        p = np.zeros((len(X), len(self.classes_)))
        p[:, np.asarray(self.ebm_.classes_, dtype=int)] = self.ebm_.predict_proba(X)
        return p

    def _attribution(self, X, target=None, case_ids=None) -> FeatureAttribution:
        """Per-case term scores of the explained class's logit (see the class doc)."""
        proba = self.predict_proba(X)
        X = self._check_X(X)
        t = self._targets(proba, target)
        T = self.ebm_.eval_terms(X)
        b = np.asarray(self.ebm_.intercept_, dtype=np.float64).reshape(-1)
        if T.ndim == 2:  # binary: scores of class 1
            sign = np.where(t == 1, 1.0, -1.0)
            contrib, icpt = T * sign[:, None], b[0] * sign
        else:
            contrib, icpt = T[np.arange(len(X)), :, t], b[t]
        values = np.full(contrib.shape, np.nan)
        for j, tf in enumerate(self.term_features_):
            if len(tf) == 1:
                values[:, j] = X[:, tf[0]]
        return FeatureAttribution(list(self.term_names_), values, contrib, t, self._intercept(icpt), case_ids)

    def complexity_(self) -> dict:
        check_is_fitted(self)
        n_pairs = sum(len(tf) > 1 for tf in self.term_features_)
        return {"n_terms": len(self.term_features_), "n_main_terms": len(self.term_features_) - n_pairs,
                "n_interactions": n_pairs, "n_params": self.n_params_}

    def reduced_settings(self) -> dict:
        """The accuracy-for-time settings below their full-strength defaults (:attr:`FULL_STRENGTH`):
        ``{name: {"value", "default"}}``; empty at full strength.

        ``interactions: 0`` is not one of them: main effects only is a model of its own (a GAM, Lou et al. 2012,
        against interpret's GA2M), chosen for what a reader takes in (its terms and ``n_interactions`` are in the
        report), as the data-set configs choose it on validation. A smaller positive number of pairs (e.g. 3 for
        ``3x``) is a saving of time, and is listed."""
        out = {}
        for name, default in self.FULL_STRENGTH.items():
            value = getattr(self, name)
            if name == "interactions":
                main_effects_only = isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0
                as_many = value == default or (isinstance(value, str) and value.endswith("x")
                                               and float(value[:-1]) >= float(default[:-1]))
                below = not (main_effects_only or as_many)
            else:
                below = value < default
            if below:
                out[name] = {"value": value, "default": default}
        return out

    def extra_metrics(self, test, train) -> dict:
        """``complexity`` and, when some setting is below full strength, ``settings.reduced`` (see
        :meth:`reduced_settings`)."""
        reduced = self.reduced_settings()
        return {"complexity": self.complexity_(), **({"settings": {"reduced": reduced}} if reduced else {})}

    def reading_load(self, X) -> dict:
        check_is_fitted(self)
        return {"count": len(self.term_features_), "unit": "terms",
                "definition": "shape-function terms (single features and pairs), each looked up and added"}

    def shape_functions(self) -> list[dict]:
        """One dict per term, by decreasing importance: ``name``, ``features``, ``type`` (main / interaction),
        ``importance`` (mean absolute score on the training data), ``bin_edges`` (per feature: the cut points; bin i
        spans ``(edges[i-1], edges[i]]``), ``scores`` (per bin, without interpret's missing / unknown bins; an extra
        last axis per class for > 2 classes) and ``description``."""
        ebm = self.ebm_
        imp = np.asarray(ebm.term_importances(), dtype=np.float64)
        out = []
        for j in np.argsort(-imp, kind="stable"):
            tf = self.term_features_[j]
            level = 0 if len(tf) == 1 else 1
            edges = [np.asarray(ebm.bins_[f][min(level, len(ebm.bins_[f]) - 1)], dtype=np.float64).tolist()
                     for f in tf]
            scores = np.asarray(ebm.term_scores_[j], dtype=np.float64)
            scores = scores[tuple(slice(1, -1) for _ in tf)]
            names = [self.feature_names_[f] for f in tf]
            desc = " x ".join(filter(None, (self._describe(n) for n in names))) if len(tf) > 1 \
                else self._describe(names[0])
            out.append({"name": self.term_names_[j], "features": names,
                        "type": "main" if len(tf) == 1 else "interaction", "importance": float(imp[j]),
                        "bin_edges": edges, "scores": scores.tolist(), "description": desc})
        return out

    def explain_global(self) -> GlobalExplanation:
        """``form="shape_functions"``: ``content`` has ``intercept``, ``classes`` and ``terms``
        (:meth:`shape_functions`); ``text`` ranks the terms by importance."""
        check_is_fitted(self)
        terms = self.shape_functions()
        b = np.asarray(self.ebm_.intercept_, dtype=np.float64).reshape(-1)
        lines = [f"EBM: {len(terms)} terms ({sum(t['type'] == 'interaction' for t in terms)} interactions); "
                 f"intercept {np.round(b, 4).tolist()}; early stopping on {self.selection_}",
                 "term importances (mean |score| on the training data):"]
        for t in terms:
            desc = f"  -- {t['description']}" if t["description"] else ""
            lines.append(f"  {t['importance']:.4f}  {t['name']}{desc}")
        content = {"intercept": b.tolist(), "classes": [str(c) for c in self.classes_], "terms": terms}
        return GlobalExplanation(form="shape_functions", content=content, text="\n".join(lines))


def plot_shape_functions(model: EBM, path, top_k: int = 6, class_index: int | None = None):
    """Draw the ``top_k`` most important shape functions of a fitted :class:`EBM` to ``path`` (PNG); returns the path.

    Main terms are step plots of the score per bin; interactions are heatmaps. For > 2 classes main terms show one
    line per class and interactions the class ``class_index`` (default: the class whose scores vary most).
    """

    import matplotlib  # heavy: only for this figure

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # heavy: as above

    terms = model.shape_functions()[:max(1, top_k)]
    cols = min(3, len(terms))
    rows = int(np.ceil(len(terms) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[len(terms):]:
        ax.axis("off")
    for ax, term in zip(axes.ravel(), terms):
        scores = np.asarray(term["scores"])
        if term["type"] == "main":
            edges = np.asarray(term["bin_edges"][0])
            if len(edges):
                pad = (edges[-1] - edges[0]) * 0.05 or 1.0
                xs = np.concatenate([[edges[0] - pad], edges, [edges[-1] + pad]])
            else:
                xs = np.array([0.0, 1.0])
            ys = scores if scores.ndim == 1 else scores
            if ys.ndim == 1:
                ax.step(xs[:-1], ys, where="post")
            else:
                for c in range(ys.shape[1]):
                    ax.step(xs[:-1], ys[:, c], where="post", label=str(model.classes_[c]))
                ax.legend(fontsize=7)
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_xlabel(term["features"][0], fontsize=8)
            ax.set_ylabel("score (logit)", fontsize=8)
        else:
            grid = scores
            label = ""
            if grid.ndim == 3:
                c = int(np.argmax(grid.reshape(-1, grid.shape[-1]).std(0))) if class_index is None else class_index
                grid, label = grid[..., c], f" (class {model.classes_[c]})"
            im = ax.imshow(grid.T, origin="lower", aspect="auto", cmap="RdBu_r",
                           vmin=-np.abs(grid).max(), vmax=np.abs(grid).max())
            fig.colorbar(im, ax=ax, fraction=0.046)
            ax.set_xlabel(f"{term['features'][0]} (bin)", fontsize=8)
            ax.set_ylabel(f"{term['features'][1]} (bin)", fontsize=8)
            ax.set_title(label, fontsize=7, loc="right")
        ax.set_title(f"{term['name']}  (imp. {term['importance']:.3f})", fontsize=8, loc="left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ point score
@dataclass
class ScoreItem:
    """One binary item of a point score: ``feature direction threshold`` (e.g. ``x3 > 12.5``) earns ``points``."""

    feature: int
    threshold: float
    direction: str  # ">" or "<="
    points: int
    name: str = ""

    def indicator(self, X: np.ndarray) -> np.ndarray:
        x = X[:, self.feature]
        return (x > self.threshold if self.direction == ">" else x <= self.threshold).astype(np.float64)


def _fit_logistic(Z: np.ndarray, y: np.ndarray, lam: float, max_iter: int = 100,
                  tol: float = 1e-10) -> tuple[np.ndarray, float, float]:
    """L2-penalised logistic regression by damped Newton: ``(w, b, deviance)``; the intercept is not penalised."""
    n, k = Z.shape
    A = np.column_stack([np.ones(n), Z])
    pen = np.full(k + 1, lam)
    pen[0] = 0.0
    beta = np.zeros(k + 1)
    p0 = np.clip(y.mean(), 1e-6, 1 - 1e-6)
    beta[0] = np.log(p0 / (1 - p0))

    def objective(bt: np.ndarray) -> float:
        eta = A @ bt
        return float(np.sum(np.logaddexp(0, eta) - y * eta) + 0.5 * np.sum(pen * bt * bt))

    obj = objective(beta)
    for _ in range(max_iter):
        p = expit(A @ beta)
        g = A.T @ (p - y) + pen * beta
        H = (A * (p * (1 - p))[:, None]).T @ A + np.diag(pen) + 1e-9 * np.eye(k + 1)
        step = np.linalg.solve(H, g)
        t = 1.0
        while True:
            cand = beta - t * step
            new = objective(cand)
            if new <= obj + 1e-12 or t < 1e-8:
                break
            t *= 0.5
        done = abs(obj - new) < tol * max(1.0, abs(obj))
        beta, obj = cand, new
        if done:
            break
    eta = A @ beta
    dev = float(2 * np.sum(np.logaddexp(0, eta) - y * eta))
    return beta[1:], float(beta[0]), dev


class _ItemScore(_GlassBox):
    """What the integer scores share (:class:`PointScore`, ``FasterRisk``): binary items (:class:`ScoreItem`) worth
    integer points, one positive class, a risk per total. A subclass sets ``items_`` and ``risk_table_`` when it fits
    (:meth:`_risk_table` builds the latter) and says in ``reading_definition`` what a reader does with its card."""

    stored_types = ("glasszoo.models.glassbox.ScoreItem",)

    requires = ("binary",)

    reading_definition = "score items, each checked and its points added; the total read off the risk table"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def _check_binary(self, y_idx: np.ndarray, name: str) -> None:
        """Raise scikit-learn's wording of a multiclass refusal when the fitted labels hold more than 2 classes."""
        if len(self.classes_) != 2:
            y_type = type_of_target(self.classes_[y_idx], input_name="y")
            raise ValueError(f"Only binary classification is supported. The type of the target is {y_type} "
                             f"({len(self.classes_)} classes: {self.classes_.tolist()}); {name} scores one "
                             "positive class.")

    def _item_name(self, it: ScoreItem) -> str:
        return f"{self.feature_names_[it.feature]} {it.direction} {it.threshold:.4g}"

    @staticmethod
    def _risk_table(totals, risk, totals_train, y_train) -> list[dict]:
        """One row per total of ``totals``: the modelled ``risk(total)`` and, when the training totals are given,
        the training cases with that total, their positives and the observed frequency."""
        table = []
        for total in totals:
            row = {"total": int(total), "risk": float(risk(total)),
                   "n_train": None, "n_train_positive": None, "observed_risk": None}
            if totals_train is not None:
                sel = totals_train == total
                n, pos = int(sel.sum()), int(y_train[sel].sum())
                row.update(n_train=n, n_train_positive=pos, observed_risk=(pos / n) if n else None)
            table.append(row)
        return table

    def _risk_table_lines(self) -> list[str]:
        """The risk table as text lines: total, modelled risk, observed training frequency."""
        lines = ["Total | Risk    | Observed (training)"]
        for row in self.risk_table_:
            obs = "" if row["n_train"] is None else (
                f"{row['n_train_positive']}/{row['n_train']}" + (f" = {100 * row['observed_risk']:.1f}%"
                                                                 if row["n_train"] else ""))
            lines.append(f"{row['total']:>5} | {100 * row['risk']:6.1f}% | {obs}")
        return lines

    @staticmethod
    def _totals(items: list[ScoreItem], X: np.ndarray) -> np.ndarray:
        total = np.zeros(len(X))
        for it in items:
            total += it.points * it.indicator(X)
        return total

    def total_points(self, X) -> np.ndarray:
        """Total points [N] (integers) of each case."""
        X = self._check_X(X)
        return self._totals(self.items_, X).astype(np.int64)

    def _attribution(self, X, target=None, case_ids=None) -> FeatureAttribution:
        """Points per item per case, for the explained class (see the class doc)."""
        proba = self.predict_proba(X)
        X = self._check_X(X)
        t = self._targets(proba, target)
        ind = np.column_stack([it.indicator(X) for it in self.items_]) if self.items_ else np.zeros((len(X), 0))
        pts = np.asarray([it.points for it in self.items_], dtype=np.float64)
        sign = np.where(t == 1, 1.0, -1.0)
        return FeatureAttribution([it.name for it in self.items_], ind, ind * pts[None, :] * sign[:, None], t, 0.0,
                                  case_ids)

    def complexity_(self) -> dict:
        check_is_fitted(self)
        return {"n_items": len(self.items_), "points": [it.points for it in self.items_],
                "total_points": int(sum(abs(it.points) for it in self.items_)),
                "n_features_used": len({it.feature for it in self.items_}), "n_params": self.n_params_}

    def reading_load(self, X) -> dict:
        """The items on the card: a reader checks each of them for the case (the same count for every case)."""
        check_is_fitted(self)
        return {"count": len(self.items_), "unit": "items", "definition": self.reading_definition}


@register_model("point_score", family="score", test_kwargs={"max_terms": 3},
                paper="Ustun & Rudin 2016, Supersparse linear integer models (simpler greedy + rounding heuristic)")
class PointScore(_ItemScore):
    """An integer point score like the clinical ones (e.g. CHA2DS2-VASc): a few binary items ("feature > threshold"),
    each worth 1..``max_points`` points; the total maps to a risk. A simple greedy-and-round heuristic in the spirit of
    Ustun & Rudin 2016, "Supersparse linear integer models for optimized medical scoring systems", Machine Learning
    102: 349-391 -- *not* SLIM's integer program: items are chosen greedily and real weights are rounded.

    Binary tasks only (fit raises ``ValueError`` for more classes). Fit:

    1. Candidate items: for every feature, thresholds at the training ``quantiles`` (default 25/50/75 %); item
       ``x > t`` (columns constant on the training data and duplicates are skipped). The direction is decided later
       by the sign of the item's weight, so both directions are covered.
    2. Greedy forward selection of up to ``max_terms`` items, at most one per feature: each step adds the item that
       most lowers the training deviance of an L2 logistic regression (``C``) on the chosen items; it stops early when
       the best drop is below ``min_deviance_drop`` (2 = the AIC price of one parameter).
    3. For each prefix of k chosen items: refit the L2 logistic regression, flip items with a negative weight to the
       other direction (``x <= t``; the intercept absorbs the difference) so every weight is positive, then for each
       m in 1..``max_points`` scale the weights so the largest is m, round to integers (items rounding to 0 are
       dropped) and refit ``risk = logistic(intercept + scale * total points)`` on the training data; keep the m with
       the lowest training deviance.
    4. Choose k by the validation AUC of the total points (ties: fewer items); without a validation split by the
       training AIC of the rounded model.

    ``predict_proba`` looks the total up in the risk table ``logistic(intercept_ + scale_ * total)``;
    ``risk_table_`` also holds the observed training frequency per total. A hand-made score can be built with
    :meth:`from_table`.

    Explanation: one column per item (named like ``"x3 > 12.5"``): the points the case earns from it (0 if the item
    does not apply), negated when class 0 is explained; ``values`` are the item indicators (0/1) the model saw;
    ``intercept`` is 0 (the risk is ``logistic(intercept_ + scale_ * total)``, see ``risk_table_``).

    Complexity: items and points; ``n_params_`` = 2 per item (threshold, points) + 2 (intercept, scale).
    """

    def __init__(self, max_terms: int = 5, max_points: int = 3, quantiles: tuple[float, ...] = (0.25, 0.5, 0.75),
                 C: float = 1.0, min_deviance_drop: float = 2.0) -> None:
        self.max_terms = max_terms
        self.max_points = max_points
        self.quantiles = quantiles
        self.C = C
        self.min_deviance_drop = min_deviance_drop

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_table(cls, items: list[dict | ScoreItem], intercept: float, scale: float,
                   feature_names: list[str], classes=(0, 1), max_points: int | None = None) -> PointScore:
        """A fitted score from a hand-made table. ``items``: ``{"feature": column index, "threshold": t,
        "direction": ">" or "<=", "points": p}`` (or :class:`ScoreItem`); risk = logistic(intercept + scale * total)."""
        built = [it if isinstance(it, ScoreItem) else ScoreItem(**it) for it in items]
        pts = max([abs(int(it.points)) for it in built] + [1])
        model = cls(max_terms=len(built), max_points=max_points or pts)
        model.classes_ = np.asarray(classes)
        model.n_features_in_ = len(feature_names)
        model.feature_names_ = [str(n) for n in feature_names]
        model.feature_descriptions_ = {}
        for it in built:
            it.points = int(it.points)
            it.name = it.name or model._item_name(it)
        model._set_score(built, float(intercept), float(scale), None, None)
        model.selection_ = "hand-made table"
        return model

    def _set_score(self, items: list[ScoreItem], intercept: float, scale: float, totals_train, y_train) -> None:
        self.items_ = items
        self.intercept_, self.scale_ = float(intercept), float(scale)
        self.max_total_ = int(sum(max(0, it.points) for it in items))
        self.min_total_ = int(sum(min(0, it.points) for it in items))
        self.risk_table_ = self._risk_table(range(self.min_total_, self.max_total_ + 1),
                                            lambda total: expit(self.intercept_ + self.scale_ * total),
                                            totals_train, y_train)
        self.n_params_ = int(2 * len(items) + 2)

    # ---------------------------------------------------------------- fit
    def _candidates(self, X: np.ndarray) -> list[tuple[int, float, np.ndarray]]:
        qs = np.asarray(self.quantiles, dtype=np.float64)
        every = [(j, float(t), (X[:, j] > t).astype(np.float64))
                 for j in range(X.shape[1]) for t in np.unique(np.quantile(X[:, j], qs))]
        return [every[i] for i in distinct_binary_columns([c for _, _, c in every])]

    def _rounded(self, X: np.ndarray, y: np.ndarray, chosen: list[tuple[int, float, np.ndarray]],
                 lam: float) -> tuple[list[ScoreItem], float, float, float]:
        """Integer items from the first items of ``chosen``: (items, intercept, scale, training deviance)."""
        if not chosen:
            _, b, dev = _fit_logistic(np.zeros((len(y), 0)), y, lam)
            return [], b, 0.0, dev
        Z = np.column_stack([c for _, _, c in chosen])
        w, _, _ = _fit_logistic(Z, y, lam)
        base = [(j, t, ">" if wi >= 0 else "<=", abs(wi)) for (j, t, _), wi in zip(chosen, w)]
        best = None
        for m in range(1, max(1, int(self.max_points)) + 1):
            wmax = max(a for *_, a in base)
            if wmax <= 0:
                break
            pts = [int(np.clip(np.rint(a / wmax * m), 0, self.max_points)) for *_, a in base]
            items = [ScoreItem(j, t, d, p) for (j, t, d, _), p in zip(base, pts) if p > 0]
            total = np.zeros(len(y)) if not items else np.sum([it.indicator(X) * it.points for it in items], axis=0)
            if total.min() == total.max():
                continue
            (s,), a, dev = _fit_logistic(total[:, None], y, lam * 1e-3)
            if best is None or dev < best[3] - 1e-9:
                best = (items, a, s, dev)
        if best is None:
            _, b, dev = _fit_logistic(np.zeros((len(y), 0)), y, lam)
            return [], b, 0.0, dev
        return best

    def fit(self, X, y, X_val=None, y_val=None, feature_names=None, feature_descriptions=None):
        X, y_idx, Xv, yv = self._prepare(X, y, X_val, y_val, feature_names, feature_descriptions)
        self._check_binary(y_idx, "point_score")
        yf = y_idx.astype(np.float64)
        lam = 1.0 / float(self.C)
        cands = self._candidates(X)
        chosen: list[tuple[int, float, np.ndarray]] = []
        _, _, dev = _fit_logistic(np.zeros((len(yf), 0)), yf, lam)
        self.selection_path_ = []
        while len(chosen) < int(self.max_terms):
            used = {j for j, _, _ in chosen}
            best = None
            for cand in cands:
                if cand[0] in used:
                    continue
                Z = np.column_stack([c for _, _, c in chosen] + [cand[2]])
                _, _, d = _fit_logistic(Z, yf, lam)
                if best is None or d < best[1] - 1e-9:
                    best = (cand, d)
            if best is None or dev - best[1] < self.min_deviance_drop:
                break
            chosen.append(best[0])
            dev = best[1]
        models = [self._rounded(X, yf, chosen[:k], lam) for k in range(0, len(chosen) + 1)]
        scores = []
        for k, (items, a, s, d) in enumerate(models):
            if Xv is not None:
                tv = self._totals(items, Xv)
                sc = selection_score(yv, np.column_stack([1 - expit(a + s * tv), expit(a + s * tv)]))
            else:
                sc = -(d + 2 * (2 * len(items) + 2))  # -AIC of the rounded model
            scores.append(float(sc))
            self.selection_path_.append({"n_items": len(items), "k_greedy": k, "score": float(sc),
                                         "train_deviance": float(d)})
        best_k = 0
        for k in range(1, len(models)):
            if scores[k] > scores[best_k] + 1e-12:
                best_k = k
        items, a, s, _ = models[best_k]
        for it in items:
            it.name = self._item_name(it)
        self._set_score(items, a, s, self._totals(items, X), yf)
        self.selection_ = "validation AUC" if Xv is not None else "training AIC"
        self.best_score_ = scores[best_k]
        return self

    # ---------------------------------------------------------------- predictions
    def predict_proba(self, X) -> np.ndarray:
        totals = self.total_points(X)
        risk = {row["total"]: row["risk"] for row in self.risk_table_}
        r = np.asarray([risk[int(t)] for t in totals], dtype=np.float64)
        return np.column_stack([1 - r, r])

    def explain_global(self) -> GlobalExplanation:
        """``form="score_table"``: ``content`` has ``items`` (item, feature, direction, threshold, points,
        description), ``intercept``, ``scale``, ``positive_class`` and ``risk_table`` (per total: modelled risk,
        training cases, positives and observed frequency); ``text`` renders both tables."""
        check_is_fitted(self)
        pos = str(self.classes_[1])
        items = [{**asdict(it), "item": it.name, "feature_name": self.feature_names_[it.feature],
                  "description": self._describe(self.feature_names_[it.feature])} for it in self.items_]
        width = max([len(it.name) for it in self.items_] + [4])
        lines = [f"Point score for '{pos}' ({len(items)} items; chosen by {self.selection_})",
                 f"{'Item'.ljust(width)} | Points", f"{'-' * width}-+-------"]
        lines += [f"{it.name.ljust(width)} | {it.points:+d}" for it in self.items_]
        lines += ["", f"risk = logistic({self.intercept_:.4f} + {self.scale_:.4f} x total points)",
                  *self._risk_table_lines()]
        content = {"items": items, "intercept": self.intercept_, "scale": self.scale_, "positive_class": pos,
                   "classes": [str(c) for c in self.classes_], "risk_table": self.risk_table_,
                   "selection_path": getattr(self, "selection_path_", [])}
        return GlobalExplanation(form="score_table", content=content, text="\n".join(lines))


__all__ = ["EBM", "PointScore", "ScoreItem", "ShallowTree", "SparseLogReg", "distinct_binary_columns",
           "l1_logistic_path", "linear_proba", "plot_shape_functions", "selection_score"]

"""Global surrogates: readable models fitted to an image model's *predictions* on the run's feature table.

A global surrogate answers "can a readable model stand in for the black box, and how faithfully?" (Craven & Shavlik
1996, "Extracting tree-structured representations of trained networks", NeurIPS; Molnar, "Interpretable Machine
Learning", ch. "Global surrogate"). Each surrogate (a glass-box model of the registry) is fitted on the training cases'
feature rows with the target model's predicted class as the label, its size selected on the validation cases' predicted
classes (the target model's, not the truth), and scored on the test cases:

* **fidelity**: agreement (the share of test cases where surrogate and target predict the same class) and the AUC of
  the surrogate's probabilities against the target's predicted classes, each with a stratified-bootstrap CI
  (:func:`glasszoo.evaluation.metrics.bootstrap_ci`, stratified by the target's predicted class);
* **accuracy against the labels**: the surrogate's own test AUC with its CI, beside the target's;
* what a reader takes in (``reading_load``), its size (``complexity``) and its global explanation in words (the
  rules, weights or terms, with the features' plain-language descriptions).

High fidelity means the readable model reproduces the target's decisions *on these features*; it does not mean the
target uses the features the surrogate names (both may follow a third, correlated cue).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from glasszoo.evaluation.metrics import bootstrap_ci
from glasszoo.models import create_model
from glasszoo.models.errors import DataError

DEFAULT_SURROGATES: dict[str, dict] = {
    "tree": {"model": "decision_tree", "params": {"max_depth": 3}},
    "sparse_linear": {"model": "sparse_logreg", "params": {"max_features": 5}},
    "ebm": {"model": "ebm", "params": {"outer_bags": 4, "interactions": 3, "max_rounds": 2000, "max_bins": 256,
                                       "max_interaction_bins": 32, "early_stopping_rounds": 50}},
}
"""The default surrogates: a depth-3 tree, a 5-feature sparse logistic regression and a small EBM (4 bags, 3 pairs,
2,000 rounds: at interpret's full defaults an EBM on a few hundred features takes minutes, twice over in a run that
also trains one, and what is asked of a surrogate is its fidelity)."""


def _ci(block: dict) -> dict:
    return {"value": float(block["value"]), "ci": [float(v) for v in block["ci"]]}


def fit_surrogate(model: str, params: dict, X: np.ndarray, target_pred: np.ndarray, train: np.ndarray,
                  val: np.ndarray, feature_names: Sequence[str], feature_descriptions: dict[str, str]) -> Any:
    """A registered tabular ``model`` fitted to the predicted classes ``target_pred`` [N] of the training rows, its size
    selected on those of the validation rows."""
    if len(np.unique(target_pred[train])) < 2:
        raise DataError(f"the target model predicts one class only ({int(target_pred[train][0])}) on the training "
                        f"cases: there is no decision for a surrogate to imitate")
    est = create_model(model, **params)
    yv = target_pred[val] if len(val) else None
    keep = np.isin(target_pred[val], target_pred[train]) if len(val) else None
    Xv = X[val][keep] if keep is not None else None
    yv = yv[keep] if keep is not None else None
    est.fit(X[train], target_pred[train], Xv, yv, feature_names=list(feature_names),
            feature_descriptions=feature_descriptions)
    return est


def surrogate_scores(est: Any, X: np.ndarray, target_pred: np.ndarray, labels: np.ndarray, test: np.ndarray,
                     n_classes: int, positive_class: int, n_boot: int, level: float, seed: int) -> dict:
    """Fidelity (agreement and AUC against the target's predicted classes) and accuracy against ``labels`` of a
    fitted surrogate on the ``test`` rows, with bootstrap CIs."""
    proba = np.zeros((len(test), n_classes))
    proba[:, np.asarray(est.classes_, dtype=int)] = est.predict_proba(X[test])
    tp = target_pred[test]
    out: dict[str, Any] = {"n_test": int(len(test))}
    if len(np.unique(tp)) >= 2:
        fid = bootstrap_ci(tp, proba, positive_class, n_boot, level, seed)
        out["fidelity"] = {"agreement": _ci(fid["accuracy"]), "auc": _ci(fid["auc"])}
    else:  # the target predicts one class on the test cases: the agreement is all that is defined
        out["fidelity"] = {"agreement": {"value": float(np.mean(proba.argmax(1) == tp)), "ci": [np.nan, np.nan]},
                           "auc": {"value": np.nan, "ci": [np.nan, np.nan]}}
    task = bootstrap_ci(labels[test], proba, positive_class, n_boot, level, seed)
    out["task"] = {"auc": _ci(task["auc"]), "accuracy": _ci(task["accuracy"])}
    load = est.reading_load(X[test])
    if load:
        out["reading_load"] = {"count": float(load["count"]), "unit": str(load["unit"]),
                               "definition": str(load["definition"])}
    out["complexity"] = est.complexity_()
    try:
        out["rules"] = est.explain_global().text
    except NotImplementedError:
        out["rules"] = ""
    return out


def surrogate_block(target_proba: np.ndarray, X: np.ndarray, labels: np.ndarray, train: np.ndarray,
                    val: np.ndarray, test: np.ndarray, feature_names: Sequence[str],
                    feature_descriptions: dict[str, str], surrogates: dict[str, dict] | None = None,
                    positive_class: int = 1, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                    log=None) -> dict:
    """Every surrogate of ``surrogates`` (name -> ``{"model", "params"}``; default :data:`DEFAULT_SURROGATES`) of the
    model whose class probabilities of every case are ``target_proba`` [N, K]: ``{"target_test_auc",
    "agreement_base_rate", "surrogates": {name: scores or {"error": ...}}}``. A surrogate that fails is recorded by
    its error; the others go on."""
    surrogates = DEFAULT_SURROGATES if surrogates is None else surrogates
    n_classes = target_proba.shape[1]
    target_pred = target_proba.argmax(1).astype(np.int64)
    target_task = bootstrap_ci(labels[test], target_proba[test], positive_class, n_boot, level, seed)
    counts = np.bincount(target_pred[test], minlength=n_classes)
    out: dict[str, Any] = {
        "target_test_auc": _ci(target_task["auc"]),
        # the agreement of always predicting the target's most frequent test class: what fidelity must beat
        "agreement_base_rate": float(counts.max() / max(1, len(test))),
        "n_features": int(X.shape[1]), "surrogates": {}}
    for name, spec in surrogates.items():
        try:
            est = fit_surrogate(spec["model"], dict(spec.get("params", {})), X, target_pred, train, val,
                                feature_names, feature_descriptions)
            out["surrogates"][name] = {"model": spec["model"], "params": dict(spec.get("params", {})),
                                       **surrogate_scores(est, X, target_pred, labels, test, n_classes,
                                                          positive_class, n_boot, level, seed)}
        except Exception as exc:  # one surrogate's failure must not cost the others
            out["surrogates"][name] = {"model": spec["model"], "error": f"{type(exc).__name__}: {exc}"}
        if log is not None:
            s = out["surrogates"][name]
            if "error" in s:
                log(f"    surrogate {name}: FAILED: {s['error']}")
            else:
                f = s["fidelity"]
                log(f"    surrogate {name} ({s['model']}): agreement {f['agreement']['value']:.3f}, fidelity AUC "
                    f"{f['auc']['value']:.3f}, AUC against the labels {s['task']['auc']['value']:.3f}")
    return out


__all__ = ["DEFAULT_SURROGATES", "fit_surrogate", "surrogate_block", "surrogate_scores"]

"""The one ROC AUC of the zoo's models and training loop (evaluation's bootstrap has a faster equivalent)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def auc_score(y: np.ndarray, proba: np.ndarray) -> float:
    """ROC AUC of class 1 for two columns of ``proba``, else the macro one-vs-rest AUC; NaN when undefined
    (e.g. one class only in ``y``)."""
    proba = np.asarray(proba)
    try:
        if proba.shape[1] == 2:
            return float(roc_auc_score(y, proba[:, 1]))
        return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(range(proba.shape[1]))))
    except ValueError:
        return float("nan")

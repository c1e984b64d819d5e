"""Subgroup audit: does a model work as well for every subgroup (scanner, site, sex, ...) of the test cases, and
does its explanation look elsewhere for one of them?

For each model, on the test split:

* per subgroup: AUC, sensitivity and specificity with stratified-bootstrap CIs (:data:`AUDIT_METRICS`);
* the **gap** of each metric: subgroup minus the other cases (two subgroups: the one against the other, once; more:
  each against the rest), with a percentile CI from independent stratified bootstraps of the two sides. The CIs
  are Bonferroni-widened over the (metrics x comparisons) of a model, so with ``level = 0.95`` a model whose
  subgroups do not differ is flagged in at most about 5 % of runs (family-wise); a gap is **flagged** when its
  CI excludes zero;
* how much **explanation relevance moves** between subgroups: for every heatmap of the model, the share of its
  positive relevance inside the lesion mask (:func:`glasszoo.evaluation.metrics.relevance_mass_in_mask`) per
  subgroup and its gap with a CI (only where the data have lesion masks).

A shortcut the model learnt from a subgroup that is correlated with the label (a site that sees sicker patients)
shows as opposite sensitivity and specificity gaps: it calls more cases positive in the sicker subgroup.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from glasszoo.evaluation.explain_eval import load_heatmap
from glasszoo.evaluation.metrics import bootstrap_samples, percentile_ci, relevance_mass_in_mask

AUDIT_METRICS: tuple[str, ...] = ("auc", "sensitivity", "specificity")
"""The task metrics compared between subgroups."""


def _comparisons(names: list[str]) -> list[tuple[str, str]]:
    """(subgroup, what it is compared with): the other one for two subgroups, else each against the rest."""
    if len(names) == 2:
        return [(names[0], names[1])]
    return [(g, "rest") for g in names]


def _sides(groups: np.ndarray, group: str, against: str) -> tuple[np.ndarray, np.ndarray]:
    a = groups == group
    b = groups == against if against != "rest" else ~a
    return a, b


def _gap(point_a: float, point_b: float, samples_a: np.ndarray, samples_b: np.ndarray, level: float) -> dict:
    ci = percentile_ci(samples_a - samples_b, level)
    value = float(point_a - point_b)
    flagged = bool(np.isfinite(ci).all() and (ci[0] > 0 or ci[1] < 0))
    return {"value": value, "ci": ci, "flagged": flagged}


def subgroup_gaps(y: np.ndarray, proba: np.ndarray, groups: np.ndarray, positive_class: int = 1,
                  n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """One model's per-subgroup metrics and their gaps (module docstring).

    Args:
        y: test labels [N]; proba: the model's class probabilities [N, K]; groups: the cases' subgroups [N].
        positive_class, n_boot, level, seed: as for :func:`glasszoo.evaluation.metrics.bootstrap_ci`.

    Returns:
        ``{"groups": {g: {"n", "n_positive", metric: {"value", "ci"}}}, "gaps": [{"group", "against", "metric",
        "value", "ci", "level", "flagged"}], "flagged": bool}`` (empty ``gaps`` with fewer than two subgroups).
    """
    y = np.asarray(y)
    groups = np.asarray(groups).astype(str)
    names = sorted(set(groups.tolist()))
    per_group, boot = {}, {}
    rng = np.random.default_rng(seed)
    for g in names:
        sel = groups == g
        point, samples = bootstrap_samples(y[sel], proba[sel], positive_class, n_boot, rng)
        boot[g] = (point, samples)
        per_group[g] = {"n": int(sel.sum()), "n_positive": int((y[sel] == positive_class).sum()),
                        **{m: {"value": point[m], "ci": percentile_ci(samples[m], level)} for m in AUDIT_METRICS}}
    gaps = []
    comparisons = _comparisons(names) if len(names) >= 2 else []
    family = max(1, len(comparisons) * len(AUDIT_METRICS))
    wide = 1.0 - (1.0 - level) / family  # Bonferroni over the model's comparisons
    for group, against in comparisons:
        if against == "rest":
            sel = groups != group
            other = bootstrap_samples(y[sel], proba[sel], positive_class, n_boot, rng)
        else:
            other = boot[against]
        for m in AUDIT_METRICS:
            gap = _gap(boot[group][0][m], other[0][m], boot[group][1][m], other[1][m], wide)
            gaps.append({"group": group, "against": against, "metric": m, **gap, "level": wide})
    return {"groups": per_group, "gaps": gaps, "flagged": any(g["flagged"] for g in gaps)}


def relevance_shift(maps: np.ndarray, masks: np.ndarray, groups: np.ndarray, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0) -> dict:
    """How the share of a heatmap's positive relevance inside the lesion mask differs between subgroups.

    Args:
        maps: the heatmaps [n, H, W] of the explained test cases; masks: their lesion masks; groups: their
            subgroups [n].

    Returns:
        ``{"groups": {g: {"n", "value", "ci"}}, "gaps": [{"group", "against", "value", "ci"}]}``; cases whose
        mass is undefined (no positive relevance, an empty mask) are left out.
    """
    mass = relevance_mass_in_mask(maps, masks)
    groups = np.asarray(groups).astype(str)
    keep = np.isfinite(mass) & masks.reshape(len(masks), -1).any(axis=1)
    mass, groups = mass[keep], groups[keep]
    names = sorted(set(groups.tolist()))
    rng = np.random.default_rng(seed)

    def means(values: np.ndarray) -> np.ndarray:
        if values.size == 0:
            return np.full(n_boot, np.nan)
        return values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)

    out: dict[str, Any] = {"groups": {}, "gaps": []}
    samples = {}
    for g in names:
        v = mass[groups == g]
        samples[g] = means(v)
        out["groups"][g] = {"n": int(v.size), "value": float(v.mean()) if v.size else float("nan"),
                            "ci": percentile_ci(samples[g], level)}
    for group, against in (_comparisons(names) if len(names) >= 2 else []):
        a, b = _sides(groups, group, against)
        other = samples[against] if against != "rest" else means(mass[b])
        value = float(mass[a].mean() - mass[b].mean()) if a.any() and b.any() else float("nan")
        out["gaps"].append({"group": group, "against": against, "value": value,
                            "ci": percentile_ci(samples[group] - other, level)})
    return out


def subgroup_audit(labels: np.ndarray, groups: np.ndarray, probas: dict[str, np.ndarray], heatmaps: dict,
                   masks_of: Any, positive_class: int = 1, n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0, attribute: str = "subgroup") -> dict:
    """The run's ``metrics.json`` block ``subgroups``.

    Args:
        labels, groups: the test cases' labels and subgroups [N].
        probas: model name -> class probabilities [N, K] on the test cases (same order).
        heatmaps: model name -> {method: (maps [n, H, W], subgroups [n], case rows)} of its explained test cases.
        masks_of: ``rows -> masks [n, H, W]`` or None when the data have no masks.
        attribute: what the subgroups are (a column name, "scanner").

    Returns:
        ``{"attribute", "groups": {g: n_test}, "models": {name: subgroup_gaps(...) + {"explanations": {method:
        relevance_shift(...)}}}, "flagged": [[model, metric, group, against], ...]}``.
    """
    groups = np.asarray(groups).astype(str)
    names, counts = np.unique(groups, return_counts=True)
    out: dict[str, Any] = {"attribute": attribute, "groups": {str(g): int(c) for g, c in zip(names, counts)},
                           "models": {}, "flagged": []}
    for name, proba in probas.items():
        block = subgroup_gaps(labels, proba, groups, positive_class, n_boot, level, seed)
        if masks_of is not None:
            shifts = {}
            for method, (maps, hm_groups, rows) in heatmaps.get(name, {}).items():
                shifts[method] = relevance_shift(maps, masks_of(rows), hm_groups, n_boot, level, seed)
            if shifts:
                block["explanations"] = shifts
        out["models"][name] = block
        out["flagged"] += [[name, g["metric"], g["group"], g["against"]] for g in block["gaps"] if g["flagged"]]
    return out


def stored_heatmaps_by_case(path_of: Callable[[str], Path], blocks: dict, row_of: dict[str, int],
                            groups: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A model's saved heatmaps (``path_of(method)``, e.g. ``ModelDir.heatmap``) as ``method -> (maps, subgroups,
    case rows)`` of the cases they cover (``row_of``: case id -> row of the case set; ``groups``: every row's
    subgroup)."""
    out = {}
    for key, b in blocks.items():
        saved = load_heatmap(path_of(key)) if isinstance(b, dict) and b.get("kind") == "heatmap" else None
        if saved is None:
            continue
        maps, ids = saved
        if not ids or any(c not in row_of for c in ids):
            continue
        rows = np.array([row_of[c] for c in ids], dtype=np.int64)
        out[key] = (maps, np.asarray(groups)[rows].astype(str), rows)
    return out


__all__ = ["AUDIT_METRICS", "relevance_shift", "stored_heatmaps_by_case", "subgroup_audit", "subgroup_gaps"]

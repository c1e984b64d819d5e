"""Counterfactuals: the smallest change of a case that flips the model's decision, in a documented space.

Two spaces, each searched by plain numpy over the model's own probabilities (no gradients, any model):

* :func:`feature_counterfactual` -- a tabular model's **feature table**. Each feature may move within its training
  range ``[lo, hi]``; a change is measured in robust training standard deviations (:func:`robust_scale`: 1.4826
  times the median absolute deviation, which an outlier cannot inflate) and the cost of a counterfactual is the
  sum of its absolute scaled changes (an L1 distance, so few features change). Greedy search (Wachter et al.,
  "Counterfactual explanations without opening the black box", Harvard J. Law & Tech. 2018, define the
  counterfactual as the closest input with the other decision; the L1 distance in units of each feature's median
  absolute deviation is their choice too):

  1. For every feature not yet changed, the values of a grid over its training range (``grid`` points, its bounds
     included) are tried one at a time, and the feature whose best move raises the decision margin (log-probability
     of the target class minus the largest other one) most per unit of cost is chosen.
  2. If some of its values flip the decision (the target class becomes the most probable), its cheapest flipping
     value is refined by bisection toward the current value (to the flip point) and the search ends. Otherwise it
     moves as far as it stays that efficient (ties: the larger margin), and step 1 repeats with the other features,
     at most ``max_changes`` features in all.

  On a linear (logistic) model, whose margin is linear in every feature, this is the exact L1-minimal change under
  the range bounds: a fractional knapsack, where moving the feature of largest ``|w_j| sd_j`` is cheapest per unit
  of margin and is saturated at its bound before the next one is used (tested against the analytic answer). On
  other models it is a heuristic: one feature moves at a time and a moved feature is not moved again, so a
  decision that only flips when two features move together (an interaction, a tree path needing two splits at
  once where neither alone raises the margin) may be missed and is then reported as not found.
* :func:`concept_counterfactual` -- a concept bottleneck's **concepts**. A move flips a binary concept (present
  <-> absent) or sets a continuous one to the end of its range that favours the target class; every subset of at
  most ``max_changes`` moves is tried, smallest first, and the smallest subset that flips the decision is returned
  (ties: the largest margin). This answers "which concepts must flip".

Both return one case dict of :class:`~glasszoo.models.explanations.Counterfactual`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

ProbaFn = Callable[[np.ndarray], np.ndarray]  # rows [M, D] -> class probabilities [M, classes]

ROBUST_SD = "robust training standard deviations (1.4826 x median absolute deviation)"
"""The unit of a feature counterfactual's changes and cost."""


def robust_scale(X: np.ndarray) -> np.ndarray:
    """Each column's robust standard deviation: 1.4826 x its median absolute deviation (the standard deviation of
    a normal column, but not inflated by a few extreme values); the standard deviation where the MAD is 0 (a
    column that is mostly one value), 1 where that is 0 too."""
    X = np.asarray(X, dtype=np.float64)
    mad = 1.4826 * np.median(np.abs(X - np.median(X, axis=0)), axis=0)
    sd = X.std(axis=0)
    return np.where(mad > 0, mad, np.where(sd > 0, sd, 1.0))

_BISECTION_STEPS = 30
_EPS = 1e-12


def _margin(proba: np.ndarray, target: int) -> np.ndarray:
    """log p_target - max_{k != target} log p_k per row: > 0 exactly when the target class is the most probable."""
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), _EPS, None))
    others = np.delete(logp, target, axis=1)
    return logp[:, target] - others.max(axis=1)


def default_target(proba: np.ndarray) -> tuple[int, int]:
    """(predicted class, the class to flip to): the most probable class and the runner-up."""
    order = np.argsort(-np.asarray(proba, dtype=np.float64), kind="stable")
    return int(order[0]), int(order[1])


def _change(name: str, before: float, after: float, scale: float, descriptions: dict[str, str] | None) -> dict:
    out = {"name": name, "before": float(before), "after": float(after), "delta": float(after - before),
           "scaled_delta": float((after - before) / scale)}
    if descriptions and descriptions.get(name):
        out["description"] = str(descriptions[name])
    return out


def feature_counterfactual(proba_fn: ProbaFn, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, scale: np.ndarray,
                           names: Sequence[str], target: int | None = None, max_changes: int = 3, grid: int = 24,
                           descriptions: dict[str, str] | None = None) -> dict:
    """The smallest change of one feature row ``x`` that flips ``proba_fn``'s decision (module docstring).

    Args:
        proba_fn: the model's ``predict_proba`` on rows [M, F].
        x: the case's features [F].
        lo, hi: each feature's training minimum and maximum [F] (the search never leaves them).
        scale: each feature's robust training standard deviation [F] (> 0; the unit of the cost; :func:`robust_scale`).
        names: the F feature names.
        target: the class to flip to (default: the runner-up class).
        max_changes: at most this many features change.
        grid: candidate values per feature over its range (>= 2).
        descriptions: feature name -> plain-language description, copied into the changes.

    Returns:
        ``{"from_class", "to_class", "found", "changes", "cost", "proba_before", "proba_after"}``.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    scale = np.where(np.asarray(scale, dtype=np.float64) > 0, scale, 1.0)
    if not (len(lo) == len(hi) == len(scale) == len(names) == len(x)):
        raise ValueError(f"x, lo, hi, scale and names must all have {len(x)} entries")
    if grid < 2 or max_changes < 1:
        raise ValueError(f"grid must be >= 2 and max_changes >= 1, got {grid} and {max_changes}")
    p0 = np.asarray(proba_fn(x[None]), dtype=np.float64)[0]
    pred, runner_up = default_target(p0)
    to = runner_up if target is None else int(target)
    if to == pred:
        raise ValueError(f"target class {to} is already the predicted class")
    current = x.copy()
    changed: list[int] = []
    free = [j for j in range(len(x)) if hi[j] > lo[j]]
    cand = np.linspace(0.0, 1.0, int(grid))
    found = False
    m_now = float(_margin(p0[None], to)[0])
    while len(changed) < max_changes and free:
        values = lo[free][:, None] + (hi[free] - lo[free])[:, None] * cand[None, :]  # [J, G]
        rows = np.repeat(current[None], values.size, axis=0)
        jj = np.repeat(np.asarray(free), values.shape[1])
        rows[np.arange(len(rows)), jj] = values.ravel()
        margins = _margin(proba_fn(rows), to).reshape(values.shape)
        cost = np.abs(values - current[free][:, None]) / scale[free][:, None]
        flips = margins > 0
        gain = (margins - m_now) / np.where(cost > 0, cost, np.inf)  # margin gained per sd moved
        efficiency = np.max(np.where(np.isfinite(gain), gain, -np.inf), axis=1)
        if not np.isfinite(efficiency).any() or efficiency.max() <= 0:
            break  # no single move brings the target class closer
        r = int(np.argmax(efficiency))
        j = free[r]
        if flips[r].any():  # the most efficient feature flips the decision on its own: to its flip point, done
            g = int(np.argmin(np.where(flips[r], cost[r], np.inf)))
            current[j] = _refine(proba_fn, current, j, float(current[j]), float(values[r, g]), to)
            changed.append(j)
            found = True
            break
        best = efficiency[r]  # else move it as far as it stays that efficient (a linear model: to its bound)
        ties = np.flatnonzero(gain[r] >= best - 1e-9 * max(1.0, abs(best)))
        g = int(max(ties, key=lambda t: margins[r, t]))
        current[j] = float(values[r, g])
        m_now = float(margins[r, g])
        changed.append(j)
        free.remove(j)
    p1 = np.asarray(proba_fn(current[None]), dtype=np.float64)[0]
    changes = [_change(names[j], x[j], current[j], scale[j], descriptions) for j in changed]
    return {"from_class": pred, "to_class": to, "found": bool(found and p1.argmax() == to), "changes": changes,
            "cost": float(sum(abs(c["scaled_delta"]) for c in changes)), "proba_before": p0.tolist(),
            "proba_after": p1.tolist()}


def _refine(proba_fn: ProbaFn, row: np.ndarray, j: int, start: float, flip: float, to: int) -> float:
    """The value between ``start`` (no flip) and ``flip`` (flips) closest to ``start`` that still flips, by
    bisection (the flip point itself on a model monotone along the feature)."""
    a, b = start, flip
    probe = row.copy()
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (a + b)
        probe[j] = mid
        if _margin(proba_fn(probe[None]), to)[0] > 0:
            b = mid
        else:
            a = mid
    return b


def concept_counterfactual(logits_fn: Callable[[np.ndarray], np.ndarray], activations: np.ndarray,
                           names: Sequence[str], binary: Sequence[bool], continuous_range: tuple[float, float],
                           target: int | None = None, max_changes: int = 3,
                           to_data_units: Callable[[int, float], float] | None = None) -> dict:
    """The fewest concept moves that flip a concept bottleneck's decision (module docstring).

    Args:
        logits_fn: the label head on concept activations [M, K] -> logits [M, classes].
        activations: the case's predicted activations [K] (binary: probability; continuous: standardised).
        names: the K concept names; ``binary`` which of them are binary.
        continuous_range: the (low, high) activations a continuous concept may be set to.
        target: the class to flip to (default: the runner-up).
        max_changes: at most this many concepts move.
        to_data_units: ``(k, activation) -> value in data units`` for the text (default: the activation).

    Returns:
        the case dict of :class:`~glasszoo.models.explanations.Counterfactual`; ``scaled_delta`` is 1 per moved
        concept and ``cost`` the number of moves.
    """
    a = np.asarray(activations, dtype=np.float64).reshape(-1)
    k_all = len(a)
    if len(names) != k_all or len(binary) != k_all:
        raise ValueError(f"names and binary must have {k_all} entries")

    def proba(rows: np.ndarray) -> np.ndarray:
        z = np.asarray(logits_fn(rows), dtype=np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    p0 = proba(a[None])[0]
    pred, runner_up = default_target(p0)
    to = runner_up if target is None else int(target)
    if to == pred:
        raise ValueError(f"target class {to} is already the predicted class")
    # each concept's one move: a binary concept flips, a continuous one goes to the end that favours `to`
    moves = np.empty(k_all)
    for k in range(k_all):
        if binary[k]:
            moves[k] = 0.0 if a[k] >= 0.5 else 1.0
        else:
            ends = np.array([continuous_range[0], continuous_range[1]], dtype=np.float64)
            trial = np.repeat(a[None], 2, axis=0)
            trial[:, k] = ends
            moves[k] = ends[int(np.argmax(_margin(proba(trial), to)))]
    best: tuple[float, tuple[int, ...]] | None = None
    for size in range(1, min(max_changes, k_all) + 1):
        subsets = list(itertools.combinations(range(k_all), size))
        rows = np.repeat(a[None], len(subsets), axis=0)
        for i, sub in enumerate(subsets):
            rows[i, list(sub)] = moves[list(sub)]
        margins = _margin(proba(rows), to)
        if (margins > 0).any():
            i = int(np.argmax(margins))
            best = (float(margins[i]), subsets[i])
            break
    units = to_data_units or (lambda _k, v: float(v))
    chosen = best[1] if best else ()
    after = a.copy()
    after[list(chosen)] = moves[list(chosen)]
    p1 = proba(after[None])[0]
    changes = [{"name": names[k], "before": units(k, a[k]), "after": units(k, moves[k]),
                "delta": units(k, moves[k]) - units(k, a[k]), "scaled_delta": 1.0} for k in chosen]
    return {"from_class": pred, "to_class": to, "found": best is not None, "changes": changes,
            "cost": float(len(chosen)), "proba_before": p0.tolist(), "proba_after": p1.tolist()}


__all__ = ["ROBUST_SD", "concept_counterfactual", "default_target", "feature_counterfactual", "robust_scale"]

"""FasterRisk: a sparse integer risk score found by beam search, a pool of near-optimal solutions and star-ray
rounding (Liu, Zhong, Li, Rudin & Seltzer 2022, "FasterRisk: fast and accurate interpretable risk scores", NeurIPS
2022, arXiv:2210.05846).

The algorithm works on binary items ``x > t``; its pieces are plain numpy functions on grouped data: the cases that
share one pattern of the items in a support are one row, weighted by its positives and negatives, so a support of
``t`` items costs at most ``2 ** t`` rows, however many cases there are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import expit
from sklearn.utils.validation import check_is_fitted

from glasszoo.models._registry import register_model
from glasszoo.models.explanations import GlobalExplanation
from glasszoo.models.glassbox import ScoreItem, _ItemScore, distinct_binary_columns, selection_score

SURROGATE_STEPS = 3
"""Quadratic-surrogate steps on a new item's coefficient (the others fixed) before the candidates are ranked."""


# ------------------------------------------------------------------------------------------------ logistic loss
def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _nll(eta: np.ndarray, npos: np.ndarray, nneg: np.ndarray) -> np.ndarray:
    """Logistic loss summed over axis 0: ``npos`` positives and ``nneg`` negatives share each row's margin ``eta``."""
    return (npos * _softplus(-eta) + nneg * _softplus(eta)).sum(axis=0)


def _group_rows(A: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct rows ``U`` of ``A`` with the positives and negatives on each: ``(U, npos, nneg, inverse)``."""
    if A.shape[1] == 0:
        inv = np.zeros(len(A), dtype=np.int64)
        U = np.zeros((1, 0))
    else:
        U, inv = np.unique(A, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
    npos = np.bincount(inv, weights=y, minlength=len(U))
    nneg = np.bincount(inv, weights=1.0 - y, minlength=len(U))
    return U, npos, nneg, inv


def _child_data(Z: np.ndarray, y: np.ndarray, supports: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grouped data of ``c`` supports of ``t`` items each (``supports`` [c, t] column indices of the 0/1 matrix
    ``Z``), for solving them in lockstep: rows ``X`` [r, c, t] and their positives / negatives [r, c]. Rows are the
    ``2 ** t`` item patterns (zero counts where no case has one) when that is at most the number of cases, else the
    cases themselves."""
    c, t = supports.shape
    n = len(y)
    if 2 ** t <= n:
        r = 2 ** t
        patterns = ((np.arange(r)[:, None] >> np.arange(t)[None, :]) & 1).astype(np.float64)
        codes = np.einsum("nct,t->nc", Z[:, supports], (1 << np.arange(t)).astype(np.float64))
        flat = (np.rint(codes).astype(np.int64) + r * np.arange(c)[None, :]).ravel()
        npos = np.bincount(flat, weights=np.repeat(y, c), minlength=r * c).reshape(c, r).T
        nneg = np.bincount(flat, weights=np.repeat(1.0 - y, c), minlength=r * c).reshape(c, r).T
        return np.broadcast_to(patterns[:, None, :], (r, c, t)), npos, nneg
    return Z[:, supports], np.repeat(y[:, None], c, axis=1), np.repeat(1.0 - y[:, None], c, axis=1)


def _coordinate_descent(X: np.ndarray, npos: np.ndarray, nneg: np.ndarray, W: np.ndarray, b: np.ndarray,
                        bound: float, max_sweeps: int, tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Box-constrained cyclic coordinate descent on the logistic loss, ``c`` problems in lockstep.

    ``X`` [r, c, t], ``npos``/``nneg`` [r, c], start ``W`` [c, t] (boxed in ``[-bound, bound]``) and intercepts ``b``
    [c] (free). Each coordinate takes its (clipped) Newton step when that lowers the loss, else the step minimising
    the quadratic upper bound with the coordinate's Lipschitz constant ``sum x^2 / 4``, which never raises it. Stops
    after ``max_sweeps`` sweeps or when no problem's loss fell by more than ``tol`` (relative) in a sweep.
    Returns ``(W, b, loss)``.
    """
    W, b = W.astype(np.float64).copy(), b.astype(np.float64).copy()
    t = W.shape[1]
    N = npos + nneg
    eta = np.einsum("rct,ct->rc", X, W) + b[None, :]
    loss = _nll(eta, npos, nneg)
    lip_b = 0.25 * N.sum(axis=0)
    lip_w = 0.25 * np.einsum("rc,rct->ct", N, X * X)
    for _ in range(max(1, int(max_sweeps))):
        before = loss.copy()
        for r in range(-1, t):
            x = np.ones_like(eta) if r < 0 else X[:, :, r]
            cur = b if r < 0 else W[:, r]
            lip = np.maximum(lip_b if r < 0 else lip_w[:, r], 1e-300)
            p = expit(eta)
            g = (x * (N * p - npos)).sum(axis=0)
            h = (x * x * N * p * (1.0 - p)).sum(axis=0)
            new = cur - g / np.maximum(h, 1e-12 * lip)
            if r >= 0:
                new = np.clip(new, -bound, bound)
            new_eta = eta + x * (new - cur)[None, :]
            new_loss = _nll(new_eta, npos, nneg)
            worse = ~(new_loss <= loss)
            if worse.any():  # fall back to the majorising step, and to no step where even that does not help
                safe = cur - g / lip
                if r >= 0:
                    safe = np.clip(safe, -bound, bound)
                new = np.where(worse, safe, new)
                new_eta = eta + x * (new - cur)[None, :]
                new_loss = _nll(new_eta, npos, nneg)
                stay = ~(new_loss <= loss)
                new = np.where(stay, cur, new)
                new_eta = np.where(stay[None, :], eta, new_eta)
                new_loss = np.where(stay, loss, new_loss)
            if r < 0:
                b = new
            else:
                W[:, r] = new
            eta, loss = new_eta, new_loss
        if np.all(before - loss <= tol * np.maximum(1.0, loss)):
            break
    return W, b, loss


# ------------------------------------------------------------------------------------------------ the three stages
@dataclass
class _Solution:
    """A continuous solution: coefficients ``coef`` on the candidate columns ``support`` (in the order added)."""

    support: tuple[int, ...]
    coef: np.ndarray
    intercept: float
    loss: float

    @property
    def key(self) -> tuple[int, ...]:
        return tuple(sorted(self.support))


class _Problem:
    """The binary item matrix ``Z`` [n, p] (0/1) and labels ``y`` (0/1) with what every stage reuses."""

    def __init__(self, Z: np.ndarray, y: np.ndarray, bound: float, max_sweeps: int) -> None:
        self.Z, self.y, self.bound, self.max_sweeps = Z, y, float(bound), int(max_sweeps)
        self.Zpos = Z * y[:, None]
        self.lip = np.maximum(0.25 * Z.sum(axis=0), 1e-300)

    def margins(self, sol: _Solution) -> np.ndarray:
        return self.Z[:, list(sol.support)] @ sol.coef + sol.intercept

    def expand(self, support: list[int], eta: np.ndarray, exclude: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """For every column j: the coefficient ``d_j`` of j added to the solution with margins ``eta`` on the
        columns ``support`` (those fixed), after :data:`SURROGATE_STEPS` steps minimising the quadratic surrogate
        ``g d + lip d^2 / 2`` (clipped to the box), and the change of the loss it brings (``inf`` for ``exclude``)."""
        Z = self.Z
        _, npos, nneg, inv = _group_rows(Z[:, support], self.y)
        g = len(npos)
        eta_g = np.zeros(g)
        eta_g[inv] = eta  # every case of a group has the same margin
        order = np.argsort(inv, kind="stable")
        starts = np.concatenate([[0], np.cumsum(np.bincount(inv, minlength=g))[:-1]])  # no group is empty
        cp = np.add.reduceat(self.Zpos[order], starts, axis=0)  # per group and column: positives with the item
        ct = np.add.reduceat(Z[order], starts, axis=0)  # ... and cases with the item
        d = np.zeros(Z.shape[1])
        for _ in range(SURROGATE_STEPS):
            grad = (ct * expit(eta_g[:, None] + d[None, :]) - cp).sum(axis=0)
            d = np.clip(d - grad / self.lip, -self.bound, self.bound)
        e = eta_g[:, None] + d[None, :]
        change = (cp * (_softplus(-e) - _softplus(-eta_g)[:, None])
                  + (ct - cp) * (_softplus(e) - _softplus(eta_g)[:, None])).sum(axis=0)
        change[list(exclude)] = np.inf
        return d, change

    def refit(self, proposals: list[tuple[tuple[int, ...], np.ndarray, float]]) -> list[_Solution]:
        """Coordinate descent on every proposed ``(support, start coef, start intercept)`` (same size), in
        lockstep."""
        supports = np.asarray([s for s, _, _ in proposals], dtype=np.int64)
        W = np.asarray([w for _, w, _ in proposals], dtype=np.float64).reshape(len(proposals), -1)
        b = np.asarray([b for _, _, b in proposals], dtype=np.float64)
        X, npos, nneg = _child_data(self.Z, self.y, supports)
        W, b, loss = _coordinate_descent(X, npos, nneg, W, b, self.bound, self.max_sweeps)
        return [_Solution(tuple(int(j) for j in s), W[i], float(b[i]), float(loss[i]))
                for i, s in enumerate(supports)]

    def root(self) -> _Solution:
        n, npos = len(self.y), float(self.y.sum())
        p0 = min(max(npos / n, 1e-6), 1 - 1e-6)
        b = float(np.log(p0 / (1 - p0)))
        return _Solution((), np.zeros(0), b, float(_nll(np.array([b]), np.array([npos]), np.array([n - npos]))))


def beam_search(problem: _Problem, max_items: int, beam_size: int) -> list[_Solution]:
    """Sparse beam search (FasterRisk §3.1): the best continuous solution of each support size 1..``max_items``.

    From each of the ``beam_size`` kept supports of size t-1, every other column is scored by the surrogate step of
    :meth:`_Problem.expand`; its ``beam_size`` best become children of size t, whose coefficients are then refitted
    by coordinate descent warm-started from the parent's; the ``beam_size`` best distinct children are kept.
    """
    beam, best = [problem.root()], []
    for _ in range(int(max_items)):
        proposals: dict[tuple[int, ...], tuple[float, tuple[int, ...], np.ndarray, float]] = {}
        for parent in beam:
            support = list(parent.support)
            d, change = problem.expand(support, problem.margins(parent), support)
            for j in np.argsort(change, kind="stable")[:beam_size]:
                if not np.isfinite(change[j]):
                    break
                key = tuple(sorted([*support, int(j)]))
                est = parent.loss + float(change[j])
                if key not in proposals or est < proposals[key][0]:
                    proposals[key] = (est, (*parent.support, int(j)), np.append(parent.coef, d[j]), parent.intercept)
        if not proposals:
            break
        children = problem.refit([p[1:] for p in proposals.values()])
        children.sort(key=lambda s: (s.loss, s.key))
        beam = children[:beam_size]
        best.append(beam[0])
    return best


def diverse_pool(problem: _Problem, best: _Solution, pool_size: int, gap_tolerance: float) -> list[_Solution]:
    """Sparse diverse pool (FasterRisk §3.2): ``best`` and the solutions one swap away from it (one item out, the
    ``pool_size`` most promising others in, each refitted) whose loss is at most ``(1 + gap_tolerance)`` times
    ``best``'s; the ``pool_size`` best distinct ones, by loss."""
    support = list(best.support)
    if not support:
        return [best]
    eta = problem.margins(best)
    y = problem.y
    proposals: dict[tuple[int, ...], tuple[float, tuple[int, ...], np.ndarray, float]] = {}
    for r, j in enumerate(support):
        rest = support[:r] + support[r + 1:]
        eta_rest = eta - best.coef[r] * problem.Z[:, j]
        base = float(_nll(eta_rest, y, 1.0 - y))
        d, change = problem.expand(rest, eta_rest, support)
        for jn in np.argsort(change, kind="stable")[:pool_size]:
            if not np.isfinite(change[jn]):
                break
            key = tuple(sorted([*rest, int(jn)]))
            est = base + float(change[jn])
            if key not in proposals or est < proposals[key][0]:
                proposals[key] = (est, (*rest, int(jn)), np.append(np.delete(best.coef, r), d[jn]), best.intercept)
    swapped = problem.refit([p[1:] for p in proposals.values()]) if proposals else []
    limit = best.loss * (1.0 + float(gap_tolerance))
    pool, seen = [best], {best.key}
    for sol in sorted(swapped, key=lambda s: (s.loss, s.key)):
        if sol.loss <= limit and sol.key not in seen:
            pool.append(sol)
            seen.add(sol.key)
    return pool[:max(1, int(pool_size))]


def _best_offsets(E: np.ndarray, npos: np.ndarray, nneg: np.ndarray,
                  iters: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """For margins ``E`` [r, ...]: the common offset of each column that minimises its loss (the intercept
    refitted; a few damped Newton steps from 0) and that loss, ``(offset, loss)``, each of shape ``E.shape[1:]``
    (``npos``/``nneg`` broadcast against ``E``)."""
    N = npos + nneg
    off = np.zeros(E.shape[1:])
    for _ in range(iters):
        p = expit(E + off)
        g = (N * p - npos).sum(axis=0)
        h = (N * p * (1.0 - p)).sum(axis=0)
        off = off - np.clip(g / np.maximum(h, 1e-12), -1.0, 1.0)
    return off, _nll(E + off, npos, nneg)


def _round_sequential(U: np.ndarray, npos: np.ndarray, nneg: np.ndarray, Zc: np.ndarray, z0: np.ndarray,
                      ms: np.ndarray, bound: int) -> np.ndarray:
    """Sequential rounding of the scaled solutions ``Zc`` [M, t] (intercepts ``z0`` [M], multipliers ``ms`` [M]) on
    grouped rows ``U`` [r, t]: ``t`` times, among the coordinates not rounded yet and both directions (floor, ceil),
    fix the one whose rounding gives the lowest loss of ``(U z + z0) / m`` -- the other coordinates as they stand
    (those rounded before at their integers, the rest still continuous) and the intercept ``z0`` refitted, since it
    is not rounded and absorbs any common shift. Returns integers [M, t] in ``[-bound, bound]``."""
    M, t = Zc.shape
    V = Zc.astype(np.float64).copy()
    a = z0.astype(np.float64) / ms  # the intercept on the margin scale
    cand = np.stack([np.clip(np.floor(Zc), -bound, bound), np.clip(np.ceil(Zc), -bound, bound)], axis=2)
    todo = np.ones((M, t), dtype=bool)
    rows = np.arange(M)
    for _ in range(t):
        eta = (U @ V.T) / ms[None, :] + a[None, :]  # [r, M]
        delta = (cand - V[:, :, None]) / ms[:, None, None]  # [M, t, 2]
        E = eta[:, :, None, None] + U[:, None, :, None] * delta[None]
        off, L = _best_offsets(E, npos[:, None, None, None], nneg[:, None, None, None])  # [M, t, 2]
        L[~todo] = np.inf
        j, side = np.divmod(np.argmin(L.reshape(M, -1), axis=1), 2)
        V[rows, j] = cand[rows, j, side]
        a = a + off[rows, j, side]
        todo[rows, j] = False
    return np.rint(V).astype(np.int64)


def sequential_round(Z: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: float, multiplier: float,
                     max_coef: int) -> np.ndarray:
    """Sequential rounding (FasterRisk §3.3) of one solution scaled by ``multiplier``: the integer points [t] of
    ``multiplier * coef`` on the item columns ``Z`` [n, t] (labels ``y`` 0/1) and intercept ``intercept``."""
    m = float(multiplier)
    U, npos, nneg, _ = _group_rows(np.asarray(Z, dtype=np.float64), np.asarray(y, dtype=np.float64))
    coef = np.asarray(coef, dtype=np.float64)
    return _round_sequential(U, npos, nneg, m * coef[None, :], np.array([m * intercept]), np.array([m]),
                             int(max_coef))[0]


def star_ray_round(problem: _Problem, sol: _Solution, max_coef: int,
                   n_multipliers: int) -> tuple[np.ndarray, float, float, float]:
    """Star-ray search with sequential rounding (FasterRisk §3.3) of one pool solution: for ``n_multipliers``
    multipliers m evenly spaced in ``[1, max_coef / max|coef|]``, round ``m * coef`` by :func:`_round_sequential`,
    then refit the intercept b0 and the multiplier of ``risk = sigmoid((total + b0) / m)`` by coordinate descent on
    ``(b0 / m, 1 / m)`` from the ray's values, ``1 / m`` kept at most ``max_coef / max|points|`` (the scaled points
    stay in the box); the ray with the lowest training loss wins. Returns ``(points, b0, m, loss)``."""
    support = list(sol.support)
    U, npos, nneg, _ = _group_rows(problem.Z[:, support], problem.y)
    wmax = float(np.max(np.abs(sol.coef))) if len(support) else 0.0
    if wmax <= 1e-12:
        ms = np.array([1.0])
    else:
        ms = np.unique(np.linspace(1.0, max(1.0, max_coef / wmax), max(1, int(n_multipliers))))
    V = _round_sequential(U, npos, nneg, ms[:, None] * sol.coef[None, :], ms * sol.intercept, ms, int(max_coef))
    T = U @ V.T  # [r, M]: every ray's total per group
    pmax = np.abs(V).max(axis=1)
    smax = np.where(pmax > 0, max_coef / np.maximum(pmax, 1), float(max_coef))
    M = len(ms)
    # margins a + s * total with s = 1 / m, fitted as a' + s * (total - mean total) so the coordinates hardly interact
    centre = (npos + nneg) @ T / max(float((npos + nneg).sum()), 1e-300)
    s, a, loss = _coordinate_descent((T - centre[None, :])[:, :, None], np.repeat(npos[:, None], M, 1),
                                     np.repeat(nneg[:, None], M, 1), (1.0 / ms)[:, None],
                                     sol.intercept + centre / ms, smax, problem.max_sweeps)
    s = s[:, 0]
    a = a - s * centre
    good = s > 1e-12
    loss = np.where(good, loss, np.inf)
    if not good.any():  # the points carry no signal (all zero, or pointing the wrong way): intercept only
        zero = np.zeros(len(support), dtype=np.int64)
        root = _coordinate_descent(np.zeros((len(npos), 1, 0)), npos[:, None], nneg[:, None], np.zeros((1, 0)),
                                   np.array([sol.intercept]), 1.0, problem.max_sweeps)
        return zero, float(root[1][0]), 1.0, float(root[2][0])
    i = int(np.argmin(loss))
    return V[i], float(a[i] / s[i]), float(1.0 / s[i]), float(loss[i])


# ------------------------------------------------------------------------------------------------ the estimator
@register_model("fasterrisk", family="score",
                test_kwargs={"max_items": 3, "beam_size": 3, "pool_size": 4, "n_multipliers": 4, "max_sweeps": 5},
                paper="Liu, Zhong, Li, Rudin & Seltzer 2022, FasterRisk: fast and accurate interpretable risk scores "
                      "(NeurIPS 2022, arXiv:2210.05846)")
class FasterRisk(_ItemScore):
    """An integer risk score found by FasterRisk (Liu, Zhong, Li, Rudin & Seltzer 2022, "FasterRisk: fast and
    accurate interpretable risk scores", NeurIPS 2022, arXiv:2210.05846): at most ``max_items`` binary items
    ``feature > threshold``, each worth an integer number of points in ``[-max_coef, max_coef]`` (negative points
    lower the risk), and ``risk = sigmoid((total points + intercept) / multiplier)``. Binary tasks only (fit raises
    ``ValueError`` for more classes).

    Fit (written from the paper; the ``fasterrisk`` package is not used):

    1. Items: for every feature, thresholds at the training ``quantiles``, each rounded to 4 significant digits (so
       the threshold printed on the card is the one the model uses); item ``x > t``. Columns constant on the training
       data and duplicates are dropped. The sign of the points gives the direction.
    2. Sparse beam search (§3.1, :func:`beam_search`) on the logistic loss with every coefficient boxed in
       ``[-max_coef, max_coef]`` (free intercept): support size 1, 2, ... ``max_items``; from each of the
       ``beam_size`` kept supports every other item is scored by a few quadratic-surrogate coordinate steps on its
       coefficient alone, the ``beam_size`` best become children, which are refitted by box-constrained coordinate
       descent (Newton steps with a majorising fallback, at most ``max_sweeps`` sweeps) warm-started from the
       parent; the ``beam_size`` best distinct children are kept.
    3. Diverse pool (§3.2, :func:`diverse_pool`) for every support size: the best continuous solution plus those one
       swap away (one item out, another in, refitted) with a loss within ``gap_tolerance`` (relative) of it; at most
       ``pool_size``.
    4. Star-ray search and sequential rounding (§3.3, :func:`star_ray_round`): for each pool solution and each of
       ``n_multipliers`` multipliers m from 1 to ``max_coef / max|coef|``, the scaled coefficients ``m * coef`` are
       rounded one coordinate at a time (of the coordinates left and both directions, the one whose rounding gives
       the lowest logistic loss of the scaled problem, the others as they stand); then the intercept and the
       multiplier of ``sigmoid((total + intercept) / multiplier)`` are refitted to the integer points (maximum
       likelihood, the multiplier at least ``max|points| / max_coef``, so the scaled points stay in the box). The
       integer solution with the lowest training logistic loss over the pool is that size's score; points with a
       common divisor are divided by it (with the intercept and the multiplier: the same risks, a simpler card).
    5. The size (1..``max_items``) with the best validation AUC (ties: fewer items) when ``X_val``/``y_val`` are
       given, else the lowest training AIC (``2 * loss + 2 * n_params``). ``selection_path_`` keeps every size's
       score, continuous and integer training loss and pool size; ``pool_`` the integer score of every pool solution
       of the chosen size (alternative cards of nearly the same loss).

    ``predict_proba`` is ``[1 - r, r]`` with ``r = sigmoid((total points + intercept_) / multiplier_)``;
    ``risk_table_`` holds, for every total the points add up to, that risk and the observed training frequency. A
    hand-made card can be built with :meth:`from_table`.

    Explanation: one column per item (named like ``"x3 > 12.5"``): the points the case earns from it (0 if the item
    does not hold), negated when class 0 is explained; ``values`` are the 0/1 item indicators; ``intercept`` is 0
    (the risk is a function of the total, see ``risk_table_``).

    Complexity: items and points; ``n_params_`` = 2 per item (threshold, points) + 2 (intercept, multiplier).
    """

    reading_definition = ("the score card's items: a reader checks each item (feature > threshold) for the case, adds "
                          "the points of those that hold and reads the risk of the total off the card's risk table")

    def __init__(self, max_items: int = 5, max_coef: int = 5,
                 quantiles: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9), beam_size: int = 10,
                 pool_size: int = 50, gap_tolerance: float = 0.3, n_multipliers: int = 20,
                 max_sweeps: int = 20) -> None:
        self.max_items = max_items
        self.max_coef = max_coef
        self.quantiles = quantiles
        self.beam_size = beam_size
        self.pool_size = pool_size
        self.gap_tolerance = gap_tolerance
        self.n_multipliers = n_multipliers
        self.max_sweeps = max_sweeps

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_table(cls, items: list[dict | ScoreItem], intercept: float, multiplier: float,
                   feature_names: list[str], classes=(0, 1)) -> FasterRisk:
        """A fitted score from a hand-made card. ``items``: ``{"feature": column index, "threshold": t, "points":
        p}`` (direction ``">"``; or :class:`ScoreItem`); risk = sigmoid((total + intercept) / multiplier)."""
        built = [it if isinstance(it, ScoreItem) else ScoreItem(**{"direction": ">", **it}) for it in items]
        pts = max([abs(int(it.points)) for it in built] + [1])
        model = cls(max_items=max(1, len(built)), max_coef=pts)
        model.classes_ = np.asarray(classes)
        model.n_features_in_ = len(feature_names)
        model.feature_names_ = [str(n) for n in feature_names]
        model.feature_descriptions_ = {}
        for it in built:
            it.points = int(it.points)
            it.name = it.name or model._item_name(it)
        model._set_score(built, float(intercept), float(multiplier), None, None)
        model.selection_ = "hand-made table"
        model.selection_path_, model.pool_, model.n_candidates_ = [], [], 0
        return model

    def _set_score(self, items: list[ScoreItem], intercept: float, multiplier: float, totals_train,
                   y_train) -> None:
        if not multiplier > 0:
            raise ValueError(f"the multiplier must be positive, got {multiplier}")
        self.items_ = items
        self.intercept_, self.multiplier_ = float(intercept), float(multiplier)
        reachable = {0}
        for it in items:
            reachable |= {s + int(it.points) for s in reachable}
        self.risk_table_ = self._risk_table(sorted(reachable),
                                            lambda total: expit((total + self.intercept_) / self.multiplier_),
                                            totals_train, y_train)
        self.n_params_ = int(2 * len(items) + 2)

    # ---------------------------------------------------------------- fit
    def _check_params(self) -> None:
        for name in ("max_items", "max_coef", "beam_size", "pool_size", "n_multipliers", "max_sweeps"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be an integer >= 1, got {v!r}")
        if not (np.isfinite(self.gap_tolerance) and self.gap_tolerance >= 0):
            raise ValueError(f"{type(self).__name__}: gap_tolerance must be >= 0, got {self.gap_tolerance!r}")
        qs = np.asarray(self.quantiles, dtype=np.float64).reshape(-1)
        if qs.size == 0 or np.any((qs <= 0) | (qs >= 1)):
            raise ValueError(f"{type(self).__name__}: quantiles must lie strictly between 0 and 1, got "
                             f"{self.quantiles!r}")

    def _candidates(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The binary items: ``(Z [n, p] 0/1, feature [p], threshold [p])``."""
        qs = np.asarray(self.quantiles, dtype=np.float64).reshape(-1)
        every = [(j, t, X[:, j] > t) for j in range(X.shape[1])
                 for t in sorted({float(f"{q:.4g}") for q in np.quantile(X[:, j], qs)})]
        keep = distinct_binary_columns([c for _, _, c in every])
        Z = np.column_stack([every[i][2] for i in keep]).astype(np.float64) if keep else np.zeros((len(X), 0))
        return (Z, np.asarray([every[i][0] for i in keep], dtype=np.int64),
                np.asarray([every[i][1] for i in keep], dtype=np.float64))

    def fit(self, X, y, X_val=None, y_val=None, feature_names=None, feature_descriptions=None):
        X, y_idx, Xv, yv = self._prepare(X, y, X_val, y_val, feature_names, feature_descriptions)
        self._check_binary(y_idx, "fasterrisk")
        self._check_params()
        yf = y_idx.astype(np.float64)
        Z, feats, thrs = self._candidates(X)
        self.n_candidates_ = int(Z.shape[1])
        problem = _Problem(Z, yf, int(self.max_coef), int(self.max_sweeps))
        levels = beam_search(problem, int(self.max_items), int(self.beam_size)) if Z.shape[1] else []

        def integer_score(sol: _Solution) -> dict:
            points, b0, m, loss = star_ray_round(problem, sol, int(self.max_coef), int(self.n_multipliers))
            g = int(np.gcd.reduce(np.abs(points))) if np.any(points) else 1
            if g > 1:  # points (3, -3, 6) read as (1, -1, 2): the same risks with the multiplier and b0 / g
                points, b0, m = points // g, b0 / g, m / g
            items = [ScoreItem(int(feats[j]), float(thrs[j]), ">", int(p)) for j, p in zip(sol.support, points)
                     if p != 0]
            items.sort(key=lambda it: (it.feature, it.threshold))
            for it in items:
                it.name = self._item_name(it)
            return {"items": items, "intercept": b0, "multiplier": m, "train_loss": loss}

        root = problem.root()
        candidates = [{"items": [], "intercept": root.intercept, "multiplier": 1.0, "train_loss": root.loss,
                       "k": 0, "continuous_loss": root.loss, "pool": []}]
        for k, best in enumerate(levels, start=1):
            pool = diverse_pool(problem, best, int(self.pool_size), float(self.gap_tolerance))
            scored = sorted((integer_score(sol) for sol in pool), key=lambda s: s["train_loss"])
            candidates.append({**scored[0], "k": k, "continuous_loss": best.loss, "pool": scored})
        self.selection_path_ = []
        for c in candidates:
            if Xv is not None:
                r = expit((self._totals(c["items"], Xv) + c["intercept"]) / c["multiplier"])
                c["score"] = selection_score(yv, np.column_stack([1 - r, r]))
            else:
                c["score"] = -(2 * c["train_loss"] + 2 * (2 * len(c["items"]) + 2))  # -AIC
            self.selection_path_.append({"k": c["k"], "n_items": len(c["items"]), "score": float(c["score"]),
                                         "train_loss": float(c["train_loss"]),
                                         "continuous_loss": float(c["continuous_loss"]),
                                         "pool_size": len(c["pool"])})
        # sizes 1..max_items compete; the intercept-only score only when no item could be built
        pick = candidates[1:] or candidates[:1]
        chosen = min(pick, key=lambda c: (-round(c["score"], 12), len(c["items"]), c["k"]))
        self._set_score(chosen["items"], chosen["intercept"], chosen["multiplier"],
                        self._totals(chosen["items"], X), yf)
        self.pool_ = [{"items": [it.name for it in s["items"]], "points": [it.points for it in s["items"]],
                       "intercept": float(s["intercept"]), "multiplier": float(s["multiplier"]),
                       "train_loss": float(s["train_loss"])} for s in chosen["pool"]]
        self.k_ = int(chosen["k"])
        self.best_score_ = float(chosen["score"])
        self.selection_ = ("validation AUC" if Xv is not None else "training AIC") if levels else \
            "no usable item (every feature constant)"
        return self

    # ---------------------------------------------------------------- predictions
    def predict_proba(self, X) -> np.ndarray:
        r = expit((self.total_points(X) + self.intercept_) / self.multiplier_)
        return np.column_stack([1 - r, r])

    def explain_global(self) -> GlobalExplanation:
        """``form="score_table"``: ``content`` has ``items`` (item, feature, feature_name, direction, threshold,
        points, description), ``intercept``, ``multiplier``, ``positive_class``, ``risk_table`` (per total: modelled
        risk, training cases, positives and observed frequency), ``selection_path`` and ``pool``; ``text`` renders
        the card: the items, the risk formula with its constants and the risk table."""
        check_is_fitted(self)
        pos = str(self.classes_[1])
        items = [{**asdict(it), "item": it.name, "feature_name": self.feature_names_[it.feature],
                  "description": self._describe(self.feature_names_[it.feature])} for it in self.items_]
        width = max([len(it.name) for it in self.items_] + [4])
        lines = [f"FasterRisk score for '{pos}' ({len(items)} items; chosen by {self.selection_})",
                 f"{'Item'.ljust(width)} | Points", f"{'-' * width}-+-------"]
        lines += [f"{it.name.ljust(width)} | {it.points:+d}" for it in self.items_]
        described = {d["feature_name"]: d["description"] for d in items if d["description"]}
        if described:
            lines += ["", "Features:"] + [f"  {name}: {desc}" for name, desc in described.items()]
        lines += ["", "total = the sum of the points of the items that hold",
                  f"risk = 1 / (1 + exp(-(total + b0) / m)) with b0 = {self.intercept_:.10g} and "
                  f"m = {self.multiplier_:.10g}",
                  *self._risk_table_lines()]
        content = {"items": items, "intercept": self.intercept_, "multiplier": self.multiplier_,
                   "positive_class": pos, "classes": [str(c) for c in self.classes_], "risk_table": self.risk_table_,
                   "selection_path": getattr(self, "selection_path_", []), "pool": getattr(self, "pool_", [])}
        return GlobalExplanation(form="score_table", content=content, text="\n".join(lines))


__all__ = ["FasterRisk", "beam_search", "diverse_pool", "sequential_round", "star_ray_round"]

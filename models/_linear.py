"""The convex last step of the zoo's two-stage models: a sparse multinomial logistic regression on fixed inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def fit_sparse_linear(c: torch.Tensor, y: torch.Tensor, num_classes: int, l1: float, steps: int = 500,
                      class_weights: torch.Tensor | None = None, l1_mask: torch.Tensor | None = None,
                      fit_bias: bool = True, init: torch.Tensor | None = None,
                      nonneg: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression with an L1 penalty, by FISTA (accelerated proximal gradient; Beck & Teboulle
    2009).

    Minimises ``CE(c W^T + b, y) + l1 * sum |W * l1_mask|`` over W [C, K] (and b [C] if ``fit_bias``), where CE is
    the (class-weighted) mean cross-entropy. The gradient is analytic, ``sum_i v_i (softmax_i - onehot_i) x_i^T`` with
    normalised case weights v, and the step is ``1 / L`` with ``L = N max(v) ||x||_2^2 / 2`` (x = [c, 1]) bounding the
    curvature. ``l1_mask`` (default: all ones) selects the penalised weights; ``init`` [C, K] warm-starts W.
    ``nonneg`` keeps W >= 0 (the proximal step of L1 plus the non-negativity constraint is ``max(w - step l1, 0)``),
    as a PIP-Net scoring sheet needs. A column of ``c`` that is zero for every case gets no gradient, so a zero
    ``init`` there stays zero (how a switched-off prototype is kept out of a refit).
    Deterministic; runs under ``no_grad`` (so also inside Lightning's validation loop). Returns (W, b) as float32;
    b is zeros when ``fit_bias`` is False.
    """
    n, k = c.shape
    cols = [c.detach().double().cpu()] + ([torch.ones(n, 1, dtype=torch.float64)] if fit_bias else [])
    x = torch.cat(cols, 1)
    onehot = F.one_hot(y.detach().long().cpu(), num_classes).double()
    v = torch.ones(n, dtype=torch.float64)
    if class_weights is not None and class_weights.numel():
        v = class_weights.detach().double().cpu()[y.long().cpu()]
    v = v / v.sum()
    lip = float(torch.linalg.matrix_norm(x, ord=2) ** 2) / 2 * float(v.max()) + 1e-12
    step = 1.0 / lip
    mask = torch.ones(num_classes, k, dtype=torch.float64) if l1_mask is None else l1_mask.detach().double().cpu()
    wb = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
    if init is not None:
        wb[:, :k] = init.detach().double().cpu()
    z, t = wb.clone(), 1.0
    for _ in range(steps):
        p = torch.softmax(x @ z.T, dim=1)
        grad = ((p - onehot) * v[:, None]).T @ x
        nxt = z - step * grad
        w = nxt[:, :k]
        shrink = step * l1 * mask
        nxt[:, :k] = torch.sign(w) * (w.abs() - shrink).clamp_min(0)  # soft-threshold the penalised weights only
        if nonneg:
            nxt[:, :k] = nxt[:, :k].clamp_min(0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        z = nxt + ((t - 1) / t_next) * (nxt - wb)
        wb, t = nxt, t_next
    bias = wb[:, k] if fit_bias else torch.zeros(num_classes, dtype=torch.float64)
    return wb[:, :k].float(), bias.float()

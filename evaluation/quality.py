"""Explanation-quality metrics, computed the same way for every heatmap of a run.

The maps may be intrinsic (prototype activations, attention, concept maps) or post-hoc (Grad-CAM, integrated
gradients, ...): every function takes plain arrays ``maps`` [N, H, W] (larger = more relevant) and, where the model
is involved, a torch model whose ``forward(x)`` maps images [N, C, H, W] in [0, 1] to class logits. Every metric
returns a **per-case** float array [N] (``nan`` where undefined) so that the caller can summarise it with a bootstrap
interval (:func:`glasszoo.evaluation.metrics.mean_ci`).

Metrics:

* :func:`relevance_rank_accuracy` -- localisation against a mask (Arras et al., 2022, CLEVR-XAI).
* :func:`sparseness` -- Gini index of the absolute map (Chalasani et al., 2020; Hurley & Rickard, 2009).
* :func:`deletion_insertion` -- causal deletion / insertion AUCs (Petsiuk et al., BMVC 2018, RISE).
* :func:`faithfulness_correlation` -- correlation of removed relevance with the probability drop (Bhatt et al.,
  IJCAI 2020).
* :func:`road` -- RemOve And Debias (Rong et al., ICML 2022): pixels removed most / least relevant first and filled
  by noisy linear imputation (:func:`noisy_linear_impute`), so the perturbed images stay close to the data.
* :func:`max_sensitivity` -- worst-case change of the map under small input noise (Yeh et al., NeurIPS 2019).
* :func:`randomisation_check` -- cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018), scored by
  :func:`spearman_per_case` and :func:`ssim`; with the efficient variant's complexity rise (eMPRT, Hedstrom et al.
  2024, :func:`discrete_entropy`) read off the same maps, and the smooth variant (sMPRT,
  :func:`smoothed_explain_fn`: the maps averaged over noisy copies of the input before they are compared).

The perturbation metrics work on square **patches** of side ``patch`` (default ``max(1, min(H, W) // 12)``, about a
12 x 12 grid; the last row / column of patches is smaller when the side is not a multiple of ``patch``). A patch's
relevance is the mean (deletion / insertion ranking) or the sum (faithfulness correlation) of its pixels' relevance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import ndimage, sparse
from scipy.sparse.linalg import splu
from scipy.stats import rankdata
from torch import nn

from glasszoo.models.errors import DataError

BASELINES: tuple[str, ...] = ("zero", "mean", "blur")
"""What removed patches become: black, the image's per-channel mean, or the Gaussian-blurred image."""

SSIM_SIGMA = 1.5
"""Standard deviation (pixels) of the Gaussian SSIM window (Wang et al., 2004)."""

SSIM_RADIUS = 3
"""Half-width of the SSIM window: 7 x 7 by default (Gaussian truncated at 2 sigma), small enough for 16 px maps."""

# A row of float32 model outputs that varies by less than this (relative to its scale, at least 1) is constant:
# such differences are rounding, not signal.
_OUTPUT_TOL = 1e-6


# --------------------------------------------------------------------------------------------------------------------
# Input checks and small helpers
# --------------------------------------------------------------------------------------------------------------------


def _numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _check_finite(a: np.ndarray, name: str) -> None:
    if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
        raise DataError(f"{name} must be numeric, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise DataError(f"{name} contain NaN or infinite values")


def _check_maps_only(maps: Any, name: str = "maps") -> np.ndarray:
    """Validate relevance maps [N, H, W]; return float64."""
    m = _numpy(maps)
    if m.ndim != 3:
        raise DataError(f"{name} must be [N, H, W], got shape {m.shape}")
    _check_finite(m, name)
    return m.astype(np.float64, copy=False)


def _check_pair(a: Any, b: Any, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    a = _check_maps_only(a, name_a)
    b = _check_maps_only(b, name_b)
    if a.shape != b.shape:
        raise DataError(f"{name_a} and {name_b} must have equal shapes, got {a.shape} and {b.shape}")
    return a, b


def _check_images(x: Any) -> np.ndarray:
    """Validate images [N, C, H, W]; return float32."""
    xs = _numpy(x)
    if xs.ndim != 4:
        raise DataError(f"x must be images [N, C, H, W], got shape {xs.shape}")
    _check_finite(xs, "x")
    return xs.astype(np.float32, copy=False)


def _check_target(target: Any, n: int) -> np.ndarray:
    """Validate the explained classes: an int or an int array [N]; return int64 [N]."""
    t = _numpy(target)
    if t.ndim == 0:
        t = np.full(n, t.item())
    if t.ndim != 1 or t.shape[0] != n:
        raise DataError(f"target must be an int or an array [N] with N = {n}, got shape {t.shape}")
    if t.size and (not np.issubdtype(t.dtype, np.number) or not np.all(np.mod(t, 1) == 0) or np.any(t < 0)):
        raise DataError(f"target must hold non-negative integer class indices, got {t[:8]!r}")
    return t.astype(np.int64)


def _check_model_inputs(x: Any, maps: Any, target: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = _check_images(x)
    m = _check_maps_only(maps)
    n, _, h, w = xs.shape
    if m.shape != (n, h, w):
        raise DataError(f"maps must be [N, H, W] = {(n, h, w)} to match x {xs.shape}, got {m.shape}")
    return xs, m, _check_target(target, n)


def _check_choice(value: str, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DataError(f"{name} must be one of {choices}, got {value!r}")


def _check_positive_int(value: int, name: str) -> None:
    if int(value) != value or value < 1:
        raise DataError(f"{name} must be an integer >= 1, got {value!r}")


def _rowwise_pearson(a: np.ndarray, b: np.ndarray, tol_a: float = 0.0, tol_b: float = 0.0) -> np.ndarray:
    """Pearson correlation of matching rows of ``a`` and ``b`` [N, M]; ``nan`` where a row is constant.

    A row counts as constant when its range is at most ``tol * max(1, max |row|)``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    out = np.full(a.shape[0], np.nan)
    if a.shape[1] < 2:
        return out

    def varying(v: np.ndarray, tol: float) -> np.ndarray:
        return np.ptp(v, axis=1) > tol * np.maximum(1.0, np.abs(v).max(axis=1))

    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((ac * ac).sum(axis=1) * (bc * bc).sum(axis=1))
    ok = varying(a, tol_a) & varying(b, tol_b) & (den > 0)
    np.divide((ac * bc).sum(axis=1), den, out=out, where=ok)
    return np.clip(out, -1.0, 1.0, out=out, where=ok)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    if p is None:
        b = next(model.buffers(), None)
        return b.device if b is not None else torch.device("cpu")
    return p.device


# --------------------------------------------------------------------------------------------------------------------
# Localisation and sparseness
# --------------------------------------------------------------------------------------------------------------------


def relevance_rank_accuracy(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Relevance rank accuracy (Arras, Osman & Samek, "CLEVR-XAI", Information Fusion 2022).

    With K the number of mask pixels, the fraction of the K most relevant pixels that lie inside the mask. Ties at
    the K-th value are split evenly: if ``g`` pixels are strictly above the K-th largest value ``t`` and ``e``
    pixels equal ``t``, the ``K - g`` remaining slots are filled by the tied pixels in proportion, i.e. the
    expected value under a random tie-break. A constant map therefore scores the chance level K / (H W).

    Args:
        maps: [N, H, W] relevance maps (larger = more relevant).
        masks: [N, H, W] binary masks (non-zero = inside).

    Returns:
        float [N] in [0, 1]; ``nan`` where the mask is empty.

    Raises:
        DataError: on shape mismatch or non-finite maps.
    """
    flat = _check_maps_only(maps)
    mk = _numpy(masks)
    if mk.shape != flat.shape:
        raise DataError(f"masks must have the shape of maps {flat.shape}, got {mk.shape}")
    n = flat.shape[0]
    flat = flat.reshape(n, -1)
    inside = (mk != 0).reshape(n, -1)
    k = inside.sum(axis=1)
    if flat.shape[1] == 0:
        return np.full(n, np.nan)
    desc = -np.sort(-flat, axis=1)
    t = desc[np.arange(n), np.maximum(k - 1, 0)][:, None]
    above, tied = flat > t, flat == t
    g, g_in = above.sum(axis=1), (above & inside).sum(axis=1)
    e, e_in = tied.sum(axis=1), (tied & inside).sum(axis=1)
    hits = g_in + (k - g) * e_in / np.maximum(e, 1)
    out = np.full(n, np.nan)
    np.divide(hits, k, out=out, where=k > 0)
    return out


def sparseness(maps: np.ndarray) -> np.ndarray:
    """Sparseness as the Gini index of the absolute map (Chalasani et al., ICML 2020; Hurley & Rickard, 2009).

    With the n values ``c_1 <= ... <= c_n`` of ``|map|`` sorted ascending,
    ``G = sum_k (2k - n - 1) c_k / (n sum_k c_k)``: 0 for a uniform map, ``(n - 1) / n`` for a map with a single
    non-zero pixel.

    Args:
        maps: [N, H, W] relevance maps.

    Returns:
        float [N] in [0, 1); ``nan`` for an all-zero map.

    Raises:
        DataError: on a wrong shape or non-finite maps.
    """
    m = _check_maps_only(maps)
    c = np.sort(np.abs(m.reshape(m.shape[0], -1)), axis=1)
    n = c.shape[1]
    weights = 2.0 * np.arange(1, n + 1) - n - 1.0
    total = c.sum(axis=1)
    out = np.full(m.shape[0], np.nan)
    np.divide(c @ weights, n * total, out=out, where=total > 0)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Patches, baselines and batched model scores
# --------------------------------------------------------------------------------------------------------------------


def default_patch(h: int, w: int) -> int:
    """Default patch side of the perturbation metrics: ``max(1, min(H, W) // 12)`` (about a 12 x 12 grid)."""
    return max(1, min(h, w) // 12)


def default_blur_sigma(h: int, w: int) -> float:
    """Default Gaussian blur sigma (pixels) of the blurred baseline: ``min(H, W) / 8``."""
    return min(h, w) / 8.0


def _patch_grid(h: int, w: int, patch: int | None) -> tuple[np.ndarray, int]:
    """Patch index of every pixel (row-major over the patch grid) [H, W] and the number of patches."""
    p = default_patch(h, w) if patch is None else patch
    _check_positive_int(p, "patch")
    rows, cols = -(-h // p), -(-w // p)
    pid = (np.arange(h) // p)[:, None] * cols + (np.arange(w) // p)[None, :]
    return pid, rows * cols


def _patch_reduce(maps: np.ndarray, pid: np.ndarray, n_patches: int, mean: bool) -> np.ndarray:
    """Per-case sum (or mean) of the relevance of every patch: [N, P]."""
    n = maps.shape[0]
    flat_pid = pid.ravel()
    index = (flat_pid[None, :] + n_patches * np.arange(n)[:, None]).ravel()
    sums = np.bincount(index, weights=maps.reshape(-1), minlength=n * n_patches).reshape(n, n_patches)
    if mean:
        sums = sums / np.bincount(flat_pid, minlength=n_patches)[None, :]
    return sums


def _blur(xs: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel of [N, C, H, W] (reflecting borders, truncated at 4 sigma)."""
    if not sigma > 0:
        raise DataError(f"blur_sigma must be > 0, got {sigma!r}")
    return ndimage.gaussian_filter(xs, sigma=(0, 0, sigma, sigma), mode="reflect").astype(np.float32)


def _baseline_images(xs: np.ndarray, baseline: str, sigma: float, name: str) -> np.ndarray:
    """The baseline image of each case: zeros, the per-image per-channel mean, or the blurred image."""
    _check_choice(baseline, name, BASELINES)
    if baseline == "zero":
        return np.zeros_like(xs)
    if baseline == "mean":
        return np.broadcast_to(xs.mean(axis=(2, 3), keepdims=True), xs.shape).astype(np.float32)
    return _blur(xs, sigma)


def _target_scores(model: nn.Module, n_items: int, make_batch: Callable[[torch.Tensor], torch.Tensor],
                   item_target: np.ndarray, batch_size: int, score: str = "proba") -> np.ndarray:
    """Softmax probability (or logit) of each item's target class for images built batch by batch.

    ``make_batch(idx)`` returns the images of items ``idx`` (a long tensor on the model's device). The model runs in
    eval mode without gradients; its training mode is restored afterwards.
    """
    _check_positive_int(batch_size, "batch_size")
    device = _device(model)
    out = np.empty(n_items, dtype=np.float64)
    targets = torch.as_tensor(item_target, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, n_items, batch_size):
                idx = torch.arange(start, min(start + batch_size, n_items), device=device)
                logits = model(make_batch(idx)).float()
                if logits.ndim != 2 or logits.shape[0] != len(idx):
                    raise DataError(f"model must return logits [B, classes], got shape {tuple(logits.shape)}")
                t = targets[idx]
                if int(t.max()) >= logits.shape[1]:
                    raise DataError(f"target holds class {int(t.max())} but the model has {logits.shape[1]} classes")
                values = torch.softmax(logits, dim=1) if score == "proba" else logits
                out[start:start + len(idx)] = values.gather(1, t[:, None])[:, 0].double().cpu().numpy()
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Deletion / insertion
# --------------------------------------------------------------------------------------------------------------------


def deletion_insertion_passes(steps: int) -> int:
    """Forward passes (images through the model) per explained image of :func:`deletion_insertion`."""
    return 2 * (int(steps) + 1)


def _step_counts(steps: int, n_patches: int) -> np.ndarray:
    """Patches changed at step s = 0..steps: ``round(s * P / steps)`` (halves up), from 0 to P."""
    s = np.arange(steps + 1)
    return (2 * s * n_patches + steps) // (2 * steps)


def curve_auc(curves: np.ndarray) -> np.ndarray:
    """Area under curves [N, S + 1] sampled at equal steps on [0, 1]: the trapezoid mean."""
    c = np.asarray(curves, dtype=np.float64)
    steps = c.shape[1] - 1
    if steps < 1:
        return c[:, 0].copy()
    return (c.sum(axis=1) - 0.5 * (c[:, 0] + c[:, -1])) / steps


def deletion_insertion_curves(model: nn.Module, x: np.ndarray, maps: np.ndarray, target: np.ndarray | int,
                              steps: int = 16, patch: int | None = None, baseline: str = "zero",
                              blur_sigma: float | None = None, batch_size: int = 64,
                              insertion_baseline: str = "blur") -> tuple[np.ndarray, np.ndarray]:
    """The deletion and insertion curves behind :func:`deletion_insertion` (same arguments).

    Returns:
        ``(deletion, insertion)``, each float [N, steps + 1]: the target probability after 0, 1/steps, ..., 1 of
        the patches were deleted (inserted), most relevant first.
    """
    xs, m, tgt = _check_model_inputs(x, maps, target)
    _check_positive_int(steps, "steps")
    _check_choice(baseline, "baseline", BASELINES)
    _check_choice(insertion_baseline, "insertion_baseline", BASELINES)
    n, _, h, w = xs.shape
    sigma = default_blur_sigma(h, w) if blur_sigma is None else float(blur_sigma)
    pid, n_patches = _patch_grid(h, w, patch)
    relevance = _patch_reduce(m, pid, n_patches, mean=True)
    order = np.argsort(-relevance, axis=1, kind="stable")  # most relevant first, ties by patch index
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n_patches)[None, :].repeat(n, axis=0), axis=1)

    device = _device(model)
    blurred: dict[str, np.ndarray] = {}

    def base(kind: str, name: str) -> torch.Tensor:
        if kind == "blur" and "blur" not in blurred:
            blurred["blur"] = _blur(xs, sigma)
        arr = blurred["blur"] if kind == "blur" else _baseline_images(xs, kind, sigma, name)
        return torch.as_tensor(np.ascontiguousarray(arr), device=device)

    x_t = torch.as_tensor(xs, device=device)
    pixel_rank = torch.as_tensor(rank[:, pid], device=device)  # [N, H, W]: rank of the pixel's patch
    counts = torch.as_tensor(_step_counts(steps, n_patches), device=device)
    n_points = steps + 1
    item_target = np.repeat(tgt, n_points)

    def curves(changed: torch.Tensor, unchanged: torch.Tensor) -> np.ndarray:
        def make_batch(idx: torch.Tensor) -> torch.Tensor:
            case, step = idx // n_points, idx % n_points
            hit = pixel_rank[case] < counts[step][:, None, None]
            return torch.where(hit[:, None], changed[case], unchanged[case])

        return _target_scores(model, n * n_points, make_batch, item_target, batch_size).reshape(n, n_points)

    deletion = curves(base(baseline, "baseline"), x_t)
    insertion = curves(x_t, base(insertion_baseline, "insertion_baseline"))
    return deletion, insertion


def deletion_insertion(model: nn.Module, x: np.ndarray, maps: np.ndarray, target: np.ndarray | int,
                       steps: int = 16, patch: int | None = None, baseline: str = "zero",
                       blur_sigma: float | None = None, batch_size: int = 64,
                       insertion_baseline: str = "blur") -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion AUCs (Petsiuk, Das & Saenko, "RISE", BMVC 2018).

    The image is cut into square patches of side ``patch`` (default :func:`default_patch`), ranked by their mean
    relevance, most relevant first (ties by patch index, row-major). At step s = 0..steps, the top
    ``round(s * P / steps)`` of the P patches are changed:

    * **Deletion** replaces them by the ``baseline``: ``"zero"`` (black, the default), ``"mean"`` (the image's
      per-channel mean) or ``"blur"`` (the Gaussian-blurred image).
    * **Insertion** starts from the ``insertion_baseline`` image -- by default ``"blur"``, a Gaussian blur of sigma
      ``blur_sigma`` (default :func:`default_blur_sigma`, ``min(H, W) / 8`` pixels) as in RISE; ``"zero"`` and
      ``"mean"`` are also accepted -- and puts the original pixels of the top patches back.

    The score of each step is the softmax probability of ``target``; the AUC is the trapezoid mean over the
    ``steps + 1`` points on [0, 1]. A lower deletion AUC and a higher insertion AUC mean a more faithful map.
    All perturbed images of all cases go through the model in batches of ``batch_size`` without gradients in eval
    mode (the training mode is restored): :func:`deletion_insertion_passes` = ``2 * (steps + 1)`` per image.

    Args:
        model: torch model, ``forward(x)`` -> logits [N, classes].
        x: images [N, C, H, W] in [0, 1].
        maps: relevance maps [N, H, W] of ``x``.
        target: explained class, an int or int array [N].
        steps: number of equal increments from 0 % to 100 % of the patches.
        patch: patch side in pixels (default ``max(1, min(H, W) // 12)``).
        baseline: what deleted patches become (``"zero"``, ``"mean"`` or ``"blur"``).
        blur_sigma: sigma of the Gaussian blur in pixels (default ``min(H, W) / 8``).
        batch_size: images per forward pass.
        insertion_baseline: the image insertion starts from (``"blur"``, ``"zero"`` or ``"mean"``).

    Returns:
        ``(deletion_auc, insertion_auc)``, each float [N].

    Raises:
        DataError: on malformed inputs, unknown baselines or a target outside the model's classes.
    """
    deletion, insertion = deletion_insertion_curves(model, x, maps, target, steps=steps, patch=patch,
                                                    baseline=baseline, blur_sigma=blur_sigma,
                                                    batch_size=batch_size, insertion_baseline=insertion_baseline)
    return curve_auc(deletion), curve_auc(insertion)


# --------------------------------------------------------------------------------------------------------------------
# Faithfulness correlation
# --------------------------------------------------------------------------------------------------------------------


def faithfulness_correlation_passes(n_subsets: int) -> int:
    """Forward passes per explained image of :func:`faithfulness_correlation`."""
    return int(n_subsets) + 1


def faithfulness_correlation(model: nn.Module, x: np.ndarray, maps: np.ndarray, target: np.ndarray | int,
                             n_subsets: int = 32, subset_fraction: float = 0.1, patch: int | None = None,
                             baseline: str = "zero", seed: int = 0, batch_size: int = 64,
                             blur_sigma: float | None = None, score: str = "proba") -> np.ndarray:
    """Faithfulness correlation (Bhatt, Weller & Moura, IJCAI 2020).

    For each case, ``n_subsets`` random subsets of ``max(1, round(subset_fraction * P))`` of the P patches (side
    ``patch``, default :func:`default_patch`) are drawn; each subset's patches are set to the ``baseline``
    (``"zero"``, ``"mean"`` or ``"blur"`` as in :func:`deletion_insertion`). The result is the Pearson
    correlation, over the subsets, between the summed relevance of the subset and the drop of the target score
    ``f(x) - f(x with the subset removed)``.

    ``score="proba"`` (default) uses the softmax probability of ``target``; ``score="logit"`` uses its logit, for
    which an additive (linear) model's drop is exactly the removed contribution. Cost:
    :func:`faithfulness_correlation_passes` = ``n_subsets + 1`` forward passes per image.

    Args:
        model: torch model, ``forward(x)`` -> logits.
        x: images [N, C, H, W] in [0, 1].
        maps: relevance maps [N, H, W].
        target: explained class, an int or int array [N].
        n_subsets: random subsets per case (>= 2 for a correlation).
        subset_fraction: fraction of the patches in each subset, in (0, 1].
        patch: patch side in pixels.
        baseline: what removed patches become.
        seed: seed of the subsets (equal seeds give equal subsets).
        batch_size: images per forward pass.
        blur_sigma: sigma of the ``"blur"`` baseline (default ``min(H, W) / 8``).
        score: ``"proba"`` or ``"logit"``.

    Returns:
        float [N] in [-1, 1]; ``nan`` where the subset relevance or the drop is constant (drops varying by less
        than 1e-6, float32 rounding of the model output, count as constant).

    Raises:
        DataError: on malformed inputs or arguments.
    """
    xs, m, tgt = _check_model_inputs(x, maps, target)
    _check_positive_int(n_subsets, "n_subsets")
    _check_choice(baseline, "baseline", BASELINES)
    _check_choice(score, "score", ("proba", "logit"))
    if not 0.0 < subset_fraction <= 1.0:
        raise DataError(f"subset_fraction must lie in (0, 1], got {subset_fraction!r}")
    n, _, h, w = xs.shape
    sigma = default_blur_sigma(h, w) if blur_sigma is None else float(blur_sigma)
    pid, n_patches = _patch_grid(h, w, patch)
    size = max(1, int(round(subset_fraction * n_patches)))
    rng = np.random.default_rng(seed)
    chosen = np.argsort(rng.random((n, n_subsets, n_patches)), axis=2)[:, :, :size]
    selected = np.zeros((n, n_subsets + 1, n_patches), dtype=bool)  # subset 0: nothing removed (the original)
    np.put_along_axis(selected[:, 1:], chosen, True, axis=2)
    relevance = (selected[:, 1:] * _patch_reduce(m, pid, n_patches, mean=False)[:, None, :]).sum(axis=2)

    device = _device(model)
    x_t = torch.as_tensor(xs, device=device)
    fill = torch.as_tensor(np.ascontiguousarray(_baseline_images(xs, baseline, sigma, "baseline")), device=device)
    sel_t = torch.as_tensor(selected, device=device)
    pid_t = torch.as_tensor(pid, device=device)
    n_points = n_subsets + 1

    def make_batch(idx: torch.Tensor) -> torch.Tensor:
        case, j = idx // n_points, idx % n_points
        hit = sel_t[case, j][:, pid_t]  # [B, H, W]
        return torch.where(hit[:, None], fill[case], x_t[case])

    scores = _target_scores(model, n * n_points, make_batch, np.repeat(tgt, n_points), batch_size, score)
    scores = scores.reshape(n, n_points)
    drop = scores[:, :1] - scores[:, 1:]
    return _rowwise_pearson(relevance, drop, tol_a=1e-12, tol_b=_OUTPUT_TOL)


# --------------------------------------------------------------------------------------------------------------------
# ROAD: remove and debias
# --------------------------------------------------------------------------------------------------------------------

ROAD_NEIGHBOURS: tuple[tuple[int, int, float], ...] = (
    (-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
    (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12))
"""(row offset, column offset, weight) of the 8 neighbours in ROAD's linear imputation (Rong et al. 2022): 1/6 for
the four direct neighbours, 1/12 for the four diagonal ones (they sum to 1)."""

ROAD_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Shares of the pixels removed, as in the paper's curves (10 % to 90 %)."""

ROAD_NOISE = 0.01
"""Standard deviation of the Gaussian noise added to each imputed pixel (the paper's value; images in [0, 1])."""


def noisy_linear_impute(image: np.ndarray, removed: np.ndarray, noise: float = ROAD_NOISE,
                        rng: np.random.Generator | None = None) -> np.ndarray:
    """Fill the ``removed`` pixels of one image by ROAD's noisy linear imputation (Rong et al., ICML 2022).

    Each removed pixel is the weighted mean of its neighbours inside the image (weights :data:`ROAD_NEIGHBOURS`,
    renormalised at the border), where removed neighbours are themselves unknowns: one sparse linear system per
    image, solved for all channels at once, ``sum_j w_ij (v_i - v_j) = 0`` for every removed pixel i. Gaussian
    noise of standard deviation ``noise`` is then added to the imputed values (not clipped). Kept pixels are
    unchanged.

    Args:
        image: [C, H, W].
        removed: bool [H, W]; at least one pixel must be kept.
        noise: standard deviation of the added noise (0 = the plain linear imputation).
        rng: source of the noise (default: a generator seeded with 0).

    Returns:
        float32 [C, H, W], a new array.

    Raises:
        DataError: on shape mismatches or when every pixel is removed (the system is then singular).
    """
    img = np.asarray(image, dtype=np.float64)
    rem = np.asarray(removed, dtype=bool)
    if img.ndim != 3 or rem.shape != img.shape[1:]:
        raise DataError(f"image must be [C, H, W] and removed [H, W]; got {img.shape} and {rem.shape}")
    out = img.copy()
    n_removed = int(rem.sum())
    if n_removed == 0:
        return out.astype(np.float32)
    if n_removed == rem.size:
        raise DataError("ROAD cannot impute an image whose every pixel is removed")
    c, h, w = img.shape
    var = np.full(h * w, -1, dtype=np.int64)
    flat_rem = np.flatnonzero(rem.ravel())
    var[flat_rem] = np.arange(n_removed)
    rows_r, cols_r = np.divmod(flat_rem, w)
    flat_img = img.reshape(c, -1)
    diag = np.zeros(n_removed)
    rhs = np.zeros((n_removed, c))
    a_rows, a_cols, a_vals = [], [], []
    for dr, dc, weight in ROAD_NEIGHBOURS:
        rr, cc = rows_r + dr, cols_r + dc
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        i = np.flatnonzero(inside)
        j = rr[inside] * w + cc[inside]
        diag[i] += weight
        unknown = var[j] >= 0
        a_rows.append(i[unknown])
        a_cols.append(var[j[unknown]])
        a_vals.append(np.full(int(unknown.sum()), -weight))
        np.add.at(rhs, i[~unknown], weight * flat_img[:, j[~unknown]].T)
    a_rows.append(np.arange(n_removed))
    a_cols.append(np.arange(n_removed))
    a_vals.append(diag)
    system = sparse.csc_matrix((np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))),
                               shape=(n_removed, n_removed))
    values = splu(system).solve(rhs)  # [n_removed, C]
    if noise > 0:
        values = values + (rng or np.random.default_rng(0)).normal(0.0, float(noise), size=values.shape)
    out.reshape(c, -1)[:, flat_rem] = values.T
    return out.astype(np.float32)


def road_passes(fractions: tuple[float, ...] | list[float] = ROAD_FRACTIONS) -> int:
    """Forward passes per explained image of :func:`road`: one per fraction and order."""
    return 2 * len(fractions)


def road_curves(model: nn.Module, x: np.ndarray, maps: np.ndarray, target: np.ndarray | int,
                fractions: tuple[float, ...] | list[float] = ROAD_FRACTIONS, noise: float = ROAD_NOISE,
                seed: int = 0, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The MoRF and LeRF curves behind :func:`road` (same arguments).

    Returns:
        ``(morf, lerf)``, each float [N, len(fractions)]: the target probability after each share of the pixels
        was removed and imputed, most (MoRF) or least (LeRF) relevant first.
    """
    xs, m, tgt = _check_model_inputs(x, maps, target)
    fr = [float(f) for f in fractions]
    if not fr or any(not 0.0 < f < 1.0 for f in fr):
        raise DataError(f"ROAD fractions must lie in (0, 1), got {list(fractions)!r}")
    if noise < 0:
        raise DataError(f"ROAD noise must be >= 0, got {noise!r}")
    n, _, h, w = xs.shape
    rng = np.random.default_rng(seed)
    order = np.argsort(-m.reshape(n, -1), axis=1, kind="stable")  # most relevant first, ties by pixel index
    perturbed = np.empty((2, n, len(fr), *xs.shape[1:]), dtype=np.float32)
    for k in range(n):
        for f_i, f in enumerate(fr):
            count = min(max(1, int(round(f * h * w))), h * w - 1)
            for o_i, chosen in enumerate((order[k, :count], order[k, ::-1][:count])):
                removed = np.zeros(h * w, dtype=bool)
                removed[chosen] = True
                perturbed[o_i, k, f_i] = noisy_linear_impute(xs[k], removed.reshape(h, w), noise, rng)
    device = _device(model)
    flat = torch.as_tensor(perturbed.reshape(-1, *xs.shape[1:]), device=device)
    item_target = np.tile(np.repeat(tgt, len(fr)), 2)
    scores = _target_scores(model, len(flat), lambda idx: flat[idx], item_target, batch_size)
    scores = scores.reshape(2, n, len(fr))
    return scores[0], scores[1]


def road(model: nn.Module, x: np.ndarray, maps: np.ndarray, target: np.ndarray | int,
         fractions: tuple[float, ...] | list[float] = ROAD_FRACTIONS, noise: float = ROAD_NOISE, seed: int = 0,
         batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """ROAD, RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent and Efficient Evaluation
    Strategy for Attribution Methods", ICML 2022).

    Deletion fills removed pixels with a constant, so the model sees images unlike any it was trained on and a
    drop of its output may come from the shape of the hole rather than from the lost information (the class
    information leaks through the removal mask). ROAD removes a share of the **pixels** (not patches) -- the most
    relevant first (MoRF) or the least relevant first (LeRF) -- and fills them by :func:`noisy_linear_impute`, which
    leaves little of the mask to see. For each share in ``fractions`` the target's softmax probability is read; a
    case's score is its mean over the shares. A faithful map gives a **low MoRF** score (removing what it marks
    destroys the evidence) and a **high LeRF** score (removing what it calls irrelevant keeps it). Ties in the map
    are broken by pixel index (row-major), so a map that is constant over large regions is scored in raster order
    there. Cost: :func:`road_passes` forward passes per image plus one sparse solve per share and order.

    Args:
        model: torch model, ``forward(x)`` -> logits.
        x: images [N, C, H, W] in [0, 1].
        maps: relevance maps [N, H, W] (larger = more relevant).
        target: explained class, an int or int array [N].
        fractions: shares of the pixels removed, each in (0, 1) (default 0.1, ..., 0.9).
        noise: standard deviation of the imputation noise.
        seed: seed of the imputation noise.
        batch_size: images per forward pass.

    Returns:
        ``(morf, lerf)``, each float [N].

    Raises:
        DataError: on malformed inputs or arguments.
    """
    morf, lerf = road_curves(model, x, maps, target, fractions=fractions, noise=noise, seed=seed,
                             batch_size=batch_size)
    return morf.mean(axis=1), lerf.mean(axis=1)


# --------------------------------------------------------------------------------------------------------------------
# Max-sensitivity
# --------------------------------------------------------------------------------------------------------------------


def _check_explained(maps: Any, n: int, hw: tuple[int, int], what: str) -> np.ndarray:
    m = _check_maps_only(maps, what)
    if m.shape != (n, *hw):
        raise DataError(f"{what} must be [N, H, W] = {(n, *hw)}, got {m.shape}")
    return m


def max_sensitivity(explain_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], x: np.ndarray,
                    target: np.ndarray | int, radius: float = 0.02, n_samples: int = 4, seed: int = 0,
                    reference: np.ndarray | None = None) -> np.ndarray:
    """Max-sensitivity (Yeh et al., "On the (in)fidelity and sensitivity of explanations", NeurIPS 2019).

    ``max_j ||e(x + d_j) - e(x)||_F / ||e(x)||_F`` over ``n_samples`` perturbations ``d_j`` drawn uniformly from
    ``[-radius, radius]`` per pixel and channel; the perturbed input is clipped to [0, 1]. The relative (normalised)
    form makes maps of different scales comparable. Cost: ``n_samples + 1`` calls of ``explain_fn`` on all cases.

    Args:
        explain_fn: ``explain_fn(x [N, C, H, W] float32, target [N] int64) -> maps [N, H, W]``.
        x: images [N, C, H, W] in [0, 1].
        target: explained class, an int or int array [N].
        radius: half-width of the uniform noise.
        n_samples: noisy copies per case.
        seed: seed of the noise.
        reference: ``explain_fn(x, target)`` if the caller already has it (saves that call); None computes it.

    Returns:
        float [N] >= 0; ``nan`` where the unperturbed map is all zero.

    Raises:
        DataError: on malformed inputs or an ``explain_fn`` returning the wrong shape or non-finite maps.
    """
    xs = _check_images(x)
    n, _, h, w = xs.shape
    tgt = _check_target(target, n)
    _check_positive_int(n_samples, "n_samples")
    if not radius >= 0:
        raise DataError(f"radius must be >= 0, got {radius!r}")
    e0 = _check_explained(explain_fn(xs, tgt) if reference is None else reference, n, (h, w), "explain_fn(x)")
    norm0 = np.sqrt((e0 * e0).reshape(n, -1).sum(axis=1))
    rng = np.random.default_rng(seed)
    worst = np.zeros(n)
    for _ in range(n_samples):
        noisy = np.clip(xs + rng.uniform(-radius, radius, size=xs.shape), 0.0, 1.0).astype(np.float32)
        e = _check_explained(explain_fn(noisy, tgt), n, (h, w), "explain_fn(x + noise)")
        worst = np.maximum(worst, np.sqrt(((e - e0) ** 2).reshape(n, -1).sum(axis=1)))
    out = np.full(n, np.nan)
    np.divide(worst, norm0, out=out, where=norm0 > 0)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Similarity of maps: Spearman and SSIM
# --------------------------------------------------------------------------------------------------------------------


def spearman_per_case(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps (average ranks for ties).

    Args:
        a, b: [N, H, W] maps of equal shape.

    Returns:
        float [N] in [-1, 1]; ``nan`` where either map is constant.
    """
    a, b = _check_pair(a, b, "a", "b")
    n = a.shape[0]
    if a[0].size == 0:
        return np.full(n, np.nan)
    ra = rankdata(a.reshape(n, -1), axis=1)
    rb = rankdata(b.reshape(n, -1), axis=1)
    return _rowwise_pearson(ra, rb)


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS,
         data_range: float = 1.0) -> np.ndarray:
    """Mean structural similarity of each pair of maps (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004).

    Local means, variances and the covariance are weighted by a Gaussian window of standard deviation ``sigma``
    truncated at ``radius`` pixels (default 1.5 and 3: a 7 x 7 window; the radius shrinks to fit maps smaller than
    the window), with population (not sample) statistics, ``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2`` for
    ``L = data_range``. The SSIM map is averaged over the pixels whose window lies inside the map. With
    ``radius=5`` (11 x 11) this equals scikit-image's ``structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)``.

    Args:
        a, b: [N, H, W] maps in [0, data_range].
        sigma: Gaussian window standard deviation.
        radius: window half-width.
        data_range: value range L.

    Returns:
        float [N] in [-1, 1]; 1 for identical maps.
    """
    a, b = _check_pair(a, b, "a", "b")
    n, h, w = a.shape
    if h == 0 or w == 0:
        return np.full(n, np.nan)
    r = max(0, min(int(radius), (min(h, w) - 1) // 2))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()

    def local_mean(v: np.ndarray) -> np.ndarray:
        v = ndimage.correlate1d(v, k, axis=1, mode="reflect")
        v = ndimage.correlate1d(v, k, axis=2, mode="reflect")
        return v[:, r:h - r, r:w - r]

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a * mu_a
    var_b = local_mean(b * b) - mu_b * mu_b
    cov = local_mean(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.reshape(n, -1).mean(axis=1)


def unit_abs(maps: np.ndarray) -> np.ndarray:
    """``|map| / max |map|`` per case (an all-zero map stays zero)."""
    a = np.abs(maps)
    peak = a.reshape(len(a), -1).max(axis=1, initial=0.0)[:, None, None]
    return np.divide(a, peak, out=np.zeros_like(a), where=peak > 0)


# --------------------------------------------------------------------------------------------------------------------
# Model-parameter randomisation
# --------------------------------------------------------------------------------------------------------------------


def cascading_groups(n_tensors: int, stages: int) -> list[list[int]]:
    """Split parameter-tensor indices 0..n_tensors-1 (registration order) into ``stages`` groups from the output end.

    Group 1 holds the last tensors (nearest the output), group ``stages`` the first ones; sizes differ by at most
    one (larger groups first). Stage s of :func:`randomisation_check` randomises groups 1..s.
    """
    _check_positive_int(stages, "stages")
    backwards = np.arange(n_tensors)[::-1]
    return [g.tolist() for g in np.array_split(backwards, stages)]


@torch.no_grad()
def _reinitialise(p: torch.Tensor, generator: torch.Generator) -> None:
    """Overwrite ``p`` with N(mean, std) of its own values; std 0.1 when the tensor is constant (or has one value)."""
    v = p.detach().double()
    mean = float(v.mean()) if v.numel() else 0.0
    std = float(v.std(unbiased=False)) if v.numel() > 1 else 0.0
    if not np.isfinite(std) or std <= 1e-12 * max(1.0, abs(mean)):
        std = 0.1
    noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
    p.copy_((noise * std + mean).to(dtype=p.dtype, device=p.device))


def randomised_models(model: nn.Module, stages: int, seed: int = 0) -> list[tuple[float, nn.Module]]:
    """The randomised copies of :func:`randomisation_check`'s stages: per stage s = 1..``stages``, (fraction of the
    parameter tensors re-initialised, a deep copy of ``model`` with groups 1..s of :func:`cascading_groups`
    re-initialised by :func:`_reinitialise` from a torch generator seeded by ``seed``). ``model`` is not modified.

    Every method's check of one model can share them (the copies depend only on the model, ``stages`` and ``seed``),
    which spares re-drawing the same random weights once per method.

    Raises:
        DataError: a model without parameters.
    """
    _check_positive_int(stages, "stages")
    randomised = copy.deepcopy(model)
    params = list(randomised.parameters())
    if not params:
        raise DataError(f"model {type(model).__name__} has no parameters to randomise")
    generator = torch.Generator().manual_seed(int(seed))
    out: list[tuple[float, nn.Module]] = []
    done = 0
    groups = cascading_groups(len(params), stages)
    for k, group in enumerate(groups):
        for i in group:
            _reinitialise(params[i], generator)
        done += len(group)
        out.append((done / len(params), randomised if k == len(groups) - 1 else copy.deepcopy(randomised)))
    return out


def randomisation_check(model: nn.Module, explain_fn: Callable[[nn.Module, np.ndarray, np.ndarray], np.ndarray],
                        x: np.ndarray, target: np.ndarray | int, stages: int = 3, seed: int = 0,
                        threshold: float = 0.5, return_maps: bool = False, reference: np.ndarray | None = None,
                        randomised: list[tuple[float, nn.Module]] | None = None) -> dict:
    """Cascading model-parameter randomisation (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).

    The model is deep-copied (the original is never modified). The copy's parameter tensors, in registration order
    (shared tensors once), are split into ``stages`` groups from the output end backwards
    (:func:`cascading_groups`); at stage s = 1..stages groups 1..s are re-initialised (cascading from the top).
    Each re-initialised tensor gets i.i.d. normal values with the tensor's own mean and standard deviation, or
    standard deviation 0.1 around its value when it is constant (e.g. BatchNorm weights of ones, zero biases).
    Buffers (BatchNorm running statistics) are left as trained. The random values come from a torch generator
    seeded by ``seed``.

    At each stage the maps of the randomised copy are compared with those of the original model, per case, by the
    Spearman rank correlation of the absolute maps (:func:`spearman_per_case`) and the SSIM (:func:`ssim`) of the
    maps each scaled to [0, 1] by its own maximum absolute value. A case's **similarity** is the Spearman
    correlation at full randomisation (the last stage); where that is undefined because a map is constant, it is 0
    when only one of the two maps is constant (a structured map turned flat, or the reverse: the explanation changed
    completely) and 1 when both are (nothing changed). A case **passes** when its similarity is below
    ``threshold``. Explanations that do not change when the model is randomised fail. (The SSIM of a map against a
    flat one rewards how flat the first already was, not whether it changed: Grad-CAM on an early ResNet stage,
    sparse and flat for the randomised model, got SSIM 0.75 and was called unchanged; so it decides nothing here.)

    Args:
        model: the trained torch model (not modified).
        explain_fn: ``explain_fn(model, x [N, C, H, W] float32, target [N] int64) -> maps [N, H, W]``.
        x: images [N, C, H, W] in [0, 1].
        target: explained class, an int or int array [N].
        stages: number of cascading stages.
        seed: seed of the random weights.
        threshold: similarity below which a case passes.
        return_maps: also return the maps (``"maps"``: the trained model's, then one [N, H, W] per stage), e.g.
            for a figure.
        reference: ``explain_fn(model, x, target)`` if the caller already has it (saves that call; the
            max-sensitivity test needs the same maps); None computes it.
        randomised: ``randomised_models(model, stages, seed)`` if the caller already has them (e.g. from the check of
            another method of the same model); None draws them.

    Returns:
        ``{"stages": [fraction of parameter tensors randomised per stage], "spearman": [float [N] per stage],
        "ssim": [float [N] per stage], "similarity": float [N], "passed": bool [N], "threshold": threshold}`` (and
        ``"maps"``).

    Raises:
        DataError: on malformed inputs, a model without parameters or ``explain_fn`` maps of the wrong shape.
    """
    xs = _check_images(x)
    n, _, h, w = xs.shape
    tgt = _check_target(target, n)
    _check_positive_int(stages, "stages")
    reference = _check_explained(explain_fn(model, xs, tgt) if reference is None else reference, n, (h, w),
                                 "explain_fn(model, x)")
    ref_abs = np.abs(reference)
    ref_unit = unit_abs(reference)

    if randomised is None:
        randomised = randomised_models(model, stages, seed)
    elif len(randomised) != stages:
        raise DataError(f"randomised: {len(randomised)} randomised models for {stages} stages")
    out: dict[str, Any] = {"stages": [], "spearman": [], "ssim": [], "threshold": float(threshold)}
    if return_maps:
        out["maps"] = [reference]
    for fraction, copy_ in randomised:
        maps = _check_explained(explain_fn(copy_, xs, tgt), n, (h, w), "explain_fn(randomised model, x)")
        out["stages"].append(fraction)
        if return_maps:
            out["maps"].append(maps)
        out["spearman"].append(spearman_per_case(ref_abs, np.abs(maps)))
        out["ssim"].append(ssim(ref_unit, unit_abs(maps)))
    final_rho = out["spearman"][-1]
    flat_ref, flat_last = _is_flat(ref_abs), _is_flat(np.abs(maps))
    flat_similarity = np.where(flat_ref & flat_last, 1.0, 0.0)  # both flat: unchanged; one flat: changed
    out["similarity"] = np.where(np.isnan(final_rho), flat_similarity, final_rho)
    out["passed"] = np.asarray(out["similarity"] < threshold, dtype=bool)
    before = discrete_entropy(reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["complexity_rise"] = np.where(before > 0, discrete_entropy(maps) / np.where(before > 0, before, 1.0),
                                          np.nan)
    return out


ENTROPY_BINS = 100
"""Histogram bins of :func:`discrete_entropy` (as in Hedstrom et al.'s eMPRT)."""


def discrete_entropy(maps: np.ndarray, bins: int = ENTROPY_BINS) -> np.ndarray:
    """Shannon entropy (nats) of the histogram of each absolute map scaled to [0, 1] by its maximum, over ``bins``
    equal bins: 0 for a map with one value, ``log(bins)`` at most. The complexity measure of eMPRT (Hedstrom et al.,
    "Sanity Checks Revisited: An Exploration to Repair the Model Parameter Randomisation Test", TMLR 2024): a map
    of a randomised model should look like noise, so its entropy should rise.

    Returns:
        float [N].
    """
    unit = unit_abs(_check_maps_only(maps)).reshape(len(maps), -1)
    out = np.empty(len(unit))
    for i, row in enumerate(unit):
        counts, _ = np.histogram(row, bins=bins, range=(0.0, 1.0))
        p = counts[counts > 0] / max(counts.sum(), 1)
        out[i] = float(-(p * np.log(p)).sum())
    return out


def smoothed_explain_fn(explain_fn: Callable[[nn.Module, np.ndarray, np.ndarray], np.ndarray], samples: int,
                        noise: float, seed: int = 0) -> Callable[[nn.Module, np.ndarray, np.ndarray], np.ndarray]:
    """``explain_fn`` averaged over ``samples`` copies of the input with Gaussian noise of standard deviation
    ``noise`` (clipped to [0, 1]): the denoising of sMPRT (Hedstrom et al. 2023/2024), which keeps the
    randomisation test from rewarding maps that are merely noisy (a noisy map differs from any other map,
    randomised model or not). The noise is drawn from ``seed`` on every call, so the trained and the randomised
    model see the very same noisy copies.
    """
    _check_positive_int(samples, "samples")

    def fn(model: nn.Module, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed)
        total = None
        for _ in range(samples):
            noisy = np.clip(x + rng.normal(0.0, float(noise), size=x.shape), 0.0, 1.0).astype(np.float32)
            maps = np.asarray(explain_fn(model, noisy, target), dtype=np.float64)
            total = maps if total is None else total + maps
        return (total / samples).astype(np.float32)

    return fn


def _is_flat(maps: np.ndarray) -> np.ndarray:
    """bool [N]: the map has a single value (no ranking of its pixels)."""
    flat = maps.reshape(len(maps), -1)
    return flat.max(axis=1) == flat.min(axis=1) if flat.shape[1] else np.ones(len(maps), dtype=bool)

"""Per-case overlap and boundary-distance metrics of binary segmentations.

Every function takes a predicted and a ground-truth stack of binary masks ``[N, H, W]`` (any dtype; non-zero means
inside) and returns one float64 value per case ``[N]``. Summaries with bootstrap intervals come from
:func:`glasszoo.evaluation.metrics.mean_ci` (which drops NaN values).

Conventions:

* :func:`dice` and :func:`iou` are 1.0 when *both* masks of a case are empty (nothing to find, nothing found), and
  0.0 when exactly one is empty.
* :func:`hausdorff95` is NaN when *either* mask is empty (a distance to an empty set is undefined). Averages over
  cases then silently exclude cases whose prediction is empty, so report :func:`empty_prediction_rate` (or the
  number of NaN values) beside it.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt

from glasszoo.evaluation.metrics import mean_ci
from glasszoo.models.errors import DataError

# cases per distance transform call (bounds the memory of the stacked transform)
_EDT_CHUNK = 256


def _check(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean [N, H, W] copies of ``pred`` and ``true``; :class:`DataError` on mismatched or non-3-D shapes."""
    pred = np.asarray(pred)
    true = np.asarray(true)
    if pred.ndim == 2 and true.ndim == 2:
        pred, true = pred[None], true[None]
    if pred.ndim != 3 or pred.shape != true.shape:
        raise DataError(f"pred and true must both be [N, H, W] masks of equal shape, got {pred.shape} and "
                        f"{true.shape}")
    return pred != 0, true != 0


def dice(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Dice coefficient ``2 |P & T| / (|P| + |T|)`` per case.

    Args:
        pred: [N, H, W] predicted masks (non-zero = lesion); a single [H, W] pair is accepted too.
        true: [N, H, W] ground-truth masks.

    Returns:
        float64 [N] in [0, 1]; 1.0 where both masks are empty.
    """
    p, t = _check(pred, true)
    inter = np.logical_and(p, t).sum(axis=(1, 2), dtype=np.float64)
    total = p.sum(axis=(1, 2), dtype=np.float64) + t.sum(axis=(1, 2), dtype=np.float64)
    out = np.ones(len(p))
    np.divide(2.0 * inter, total, out=out, where=total > 0)
    return out


def iou(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Intersection over union (Jaccard index) ``|P & T| / |P | T|`` per case.

    Returns:
        float64 [N] in [0, 1]; 1.0 where both masks are empty.
    """
    p, t = _check(pred, true)
    inter = np.logical_and(p, t).sum(axis=(1, 2), dtype=np.float64)
    union = np.logical_or(p, t).sum(axis=(1, 2), dtype=np.float64)
    out = np.ones(len(p))
    np.divide(inter, union, out=out, where=union > 0)
    return out


def boundaries(masks: np.ndarray) -> np.ndarray:
    """Inner boundary of each mask: pixels inside whose 4-neighbourhood leaves the mask (or the image).

    Args:
        masks: [N, H, W] binary masks.

    Returns:
        bool [N, H, W]; a one-pixel-thick mask is its own boundary, an empty mask has none.
    """
    m = np.asarray(masks) != 0
    structure = np.zeros((3, 3, 3), dtype=bool)  # 4-connectivity in-plane, no coupling between cases
    structure[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    return m & ~binary_erosion(m, structure=structure, border_value=0)


def _distance_to(targets: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels) of every pixel to the nearest ``True`` pixel *of the same case*.

    One stacked distance transform: the case axis is given a spacing of ``H + W``, larger than any in-plane
    distance, so the nearest target always lies in the same case whenever that case has one. Cases without a
    target get meaningless values (the callers mask them out).
    """
    _, h, w = targets.shape
    out = np.empty(targets.shape, dtype=np.float64)
    for i in range(0, len(targets), _EDT_CHUNK):
        chunk = targets[i:i + _EDT_CHUNK]
        if chunk.any():
            out[i:i + _EDT_CHUNK] = distance_transform_edt(~chunk, sampling=(float(h + w), 1.0, 1.0))
        else:
            out[i:i + _EDT_CHUNK] = np.nan
    return out


def hausdorff95(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Symmetric 95th-percentile Hausdorff distance per case, in pixels.

    The boundary of each mask is taken (:func:`boundaries`, 4-connectivity). For every boundary pixel of P the
    Euclidean distance to the nearest boundary pixel of T is measured (one ``distance_transform_edt`` of the
    complement of T's boundary), and vice versa. The result is the *larger* of the two directed 95th percentiles
    (``numpy.percentile``, linear interpolation), as in MONAI's ``compute_hausdorff_distance(percentile=95)``;
    MedPy's ``hd95`` instead takes the 95th percentile of the pooled distances, which can be slightly smaller.

    Returns:
        float64 [N] >= 0; 0.0 for identical masks; NaN where either mask is empty.
    """
    p, t = _check(pred, true)
    bp, bt = boundaries(p), boundaries(t)
    to_t, to_p = _distance_to(bt), _distance_to(bp)
    out = np.full(len(p), np.nan)
    for i in np.flatnonzero(bp.any(axis=(1, 2)) & bt.any(axis=(1, 2))):
        d_pt = to_t[i][bp[i]]  # boundary of P -> boundary of T
        d_tp = to_p[i][bt[i]]
        out[i] = max(float(np.percentile(d_pt, 95)), float(np.percentile(d_tp, 95)))
    return out


def empty_prediction_rate(pred: np.ndarray, true: np.ndarray) -> float:
    """Share of cases with a non-empty ground truth whose prediction is empty (NaN when no such case exists).

    These are the cases :func:`hausdorff95` leaves out (NaN), so report it beside the Hausdorff distance.
    """
    p, t = _check(pred, true)
    has_truth = t.any(axis=(1, 2))
    if not has_truth.any():
        return float("nan")
    return float((~p.any(axis=(1, 2)))[has_truth].mean())


def segmentation_summary(pred: np.ndarray, true: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """Dice, IoU and HD95 of ``pred`` against ``true``, each as ``mean_ci`` (mean with a bootstrap 95% CI).

    Dice and IoU average over all cases (1.0 where both masks are empty); HD95 over the cases where both masks are
    non-empty.

    Returns:
        ``{"dice": {"value", "ci"}, "iou": ..., "hausdorff95": ..., "n_cases": N, "n_cases_hausdorff": M,
        "empty_prediction_rate": r}``.
    """
    hd = hausdorff95(pred, true)
    return {
        "dice": mean_ci(dice(pred, true), n_boot=n_boot, seed=seed),
        "iou": mean_ci(iou(pred, true), n_boot=n_boot, seed=seed),
        "hausdorff95": mean_ci(hd, n_boot=n_boot, seed=seed),
        "n_cases": int(len(hd)),
        "n_cases_hausdorff": int(np.isfinite(hd).sum()),
        "empty_prediction_rate": empty_prediction_rate(pred, true),
    }

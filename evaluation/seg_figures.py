"""Figures of segmentation models (matplotlib, Agg backend): the lesion outlines and the attention gates of a case."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glasszoo.evaluation.plots import _save, plt

PRED_COLOR = "red"
TRUE_COLOR = "lime"


def _as_display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """[C, H, W] in [0, 1] -> something imshow draws (grey [H, W] with its colormap, or RGB [H, W, 3])."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        return image, "gray"
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be [C, H, W] with C in (1, 3), got shape {image.shape}")
    return (image[0], "gray") if image.shape[0] == 1 else (np.moveaxis(image, 0, -1).clip(0, 1), None)


def _outline(ax: plt.Axes, mask: np.ndarray | None, color: str, width: float) -> bool:
    """Draw the 0.5 contour of a binary mask; False when there is nothing to draw."""
    if mask is None:
        return False
    mask = np.asarray(mask)
    if not mask.any():
        return False
    ax.contour(mask.astype(np.float32), levels=[0.5], colors=color, linewidths=width)
    return True


def plot_segmentation_case(image: np.ndarray, pred_mask: np.ndarray | None, true_mask: np.ndarray | None,
                           gate_maps: Sequence[np.ndarray], path: str | Path, title: str = "",
                           gate_names: Sequence[str] | None = None) -> None:
    """One case of a segmentation model, in one row of panels.

    Panel 1: the image with the predicted lesion outline (red) and the ground-truth outline (lime); an empty mask
    draws no outline and the legend says so. Then one panel per attention gate: its map (``jet``, values in [0, 1])
    over the image. A gate map on a coarser grid than the image is stretched over the whole image (each map value
    covers its block of pixels), so maps of every level are shown in image coordinates.

    Args:
        image: [C, H, W] in [0, 1] (C = 1 or 3).
        pred_mask: [H, W] predicted binary mask (or None).
        true_mask: [H, W] ground-truth binary mask (or None when unknown).
        gate_maps: per gate a [h_i, w_i] map in [0, 1] (e.g. ``model.attention_maps(x)`` of one case).
        path: where the PNG is written (parent folders are created).
        title: figure title.
        gate_names: optional panel titles of the gate maps (default ``gate 1``, ``gate 2``, ...).
    """
    img, cmap = _as_display(image)
    h, w = img.shape[:2]
    for name, m in (("pred_mask", pred_mask), ("true_mask", true_mask)):
        if m is not None and np.asarray(m).shape != (h, w):
            raise ValueError(f"{name} must be [H, W] = {(h, w)}, got shape {np.asarray(m).shape}")
    names = list(gate_names) if gate_names is not None else [f"gate {i + 1}" for i in range(len(gate_maps))]
    if len(names) != len(gate_maps):
        raise ValueError(f"{len(gate_maps)} gate maps but {len(names)} gate names")
    n = 1 + len(gate_maps)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.8), squeeze=False)
    axes = axes[0]
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    for ax in axes:
        ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    has_true = _outline(axes[0], true_mask, TRUE_COLOR, 1.4)
    has_pred = _outline(axes[0], pred_mask, PRED_COLOR, 0.9)  # on top, thinner: both stay visible where they agree
    legend = [f"predicted ({PRED_COLOR})" + ("" if has_pred else ": empty"),
              "ground truth (" + TRUE_COLOR + ")" + ("" if has_true else (": empty" if true_mask is not None
                                                                         else ": unknown"))]
    axes[0].set_title("\n".join(legend), fontsize=7)
    for ax, gmap, name in zip(axes[1:], gate_maps, names):
        gmap = np.asarray(gmap, dtype=np.float32)
        if gmap.ndim != 2:
            raise ValueError(f"each gate map must be [h, w], got shape {gmap.shape}")
        ax.imshow(gmap, cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=extent, interpolation="nearest")
        ax.set_title(f"{name} ({gmap.shape[0]}x{gmap.shape[1]})", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)

"""Figures of a run (matplotlib, Agg backend): the data first, pictures second."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from glasszoo.training.caseset import CaseSet  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def plot_roc(y: np.ndarray, probas: dict[str, np.ndarray], class_names: list[str], positive_class: int,
             path: str | Path) -> None:
    """ROC curves of every model on the test set (binary: the positive class; multi-class: micro one-vs-rest)."""
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    for name, p in probas.items():
        if p.shape[1] == 2:
            fpr, tpr, _ = roc_curve(y == positive_class, p[:, positive_class])
        else:
            onehot = np.eye(p.shape[1])[y]
            fpr, tpr, _ = roc_curve(onehot.ravel(), p.ravel())
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    what = f"positive = {class_names[positive_class]}" if len(class_names) == 2 else "micro-averaged one-vs-rest"
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC, test set ({what})", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_heatmaps(cs: CaseSet, rows: np.ndarray, maps: np.ndarray, path: str | Path, title: str = "",
                  proba: np.ndarray | None = None) -> None:
    """A grid: per case the image (with the lesion outline when masks exist) and the heatmap over it."""
    n = len(rows)
    fig, axes = plt.subplots(2, n, figsize=(1.7 * n, 3.8), squeeze=False)
    for j, r in enumerate(rows):
        img = cs.images[r]
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
        for ax in axes[:, j]:
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if cs.masks is not None and cs.masks[r].any():
                ax.contour(cs.masks[r], levels=[0.5], colors="lime", linewidths=0.8)
        m = maps[j]
        mx = float(np.abs(m).max())
        axes[1, j].imshow(m / mx if mx > 0 else m, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        label = cs.class_names[cs.labels[r]]
        sub = f"{cs.case_ids[r]}\ntrue: {label}"
        if proba is not None:
            k = int(proba[j].argmax())
            sub += f"\npred: {cs.class_names[k]} {proba[j, k]:.2f}"
        axes[0, j].set_title(sub, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_intervention(curves: dict[str, dict], path: str | Path, title: str = "") -> None:
    """Test AUC and accuracy as 0, 1, ..., K concepts per case are set to their true values (one line per order)."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for order, c in curves.items():
        for ax, key in zip(axes, ("auc", "accuracy")):
            ax.plot(c["n_corrected"], c[key], marker="o", ms=3, label=order.replace("_", " "))
    for ax, key in zip(axes, ("test AUC", "test accuracy")):
        ax.set(xlabel="concepts corrected per case", ylabel=key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)

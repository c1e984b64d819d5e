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
    """ROC curves of every model on the test set: binary, of the positive class; multi-class, one panel per class
    (that class against the rest: the curves whose mean area is the macro one-vs-rest AUC the tables report)."""
    k = len(class_names)
    panels = [positive_class] if k == 2 else list(range(k))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.3), squeeze=False)
    for ax, c in zip(axes[0], panels):
        present = bool((y == c).any()) and bool((y != c).any())
        for name, p in probas.items():
            if present:
                fpr, tpr, _ = roc_curve(y == c, p[:, c])
                ax.plot(fpr, tpr, label=name)
        if not present:
            ax.text(0.5, 0.5, f"no ROC: the test set holds\n{'no' if not (y == c).any() else 'only'} "
                              f"'{class_names[c]}' cases", ha="center", va="center", fontsize=9)
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        title = (f"ROC, test set (positive = {class_names[c]})" if k == 2
                 else f"{class_names[c]} vs rest")
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1))
        if present and probas:
            ax.legend(loc="lower right", fontsize=8)
    if k > 2:
        fig.suptitle("ROC, test set: each class against the rest (macro AUC = mean of the panels' AUCs)", fontsize=10)
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


def _signed_unit(m: np.ndarray) -> np.ndarray:
    """A map scaled by its own largest absolute value into [-1, 1] (the one colour convention of every grid)."""
    mx = float(np.abs(m).max())
    return m / mx if mx > 0 else m


def _grey(img: np.ndarray) -> np.ndarray:
    return img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)


def plot_comparison(images: np.ndarray, masks: np.ndarray | None, row_labels: list[str],
                    columns: list[tuple[str, np.ndarray]], path: str | Path, title: str = "") -> None:
    """All methods side by side: rows are cases; columns the image, the lesion outline, then one column per method.

    Every map is scaled by its own largest absolute value and drawn with one diverging colour map over [-1, 1]
    (red: relevance for the explained class, blue: against it, white: none), over the grey image.

    Args:
        images: [R, C, H, W] the cases' images.
        masks: [R, H, W] lesion masks or None.
        row_labels: per case a short label (id, true class, prediction).
        columns: (column title, maps [R, H, W]) per method; the title may hold the method's metric values.
        path: the PNG to write.
        title: figure title.
    """
    n_rows, n_cols = len(images), 2 + len(columns)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols, 1.6 * n_rows + 1.2), squeeze=False)
    for i in range(n_rows):
        img = _grey(images[i])
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            if j >= 1 and masks is not None and masks[i].any():
                ax.contour(masks[i], levels=[0.5], colors="lime", linewidths=0.6)
            if j >= 2:
                ax.imshow(_signed_unit(columns[j - 2][1][i]), cmap="bwr", vmin=-1, vmax=1, alpha=0.6)
        axes[i, 0].set_ylabel(row_labels[i], fontsize=6)
    axes[0, 0].set_title("image", fontsize=7)
    axes[0, 1].set_title("lesion mask" if masks is not None else "(no mask)", fontsize=7)
    for j, (col_title, _) in enumerate(columns):
        axes[0, j + 2].set_title(col_title, fontsize=5.5)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_randomisation(images: np.ndarray, stage_labels: list[str], methods: dict[str, list[np.ndarray]],
                       path: str | Path, title: str = "") -> None:
    """The cascading-randomisation sanity check as pictures: per method and case, the map of the trained model and
    of the models with more and more of their parameters randomised (from the output end).

    Args:
        images: [R, C, H, W] the cases.
        stage_labels: labels of the stages (first: the trained model).
        methods: method -> list over stages of maps [R, H, W].
        path: the PNG to write.
        title: figure title.
    """
    n_stages = len(stage_labels)
    cols = [(m, r) for m in methods for r in range(len(images))]
    fig, axes = plt.subplots(n_stages, len(cols), figsize=(1.3 * len(cols), 1.35 * n_stages + 0.8), squeeze=False)
    for j, (method, r) in enumerate(cols):
        for s in range(n_stages):
            ax = axes[s, j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(_grey(images[r]), cmap="gray", vmin=0, vmax=1)
            ax.imshow(_signed_unit(methods[method][s][r]), cmap="bwr", vmin=-1, vmax=1, alpha=0.6)
            if j == 0:
                ax.set_ylabel(stage_labels[s], fontsize=6)
        axes[0, j].set_title(method.replace('_', ' ') + f"\ncase {r + 1}", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_feature_contributions(names: list[str], contribution: np.ndarray, values: np.ndarray, path: str | Path,
                               title: str = "", top: int = 8) -> None:
    """One case's largest feature contributions (by absolute value) as horizontal bars, with the feature values."""
    contribution = np.asarray(contribution, dtype=np.float64)
    order = np.argsort(-np.abs(contribution), kind="stable")[:top][::-1]
    fig, ax = plt.subplots(figsize=(5.2, 0.32 * len(order) + 0.9))
    colours = ["tab:red" if contribution[k] > 0 else "tab:blue" for k in order]
    ax.barh(range(len(order)), contribution[order], color=colours)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([f"{names[k]} = {values[k]:.3g}" for k in order], fontsize=6)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("contribution to the explained class", fontsize=7)
    if title:
        ax.set_title(title, fontsize=7)
    _save(fig, path)

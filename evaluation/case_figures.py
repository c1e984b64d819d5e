"""One figure per explained case, for people: what the model predicted and the evidence it shows for it.

``explain_case`` asks any zoo model for its explanations of one case and draws what they hold, the figure chosen by
the explanation's type (:data:`RENDERERS`; models return data, this module draws it):

* a prototype network ("this looks like that", Chen et al. 2019): per top prototype, where on the test image it
  fires (drawn the way that scored the better pointing game in the run, :func:`choose_drawing`), the training case
  it was projected onto with the prototype patch boxed, the patch enlarged, and the similarity x weight = points it
  adds to the explained class;
* a concept bottleneck model (Koh et al. 2020): each concept's predicted value (and the true one when known) with
  the points it adds to the explained class, the heatmap of the top concept, and the prediction before and after
  correcting the most wrong concept (test-time intervention);
* an attention-gated model (Oktay et al. 2018, Schlemper et al. 2019): the predicted lesion outline next to the
  ground truth, and each gate's attention map;
* a tabular model: the features that moved the score most, with their values;
* every other image model: its heatmap(s) over the image (a black box: its post-hoc Grad-CAM).

A glass-box model's or a concept bottleneck's counterfactual (:func:`case_counterfactual`: the smallest change of its
features or concepts that flips the decision) joins the returned explanations, for the case page and the terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glasszoo.evaluation.plots import _save, plot_feature_contributions, plt
from glasszoo.evaluation.posthoc import explain_posthoc
from glasszoo.evaluation.seg_figures import plot_segmentation_case
from glasszoo.models.explanations import (
    ConceptEvidence,
    Counterfactual,
    FeatureAttribution,
    Heatmap,
    PrototypeEvidence,
    PrototypeMatch,
)

_BOX_PERCENTILE = 95.0  # the test-image box encloses the pixels at or above this percentile of the activation

DRAWING_LABELS: dict[str, tuple[str, str]] = {
    "prototype_activation": ("upsampling its similarity map", "upsampling"),
    "prototype_smoothgrad": ("SmoothGrad of its similarity", "SmoothGrad"),
}
"""Heatmap method of a prototype drawing -> (how the figure names it, short name); others by their method name."""


def pointing_game_scores(explanation: dict) -> dict[str, float]:
    """Heatmap method -> its pointing game in a model's ``explanation`` blocks of ``metrics.json`` (the methods
    scored against lesion masks): what the case figure chooses a prototype's drawing by."""
    out = {}
    for key, block in (explanation or {}).items():
        value = block.get("pointing_game", {}).get("value") if isinstance(block, dict) else None
        if isinstance(value, (int, float)) and np.isfinite(value):
            out[key] = float(value)
    return out


def _label(method: str) -> tuple[str, str]:
    return DRAWING_LABELS.get(method, (method.replace("_", " "), method.replace("_", " ")))


def choose_drawing(match: PrototypeMatch, scores: dict[str, float] | None) -> tuple[str, np.ndarray, str]:
    """Which of a prototype's drawings the figure shows, and why: (method, map [H, W], reason for the title).

    The candidates are the match's ``drawings`` (in the model's order). The one whose heatmap method has the highest
    pointing game in ``scores`` (:func:`pointing_game_scores` of the run) is drawn; a tie, or no score at all, keeps
    the first the model lists. A match without drawings: its ``activation_map``, and no reason to give.
    """
    if not match.drawings:
        return "activation_map", np.asarray(match.activation_map, dtype=np.float32), ""
    drawings = dict(match.drawings)
    names = list(drawings)
    scored = {k: float(scores[k]) for k in names if scores and k in scores and np.isfinite(scores[k])}
    best = max(scored, key=lambda k: (scored[k], -names.index(k))) if scored else names[0]
    text = f"drawn by {_label(best)[0]}"
    others = [k for k in names if k != best and k in scored]
    if best in scored and others:
        vs = ", ".join(f"{scored[k]:.2f} for {_label(k)[1]}" for k in others)
        tie = "; a tie keeps the first" if any(scored[k] == scored[best] for k in others) else ""
        text += f"\n(pointing game {scored[best]:.2f} vs {vs}{tie})"
    elif len(names) > 1:
        text += "\n(no pointing-game scores to choose by)"
    return best, np.asarray(drawings[best], dtype=np.float32), text


def _show(ax: plt.Axes, img: np.ndarray) -> None:
    img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _rect(ax: plt.Axes, box: tuple[int, int, int, int], color: str = "yellow") -> None:
    r0, c0, r1, c1 = box
    ax.add_patch(plt.Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor=color, linewidth=1.5))


def activation_box(act: np.ndarray, percentile: float = _BOX_PERCENTILE) -> tuple[int, int, int, int]:
    """Bounding box (row0, col0, row1, col1; end exclusive) of the pixels at or above ``percentile`` of ``act``
    (the paper's way of boxing where a prototype fires on a test image)."""
    rows, cols = np.nonzero(act >= np.percentile(act, percentile))
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def context_box(box: tuple[int, int, int, int], shape: tuple[int, int], factor: float = 1.5
                ) -> tuple[int, int, int, int]:
    """``box`` (row0, col0, row1, col1; end exclusive) grown ``factor`` times about its centre, at least 8 px a side,
    kept inside an image of ``shape`` (H, W): the patch enlarged with a margin of its surroundings, so a small patch
    is not a block of flat colour and a large one is not the whole image again."""
    r0, c0, r1, c1 = box
    h, w = shape
    out = []
    for lo, hi, side in ((r0, r1, h), (c0, c1, w)):
        size = min(side, max(8, int(round((hi - lo) * factor))))
        centre = (lo + hi) / 2.0
        start = int(round(centre - size / 2.0))
        start = min(max(start, 0), side - size)
        out.append((start, start + size))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def touches_border(box: tuple[int, int, int, int], shape: tuple[int, int]) -> bool:
    """Whether ``box`` reaches the image's edge (a prototype there may encode the frame or the background)."""
    r0, c0, r1, c1 = box
    return r0 <= 0 or c0 <= 0 or r1 >= shape[0] or c1 >= shape[1]


def _outline(ax: plt.Axes, mask: np.ndarray | None) -> None:
    if mask is not None and np.asarray(mask).any():
        ax.contour(mask, levels=[0.5], colors="lime", linewidths=0.8)


def _header(proba: np.ndarray, class_names: list[str], case_id: str | None, label: int | None) -> str:
    k = int(proba.argmax())
    lines = [f"case {case_id}" if case_id is not None else "new image",
             f"predicted: {class_names[k]} (p = {proba[k]:.2f})"]
    if label is not None:
        lines.append(f"true: {class_names[label]}")
    return "\n".join(lines)


def plot_prototype_case(image: np.ndarray, matches: list[PrototypeMatch], class_names: list[str],
                        proba: np.ndarray, logits: np.ndarray, explained: int, path: str | Path,
                        source_image: Callable[[str], np.ndarray | None], case_id: str | None = None,
                        label: int | None = None, mask: np.ndarray | None = None,
                        scores: dict[str, float] | None = None) -> None:
    """The "this looks like that" figure of one case.

    Args:
        image: the test image [C, H, W] in [0, 1].
        matches: its top prototypes (from :class:`PrototypeEvidence`), by contribution to class ``explained``.
        class_names: class names.
        proba: predicted probabilities [classes]; logits: the logits [classes] (total points per class).
        explained: the class the contributions are for.
        path: the PNG to write.
        source_image: case id -> that training image [C, H, W] (None if unavailable).
        case_id, label, mask: the case's id, true class and lesion mask, when known.
        scores: heatmap method -> pointing game in the run (:func:`pointing_game_scores`): each prototype is drawn
            the way that scored better (:func:`choose_drawing`).
    """
    n = len(matches)
    fig, axes = plt.subplots(n + 1, 4, figsize=(10.5, 2.4 * (n + 1)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1, 1.35]}, layout="constrained")
    for ax in axes.ravel():
        ax.set_axis_off()
    ax = axes[0, 0]
    ax.set_axis_on()
    _show(ax, image)
    _outline(ax, mask)
    ax.set_title("test image" + (" (lesion outlined)" if mask is not None and np.any(mask) else ""), fontsize=7)
    points = ", ".join(f"{c}: {v:.2f}" for c, v in zip(class_names, logits))
    shown = sum(m.contribution for m in matches)
    header = axes[0, 1].text(0, 0.5, _header(proba, class_names, case_id, label) +
                             f"\n\ntotal points per class: {points}\nthe {n} prototypes below add {shown:.2f} "
                             f"points to '{class_names[explained]}'\n(each total is the sum over all prototypes of "
                             f"similarity x weight;\nweights of other classes' prototypes are negative, so every\n"
                             f"total can be negative: the largest one is the prediction)", fontsize=7, va="center",
                             transform=axes[0, 1].transAxes)
    # the header runs over the empty columns to its right; left in the layout, it would push them apart
    header.set_in_layout(False)
    for i, m in enumerate(matches, 1):
        ax = axes[i, 0]
        ax.set_axis_on()
        _show(ax, image)
        _, act, how = choose_drawing(m, scores)
        ax.imshow(act, cmap="jet", alpha=0.45, interpolation="bilinear")
        _rect(ax, activation_box(act))
        ax.set_title("this part of the image ..." + (f"\n{how}" if how else ""), fontsize=6 if how else 7)
        src = source_image(m.source_case_id) if m.source_case_id else None
        if src is not None:
            ax = axes[i, 1]
            ax.set_axis_on()
            _show(ax, src)
            _rect(ax, m.source_box)
            ax.set_title(f"... looks like this patch\nof training case {m.source_case_id}", fontsize=7)
            r0, c0, r1, c1 = context_box(m.source_box, src.shape[-2:])
            ax = axes[i, 2]
            ax.set_axis_on()
            _show(ax, src[:, r0:r1, c0:c1])
            b0, b1, b2, b3 = m.source_box
            _rect(ax, (b0 - r0, b1 - c0, b2 - r0, b3 - c0))
            border = "\nat the image border: may be the frame\nor the background" \
                if touches_border(m.source_box, src.shape[-2:]) else ""
            ax.set_title(f"prototype {m.prototype}, enlarged\nin its surroundings{border}", fontsize=7)
        else:
            axes[i, 1].text(0.5, 0.5, "prototype not projected\n(no source case)", ha="center", fontsize=7,
                            transform=axes[i, 1].transAxes)
        weight = m.contribution / m.similarity if m.similarity else float("nan")
        axes[i, 3].text(0, 0.5, f"prototype of class\n'{class_names[m.prototype_class]}'\n"
                                f"similarity {m.similarity:.2f}\nx weight {weight:.2f}\n"
                                f"= {m.contribution:+.2f} points\nfor '{class_names[explained]}'",
                        fontsize=8, va="center", transform=axes[i, 3].transAxes)
    fig.suptitle("Why the model decided so: the nearest prototype cases (\"this looks like that\")", fontsize=9)
    _save(fig, path)


def plot_heatmap_case(image: np.ndarray, heatmaps: list[tuple[str, np.ndarray]], class_names: list[str],
                      proba: np.ndarray, path: str | Path, case_id: str | None = None, label: int | None = None,
                      mask: np.ndarray | None = None) -> None:
    """One case: the image and each named heatmap over it (each scaled to its own maximum)."""
    fig, axes = plt.subplots(1, 1 + len(heatmaps), figsize=(2.3 * (1 + len(heatmaps)), 2.8), squeeze=False)
    _show(axes[0, 0], image)
    _outline(axes[0, 0], mask)
    axes[0, 0].set_title(_header(proba, class_names, case_id, label), fontsize=7)
    for ax, (name, m) in zip(axes[0, 1:], heatmaps):
        _show(ax, image)
        mx = float(np.abs(m).max())
        ax.imshow(m / mx if mx > 0 else m, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        _outline(ax, mask)
        ax.set_title(name, fontsize=7)
    _save(fig, path)


def plot_concept_case(image: np.ndarray, evidence: ConceptEvidence, heatmap: np.ndarray, class_names: list[str],
                      proba: np.ndarray, path: str | Path, case_id: str | None = None, label: int | None = None,
                      mask: np.ndarray | None = None, corrected: tuple[str, np.ndarray] | None = None) -> None:
    """The concept-bottleneck figure of one case (``evidence`` holds exactly one case).

    Args:
        heatmap: [H, W] map of the top contributing concept.
        corrected: (name of the corrected concept, probabilities after the correction), when true concepts are known.
    """
    names = evidence.concept_names
    contrib = np.asarray(evidence.contribution[0], dtype=float)
    pred = np.asarray(evidence.predicted[0], dtype=float)
    true = None if evidence.true is None else np.asarray(evidence.true[0], dtype=float)
    explained = class_names[int(evidence.target[0])]
    fig, axes = plt.subplots(1, 3, figsize=(11, 0.4 * len(names) + 2.4), gridspec_kw={"width_ratios": [1, 1.6, 1]},
                             layout="constrained")
    _show(axes[0], image)
    mx = float(np.abs(heatmap).max())
    axes[0].imshow(heatmap / mx if mx > 0 else heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    _outline(axes[0], mask)
    top = int(np.abs(contrib).argmax())
    axes[0].set_title(f"where '{names[top]}' is seen ({contrib[top]:+.2f} points)\n(Grad-CAM of the concept that "
                      f"moved the logit most)", fontsize=7)
    ax = axes[1]
    bars, labels = list(contrib), [f"{n}: {p:.2f}" + ("" if true is None else f" (true {t:g})") for n, p, t in
                                   zip(names, pred, true if true is not None else pred)]
    if evidence.intercept is not None:  # drawn, so the bars add up to the logit
        bars.append(float(np.asarray(evidence.intercept)[0]))
        labels.append("intercept (the head's bias)")
    y = np.arange(len(bars))[::-1]
    ax.barh(y, bars, color=["tab:red" if c > 0 else "tab:blue" for c in bars])
    ax.axvline(0, color="black", lw=0.6)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel(f"points added to '{explained}' (weight x concept)", fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    total = f": logit {sum(bars):+.2f}" if evidence.intercept is not None else ""
    ax.set_title(f"predicted concepts and what each adds (bars + intercept = the logit of '{explained}'{total})",
                 fontsize=8)
    axes[2].set_axis_off()
    text = _header(proba, class_names, case_id, label)
    if corrected is not None:
        cname, p_after = corrected
        k = int(p_after.argmax())
        text += (f"\n\ncorrecting the most wrong concept\n'{cname}' to its true value:\n"
                 f"predicted {class_names[k]} (p = {p_after[k]:.2f})")
    axes[2].text(0, 0.5, text, fontsize=8, va="center", transform=axes[2].transAxes)
    fig.suptitle("Concept bottleneck: the diagnosis is read from these concepts only", fontsize=9)
    _save(fig, path)


@dataclass
class Case:
    """One case to draw: the model's input for it, and what a reader sees and knows of it.

    Attributes:
        x: the model's input for this one case (an image [1, C, H, W] or a feature row [1, F]).
        image: the image [C, H, W] shown in the figure (None when there is none to show).
        case_id, label, mask, true_concepts: the case's id, true class, lesion mask and true concepts, when known.
    """

    x: np.ndarray
    image: np.ndarray | None = None
    case_id: str | None = None
    label: int | None = None
    mask: np.ndarray | None = None
    true_concepts: np.ndarray | None = None


def case_explanations(model: Any, case: Case, top_k: int = 3) -> list:
    """The explanations a case figure draws: the model's own, or, for a torch model with no heatmap of its own (a
    black box), its post-hoc Grad-CAM (:func:`glasszoo.evaluation.posthoc.explain_posthoc`)."""
    kinds = model.explanation_kinds
    kwargs: dict = {}
    if "prototype_evidence" in kinds:
        kwargs["top_k"] = top_k
    if "concept_evidence" in kinds and case.true_concepts is not None:
        kwargs["true_concepts"] = np.asarray(case.true_concepts, dtype=np.float32)[None]
    ids = None if case.case_id is None else np.array([case.case_id], dtype=object)
    exps = list(model.explain(case.x, case_ids=ids, **kwargs))
    if not any(isinstance(e, Heatmap) for e in exps) and isinstance(model, torch.nn.Module):
        exps.append(explain_posthoc(model, case.x, "gradcam", case_ids=ids))
    return exps


def case_counterfactual(model: Any, case: Case, class_names: list[str]) -> Counterfactual | None:
    """The case's counterfactual (the smallest change that flips the decision) when the model searches one: a
    glass-box model in its feature table, a concept bottleneck in its concepts (``model.counterfactual``); None
    for the others, and for a model fitted without the training ranges the search needs."""
    search = getattr(model, "counterfactual", None)
    if not callable(search):
        return None
    ids = None if case.case_id is None else np.array([case.case_id], dtype=object)
    try:
        return search(case.x, class_names=list(class_names), case_ids=ids)
    except NotImplementedError:
        return None


def _draw_prototypes(model: Any, case: Case, exps: list, proba: np.ndarray, class_names: list[str], path: Path,
                     source_image: Callable[[str], np.ndarray | None], scores: dict[str, float]) -> None:
    evidence = next(e for e in exps if isinstance(e, PrototypeEvidence))
    heat = next(e for e in exps if isinstance(e, Heatmap))
    with torch.no_grad():
        model.eval()
        logits = model(torch.as_tensor(case.x, device=model.device)).float().cpu().numpy()[0]
    plot_prototype_case(case.image, evidence.matches[0], class_names, proba, logits, int(heat.target[0]), path,
                        source_image, case.case_id, case.label, case.mask, scores)


def _draw_concepts(model: Any, case: Case, exps: list, proba: np.ndarray, class_names: list[str], path: Path,
                   source_image: Callable[[str], np.ndarray | None], scores: dict[str, float]) -> None:
    ev = next(e for e in exps if isinstance(e, ConceptEvidence))
    heat = next(e for e in exps if isinstance(e, Heatmap))
    corrected = None if ev.corrected is None else (ev.corrected[0], np.asarray(ev.corrected_proba)[0])
    plot_concept_case(case.image, ev, heat.maps[0], class_names, proba, path, case.case_id, case.label, case.mask,
                      corrected)


def _draw_features(model: Any, case: Case, exps: list, proba: np.ndarray, class_names: list[str], path: Path,
                   source_image: Callable[[str], np.ndarray | None], scores: dict[str, float]) -> None:
    fa = next(e for e in exps if isinstance(e, FeatureAttribution))
    k = int(proba.argmax())
    title = (f"{case.case_id or 'new case'}" + (f" (true {class_names[case.label]}, " if case.label is not None
                                                 else " (") + f"pred {class_names[k]} {proba[k]:.2f})")
    plot_feature_contributions(fa.feature_names, fa.contribution[0], fa.values[0], path, title=title)


def _draw_heatmaps(model: Any, case: Case, exps: list, proba: np.ndarray, class_names: list[str], path: Path,
                   source_image: Callable[[str], np.ndarray | None], scores: dict[str, float]) -> None:
    xt = torch.as_tensor(case.x, device=model.device)
    with torch.no_grad():
        model.eval()
        gates = [g[0].float().cpu().numpy() for g in model.attention_maps(xt)]
    maps = [(e.method, e.maps[0]) for e in exps if isinstance(e, Heatmap)]
    if gates or model.segments:  # attention-gated models: the predicted outline, every gate, then the scored maps
        pred = model.predict_masks(case.x)[0] if model.segments else None
        k = int(proba.argmax())
        title = (f"{'case ' + case.case_id if case.case_id is not None else 'new image'}: predicted "
                 f"{class_names[k]} (p = {proba[k]:.2f})"
                 + (f", true {class_names[case.label]}" if case.label is not None else ""))
        plot_segmentation_case(case.image, pred, case.mask, gates + [m for _, m in maps], path, title=title,
                               gate_names=[f"gate {i + 1}" for i in range(len(gates))]
                               + [f"map scored as '{method}'" for method, _ in maps])
        return
    plot_heatmap_case(case.image, maps, class_names, proba, path, case.case_id, case.label, case.mask)


RENDERERS: tuple[tuple[type, Callable], ...] = (
    (PrototypeEvidence, _draw_prototypes),
    (ConceptEvidence, _draw_concepts),
    (FeatureAttribution, _draw_features),
    (Heatmap, _draw_heatmaps),
)
"""Explanation type -> the case figure that draws it; the first type a model's explanations hold wins."""


def explain_case(model: Any, case: Case, class_names: list[str], path: str | Path,
                 source_image: Callable[[str], np.ndarray | None] | None = None, top_k: int = 3,
                 scores: dict[str, float] | None = None) -> list:
    """Explain one case with ``model`` and write its figure to ``path``; returns the explanations drawn.

    The figure is chosen by the type of the explanations (:data:`RENDERERS`): prototype evidence gets the "this looks
    like that" figure (``top_k`` prototypes, their training sources from ``source_image``), concept evidence the
    concept bars (with the correction of the most wrong concept when the true concepts are known), feature
    attributions the contribution bars, heatmaps the maps over the image (attention gates and the predicted outline
    for attention-gated models). ``scores`` (heatmap method -> pointing game in the run,
    :func:`pointing_game_scores`) lets a renderer choose between drawings (a prototype's).
    """
    exps = case_explanations(model, case, top_k)
    cf = case_counterfactual(model, case, class_names)
    if cf is not None:
        exps.append(cf)
    proba = model.predict_proba(case.x)[0]
    for kind, draw in RENDERERS:
        if any(isinstance(e, kind) for e in exps):
            draw(model, case, exps, proba, class_names, Path(path), source_image or (lambda _cid: None),
                 dict(scores or {}))
            break
    return exps

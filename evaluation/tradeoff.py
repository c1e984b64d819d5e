"""The headline trade-off chart: every model's test AUC against what a reader must take in to follow one decision.

Each model of ``metrics.json`` may carry a ``reading_load`` block, ``{"count", "unit", "definition"}``: how many
terms, conditions, items, prototypes or concepts a reader takes in to follow one of its decisions (the unit differs
between families; ``docs/report.md`` defines it per family). A model without one -- its decision cannot be followed
from its explanation, e.g. a black box explained post hoc -- is still on the chart, as a horizontal band at its AUC
confidence interval. The chart marks the Pareto front (higher AUC, smaller count) among the models with a count.

Labels never overlap: each model is numbered (1..N by AUC) and its number is put next to its marker by
:func:`place_labels`, which tries positions on rings of growing radius around the marker, in display pixels, and
keeps the first whose box (measured with the renderer's real text extents) is inside the axes and clear of every label
placed before it and, where possible, of every marker. A numbered legend beside the axes names the models.

Functions: :func:`tradeoff_points` (the data), :func:`place_labels` (the placer), :func:`plot_tradeoff` (the PNG and
the final label boxes).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from glasszoo.evaluation import stats
from glasszoo.models.errors import DataError

DPI = 100
MAP_ONLY = "cannot be followed (map only)"
NOT_RECORDED = "not recorded"

# layout, in inches
_LEFT, _BOTTOM, _TOP, _RIGHT, _GAP = 0.8, 0.75, 0.45, 0.15, 0.3
_AXES_WIDTH, _MIN_AXES_HEIGHT = 6.6, 4.3
_FONT, _LEGEND_FONT, _LINE = 8.0, 8.0, 0.165  # label font (pt), legend font (pt), legend line height (in)
_MARKER = 7.0  # marker size (pt)
_LABEL_GAP = 3.0  # pixels kept free between two label boxes, and between a label and a marker


class LabelPlacementError(RuntimeError):
    """No free spot is left for a label inside the bounds (the caller enlarges the axes and tries again)."""


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


def _num(v: Any) -> float:
    """``v`` as a float; ``nan`` for None, strings and anything else that is not a number (bools are not numbers)."""
    if isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _reading_load(name: str, block: dict) -> tuple[float | None, str | None, str | None]:
    """(count, unit, definition) of a model's ``reading_load`` block, or Nones when it has none.

    Raises:
        DataError: a block that is not ``{"count": number >= 0, "unit": text, ...}``.
    """
    load = block.get("reading_load")
    if load is None:
        return None, None, None
    count = _num(load.get("count")) if isinstance(load, dict) else math.nan
    if not (math.isfinite(count) and count >= 0 and isinstance(load.get("unit"), str) and load["unit"]):
        raise DataError(f"model '{name}': reading_load must be {{'count': number >= 0, 'unit': text, "
                        f"'definition': text}}, got {load!r}")
    definition = load.get("definition")
    return count, load["unit"], str(definition) if definition else None


def tradeoff_points(metrics: dict) -> list[dict]:
    """One entry per model of the run (none dropped), numbered 1..N by test AUC, highest first.

    Args:
        metrics: the run's ``metrics.json``.

    Returns:
        In number order (ties keep the order of ``metrics.json``; a model without an AUC comes last): ``{"number",
        "model", "family", "input", "auc", "ci": [lo, hi], "count", "unit", "definition", "pareto"}``. ``count``,
        ``unit`` and ``definition`` are None for a model without ``reading_load``; ``auc`` and the bounds are ``nan``
        when missing. ``pareto`` marks the non-dominated models (higher AUC, smaller count;
        :func:`stats.pareto_front`) among those with a count and an AUC; a model without a count is never on it.

    Raises:
        DataError: a malformed ``reading_load`` block (naming the model).
    """
    points = []
    for name, m in metrics["models"].items():
        auc_block = (m.get("task") or {}).get("auc")
        auc_block = auc_block if isinstance(auc_block, dict) else {}
        ci = auc_block.get("ci")
        lo, hi = (_num(ci[0]), _num(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (math.nan,) * 2
        count, unit, definition = _reading_load(name, m)
        points.append({"model": name, "family": str(m.get("family", "?")), "input": str(m.get("input", "?")),
                       "auc": _num(auc_block.get("value")), "ci": [lo, hi], "count": count, "unit": unit,
                       "definition": definition, "pareto": False})
    counted = [p for p in points if p["count"] is not None]
    if counted:
        front = stats.pareto_front(np.array([p["count"] for p in counted]), np.array([p["auc"] for p in counted]),
                                   maximize=(False, True))
        for p, on in zip(counted, front):
            p["pareto"] = bool(on)
    order = sorted(range(len(points)), key=lambda i: (not math.isfinite(points[i]["auc"]),
                                                      -points[i]["auc"] if math.isfinite(points[i]["auc"]) else 0, i))
    out = [points[i] for i in order]
    for k, p in enumerate(out, start=1):
        p["number"] = k
    return out


def format_count(count: float) -> str:
    """A reading-load count: a whole number when it is one (or from 100 on), else one decimal (``4.3``)."""
    return f"{round(count):d}" if count >= 100 or abs(count - round(count)) < 0.05 else f"{count:.1f}"


def load_text(point: dict, recorded: bool = True) -> str:
    """A point's reading load as text: ``6 terms`` (``1 term``), else ``cannot be followed (map only)``, or
    ``not recorded`` when the run records no reading load at all (``recorded`` False)."""
    if point["count"] is None:
        return MAP_ONLY if recorded else NOT_RECORDED
    text = format_count(point["count"])
    unit = point["unit"]
    if text == "1" and unit.endswith("s") and len(unit) > 1:
        unit = unit[:-1]
    return f"{text} {unit}"


# --------------------------------------------------------------------------------------------------------------------
# Label placement
# --------------------------------------------------------------------------------------------------------------------


def _ring(anchor: np.ndarray, size: np.ndarray, r: float, step: float) -> np.ndarray:
    """Candidate boxes [K, 4] (x0, y0, x1, y1) around ``anchor`` at distance ``r``, in order of preference: right of
    the anchor first, then the directions nearest to it (above before below), the left last. Eight directions on the
    first rings, more as the ring grows, so that neighbouring candidates are about ``step`` apart."""
    n = max(8, int(math.ceil(2 * math.pi * r / step)) // 8 * 8)
    theta = 2 * math.pi * np.arange(n) / n
    dist = np.minimum(theta, 2 * math.pi - theta)
    order = np.lexsort((theta > math.pi, dist))
    ux, uy = np.cos(theta[order]), np.sin(theta[order])
    w, h = size
    reach = r + np.abs(ux) * w / 2 + np.abs(uy) * h / 2  # the box's edge is at distance ~r from the anchor
    cx, cy = anchor[0] + ux * reach, anchor[1] + uy * reach
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _hits(cands: np.ndarray, boxes: np.ndarray, gap: float) -> np.ndarray:
    """bool [K]: whether each candidate comes closer than ``gap`` to any of ``boxes`` [M, 4]."""
    if not len(boxes):
        return np.zeros(len(cands), dtype=bool)
    c, b = cands[:, None, :], boxes[None, :, :]
    return np.any((c[..., 0] < b[..., 2] + gap) & (b[..., 0] < c[..., 2] + gap)
                  & (c[..., 1] < b[..., 3] + gap) & (b[..., 1] < c[..., 3] + gap), axis=1)


def place_labels(anchors: np.ndarray, sizes: np.ndarray, bounds: Sequence[float], obstacles: np.ndarray | None = None,
                 clearance: np.ndarray | None = None, gap: float = _LABEL_GAP, step: float = 3.0) -> np.ndarray:
    """Boxes for labels of the given sizes, each near its anchor, no two closer than ``gap``, all inside ``bounds``.

    Labels are placed in the given order. For each, candidate positions lie on rings of growing radius around its
    anchor (from ``clearance`` on, ``step`` apart, up to the diagonal of ``bounds``, so every position in the bounds
    is reached); the first candidate inside ``bounds`` and at least ``gap`` from every label placed before it and
    from every obstacle is kept. When none is clear of the obstacles, the first clear of the labels is kept (a label
    may then cover a marker, never another label). Coordinates are display pixels (any one frame will do).

    Args:
        anchors: [N, 2] the points the labels belong to.
        sizes: [N, 2] width and height of each label's box.
        bounds: (x0, y0, x1, y1) every box must lie in.
        obstacles: [M, 4] boxes (markers) labels should keep clear of.
        clearance: [N] the distance of the first ring from each anchor (e.g. the marker's radius); default 0.
        gap: free space kept around every box.
        step: distance between rings and between neighbouring candidates on a ring.

    Returns:
        [N, 4] boxes (x0, y0, x1, y1).

    Raises:
        LabelPlacementError: a label finds no free spot in ``bounds``.
    """
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 2)
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    obstacles = np.zeros((0, 4)) if obstacles is None else np.asarray(obstacles, dtype=np.float64).reshape(-1, 4)
    clearance = np.zeros(len(anchors)) if clearance is None else np.asarray(clearance, dtype=np.float64)
    bx0, by0, bx1, by1 = (float(v) for v in bounds)
    r_max = math.hypot(bx1 - bx0, by1 - by0) + float(sizes.max(initial=0.0))
    placed = np.zeros((0, 4))
    for i, (anchor, size) in enumerate(zip(anchors, sizes)):
        fallback = None
        r = float(clearance[i]) + gap
        chosen = None
        while r <= r_max + step:
            cands = _ring(anchor, size, r, step)
            inside = (cands[:, 0] >= bx0) & (cands[:, 1] >= by0) & (cands[:, 2] <= bx1) & (cands[:, 3] <= by1)
            free = inside & ~_hits(cands, placed, gap)
            clear = free & ~_hits(cands, obstacles, gap)
            if clear.any():
                chosen = cands[np.argmax(clear)]
                break
            if fallback is None and free.any():
                fallback = cands[np.argmax(free)]
            r += step
        chosen = fallback if chosen is None else chosen
        if chosen is None:
            raise LabelPlacementError(f"no free spot for label {i} of size {size.tolist()} in bounds {list(bounds)}")
        placed = np.vstack([placed, chosen])
    return placed


# --------------------------------------------------------------------------------------------------------------------
# The chart
# --------------------------------------------------------------------------------------------------------------------


def _legend_line(p: dict, recorded: bool) -> str:
    load = "map only" if p["count"] is None and recorded else load_text(p, recorded)
    return f"{p['number']:>2}  {p['model']}: {load} ({p['family']})"


def _x_limits(counts: list[float]) -> tuple[str, tuple[float, float]]:
    """The x scale (``log``, or ``symlog`` when a count is 0) and its limits, with room on the right for the bands'
    labels."""
    if not counts:
        return "log", (1.0, 100.0)
    lo, hi = min(counts), max(counts)
    if lo <= 0:
        return "symlog", (-0.4, max(hi, 1.0) * 3.0)
    if hi / lo < 3:
        return "log", (lo / 2.5, hi * 4.0)
    return "log", (lo / 1.8, hi * 3.0)


def _y_limits(points: list[dict]) -> tuple[float, float]:
    vals = [v for p in points for v in (p["auc"], *p["ci"]) if math.isfinite(v)]
    lo, hi = min(vals), max(vals)
    span = max(hi - lo, 0.06)
    mid = (lo + hi) / 2
    lo, hi = mid - span / 2, mid + span / 2
    return lo - 0.1 * span, hi + 0.1 * span


def _render(points: list[dict], scale: float) -> tuple[bytes, list[dict]]:
    """Draw the chart with axes ``scale`` times the default size (see :func:`plot_tradeoff`)."""
    # matplotlib's object API, so no pyplot state is touched; imported only when a chart is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: matplotlib
    from matplotlib.figure import Figure  # heavy: matplotlib
    from matplotlib.lines import Line2D  # heavy: matplotlib
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # heavy: matplotlib

    recorded = any(p["count"] is not None for p in points)
    plotted = [p for p in points if math.isfinite(p["auc"])]
    ax_w = _AXES_WIDTH * scale
    lines = [" #  model: reading load (family)", *(_legend_line(p, recorded) for p in points)]
    height = round(max(_MIN_AXES_HEIGHT * scale + _BOTTOM + _TOP, _TOP + (len(lines) + 4) * _LINE + 0.2), 2)
    ax_h = height - _BOTTOM - _TOP
    fig = Figure(figsize=(ax_w + _LEFT + _GAP + 2.0 + _RIGHT, height), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()

    families = list(dict.fromkeys(p["family"] for p in points))
    cmap = _colours(len(families))
    colour = {f: cmap[i] for i, f in enumerate(families)}

    # the numbered legend beside the axes, positioned in inches so that widening the figure does not move it
    legend_x = _LEFT + ax_w + _GAP
    texts = []
    for k, line in enumerate(lines):
        y = height - _TOP - k * _LINE
        p = points[k - 1] if k else None
        t = fig.text(legend_x + 0.16, y, line, transform=fig.dpi_scale_trans, fontsize=_LEGEND_FONT, va="top",
                     ha="left", family="monospace", fontweight="bold" if p is not None and p["pareto"] else "normal")
        texts.append(t)
        if p is not None:
            fig.add_artist(Line2D([legend_x + 0.05], [y - _LINE * 0.42], transform=fig.dpi_scale_trans, marker="s",
                                  ms=6, color=colour[p["family"]], ls="none"))
    keys = ["filled: Pareto front (bold)", "open: dominated", "band + dashed line: AUC CI of a model",
            "  whose decision cannot be followed"] if recorded else ["no reading load recorded in this run:",
                                                                     "every model is a band at its AUC CI"]
    for j, key in enumerate(keys):
        texts.append(fig.text(legend_x + 0.05, height - _TOP - (len(lines) + 0.6 + j) * _LINE, key,
                              transform=fig.dpi_scale_trans, fontsize=_LEGEND_FONT - 0.5, va="top", color="#57606a"))
    legend_w = max(t.get_window_extent(renderer).x1 for t in texts) / DPI - legend_x
    width = round(legend_x + legend_w + _RIGHT + 0.05, 2)
    fig.set_size_inches(width, height)
    ax = fig.add_axes((_LEFT / width, _BOTTOM / height, ax_w / width, ax_h / height))

    counts = [p["count"] for p in plotted if p["count"] is not None]
    xscale, xlim = _x_limits(counts)
    ylim = _y_limits(plotted) if plotted else (0.4, 1.0)
    if xscale == "symlog":
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
    else:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlim(*xlim)  # before anything is drawn: a log axis with no points yet has no valid limits
    for p in plotted:
        c = colour[p["family"]]
        lo, hi = p["ci"]
        if p["count"] is None:
            if math.isfinite(lo) and math.isfinite(hi):
                ax.axhspan(lo, hi, color=c, alpha=0.10, lw=0, zorder=0)
            ax.axhline(p["auc"], color=c, ls="--", lw=1.1, zorder=1)
            continue
        if math.isfinite(lo) and math.isfinite(hi):
            err = [[max(p["auc"] - lo, 0.0)], [max(hi - p["auc"], 0.0)]]
            ax.errorbar(p["count"], p["auc"], yerr=err, fmt="none", ecolor=c, alpha=0.55, lw=1, capsize=2, zorder=2)
        ax.plot(p["count"], p["auc"], marker="o", ms=_MARKER, ls="none", zorder=3, color=c, mec=c, mew=1.4,
                mfc=c if p["pareto"] else "white")
    front = sorted((p for p in plotted if p["pareto"]), key=lambda p: (p["count"], p["auc"]))
    if front:
        xs = [p["count"] for p in front] + [xlim[1]]
        ys = [p["auc"] for p in front] + [front[-1]["auc"]]
        ax.plot(xs, ys, drawstyle="steps-post", color="black", lw=1.0, alpha=0.7, zorder=1.5)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_autoscale_on(False)
    ax.grid(alpha=0.3, which="major")
    unit = "count, log scale; its unit per model in the legend" if recorded else "none recorded in this run"
    ax.set_xlabel(f"what a reader must take in to follow one decision ({unit})", fontsize=9)
    ax.set_ylabel("test AUC (95% CI)", fontsize=9)
    ax.set_title("Accuracy against what a reader must take in", fontsize=10)
    ax.tick_params(labelsize=8)
    canvas.draw()  # the layout is final from here on: the axes have a fixed position and fixed limits

    # the numbers, first at their anchors to measure them with the renderer
    right_edge = ax.get_yaxis_transform()  # x in axes fraction, y in data
    anchors, labels, obstacles, clearance = [], [], [], []
    marker_px = _MARKER * DPI / 72
    for p in plotted:
        band = p["count"] is None
        xy, coords = ((1.0, p["auc"]), ("axes fraction", "data")) if band else ((p["count"], p["auc"]), "data")
        anchor = (right_edge if band else ax.transData).transform(xy)
        anchors.append(anchor)
        clearance.append(0.0 if band else marker_px / 2)
        if not band:
            half = marker_px / 2 + 1
            obstacles.append([anchor[0] - half, anchor[1] - half, anchor[0] + half, anchor[1] + half])
        labels.append(ax.annotate(str(p["number"]), xy, xycoords=coords, xytext=(0, 0), textcoords="offset pixels",
                                  ha="center", va="center", fontsize=_FONT, zorder=6, annotation_clip=False,
                                  bbox={"boxstyle": "square,pad=0.25", "fc": "white", "ec": colour[p["family"]],
                                        "lw": 0.9, "alpha": 0.95}))
    canvas.draw()
    drawn = [_box(t, renderer) for t in labels]
    sizes = np.array([b[2:] - b[:2] for b in drawn]).reshape(-1, 2)
    axes_box = ax.get_window_extent(renderer)
    bounds = (axes_box.x0 + 1, axes_box.y0 + 1, axes_box.x1 - 1, axes_box.y1 - 1)
    boxes = place_labels(np.array(anchors).reshape(-1, 2), sizes, bounds, np.array(obstacles).reshape(-1, 4),
                         np.array(clearance))
    inverse = ax.transData.inverted()
    for t, anchor, box, p in zip(labels, anchors, boxes, plotted):
        centre = (box[:2] + box[2:]) / 2
        t.xyann = tuple(centre - anchor)
        near = max(abs(centre[0] - anchor[0]) - (box[2] - box[0]) / 2,
                   abs(centre[1] - anchor[1]) - (box[3] - box[1]) / 2)
        if near > marker_px:  # far from its marker: a leader line, under the labels
            (x0, y0), (x1, y1) = inverse.transform(anchor), inverse.transform(centre)
            ax.plot([x0, x1], [y0, y1], color=colour[p["family"]], lw=0.6, alpha=0.8, zorder=5)
    canvas.draw()
    total_h = fig.bbox.height
    out = []
    for t, p in zip(labels, plotted):
        x0, y0, x1, y1 = _box(t, renderer)
        out.append({"model": p["model"], "text": t.get_text(), "x0": float(x0), "y0": float(total_h - y1),
                    "x1": float(x1), "y1": float(total_h - y0)})
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # no bbox_inches: the PNG's pixels are the display pixels above
    return buf.getvalue(), out


def _box(text: Any, renderer: Any) -> np.ndarray:
    """The drawn extent of a label (its box patch and edge line) in display pixels, as (x0, y0, x1, y1)."""
    patch = text.get_bbox_patch()
    bb = patch.get_window_extent(renderer)
    half = patch.get_linewidth() * DPI / 72 / 2
    return np.array([bb.x0 - half, bb.y0 - half, bb.x1 + half, bb.y1 + half])


def _colours(n: int) -> list:
    """``n`` distinct colours: tab10, then tab20's lighter shades."""
    # heavy: matplotlib (imported only when a chart is drawn)
    from matplotlib import colormaps

    base = [colormaps["tab10"](i) for i in range(10)]
    extra = [colormaps["tab20"](2 * i + 1) for i in range(10)]
    palette = base + extra
    return [palette[i % len(palette)] for i in range(n)]


def plot_tradeoff(metrics: dict) -> tuple[bytes, list[dict]]:
    """The headline chart: every model's test AUC (95% CI bars) against its reading load (log scale).

    Models with a count are points: filled on the Pareto front (joined by its step line), open when dominated. A
    model without one is a band at its AUC CI with a dashed line at its AUC. Each model's number (from
    :func:`tradeoff_points`) sits beside its marker (a band's at its right end), placed by :func:`place_labels` so
    that no two labels intersect; the numbered legend beside the axes gives name, reading load and family (bold:
    on the front). A model without an AUC is only in the legend. When the axes are too crowded for every label, they
    are enlarged and the chart drawn again.

    Args:
        metrics: the run's ``metrics.json``.

    Returns:
        (PNG bytes, one label box per plotted model: ``{"model", "text", "x0", "y0", "x1", "y1"}`` in pixels of the
        PNG, origin top left).

    Raises:
        DataError: a malformed ``reading_load`` block.
        LabelPlacementError: the labels find no room even in axes enlarged five times over (1.4 times each time).
    """
    points = tradeoff_points(metrics)
    scale = 1.0
    for _ in range(4):
        try:
            return _render(points, scale)
        except LabelPlacementError:
            scale *= 1.4
    return _render(points, scale)

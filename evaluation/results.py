"""The results contract: ``metrics.json`` -> ``tradeoff.csv`` rows and the terminal table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from glasszoo.evaluation.metrics import METRIC_NAMES, format_value

TASK_KEYS = tuple(METRIC_NAMES)


SCORE_KEYS = ("pointing_game", "mass_in_mask", "rank_accuracy", "deletion_auc", "insertion_auc",
              "faithfulness_correlation", "max_sensitivity", "sparseness", "randomisation_similarity",
              "road_morf", "road_lerf", "randomisation_smooth_similarity", "randomisation_complexity_rise",
              "occlusion_rank_correlation")


def tradeoff_rows(metrics: dict) -> list[dict]:
    """One flat row per (model, explanation method): the model's task metrics with CI bounds, the method's quality
    scores with CI bounds, its cost (ms and forward/backward passes per image), and the model's training cost.

    A model without explanations gets one row with empty explanation columns. ``primary`` marks, per model, the row
    of its first heatmap (else its first explanation): the one row per model of a model-level table.
    ``reading_load`` and ``reading_load_unit``: what a reader takes in to follow one decision (empty when the model
    reports none).
    """
    rows = []
    for name, m in metrics["models"].items():
        load = m.get("reading_load") or {}
        base = {"model": name, "family": m["family"], "input": m.get("input", ""),
                "reading_load": load.get("count"), "reading_load_unit": load.get("unit")}
        for key in TASK_KEYS:
            d = m["task"].get(key, {})
            base[key] = d.get("value")
            lo, hi = d.get("ci", [None, None])
            base[f"{key}_lo"], base[f"{key}_hi"] = lo, hi
        cost = {"train_seconds": m["cost"].get("train_seconds"), "params": m["cost"].get("params")}
        blocks = [(k, b) for k, b in m.get("explanation", {}).items() if isinstance(b, dict) and "kind" in b]
        if not blocks:
            rows.append({**base, "primary": True, **cost})
            continue
        primary = next((k for k, b in blocks if b["kind"] == "heatmap"), blocks[0][0])
        for method, block in blocks:
            row = {**base, "explanation": method, "explanation_kind": block["kind"],
                   "explanation_source": block.get("source", ""), "primary": method == primary,
                   "explanation_cases": block.get("n_cases"),
                   "explanation_ms_per_image": block.get("ms_per_image")}
            passes = block.get("passes_per_image") or {}
            row["forward_passes_per_image"] = passes.get("forward")
            row["backward_passes_per_image"] = passes.get("backward")
            for score in SCORE_KEYS:
                if score in block:
                    row[score] = block[score]["value"]
                    row[f"{score}_lo"], row[f"{score}_hi"] = block[score]["ci"]
            if "randomisation" in block:
                row["randomisation_passed"] = block["randomisation"]["passed"]
            rows.append({**row, **cost})
    return rows


def write_tradeoff(metrics: dict, path: str | Path) -> pd.DataFrame:
    """Write ``tradeoff.csv`` (one row per model and explanation method) and return it."""
    df = pd.DataFrame(tradeoff_rows(metrics))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    return df


def _load_text(m: dict) -> str:
    load = m.get("reading_load")
    return f"{load['count']:.3g} {load['unit']}" if load else "–"


def format_markdown(metrics: dict) -> str:
    """The results table as Markdown (for ``docs/results.md``): every model's test metrics with their CIs, its
    training time and what a reader takes in to follow one of its decisions ("–": it cannot be followed)."""
    rows = [[name, *(format_value(m["task"][k]) for k in TASK_KEYS), f"{m['cost']['train_seconds']:.0f}",
             _load_text(m)] for name, m in metrics["models"].items()]
    return _markdown_table(["model", *TASK_KEYS, "train s", "reader takes in"], rows)


def format_surrogates_markdown(metrics: dict) -> str:
    """The run's global surrogates as Markdown: per imitated model and surrogate the agreement and fidelity AUC
    with its predictions, the surrogate's AUC against the labels and what a reader takes in (empty: none)."""
    rows = []
    for target, block in (metrics.get("surrogates") or {}).items():
        if not isinstance(block, dict) or "surrogates" not in block:
            continue
        for name, s in block["surrogates"].items():
            if "error" in s:
                rows.append([target, f"{name} ({s.get('model', '')})", f"failed: {s['error']}", "", "", "", ""])
                continue
            f = s["fidelity"]
            rows.append([target, f"{name} ({s['model']})", format_value(f["agreement"]), format_value(f["auc"]),
                         format_value(s["task"]["auc"]), format_value(block["target_test_auc"]), _load_text(s)])
    if not rows:
        return ""
    return _markdown_table(["imitated model", "surrogate", "agreement", "fidelity AUC", "AUC against labels",
                            "imitated model's AUC", "reader takes in"], rows)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the header, its separator, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


_EXPLANATION_COLUMNS = (("pointing_game", "pointing game"), ("mass_in_mask", "mass in mask"),
                        ("rank_accuracy", "rank acc."), ("deletion_auc", "deletion AUC ↓"),
                        ("insertion_auc", "insertion AUC ↑"), ("road_morf", "ROAD MoRF ↓"),
                        ("road_lerf", "ROAD LeRF ↑"), ("faithfulness_correlation", "faithfulness corr."),
                        ("randomisation_similarity", "randomisation similarity (pass)"),
                        ("randomisation_smooth_similarity", "sMPRT similarity ↓"),
                        ("randomisation_complexity_rise", "eMPRT rise ↑"),
                        ("max_sensitivity", "max-sens. ↓"), ("occlusion_rank_correlation", "ρ with occlusion"))


def format_explanations_markdown(metrics: dict) -> str:
    """Every heatmap of the run as one Markdown row (for ``docs/results.md``): the model, the method, whether the map
    is the model's own or post hoc, the cases it was computed on, its quality scores with their CIs (two decimals;
    the randomisation similarity with the share of checked cases that passed), its cost in ms per image and its
    counted forward + backward passes per image ("–" when the model's ``explain()`` calls no ``forward()``)."""
    header = ["model", "method", "source", "cases", *(title for _, title in _EXPLANATION_COLUMNS), "ms/img",
              "passes f+b"]
    rows = []
    for name, m in metrics["models"].items():
        for method, block in m.get("explanation", {}).items():
            if not (isinstance(block, dict) and block.get("kind") == "heatmap"):
                continue
            cells = [name, method, block.get("source", ""), str(block.get("n_cases", ""))]
            for key, _ in _EXPLANATION_COLUMNS:
                cell = format_value(block[key], digits=2) if block.get(key) else ""
                passes = {"randomisation_similarity": "randomisation",
                          "randomisation_smooth_similarity": "randomisation_smooth"}.get(key)
                if passes and cell and passes in block:
                    cell += f" ({100 * block[passes]['passed_fraction']:.0f}%)"
                cells.append(cell)
            ms = block.get("ms_per_image")
            cells.append("" if ms is None else f"{ms:.1f}")
            passes = block.get("passes_per_image")
            cells.append(f"{passes['forward']:g}+{passes['backward']:g}" if passes else "–")
            rows.append(cells)
    return _markdown_table(header, rows)


def format_table(metrics: dict) -> str:
    """A plain-text results table: every model's test metrics with 95% CIs, and its training cost."""
    header = ["model", "family", *TASK_KEYS, "train s", "params"]
    body = []
    for name, m in metrics["models"].items():
        body.append([name, m["family"], *(format_value(m["task"][k]) for k in TASK_KEYS),
                     f"{m['cost']['train_seconds']:.1f}", f"{m['cost']['params']:,}"])
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [f"test set of '{metrics['dataset']['name']}' (values with bootstrap CIs)",
           "  ".join(h.ljust(w) for h, w in zip(header, widths)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(out)

"""The report of a run: one self-contained, offline ``report.html`` (every figure embedded, inline CSS, no script).

It gathers what ``glasszoo run`` wrote into a run directory (``metrics.json``, ``models/<name>/predictions.csv``,
``figures/``, optionally ``audit.json`` and ``seeds.json``) and adds what only a comparison across models shows:
the headline chart of every model's AUC against what a reader must take in to follow one decision
(:mod:`glasszoo.evaluation.tradeoff`), paired tests of every model against a reference (DeLong for AUC, McNemar for
accuracy, Holm-adjusted), reliability diagrams and confusion matrices, the Pareto fronts of task AUC against
explanation quality, generated summary sentences and per-case pages.

Usage: ``python -m glasszoo.evaluation.report RUN_DIR [--reference MODEL]``.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from glasszoo.evaluation import stats, tradeoff  # noqa: E402
from glasszoo.evaluation.metrics import METRIC_NAMES  # noqa: E402
from glasszoo.evaluation.results import SCORE_KEYS, tradeoff_rows  # noqa: E402
from glasszoo.models.errors import DataError  # noqa: E402
from glasszoo.training.atomic import atomic_write_text  # noqa: E402
from glasszoo.training.rundir import RunDir, safe_filename  # noqa: E402

METRIC_LABELS = {"auc": "AUC", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "f1": "F1",
                 "sensitivity": "sensitivity", "specificity": "specificity"}
SCORE_LABELS = {"pointing_game": "pointing game", "mass_in_mask": "relevance mass in mask",
                "rank_accuracy": "relevance rank accuracy", "deletion_auc": "deletion AUC",
                "insertion_auc": "insertion AUC", "road_morf": "ROAD MoRF", "road_lerf": "ROAD LeRF",
                "faithfulness_correlation": "faithfulness correlation",
                "max_sensitivity": "max-sensitivity", "sparseness": "sparseness",
                "randomisation_similarity": "randomisation similarity",
                "randomisation_smooth_similarity": "smooth randomisation similarity (sMPRT)",
                "randomisation_complexity_rise": "complexity rise under randomisation (eMPRT)",
                "occlusion_rank_correlation": "rank correlation with occlusion"}
# scores for which a smaller value means a better explanation
LOWER_IS_BETTER = frozenset({"deletion_auc", "road_morf", "max_sensitivity", "randomisation_similarity",
                             "randomisation_smooth_similarity"})
# the x axes of the Pareto panels (task AUC is always the y axis), in panel order
PARETO_SCORES = ("insertion_auc", "deletion_auc", "faithfulness_correlation", "pointing_game", "mass_in_mask")
ALPHA = 0.05
DASH = "\u2013"

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; max-width: 1440px; padding: 1.5rem 2rem 4rem; color: #1d2329; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; }
h2 { font-size: 1.3rem; margin-top: 2.4rem; border-bottom: 2px solid #d8dee4; padding-bottom: .25rem; }
h3 { font-size: 1.05rem; margin-top: 1.6rem; }
.meta { color: #57606a; margin-top: 0; }
nav { font-size: .9rem; margin: 1rem 0; }
nav a { margin-right: .9rem; color: #0b5cad; text-decoration: none; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .86rem; }
th, td { padding: .3rem .6rem; text-align: left; vertical-align: top; border-bottom: 1px solid #e3e7eb; }
thead th { background: #eef1f4; border-bottom: 2px solid #c9d1d9; white-space: nowrap; }
tbody tr:nth-child(even) { background: #f7f8fa; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { min-width: 7rem; }
.sub { display: block; color: #8a939c; font-size: .78rem; white-space: nowrap; }
.ci { color: #8a939c; white-space: nowrap; }
.scroll { overflow-x: auto; max-width: 100%; }
.pass { color: #1a7f37; font-weight: 600; }
.fail { color: #cf222e; font-weight: 600; }
.note { color: #57606a; font-size: .88rem; }
.warn { color: #9a3412; }
figure { margin: .5rem 0 1rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e7eb; }
figcaption { color: #57606a; font-size: .82rem; }
.row { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
.row figure { flex: 0 1 auto; max-width: 100%; }
details { margin: .4rem 0; }
summary { cursor: pointer; font-weight: 600; }
section.case { border-top: 1px solid #d8dee4; padding-top: .4rem; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .8rem; }
ul#summary li { margin-bottom: .35rem; }
"""


# --------------------------------------------------------------------------------------------------------------------
# Numbers and text
# --------------------------------------------------------------------------------------------------------------------


def _num(v: Any) -> float:
    """``v`` as a float; ``nan`` for None, strings and anything else that is not a number."""
    if isinstance(v, bool):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _finite(v: Any) -> bool:
    return math.isfinite(_num(v))


def _fmt(v: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``–`` when missing or not finite."""
    x = _num(v)
    return f"{x:.{digits}f}" if math.isfinite(x) else DASH


def _fmt_p(p: Any) -> str:
    """A p-value: three decimals, ``<0.001`` below that, ``–`` when missing."""
    x = _num(p)
    if not math.isfinite(x):
        return DASH
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _fmt_ms(v: Any) -> str:
    """Milliseconds: one decimal from 1 ms on, two significant digits below (``0.012``); ``–`` when missing."""
    x = _num(v)
    if not math.isfinite(x):
        return DASH
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.2g}"


def _ci_bounds(block: Any) -> tuple[float, float]:
    ci = block.get("ci") if isinstance(block, dict) else None
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return _num(ci[0]), _num(ci[1])
    return math.nan, math.nan


def format_ci(value: Any, ci: Sequence[Any] | None = None, digits: int = 3) -> str:
    """Plain text ``0.912 [0.871, 0.948]``; ``–`` for a missing value, no interval when its bounds are missing."""
    lo, hi = (_num(ci[0]), _num(ci[1])) if ci is not None and len(ci) == 2 else (math.nan, math.nan)
    if not _finite(value):
        return DASH
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return _fmt(value, digits)
    return f"{_fmt(value, digits)} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _ci_html(value: Any, ci: Sequence[Any] | None = None, digits: int = 3) -> str:
    """:func:`format_ci` as HTML, the interval in grey (its text content is exactly the plain-text form)."""
    text = format_ci(value, ci, digits)
    if " [" not in text:
        return html.escape(text)
    head, tail = text.split(" [", 1)
    return f'{html.escape(head)} <span class="ci">[{html.escape(tail)}</span>'


def _block_html(block: Any, digits: int = 3) -> str:
    """A ``{"value", "ci"}`` block as HTML (``–`` when absent)."""
    if not isinstance(block, dict):
        return DASH
    return _ci_html(block.get("value"), _ci_bounds(block), digits)


def _human_count(n: Any) -> str:
    """A parameter count as ``19``, ``12.3k``, ``2.78M``."""
    x = _num(n)
    if not math.isfinite(x):
        return DASH
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            v = x / scale
            return f"{v:.3g}{suffix}"
    return f"{x:.0f}"


def _e(text: Any) -> str:
    return html.escape(str(text))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --------------------------------------------------------------------------------------------------------------------
# Reading a run
# --------------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err}") from None


def load_metrics(run_dir: str | Path) -> dict:
    """``run_dir/metrics.json`` (``DataError`` naming the file when it is missing or malformed)."""
    metrics = _read_json(RunDir(run_dir).metrics)
    if not isinstance(metrics.get("models"), dict) or "dataset" not in metrics:
        raise DataError(f"{RunDir(run_dir).metrics} has no 'dataset' and 'models' entries")
    return metrics


def explained_post_hoc_only(block: dict) -> bool:
    """Whether a model of ``metrics.json`` has no explanation of its own (every explanation block is post hoc):
    a black box."""
    return not any(isinstance(b, dict) and b.get("source") == "intrinsic"
                   for b in block.get("explanation", {}).values())


def default_reference(metrics: dict) -> str:
    """The first model with no explanation of its own (a black box: it has explanation blocks and all are post hoc);
    else the first image model; else the first model. (A run that explains no case has no explanation blocks at all:
    then the first image model is the reference.)"""
    models = metrics["models"]
    if not models:
        raise DataError("the run has no models")
    for name, m in models.items():
        if m.get("explanation") and explained_post_hoc_only(m):
            return name
    for name, m in models.items():
        if m.get("input") == "image":
            return name
    return next(iter(models))


def _class_names(metrics: dict) -> list[str]:
    return [str(c) for c in metrics["dataset"].get("class_names", [])]


def positive_index(metrics: dict) -> int:
    """Index of the positive class: ``dataset.positive_class`` given as a class name or an index, default 1."""
    names = _class_names(metrics)
    pos = metrics["dataset"].get("positive_class")
    if isinstance(pos, str) and pos in names:
        return names.index(pos)
    if isinstance(pos, (int, np.integer)) and not isinstance(pos, bool) and 0 <= pos < max(len(names), 2):
        return int(pos)
    return 1


def load_predictions(run_dir: str | Path, metrics: dict) -> tuple[np.ndarray, dict[str, pd.DataFrame]]:
    """Every model's ``predictions.csv``, rows aligned by case id to the first model's file.

    Args:
        run_dir: the run directory.
        metrics: its ``metrics.json`` (for the model names and class names).

    Returns:
        (case ids [N] as strings in the order of the first model's file, ``{model: DataFrame}`` with columns
        ``case_id, label, pred, p_<class>...`` in that order).

    Raises:
        DataError: naming the file that is missing, lacks a column, or whose case ids or labels differ from those of
            the first model's file.
    """
    run_dir = Path(run_dir)
    classes = _class_names(metrics)
    out: dict[str, pd.DataFrame] = {}
    first: tuple[Path, np.ndarray, pd.DataFrame] | None = None
    for name in metrics["models"]:
        path = RunDir(run_dir).model(name).predictions
        if not path.is_file():
            raise DataError(f"{path} not found: every model of metrics.json needs its predictions")
        df = pd.read_csv(path, dtype={"case_id": str})
        needed = ["case_id", "label", *(f"p_{c}" for c in classes)]
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise DataError(f"{path} lacks the column(s) {missing}")
        if df["case_id"].duplicated().any():
            dup = df.loc[df["case_id"].duplicated(), "case_id"].iloc[0]
            raise DataError(f"{path} lists case id '{dup}' more than once")
        if "pred" not in df.columns:
            df["pred"] = df[[f"p_{c}" for c in classes]].to_numpy().argmax(axis=1)
        if first is None:
            first = (path, df["case_id"].to_numpy(), df)
        else:
            ref_path, ref_ids, ref_df = first
            ids = df["case_id"].to_numpy()
            if set(ids) != set(ref_ids) or len(ids) != len(ref_ids):
                extra = sorted(set(ids) - set(ref_ids))[:3]
                lacking = sorted(set(ref_ids) - set(ids))[:3]
                raise DataError(f"{path}: its case ids differ from those of {ref_path} "
                                f"(not in {ref_path.name} of '{ref_path.parent.name}': {extra}; "
                                f"missing here: {lacking})")
            if not np.array_equal(ids, ref_ids):
                df = df.set_index("case_id").loc[ref_ids].reset_index()
            if not np.array_equal(df["label"].to_numpy(), ref_df["label"].to_numpy()):
                bad = ref_ids[np.flatnonzero(df["label"].to_numpy() != ref_df["label"].to_numpy())[0]]
                raise DataError(f"{path}: the label of case '{bad}' differs from that in {ref_path}")
        out[name] = df.reset_index(drop=True)
    if first is None:
        raise DataError(f"{run_dir / 'metrics.json'} lists no models")
    return first[1].astype(str), out


def _proba(df: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return df[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64)


# --------------------------------------------------------------------------------------------------------------------
# Paired tests
# --------------------------------------------------------------------------------------------------------------------


def paired_tests(run_dir: str | Path, reference: str) -> list[dict]:
    """Every other model against ``reference`` on the same test cases.

    AUC: DeLong's test on the positive-class probabilities (binary), or :func:`stats.delong_test_multiclass` (more
    than two classes). Accuracy: McNemar's test on per-case correctness. Each family of p-values (DeLong, McNemar) is
    Holm-adjusted across the compared models. Differences are "model minus reference".

    Args:
        run_dir: the run directory.
        reference: the model the others are compared with.

    Returns:
        One dict per other model (in ``metrics.json`` order): ``model, reference, n_cases, auc, auc_reference,
        delta_auc, delta_auc_ci, delong_z, delong_p, delong_p_holm, accuracy, accuracy_reference, delta_accuracy,
        mcnemar_b, mcnemar_c, mcnemar_statistic, mcnemar_method, mcnemar_p, mcnemar_p_holm``.

    Raises:
        DataError: unknown reference, or predictions that are missing or do not cover the same cases.
    """
    metrics = load_metrics(run_dir)
    if reference not in metrics["models"]:
        raise DataError(f"reference model '{reference}' is not in the run (models: {list(metrics['models'])})")
    classes = _class_names(metrics)
    pos = positive_index(metrics)
    _, preds = load_predictions(run_dir, metrics)
    ref_df = preds[reference]
    y = ref_df["label"].to_numpy(dtype=np.int64)
    p_ref = _proba(ref_df, classes)
    correct_ref = ref_df["pred"].to_numpy() == y
    rows = []
    for name, df in preds.items():
        if name == reference:
            continue
        p = _proba(df, classes)
        correct = df["pred"].to_numpy() == y
        row: dict[str, Any] = {"model": name, "reference": reference, "n_cases": int(len(y))}
        if len(classes) == 2:
            d = stats.delong_test((y == pos).astype(np.int64), p[:, pos], p_ref[:, pos])
        else:
            d = stats.delong_test_multiclass(y, p, p_ref)
        row["auc"], row["auc_reference"] = _num(d.get("auc_a")), _num(d.get("auc_b"))
        ci = d.get("ci")
        row.update(delta_auc=_num(d.get("diff")),
                   delta_auc_ci=[_num(ci[0]), _num(ci[1])] if ci is not None else [math.nan, math.nan],
                   delong_z=_num(d.get("z")), delong_p=_num(d.get("p_value")))
        mc = stats.mcnemar_test(correct, correct_ref)
        row.update(accuracy=float(correct.mean()) if len(y) else math.nan,
                   accuracy_reference=float(correct_ref.mean()) if len(y) else math.nan,
                   delta_accuracy=_num(mc.get("diff_accuracy")), mcnemar_b=int(mc["b"]), mcnemar_c=int(mc["c"]),
                   mcnemar_statistic=_num(mc.get("statistic")), mcnemar_method=str(mc.get("method", "")),
                   mcnemar_p=_num(mc.get("p_value")))
        rows.append(row)
    for key in ("delong_p", "mcnemar_p"):
        adjusted = stats.holm(np.array([r[key] for r in rows], dtype=np.float64))
        for r, a in zip(rows, adjusted):
            r[f"{key}_holm"] = float(a)
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Pareto fronts
# --------------------------------------------------------------------------------------------------------------------


def pareto_rows(metrics: dict) -> list[dict]:
    """The Pareto panels: task AUC (maximised) against each explanation-quality score of :data:`PARETO_SCORES`.

    A panel exists when at least one (model, method) pair has a finite value of its score and a finite AUC (so the
    localisation panels appear only when the run had masks). Deletion AUC is minimised, every other score maximised.

    Args:
        metrics: the run's ``metrics.json``.

    Returns:
        One dict per panel: ``score``, ``label``, ``higher_is_better`` and ``points``: per (model, method) pair with a
        finite score and AUC, ``{"model", "method", "source", "x", "x_ci", "y", "y_ci", "pareto"}`` where ``pareto``
        marks the non-dominated pairs (:func:`stats.pareto_front`).
    """
    rows = [r for r in tradeoff_rows(metrics) if r.get("explanation")]
    panels = []
    for score in PARETO_SCORES:
        pts = [r for r in rows if _finite(r.get(score)) and _finite(r.get("auc"))]
        if not pts:
            continue
        higher = score not in LOWER_IS_BETTER
        x = np.array([_num(r[score]) for r in pts])
        y = np.array([_num(r["auc"]) for r in pts])
        mask = np.asarray(stats.pareto_front(x, y, maximize=(higher, True)), dtype=bool)
        points = [{"model": r["model"], "method": r["explanation"], "source": r.get("explanation_source", ""),
                   "x": float(xi), "x_ci": [_num(r.get(f"{score}_lo")), _num(r.get(f"{score}_hi"))],
                   "y": float(yi), "y_ci": [_num(r.get("auc_lo")), _num(r.get("auc_hi"))], "pareto": bool(m)}
                  for r, xi, yi, m in zip(pts, x, y, mask)]
        panels.append({"score": score, "label": SCORE_LABELS[score], "higher_is_better": higher, "points": points})
    return panels


def _pair(p: dict) -> str:
    return f"{p['model']} / {p['method']}"


# --------------------------------------------------------------------------------------------------------------------
# Summary sentences
# --------------------------------------------------------------------------------------------------------------------


def complexity_summary(model: dict) -> str:
    """A short noun phrase for a model's size: its ``complexity`` dict when present, else its parameter count.

    Examples: ``18 of 40 features``, ``5 features, 12 leaves, depth 4``, ``4 features, 5 items, 11 points``,
    ``12 terms (2 interactions)``, ``2.78M parameters``.
    """
    c = model.get("complexity")
    if isinstance(c, dict) and c:
        if "n_nonzero" in c:
            of = f" of {c['n_features']}" if "n_features" in c else ""
            return f"{c['n_nonzero']}{of} features"
        if "n_terms" in c:
            inter = f" ({_plural(int(c['n_interactions']), 'interaction')})" if "n_interactions" in c else ""
            return f"{_plural(int(c['n_terms']), 'term')}{inter}"
        parts = []
        if "n_features_used" in c:
            parts.append(_plural(int(c["n_features_used"]), "feature"))
        for key, word in (("n_leaves", "leaf"), ("n_items", "item"), ("total_points", "point")):
            if key in c:
                n = int(c[key])
                parts.append(f"{n} leaves" if word == "leaf" and n != 1 else _plural(n, word))
        if "depth" in c:
            parts.append(f"depth {c['depth']}")
        if not parts:
            parts = [f"{k.replace('_', ' ')} {v}" for k, v in c.items()
                     if k != "n_params" and isinstance(v, (int, float)) and not isinstance(v, bool)]
        if parts:
            return ", ".join(parts)
    params = model.get("cost", {}).get("params")
    return f"{_human_count(params)} parameters" if _finite(params) else "unknown size"


def _task(model: dict, key: str) -> dict:
    d = model.get("task", {}).get(key)
    return d if isinstance(d, dict) else {"value": math.nan, "ci": [math.nan, math.nan]}


def summary_sentences(metrics: dict, tests: list[dict]) -> list[str]:
    """Generated plain-text sentences: each model against the reference, then the explanations.

    Per model: how far its test AUC is from the reference's ("within d AUC of" when below and not significant after
    Holm, "d AUC below" when significantly below, "d AUC above" when better), with its size
    (:func:`complexity_summary`). Then the most faithful explanation by insertion AUC, deletion AUC and faithfulness
    correlation, the best localised by pointing game and mass in mask (when scored), the randomisation check, the
    explanation cost and the pairs that are Pareto-optimal most often.

    Args:
        metrics: the run's ``metrics.json``.
        tests: the rows of :func:`paired_tests` (may be empty).

    Returns:
        A list of sentences.
    """
    models = metrics["models"]
    if not models:
        return ["The run has no models."]
    data = metrics["dataset"].get("name", "this data set")
    reference = tests[0]["reference"] if tests else default_reference(metrics)
    by_model = {t["model"]: t for t in tests}
    ref = models[reference]
    ref_label = "the black box" if explained_post_hoc_only(ref) else reference
    ref_auc = _task(ref, "auc")
    out = [f"On {data}, the reference {reference} ({ref.get('family', '?')}, {ref.get('input', '?')}) reaches a test "
           f"AUC of {format_ci(ref_auc.get('value'), _ci_bounds(ref_auc))} using {complexity_summary(ref)}."]
    for name, m in models.items():
        if name == reference:
            continue
        t = by_model.get(name, {})
        # the paired test's AUCs (from the predictions) when there is one, else those of metrics.json
        auc = _num(t.get("auc", _task(m, "auc").get("value")))
        auc_ref = _num(t.get("auc_reference", ref_auc.get("value")))
        diff = _num(t.get("delta_auc", auc - auc_ref))
        what = f"{name} ({m.get('family', '?')}, {m.get('input', '?')})"
        if not math.isfinite(diff):
            out.append(f"On {data}, {what} has no defined AUC difference to {ref_label}.")
            continue
        p = _num(t.get("delong_p_holm"))
        if diff > 0:
            rel = f"{diff:.3f} AUC above"
        elif math.isfinite(p) and p < ALPHA:
            rel = f"{-diff:.3f} AUC below"
        else:
            rel = f"within {-diff:.3f} AUC of"
        ptext = f"; Holm-adjusted DeLong p = {_fmt_p(p)}" if math.isfinite(p) else ""
        out.append(f"On {data}, {what} is {rel} {ref_label} ({auc:.3f} vs {auc_ref:.3f}{ptext}) "
                   f"using {complexity_summary(m)}.")

    rows = [r for r in tradeoff_rows(metrics) if r.get("explanation")]

    def best(score: str) -> str | None:
        cand = [r for r in rows if _finite(r.get(score))]
        if not cand:
            return None
        pick = (min if score in LOWER_IS_BETTER else max)(cand, key=lambda r: _num(r[score]))
        value = format_ci(pick[score], [pick.get(f"{score}_lo"), pick.get(f"{score}_hi")])
        return f"{pick['model']} / {pick['explanation']} ({value})"

    faith = [(s, best(s)) for s in ("insertion_auc", "deletion_auc", "road_morf", "faithfulness_correlation")]
    faith = [(s, b) for s, b in faith if b]
    if faith:
        parts = [f"by {SCORE_LABELS[s]}{' (lower is better)' if s in LOWER_IS_BETTER else ''} is {b}"
                 for s, b in faith]
        out.append("The most faithful explanation " + "; ".join(parts) + ".")
    local = [(s, best(s)) for s in ("pointing_game", "mass_in_mask")]
    local = [(s, b) for s, b in local if b]
    if local:
        out.append("The best-localised explanation " + "; ".join(f"by {SCORE_LABELS[s]} is {b}" for s, b in local)
                   + ".")
    checked = [r for r in rows if isinstance(r.get("randomisation_passed"), (bool, np.bool_))]
    if checked:
        failed = [f"{r['model']} / {r['explanation']}" for r in checked if not r["randomisation_passed"]]
        text = (f"{len(checked) - len(failed)} of {_plural(len(checked), 'explanation')} pass the model-parameter "
                f"randomisation check")
        out.append(text + (f"; failing: {', '.join(failed)}." if failed else "."))
    costed = [r for r in rows if _finite(r.get("explanation_ms_per_image"))]
    if len(costed) >= 2:
        lo = min(costed, key=lambda r: _num(r["explanation_ms_per_image"]))
        hi = max(costed, key=lambda r: _num(r["explanation_ms_per_image"]))
        out.append(f"Explanations cost from {_fmt_ms(lo['explanation_ms_per_image'])} ms/image "
                   f"({lo['model']} / {lo['explanation']}) to {_fmt_ms(hi['explanation_ms_per_image'])} ms/image "
                   f"({hi['model']} / {hi['explanation']}).")
    panels = pareto_rows(metrics)
    if panels:
        counts: dict[str, int] = {}
        for panel in panels:
            for p in panel["points"]:
                if p["pareto"]:
                    counts[_pair(p)] = counts.get(_pair(p), 0) + 1
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])
        listed = ", ".join(f"{pair} ({k} of {len(panels)})" for pair, k in ranked)
        out.append(f"Pareto-optimal in task AUC against explanation quality (panels): {listed}.")
    return out


# --------------------------------------------------------------------------------------------------------------------
# Figures (matplotlib, in memory)
# --------------------------------------------------------------------------------------------------------------------


def _png_bytes(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def _img(data: bytes, alt: str, img_id: str | None = None) -> str:
    ident = f' id="{_e(img_id)}"' if img_id else ""
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img{ident} alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _figure(data: bytes, caption: str, img_id: str | None = None) -> str:
    return f"<figure>{_img(data, caption, img_id)}<figcaption>{_e(caption)}</figcaption></figure>"


def _file_figure(path: Path, caption: str) -> str:
    """A PNG file of the run embedded as a figure ("" when it does not exist)."""
    if not path.is_file():
        return ""
    return _figure(path.read_bytes(), caption)


def plot_pareto(panels: list[dict]) -> bytes:
    """The Pareto panels as one PNG: per panel every (model, method) pair with CI error bars on both axes, the
    Pareto-optimal pairs as filled stars joined by the front line, the others as open circles."""
    n = len(panels)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4.0 * nrows), squeeze=False)
    models = sorted({p["model"] for panel in panels for p in panel["points"]})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    for ax, panel in zip(axes.ravel(), panels):
        offsets = _stagger([(p["x"], p["y"]) for p in panel["points"]])
        for p, (dx, dy) in zip(panel["points"], offsets):
            c = colours[p["model"]]
            xerr = _err(p["x"], p["x_ci"])
            yerr = _err(p["y"], p["y_ci"])
            ax.errorbar(p["x"], p["y"], xerr=xerr, yerr=yerr, fmt="none", ecolor=c, alpha=0.45, lw=1, capsize=2)
            if p["pareto"]:
                ax.plot(p["x"], p["y"], marker="*", ms=14, color=c, mec="black", mew=0.6, ls="none")
            else:
                ax.plot(p["x"], p["y"], marker="o", ms=7, mfc="white", mec=c, mew=1.5, ls="none")
            ax.annotate(_pair(p), (p["x"], p["y"]), xytext=(dx, dy), textcoords="offset points", fontsize=7)
        front = sorted((p for p in panel["points"] if p["pareto"]), key=lambda p: p["x"])
        if len(front) > 1:
            ax.plot([p["x"] for p in front], [p["y"] for p in front], color="black", lw=1, ls="--", zorder=0)
        better = "higher" if panel["higher_is_better"] else "lower"
        ax.set(xlabel=f"{panel['label']} ({better} is better)", ylabel="test AUC", title=f"AUC vs {panel['label']}")
        ax.margins(x=0.25, y=0.15)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.suptitle("Task AUC against explanation quality (\u2605 Pareto-optimal, bars: 95% CI)", fontsize=10)
    fig.tight_layout()
    return _png_bytes(fig)


def _stagger(xy: list[tuple[float, float]], dx: float = 0.6, dy: float = 0.1) -> list[tuple[int, int]]:
    """Label offsets (in points) for the points ``xy``: a label moves one line down per earlier point whose label
    would overlap it (within ``dx`` horizontally and ``dy`` vertically, in coordinates scaled to the points' range;
    labels are wide, hence dx > dy)."""
    pts = np.array(xy, dtype=np.float64).reshape(-1, 2)
    if not len(pts):
        return []
    span = np.ptp(pts, axis=0)
    scaled = (pts - pts.min(axis=0)) / np.where(span > 0, span, 1.0)
    out = []
    for i in range(len(pts)):
        d = np.abs(scaled[:i] - scaled[i])
        k = int(np.sum((d[:, 0] < dx) & (d[:, 1] < dy)))
        out.append((5, 4 - 10 * k))
    return out


def _err(v: float, ci: Sequence[float]) -> np.ndarray | None:
    lo, hi = _num(ci[0]), _num(ci[1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return np.array([[max(v - lo, 0.0)], [max(hi - v, 0.0)]])


def _calibration(y: np.ndarray, proba: np.ndarray, pos: int) -> dict:
    """:func:`stats.calibration`: of the positive-class probability (binary), of the top label (multi-class)."""
    return stats.calibration(y, proba, n_bins=10, positive_class=pos if proba.shape[1] == 2 else 0)


def plot_reliability(cal: dict[str, dict], binary: bool) -> bytes:
    """One reliability diagram with every model (ECE and Brier score in the legend)."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="perfect calibration")
    for name, c in cal.items():
        bins = [b for b in c["bins"] if b.get("count", 0) > 0]
        ax.plot([b["mean_confidence"] for b in bins], [b["fraction_positive"] for b in bins], marker="o", ms=4,
                label=f"{name} (ECE {_fmt(c.get('ece'))}, Brier {_fmt(c.get('brier'))})")
    xl, yl = ("predicted probability of the positive class", "observed fraction positive") if binary else \
        ("top-label confidence", "observed accuracy")
    ax.set(xlabel=xl, ylabel=yl, xlim=(0, 1), ylim=(0, 1), title="Reliability diagram (test set)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    return _png_bytes(fig)


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts [K, K]: rows the true class, columns the predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y.astype(np.int64), pred.astype(np.int64)), 1)
    return cm


def plot_confusions(cms: dict[str, np.ndarray], classes: list[str]) -> bytes:
    """Small multiples: one confusion matrix per model (colour: share of the true class; text: counts)."""
    n = len(cms)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    size = 2.2 + 0.35 * len(classes)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax, (name, cm) in zip(axes.ravel(), cms.items()):
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
        ticks = range(len(classes))
        ax.set_xticks(ticks, classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(ticks, classes, fontsize=7)
        acc = np.trace(cm) / max(cm.sum(), 1)
        ax.set_title(f"{name} (accuracy {acc:.3f})", fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png_bytes(fig)


# --------------------------------------------------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------------------------------------------------


def _table(table_id: str | None, headers: Sequence[str], rows: Iterable[Sequence[str]],
           numeric_from: int = 1, text_cols: Sequence[int] = ()) -> str:
    """A table; ``headers`` are plain text (escaped here), cells are HTML. Columns from ``numeric_from`` on are
    numeric (no line breaks), except ``text_cols``, which may wrap."""
    ident = f' id="{_e(table_id)}"' if table_id else ""
    head = "".join(f'<th scope="col">{_e(h)}</th>' for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="text">{c}</td>' if i in text_cols else
                        f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    table = f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _kv_table(items: Iterable[tuple[str, str]], table_id: str | None = None) -> str:
    rows = "".join(f'<tr><th scope="row">{_e(k)}</th><td>{v}</td></tr>' for k, v in items)
    ident = f' id="{_e(table_id)}"' if table_id else ""
    return f"<table{ident}><tbody>{rows}</tbody></table>"


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{_e(section_id)}"><h2>{_e(title)}</h2>{body}</section>'


def _passes_text(fwd: Any, bwd: Any) -> str:
    if not (_finite(fwd) or _finite(bwd)):
        return DASH
    return f"{_fmt(fwd, 1)} + {_fmt(bwd, 1)}"


def _scalar_text(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return _fmt(v)
    return str(v)


def _header(run_dir: Path, metrics: dict) -> str:
    ds = metrics["dataset"]
    run_json = RunDir(run_dir).run_info
    run_info = {}
    if run_json.is_file():
        try:
            run_info = json.loads(run_json.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            run_info = {}
    experiment = run_dir.name
    cfg_path = RunDir(run_dir).config
    cfg_text = cfg_path.read_text(encoding="utf-8") if cfg_path.is_file() else ""
    if cfg_text:
        try:
            cfg = yaml.safe_load(cfg_text)
            if isinstance(cfg, dict) and cfg.get("experiment"):
                experiment = str(cfg["experiment"])
        except yaml.YAMLError:
            pass
    meta = [f"run directory <code>{_e(run_dir.name)}</code>"]
    if run_info.get("glasszoo_version"):
        meta.append(f"glasszoo {_e(run_info['glasszoo_version'])}")
    if run_info.get("started"):
        meta.append(f"started {_e(run_info['started'])}")
    out = [f"<h1>glasszoo report: {_e(experiment)}</h1>", f'<p class="meta">{" · ".join(meta)}</p>']

    classes = _class_names(metrics)
    items = [("data set", _e(ds.get("name", "?"))), ("source", _e(ds.get("source", DASH))),
             ("cases", _e(ds.get("n_cases", DASH))), ("classes", _e(", ".join(classes)))]
    if len(classes) == 2:
        items.append(("positive class", _e(classes[positive_index(metrics)])))
    if ds.get("image_shape"):
        items.append(("image shape", _e(" × ".join(str(s) for s in ds["image_shape"]))))
    if "has_masks" in ds:
        items.append(("lesion masks", "yes" if ds["has_masks"] else "no"))
    if ds.get("concept_names"):
        items.append(("concepts", _e(", ".join(map(str, ds["concept_names"])))))
    body = [_kv_table(items, "dataset")]
    splits = ds.get("cases_per_split")
    if isinstance(splits, dict) and splits:
        rows = []
        for split, counts in splits.items():
            if isinstance(counts, dict):
                rows.append([_e(split), *(_e(counts.get(c, 0)) for c in classes), _e(sum(counts.values()))])
            else:
                rows.append([_e(split), *([DASH] * len(classes)), _e(counts)])
        body.append("<h3>Cases per split and class</h3>" + _table("splits", ["split", *classes, "total"], rows))
    dups = ds.get("duplicates")
    if isinstance(dups, dict):
        body.append(_duplicates_html(dups))
    feats = ds.get("features")
    if isinstance(feats, dict) and feats:
        rows = [(str(k), _e(_scalar_text(v))) for k, v in feats.items() if not isinstance(v, (dict, list))]
        body.append("<h3>Feature table (tabular models)</h3>" + _kv_table(rows, "features"))
    if cfg_text:
        body.append(f"<details><summary>Resolved configuration (config.yaml)</summary><pre>{_e(cfg_text)}</pre>"
                    "</details>")
    out.append(_section("dataset-summary", "Data set", "".join(body)))
    return "".join(out)


def _duplicates_html(d: dict) -> str:
    """The near-duplicate check of the data (``dataset.duplicates``): a warning when test cases have a copy in
    training, the groups whose labels disagree."""
    n_test, leaked = d.get("n_test_cases", 0), d.get("test_cases_with_train_duplicate", 0)
    what = (f"{_e(d.get('n_groups', 0))} groups of near-duplicate images holding {_e(d.get('n_cases_in_groups', 0))} "
            f"cases ({_e(d.get('method', ''))} &ge; {_e(d.get('threshold', ''))})")
    split = ("the split keeps each group in one split" if d.get("grouped_split")
             else f"{_e(d.get('n_groups_across_splits', 0))} groups cross splits")
    parts = [f"<h3>Near-duplicates</h3><p>{what}; {split}.</p>"]
    if leaked:
        parts.append(f'<p class="warn"><strong>Warning:</strong> {_e(leaked)} of {_e(n_test)} test cases have a '
                     "near-duplicate in the training split, so the test scores partly measure recall of training "
                     "images. <code>data.group_duplicates: true</code> keeps each group in one split.</p>")
    cross = d.get("groups_across_labels") or []
    if cross:
        rows = [[_e(", ".join(g["case_ids"])), _e(", ".join(g["labels"])), _e(", ".join(g["splits"]))]
                for g in cross]
        parts.append(f"<p>{_e(len(cross))} groups hold the same image under different labels:</p>"
                     + _table("duplicates-across-labels", ["cases", "labels", "splits"], rows))
    return "".join(parts)


def _reads_cell(m: dict) -> str:
    """What a model reads, with a mark when a test case's ground-truth lesion mask is among its inputs."""
    reads = m.get("reads")
    if not isinstance(reads, dict):
        return DASH
    text = _e(reads.get("text", ""))
    if reads.get("ground_truth_masks_at_test"):
        return f'<span class="warn">&#9888; ground-truth masks at test time</span><span class="sub">{text}</span>'
    return text


def _results_section(metrics: dict) -> str:
    primary = {r["model"]: r for r in tradeoff_rows(metrics) if r.get("primary")}
    kappa = any("quadratic_weighted_kappa" in m.get("task", {}) for m in metrics["models"].values())
    headers = ["model", *(METRIC_LABELS[k] for k in METRIC_NAMES), *(["quadratic-weighted kappa"] if kappa else []),
               "parameters", "complexity", "train time (s)", "primary explanation", "explanation ms/image",
               "passes/image (fwd + bwd)", "reads"]
    rows = []
    for name, m in metrics["models"].items():
        r = primary.get(name, {})
        cost = m.get("cost", {})
        method = r.get("explanation")
        source = _e(r.get("explanation_source") or "?")
        expl = DASH if not method else f'{_e(method)} <span class="ci">({source})</span>'
        has_complexity = isinstance(m.get("complexity"), dict) and m["complexity"]
        cheap = " · cheap settings" if (m.get("settings") or {}).get("reduced") else ""
        rows.append([f'{_e(name)}<span class="sub">{_e(m.get("family", "?"))} · {_e(m.get("input", "?"))}'
                     f'{_e(cheap)}</span>',
                     *(_block_html(m.get("task", {}).get(k)) for k in METRIC_NAMES),
                     *([_block_html(m.get("task", {}).get("quadratic_weighted_kappa"))] if kappa else []),
                     _e(_human_count(cost.get("params"))),
                     _e(complexity_summary(m)) if has_complexity else DASH,
                     _e(_fmt(cost.get("train_seconds"), 1)), expl,
                     _e(_fmt_ms(r.get("explanation_ms_per_image"))) if method else DASH,
                     _e(_passes_text(r.get("forward_passes_per_image"), r.get("backward_passes_per_image")))
                     if method else DASH, _reads_cell(m)])
    oracle = [n for n, m in metrics["models"].items() if (m.get("reads") or {}).get("ground_truth_masks_at_test")]
    note = ('<p class="note">Test-set values with 95% stratified-bootstrap confidence intervals in grey. Multi-class: '
            "one-vs-rest macro averages. Explanation cost is that of the primary explanation (the first heatmap)."
            + (" Quadratic-weighted kappa: agreement of the predicted with the true grade, the classes read as "
               "ordered grades (data.ordinal)." if kappa else "") + "</p>")
    if oracle:
        note += (f'<p class="warn">&#9888; {_e(", ".join(oracle))} read the expert\'s lesion outline of every test '
                 "case (features.region: mask), an input the image models do not get and a new image does not have: "
                 "their scores are an upper bound for the pipeline. <code>features.region: predicted</code> computes "
                 "the features inside the lesion a segmentation model of the run predicts.</p>")
    reduced = {n: m["settings"]["reduced"] for n, m in metrics["models"].items()
               if isinstance(m.get("settings"), dict) and m["settings"].get("reduced")}
    if reduced:
        listed = "; ".join(f"{n}: " + ", ".join(f"{k} {v['value']} instead of {v['default']}" for k, v in r.items())
                           for n, r in reduced.items())
        note += (f'<p class="warn" id="reduced-settings">&#9888; Cheap settings, chosen for a quick run: {_e(listed)}. '
                 "These rows understate what the model reaches at its default (full-strength) settings.</p>")
    k = 1 if kappa else 0
    table = _table("results", headers, rows, numeric_from=1, text_cols=(8 + k, 10 + k, 13 + k))
    return _section("results-section", "Results", table + note)


def _edit_section(metrics: dict) -> str:
    """An edited run (``glasszoo edit``): per edited model what was switched off and what it changed, with CIs."""
    edit = metrics.get("edit")
    if not isinstance(edit, dict) or not edit.get("models"):
        return ""
    headers = ["edited model", "original", "prototypes off", "relevant before → after", "AUC original → edited",
               "ΔAUC [95% CI]", "DeLong p", "pointing game original → edited", "Δpointing game [95% CI]"]
    rows = []
    for name, e in edit["models"].items():
        pgs = e.get("pointing_game", {}) or {DASH: None}
        for i, (method, pg) in enumerate(pgs.items()):
            first = i == 0
            rows.append([
                _e(name) if first else "", _e(e.get("model", DASH)) if first else "",
                _e(", ".join(str(j) for j in e.get("dropped", []))) if first else "",
                _e(f"{e.get('n_relevant_before', DASH)} → {e.get('n_relevant_after', DASH)}") if first else "",
                _e(f"{_fmt(e.get('auc_original'))} → {_fmt(e.get('auc'))}") if first else "",
                _ci_html(e.get("delta_auc"), e.get("delta_auc_ci")) if first else "",
                _e(_fmt_p(e.get("delong_p"))) if first else "",
                _e(f"{method}: {_fmt(pg['original'], 2)} → {_fmt(pg['edited'], 2)}") if pg else DASH,
                _ci_html(pg["delta"]["value"], pg["delta"]["ci"], 2) if pg else DASH])
    text = (f"<p>This run is an edit of <code>{_e(edit.get('source_run', ''))}</code>: the prototypes a reader "
            "flagged were switched off and the last layer alone refitted (convex; nothing else retrained). Both "
            "models are evaluated here on the same test cases. ΔAUC is edited minus original, with DeLong's CI and "
            "test; the pointing-game change is a paired bootstrap over the same explained cases.</p>")
    return _section("edit", "Edit: prototypes switched off", text + _table("edit-table", headers, rows))


def _subgroups_section(metrics: dict) -> str:
    """The subgroup audit (``metrics.json``'s ``subgroups``): per model and subgroup AUC, sensitivity and
    specificity, the gaps between subgroups with their CIs (flagged when the CI excludes zero) and how the
    explanations' relevance mass in the lesion moves between subgroups."""
    sub = metrics.get("subgroups")
    if not isinstance(sub, dict) or not sub:
        return ""
    title = f"Subgroup audit by {sub.get('attribute', 'subgroup')}"
    if "error" in sub:
        return _section("subgroups", title, f'<p class="warning">The audit failed: {_e(sub["error"])}</p>')
    counts = ", ".join(f"{_e(g)}: {n}" for g, n in sub.get("groups", {}).items())
    rows, gap_rows, shift_rows = [], [], []
    for name, block in sub.get("models", {}).items():
        for g, b in block.get("groups", {}).items():
            rows.append([_e(name), _e(g), str(b.get("n", "")), str(b.get("n_positive", "")),
                         *(_block_html(b.get(m)) for m in ("auc", "sensitivity", "specificity"))])
        for gap in block.get("gaps", []):
            verdict = '<span class="fail">gap</span>' if gap["flagged"] else "no"
            gap_rows.append([_e(name), _e(f"{gap['group']} − {gap['against']}"), _e(METRIC_LABELS[gap["metric"]]),
                             _ci_html(gap["value"], gap["ci"]), _e(f"{100 * gap['level']:.1f}%"), verdict])
        for method, shift in (block.get("explanations") or {}).items():
            per = "; ".join(f"{_e(g)} {_fmt(v['value'])}" for g, v in shift.get("groups", {}).items())
            for gap in shift.get("gaps", []):
                shift_rows.append([_e(name), _e(method), per, _e(f"{gap['group']} − {gap['against']}"),
                                   _ci_html(gap["value"], gap["ci"])])
    flagged = sub.get("flagged", [])
    if flagged:
        lead = ('<p class="warning">Flagged: ' + "; ".join(
            _e(f"{m} ({METRIC_LABELS[k]}, {g} − {a})") for m, k, g, a in flagged)
            + ". The model does not work alike for these subgroups: a confounded subgroup (one that sees more "
              "positive cases) typically shows opposite sensitivity and specificity gaps.</p>")
    else:
        lead = '<p class="pass">No subgroup gap flagged: every gap CI includes zero.</p>'
    text = (f"<p>Test cases per subgroup: {counts}. Gaps are the subgroup's metric minus the other cases' (two "
            "subgroups: the one against the other; more: each against the rest), with percentile CIs from "
            "independent stratified bootstraps, Bonferroni-widened over each model's metrics and comparisons "
            "(level in the table); a gap is flagged when its CI excludes zero.</p>")
    parts = [lead, text, _table("subgroup-metrics", ["model", "subgroup", "test cases", "positives", "AUC",
                                                      "sensitivity", "specificity"], rows, numeric_from=2),
             _table("subgroup-gaps", ["model", "gap", "metric", "value [CI]", "CI level", "flagged"], gap_rows,
                    numeric_from=3)]
    if shift_rows:
        parts.append("<h3>Does the explanation look elsewhere for one subgroup?</h3><p class=\"note\">Share of each "
                     "heatmap's positive relevance inside the lesion mask, per subgroup, and its gap (95% CI).</p>"
                     + _table("subgroup-relevance", ["model", "method", "mass in mask per subgroup", "gap",
                                                     "value [95% CI]"], shift_rows, numeric_from=4))
    return _section("subgroups", title, "".join(parts))


def _surrogates_section(metrics: dict) -> str:
    """Global surrogates (``metrics.json``'s ``surrogates``): per imitated model, each readable stand-in's fidelity
    to it and its accuracy against the labels, with CIs, and its rules in words."""
    sur = metrics.get("surrogates")
    if not isinstance(sur, dict) or not sur:
        return ""
    if "error" in sur:
        return _section("surrogates", "Surrogates of the black box",
                        f'<p class="warning">The surrogates could not be fitted: {_e(sur["error"])}</p>')
    headers = ["imitated model", "surrogate", "agreement [95% CI]", "fidelity AUC [95% CI]",
               "AUC against the labels [95% CI]", "imitated model's AUC", "reader takes in"]
    rows, details = [], []
    for target, block in sur.items():
        base = block.get("agreement_base_rate")
        for name, s in block.get("surrogates", {}).items():
            label = f"{name} ({s.get('model', '')})"
            if "error" in s:
                rows.append([_e(target), _e(label), f'<span class="warning">failed: {_e(s["error"])}</span>',
                             DASH, DASH, DASH, DASH])
                continue
            f, load = s["fidelity"], s.get("reading_load")
            rows.append([_e(target), _e(label), _ci_html(f["agreement"]["value"], f["agreement"]["ci"]),
                         _ci_html(f["auc"]["value"], f["auc"]["ci"]),
                         _ci_html(s["task"]["auc"]["value"], s["task"]["auc"]["ci"]),
                         _ci_html(block["target_test_auc"]["value"], block["target_test_auc"]["ci"]),
                         _e(f"{load['count']:.3g} {load['unit']}") if load else DASH])
            if s.get("rules"):
                details.append(f"<details><summary>{_e(target)}: {_e(label)} in words</summary>"
                               f"<pre>{_e(s['rules'])}</pre></details>")
        if base is not None:
            details.insert(0, f'<p class="note">{_e(target)}: always predicting its most frequent test class agrees '
                              f"with it on {_fmt(base)} of the test cases; a surrogate's agreement must beat that. "
                              f"Features: {_e(block.get('reads', {}).get('text', ''))}.</p>")
    text = ("<p>Readable models fitted to an image model's <em>predicted</em> classes on the run's feature table "
            "(training cases; size chosen on the validation cases' predicted classes), then scored on the test "
            "cases: fidelity is how often they predict what the imitated model predicts (agreement) and the AUC of "
            "their probabilities against its predictions; beside it their own AUC against the labels. High fidelity "
            "says a readable rule reproduces the decisions on these features, not that the imitated model uses "
            "them.</p>")
    return _section("surrogates", "Surrogates of the black box",
                    text + _table("surrogates-table", headers, rows) + "".join(details))


def _paired_section(tests: list[dict], reference: str, metrics: dict) -> str:
    if not tests:
        return _section("paired", f"Paired tests against {reference}",
                        '<p class="note">No other model to compare with.</p>')
    multiclass = len(_class_names(metrics)) > 2
    headers = ["model", "AUC", f"AUC {reference}", "ΔAUC [95% CI]", "DeLong p", "Holm p", "accuracy",
               "Δaccuracy", "McNemar b", "McNemar c", "McNemar p", "Holm p"]
    rows = []
    for t in tests:
        rows.append([_e(t["model"]), _e(_fmt(t.get("auc"))), _e(_fmt(t.get("auc_reference"))),
                     _ci_html(t.get("delta_auc"), t.get("delta_auc_ci")), _e(_fmt_p(t.get("delong_p"))),
                     _e(_fmt_p(t.get("delong_p_holm"))), _e(_fmt(t.get("accuracy"))),
                     _e(_fmt(t.get("delta_accuracy"))), _e(t.get("mcnemar_b", DASH)), _e(t.get("mcnemar_c", DASH)),
                     _e(_fmt_p(t.get("mcnemar_p"))), _e(_fmt_p(t.get("mcnemar_p_holm")))])
    auc_test = ("DeLong's test for correlated ROC AUCs generalised to the one-vs-rest macro AUC" if multiclass
                else "DeLong's test for two correlated ROC AUCs (positive-class probabilities)")
    text = (f"<p>Every model against <strong>{_e(reference)}</strong> on the same {tests[0]['n_cases']} test cases; "
            f"differences are model minus {_e(reference)}. AUC: {auc_test}. Accuracy: McNemar's test on per-case "
            f"correctness (b: cases only the model gets right, c: cases only {_e(reference)} gets right). "
            f"<strong>Multiple comparisons:</strong> the p-values of each test are Holm-adjusted (Holm–Bonferroni "
            f"step-down, family-wise error rate {ALPHA}) across the {_plural(len(tests), 'compared model')}, "
            "separately for DeLong and McNemar.</p>")
    return _section("paired", f"Paired tests against {reference}", text + _table("paired-tests", headers, rows))


def _calibration_section(run_dir: Path, metrics: dict, y: np.ndarray, preds: dict[str, pd.DataFrame]) -> str:
    classes = _class_names(metrics)
    pos = positive_index(metrics)
    parts = []
    roc = _file_figure(RunDir(run_dir).roc_figure, "ROC curves of every model on the test set" +
                       ("" if len(classes) == 2 else ", one panel per class against the rest"))
    parts.append("<h3>ROC</h3>" + (roc or '<p class="note">No ROC figure in this run (figures/roc.png is '
                                          "missing).</p>"))
    cal = {name: _calibration(y, _proba(df, classes), pos) for name, df in preds.items()}
    binary = len(classes) == 2
    what = (f"the predicted probability of '{classes[pos]}'" if binary
            else "the top-label confidence (multi-class)")
    rows = [[_e(n), _e(_fmt(c.get("ece"))), _e(_fmt(c.get("mce"))), _e(_fmt(c.get("brier")))] for n, c in cal.items()]
    parts.append(f"<h3>Calibration</h3><p class=\"note\">Ten equal-width bins of {_e(what)}; ECE and MCE: mean "
                 "(count-weighted) and largest gap between confidence and observed frequency; Brier: mean squared "
                 "error of the probabilities (multi-class: summed over the classes).</p>")
    parts.append('<div class="row">' + _figure(plot_reliability(cal, binary), "Reliability diagram") +
                 _table("calibration", ["model", "ECE", "MCE", "Brier"], rows) + "</div>")
    cms = {name: confusion_matrix(y, df["pred"].to_numpy(), len(classes)) for name, df in preds.items()}
    parts.append("<h3>Confusion matrices</h3>" + _figure(plot_confusions(cms, classes),
                                                         "Confusion matrices (rows: true class; colour: row share)"))
    return _section("roc-calibration", "ROC, calibration and confusion matrices", "".join(parts))


def _explanations_section(metrics: dict) -> str:
    rows = [r for r in tradeoff_rows(metrics) if r.get("explanation")]
    if not rows:
        return _section("explanation-quality", "Explanation quality", '<p class="note">No explanations.</p>')
    scores = [s for s in SCORE_KEYS if any(s in r for r in rows)]
    headers = ["model", "method", "kind", "source", "cases",
               *(SCORE_LABELS[s] + (" ↓" if s in LOWER_IS_BETTER else "") for s in scores),
               "randomisation", "ms/image", "passes/image (fwd + bwd)"]
    body = []
    for r in rows:
        rp = r.get("randomisation_passed")
        rand = DASH if rp is None or (isinstance(rp, float) and math.isnan(rp)) else \
            ('<span class="pass">pass</span>' if rp else '<span class="fail">fail</span>')
        body.append([_e(r["model"]), _e(r["explanation"]), _e(r.get("explanation_kind", "")),
                     _e(r.get("explanation_source") or DASH), _e(_fmt(r.get("explanation_cases"), 0)),
                     *(_ci_html(r.get(s), [r.get(f"{s}_lo"), r.get(f"{s}_hi")]) for s in scores), rand,
                     _e(_fmt_ms(r.get("explanation_ms_per_image"))),
                     _e(_passes_text(r.get("forward_passes_per_image"), r.get("backward_passes_per_image")))])
    note = ('<p class="note">One row per (model, explanation method); ↓ marks scores where lower is better. '
            "Randomisation: the model-parameter randomisation check (a map that barely changes when the weights are "
            "randomised fails). Scores with 95% bootstrap CIs over the explained cases.</p>")
    repro = metrics.get("reproducibility") or []
    if repro:
        rrows = [[_e(" / ".join(r["models"])), _e(r["method"]), str(r.get("n_cases", "")),
                  _block_html(r.get("spearman")), _block_html(r.get("ssim"))] for r in repro]
        note += ("<h3>Reproducibility across models</h3><p>The same post-hoc method on the same test cases from two "
                 "models of the run (e.g. two backbones; Arun et al. 2021): Spearman rank correlation and SSIM of the "
                 "absolute maps, mean and 95% CI over the cases.</p>"
                 + _table("reproducibility-table", ["models", "method", "cases", "Spearman", "SSIM"], rrows, 2))
    return _section("explanation-quality", "Explanation quality", _table("explanations", headers, body, 4) + note)


def _sentence(text: str) -> str:
    """``text`` as a sentence: a capital first letter and a full stop."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def _tradeoff_section(metrics: dict) -> str:
    """The headline figure: every model's test AUC against what a reader must take in to follow one decision
    (:mod:`glasszoo.evaluation.tradeoff`), the Pareto front, the numbered legend and the units' definitions."""
    title = "Accuracy against what a reader must take in"
    points = tradeoff.tradeoff_points(metrics)
    png, _ = tradeoff.plot_tradeoff(metrics)
    recorded = any(p["count"] is not None for p in points)
    parts = [_figure(png, "Test AUC (95% CI) against the reading load of one decision; numbers as in the table",
                     img_id="tradeoff")]
    if recorded:
        front = sorted((p for p in points if p["pareto"]), key=lambda p: p["count"])
        listed = ", ".join(f"{p['model']} ({tradeoff.load_text(p)}, AUC {_fmt(p['auc'])})" for p in front)
        parts.append(f'<p id="tradeoff-front">On the Pareto front (no other model has at least its AUC with no more '
                     f"to read and is better in one of the two): {_e(listed)}.</p>")
        bands = [p["model"] for p in points if p["count"] is None]
        if bands:
            parts.append(f'<p class="note">{_e(", ".join(bands))}: the decision cannot be followed from the '
                         "explanation (a map shows where the model looked, not how it decided); each is drawn as a "
                         "band at its AUC confidence interval.</p>")
    else:
        parts.append('<p class="note" id="tradeoff-no-load">This run records no reading load (it was written before '
                     "models reported one), so every model is drawn as a band at its AUC confidence interval.</p>")
    rows = [[_e(p["number"]), f'{_e(p["model"])}<span class="sub">{_e(p["family"])} · {_e(p["input"])}</span>',
             _ci_html(p["auc"], p["ci"]), _e(tradeoff.load_text(p, recorded)),
             '<span class="pass">yes</span>' if p["pareto"] else ("no" if p["count"] is not None else DASH)]
            for p in points]
    parts.append(_table("tradeoff-legend", ["#", "model", "test AUC [95% CI]", "reading load", "Pareto front"], rows,
                        numeric_from=2, text_cols=(3,)))
    if recorded:
        definitions: dict[tuple[str, str], list[str]] = {}
        for p in points:
            if p["count"] is not None:
                definitions.setdefault((p["unit"], p["definition"] or DASH), []).append(p["model"])
        items = "".join(f"<li><strong>{_e(unit)}</strong> ({_e(', '.join(names))}): {_e(_sentence(text))}</li>"
                        for (unit, text), names in definitions.items())
        parts.append('<p class="note">The reading load counts what a reader takes in to follow one decision, not how '
                     "easy each item is to understand; the unit differs between families:</p>"
                     f'<ul id="reading-load-definitions">{items}</ul>')
    return _section("tradeoff-section", title, "".join(parts))


def _pareto_section(panels: list[dict]) -> str:
    if not panels:
        return _section("pareto-section", "Accuracy against explanation quality (Pareto)",
                        '<p class="note">No explanation-quality scores to plot.</p>')
    items = []
    for panel in panels:
        front = [_pair(p) for p in panel["points"] if p["pareto"]]
        items.append(f"<li>AUC vs {_e(panel['label'])} ({'higher' if panel['higher_is_better'] else 'lower'} is "
                     f"better): Pareto-optimal {_e(', '.join(front) or DASH)}</li>")
    text = ('<p class="note">Each point is a (model, explanation method) pair: its model\'s test AUC against the '
            "quality score of the method, both with 95% CIs. A pair is Pareto-optimal when no other pair is at least "
            "as good on both axes and better on one (point estimates).</p>")
    body = _figure(plot_pareto(panels), "Task AUC against explanation quality", img_id="pareto")
    return _section("pareto-section", "Accuracy against explanation quality (Pareto)",
                    text + body + f'<ul id="pareto-optimal">{"".join(items)}</ul>')


def _figures_section(run_dir: Path, metrics: dict, used: set[str]) -> str:
    rd = RunDir(run_dir)
    fig_dir = rd.figures
    parts = []
    block = _file_figure(rd.comparison_figure, "Every heatmap of the run on the same test cases")
    if block:
        used.add(rd.comparison_figure.name)
        parts.append(f"<h3>Every heatmap of the run on the same test cases</h3>{block}")
    randomisation = []
    for name in metrics["models"]:
        path = rd.randomisation_figure(name)
        block = _file_figure(path, f"{name}: model-parameter randomisation check")
        if block:
            used.add(path.name)
            randomisation.append(f"<h4>{_e(name)}</h4>{block}")
    if randomisation:
        parts.append('<h3 id="randomisation-figures">Model-parameter randomisation check (Adebayo et al. 2018)</h3>'
                     '<p class="note">Each method\'s maps as the model\'s parameters are randomised from the output '
                     "layer down: a map that explains the model changes; one that stays the same follows the image, "
                     "not the decision.</p>" + "".join(randomisation))
    for name in metrics["models"]:
        path = rd.intervention_figure(name)
        block = _file_figure(path, f"{name}: test-time concept intervention")
        if block:
            used.add(path.name)
            parts.append(f"<h3>{_e(name)}: concept intervention</h3>{block}")
    per_model = []
    for r in tradeoff_rows(metrics):
        if not r.get("explanation"):
            continue
        path = rd.method_figure(r["model"], r["explanation"])
        fname = path.name
        block = _file_figure(path, f"{r['model']}: {r['explanation']}")
        if block:
            used.add(fname)
            per_model.append(f"<details><summary>{_e(r['model'])}: {_e(r['explanation'])}</summary>{block}</details>")
    if per_model:
        parts.append("<h3>Per-model explanation figures</h3>" + "".join(per_model))
    others = sorted(p for p in fig_dir.glob("*.png") if p.name not in used and not p.name.startswith("."))
    if others:
        parts.append("<h3>Other figures</h3>" + "".join(
            f"<details><summary>{_e(p.name)}</summary>{_file_figure(p, p.stem)}</details>" for p in others))
    if not parts:
        return ""
    return _section("figures", "Figures", "".join(parts))


def select_cases(run_dir: str | Path, ids: Sequence[str], preds: dict[str, pd.DataFrame], max_cases: int = 12,
                 max_misclassified: int = 8) -> list[str]:
    """The case ids that get a case page: test cases with a figure under ``figures/cases/``, the ones misclassified
    by any model first (at most ``max_misclassified``), then correctly classified ones, at most ``max_cases`` in all,
    each group in test-set order."""
    case_dir = RunDir(run_dir).cases
    if not case_dir.is_dir():
        return []
    stems = {p.stem for p in case_dir.glob("*/*.png")}
    with_fig = [c for c in ids if safe_filename(c) in stems]
    wrong = np.zeros(len(ids), dtype=bool)
    for df in preds.values():
        wrong |= df["pred"].to_numpy() != df["label"].to_numpy()
    is_wrong = dict(zip(ids, wrong))
    mis = [c for c in with_fig if is_wrong[c]][:max(max_misclassified, 0)]
    ok = [c for c in with_fig if not is_wrong[c]]
    return (mis + ok)[:max(max_cases, 0)]


def _counterfactual_list(rd: RunDir, models: list[str], case: str) -> str:
    """The case's counterfactuals, one line per model that searched one (its saved text)."""
    items = []
    for name in models:
        path = rd.case_counterfactual(name, case)
        if path.is_file():
            data = _read_json(path)
            space = {"features": "in its features", "concepts": "in its concepts"}.get(data.get("space"), "")
            items.append(f"<li><strong>{_e(name)}</strong> ({_e(space)}): {_e(data.get('text', ''))}</li>")
    if not items:
        return ""
    return ('<div class="counterfactuals"><h4>What would change the decision</h4><p class="note">The smallest change '
            "found that flips each model's decision (features within their training range, in robust training standard "
            "deviations, 1.4826 x MAD; concepts flipped as a reader's intervention); docs/explanations.md.</p><ul>"
            + "".join(items) + "</ul></div>")


def _cases_section(run_dir: Path, metrics: dict, ids: np.ndarray, preds: dict[str, pd.DataFrame],
                   max_cases: int, max_misclassified: int) -> str:
    chosen = select_cases(run_dir, list(ids), preds, max_cases, max_misclassified)
    if not chosen:
        return ""
    classes = _class_names(metrics)
    row_of = {c: i for i, c in enumerate(ids)}
    rd = RunDir(run_dir)
    case_dir = rd.cases
    model_dirs = [d for d in sorted(case_dir.iterdir()) if d.is_dir() and d.name in metrics["models"]]
    order = {n: i for i, n in enumerate(metrics["models"])}
    model_dirs.sort(key=lambda d: (order.get(d.name, len(order)), d.name))
    sections, toc = [], []
    for case in chosen:
        safe = safe_filename(case)
        i = row_of[case]
        label = int(next(iter(preds.values()))["label"].iloc[i])
        rows = []
        any_wrong = False
        for name, df in preds.items():
            k = int(df["pred"].iloc[i])
            prob = _num(df[f"p_{classes[k]}"].iloc[i]) if 0 <= k < len(classes) else math.nan
            ok = k == label
            any_wrong |= not ok
            rows.append([_e(name), _e(classes[k] if 0 <= k < len(classes) else k), _e(_fmt(prob)),
                         '<span class="pass">yes</span>' if ok else '<span class="fail">no</span>'])
        figs = [_file_figure(d / f"{safe}.png", d.name) for d in model_dirs]
        figs.append(_file_figure(rd.case_heatmaps(case), "every heatmap of this case"))
        counter = _counterfactual_list(rd, [d.name for d in model_dirs], case)
        flag = " (misclassified)" if any_wrong else ""
        sections.append(
            f'<section class="case" id="case-{_e(safe)}"><h3>Case {_e(case)}{_e(flag)}</h3>'
            f"<p>true class: <strong>{_e(classes[label] if 0 <= label < len(classes) else label)}</strong></p>"
            + _table(None, ["model", "predicted class", "probability", "correct?"], rows, numeric_from=2)
            + f'<div class="row">{"".join(f for f in figs if f)}</div>{counter}</section>')
        toc.append(f'<a href="#case-{_e(safe)}">{_e(case)}</a>{_e(flag)}')
    intro = (f'<p class="note">{len(chosen)} test cases with per-case figures; cases misclassified by any model first '
             f"(at most {max_misclassified}).</p><p>" + " · ".join(toc) + "</p>")
    return _section("cases", "Case pages", intro + "".join(sections))


def _audit_section(run_dir: Path) -> str:
    path = RunDir(run_dir).audit
    if not path.is_file():
        return ""
    audit = _read_json(path)
    marker = audit.get("marker", {}) or {}
    parts = []
    if marker:
        parts.append(f"<p>Shortcut marker: kind <strong>{_e(marker.get('kind', '?'))}</strong>, size "
                     f"{_e(marker.get('size', '?'))}, rate {_e(marker.get('rate', '?'))}.</p>")
    keys = [("accuracy_correlated", "accuracy (marker correlated)"),
            ("accuracy_decorrelated", "accuracy (marker decorrelated)"), ("accuracy_drop", "accuracy drop"),
            ("auc_correlated", "AUC (correlated)"), ("auc_decorrelated", "AUC (decorrelated)"),
            ("auc_drop", "AUC drop")]
    models = audit.get("models", {}) or {}
    resisted = {str(m) for m in audit.get("resisted", []) or []}
    revealed = {(str(p[0]), str(p[1])) for p in audit.get("revealed", []) or [] if len(p) == 2}
    rows = [[_e(n), *(_block_html(m.get(k)) for k, _ in keys),
             '<span class="pass">yes</span>' if n in resisted else "no"] for n, m in models.items()]
    parts.append(_table("audit-models", ["model", *(label for _, label in keys), "resisted"], rows))
    erows = []
    for n, m in models.items():
        for method, e in (m.get("explanations", {}) or {}).items():
            erows.append([_e(n), _e(method), _block_html(e.get("marker_mass")), _block_html(e.get("marker_mass_ratio")),
                          '<span class="pass">yes</span>' if (n, method) in revealed else "no"])
    if erows:
        parts.append("<h3>Does the explanation reveal the shortcut?</h3>" + _table(
            "audit-explanations", ["model", "method", "relevance mass on marker", "mass ratio (vs area)", "revealed"],
            erows, numeric_from=2))
    sentences = audit.get("summary", []) or []
    if sentences:
        parts.append("<ul>" + "".join(f"<li>{_e(s)}</li>" for s in sentences) + "</ul>")
    parts.append(_file_figure(RunDir(run_dir).audit_figure, "Shortcut audit"))
    return _section("audit", "Shortcut audit", "".join(parts))


def _seeds_section(run_dir: Path, metrics: dict) -> str:
    path = RunDir(run_dir).seeds
    if not path.is_file():
        return ""
    seeds = _read_json(path)
    rows = []
    for name, per_metric in (seeds.get("models", {}) or {}).items():
        run_model = metrics["models"].get(name, {})
        for metric, s in per_metric.items():
            if not isinstance(s, dict):
                continue
            values = ", ".join(_fmt(v) for v in s.get("values", []) or [])
            boot = run_model.get("task", {}).get(metric)
            label = METRIC_LABELS.get(metric, SCORE_LABELS.get(metric, metric))
            rows.append([_e(name), _e(label), f"{_e(_fmt(s.get('mean')))} ± {_e(_fmt(s.get('sd')))}",
                         _e(values), _block_html(boot) if boot else DASH])
    seed_list = ", ".join(str(s) for s in seeds.get("seeds", []) or [])
    vary = seeds.get("vary", "all")
    what = ("only the training changed: the same data, split and explained cases" if vary == "training" else
            "each seed made its own data and split")
    text = (f'<p class="note">Across the seeds {_e(seed_list)} ({_e(what)}): mean ± standard deviation over the runs, '
            "beside the bootstrap 95% CI of this run (variation over test cases, not over training).</p>")
    parts = [text, _table("seeds-table", ["model", "metric", "across seeds: mean ± sd", "values",
                                          "this run: bootstrap CI"], rows, 2)]
    rep = seeds.get("repeatability") or {}
    rep_rows = [[_e(name), _e(method), _e(b.get("source", "")), str(b.get("n_cases", "")),
                 _block_html(b.get("spearman")), _block_html(b.get("ssim"))]
                for name, methods in rep.items() for method, b in methods.items()]
    if rep_rows:
        parts.append(
            "<h3>Repeatability of the maps across seeds</h3><p>The same method's maps of the same test cases from "
            "the models of each seed (Arun et al., Radiology: AI 2021): Spearman rank correlation and SSIM of the "
            "absolute maps, averaged over the pairs of seeds, mean and 95% CI over the cases. A map that changes "
            "with the seed explains the seed, not the disease.</p>"
            + _table("repeatability-table", ["model", "map", "source", "cases", "Spearman across seeds",
                                             "SSIM across seeds"], rep_rows, 3))
    return _section("seeds", "Across seeds", "".join(parts))


def _diagnostics_section(metrics: dict) -> str:
    """Model-specific extras: explanation blocks that are not methods (prototype quality, concepts) and
    segmentation, as key-value tables of their scalar and ``{"value", "ci"}`` entries."""
    parts = []
    for name, m in metrics["models"].items():
        blocks = [(k, b) for k, b in (m.get("explanation", {}) or {}).items()
                  if isinstance(b, dict) and "kind" not in b]
        if isinstance(m.get("segmentation"), dict):
            blocks.append(("segmentation", m["segmentation"]))
        for key, block in blocks:
            items = []
            for k, v in block.items():
                if isinstance(v, dict) and "value" in v:
                    items.append((k, _block_html(v)))
                elif isinstance(v, (int, float, str, bool)) and not isinstance(v, dict):
                    items.append((k, _e(_scalar_text(v))))
            if items:
                parts.append(f"<details><summary>{_e(name)}: {_e(key.replace('_', ' '))}</summary>"
                             f"{_kv_table(items)}</details>")
    if not parts:
        return ""
    return _section("diagnostics", "Model-specific diagnostics", "".join(parts))


def _failed_section(metrics: dict) -> str:
    """The models of the run that failed, each with its error (the run went on without them)."""
    failed = metrics.get("failed") or {}
    if not failed:
        return ""
    rows = [[_e(name), _e(f.get("registry_name", "")), _e(f.get("stage", "training and evaluation")),
             f'<span class="fail">{_e(f.get("error", ""))}</span>'] for name, f in failed.items()]
    return _section("failed-models", "Failed models", (
        f'<p class="note">{_plural(len(failed), "model")} of this run failed; the run went on without '
        f"{'it' if len(failed) == 1 else 'them'} (a model that failed only while its case figures were drawn keeps "
        "its results). The traceback of each is under <code>failed</code> in metrics.json.</p>")
        + _table(None, ["model", "registry name", "stage", "error"], rows, numeric_from=4))


# --------------------------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------------------------


def render_report(run_dir: str | Path, reference: str | None = None, max_cases: int = 12,
                  max_misclassified: int = 8) -> str:
    """The report of ``run_dir`` as an HTML string (see :func:`write_report`)."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir)
    title = f"glasszoo report: {run_dir.name}"
    if not metrics["models"]:  # every model failed: the data set and the errors are still worth a page
        body = _failed_section(metrics) or _section("failed-models", "Failed models", "<p>The run has no models.</p>")
        return _page(title, _header(run_dir, metrics) + body)
    reference = reference or default_reference(metrics)
    if reference not in metrics["models"]:
        raise DataError(f"reference model '{reference}' is not in the run (models: {list(metrics['models'])})")
    ids, preds = load_predictions(run_dir, metrics)
    y = next(iter(preds.values()))["label"].to_numpy(dtype=np.int64)
    tests = paired_tests(run_dir, reference)
    panels = pareto_rows(metrics)
    rd = RunDir(run_dir)
    used = {rd.roc_figure.name, rd.audit_figure.name}

    sections = [
        ("dataset-summary", "Data set", _header(run_dir, metrics)),
        ("summary-section", "Summary", _section("summary-section", "Summary", '<ul id="summary">' + "".join(
            f"<li>{_e(s)}</li>" for s in summary_sentences(metrics, tests)) + "</ul>")),
        ("tradeoff-section", "Trade-off", _tradeoff_section(metrics)),
        ("failed-models", "Failed models", _failed_section(metrics)),
        ("edit", "Edit", _edit_section(metrics)),
        ("results-section", "Results", _results_section(metrics)),
        ("paired", "Paired tests", _paired_section(tests, reference, metrics)),
        ("surrogates", "Surrogates", _surrogates_section(metrics)),
        ("subgroups", "Subgroups", _subgroups_section(metrics)),
        ("roc-calibration", "ROC & calibration", _calibration_section(run_dir, metrics, y, preds)),
        ("explanation-quality", "Explanations", _explanations_section(metrics)),
        ("pareto-section", "Pareto", _pareto_section(panels)),
        ("seeds", "Seeds", _seeds_section(run_dir, metrics)),
        ("audit", "Shortcut audit", _audit_section(run_dir)),
        ("diagnostics", "Diagnostics", _diagnostics_section(metrics)),
        ("figures", "Figures", _figures_section(run_dir, metrics, used)),
        ("cases", "Cases", _cases_section(run_dir, metrics, ids, preds, max_cases, max_misclassified)),
    ]
    nav = " ".join(f'<a href="#{_e(i)}">{_e(t)}</a>' for i, t, body in sections if body)
    return _page(title, f"{sections[0][2]}<nav>{nav}</nav>{''.join(body for _, _, body in sections[1:] if body)}")


def _page(title: str, body: str) -> str:
    """A whole self-contained HTML page: inline style, no script, no external address."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n")


def write_report(run_dir: str | Path, reference: str | None = None, max_cases: int = 12,
                 max_misclassified: int = 8) -> Path:
    """Write ``run_dir/report.html``: one self-contained HTML file (figures embedded as base64 PNG, inline CSS,
    no script, no external URL) that opens offline.

    Sections: data set, summary sentences, the headline trade-off chart (every model's AUC against its reading
    load, :mod:`glasszoo.evaluation.tradeoff`), results table, paired tests against ``reference``, ROC / calibration /
    confusion matrices, explanation quality, Pareto fronts, across-seed table (``seeds.json``), shortcut audit
    (``audit.json``), model-specific diagnostics, the run's figures and per-case pages. The file is replaced
    atomically, so an existing report survives any failure.

    Args:
        run_dir: the run directory.
        reference: model the paired tests compare against (default :func:`default_reference`: the first black box,
            else the first image model, else the first model).
        max_cases: at most this many case pages.
        max_misclassified: at most this many of them for cases some model misclassifies (these come first).

    Returns:
        The path of ``report.html``.

    Raises:
        DataError: missing or inconsistent run files (the message names the file).
    """
    run_dir = Path(run_dir)
    text = render_report(run_dir, reference, max_cases, max_misclassified)
    path = RunDir(run_dir).report
    atomic_write_text(path, text)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m glasszoo.evaluation.report RUN_DIR [--reference MODEL]``."""
    parser = argparse.ArgumentParser(description="Write the self-contained HTML report of a glasszoo run.")
    parser.add_argument("run_dir")
    parser.add_argument("--reference", default=None, help="model the paired tests compare against")
    parser.add_argument("--max-cases", type=int, default=12)
    parser.add_argument("--max-misclassified", type=int, default=8)
    args = parser.parse_args(argv)
    print(write_report(args.run_dir, args.reference, args.max_cases, args.max_misclassified))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

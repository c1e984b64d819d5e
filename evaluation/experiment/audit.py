"""``glasszoo audit``: does a model learn a planted shortcut, and do the explanations show it?

The lesson of the COVID-19 chest X-ray models (DeGrave, Janizek & Lee, Nature Machine Intelligence 2021): a model
can be accurate because it reads burned-in text or markers instead of the lung. The audit plants such a shortcut
and measures both halves of the question:

1. A saturated square marker is stamped into the top-left corner of the images (:func:`stamp_marker`). In the
   training and validation splits it is present with probability ``rate`` for the positive class and ``1 - rate``
   for the others (correlated with the label); in the test split it is a fair coin (independent of the label).
2. The whole zoo is trained on the marked data (an ordinary ``glasszoo run``; its test metrics are on the
   *decorrelated* test set).
3. Every model is also scored on a *correlated* copy of the same test cases (the marker stamped by the training
   rule). The accuracy drop from correlated to decorrelated, with a paired bootstrap CI over the test cases, is how
   much a model relied on the marker.
4. For every heatmap of the run, the share of its positive relevance that falls on the marker (the marker square
   grown by one pixel, on the explained test cases that carry it) says whether the explanation reveals the shortcut.

A model *resisted* the shortcut when both its accuracy drop and its AUC drop are below ``resist_drop`` (default
0.02): accuracy alone misses a model whose probabilities sit on one side of 0.5 on both test sets (accuracy near
chance twice, no drop) while its ranking collapses without the marker; an explanation
*revealed* it when more than half of its positive relevance lies on the marker (``reveal_mass``) although the
marker covers well under 1% of the image.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from glasszoo.evaluation.experiment.config import ExperimentConfig
from glasszoo.evaluation.experiment.runner import log, run_experiment
from glasszoo.evaluation.experiment.saved import open_run
from glasszoo.evaluation.explain_eval import load_heatmap
from glasszoo.evaluation.metrics import mean_ci, task_metrics
from glasszoo.evaluation.plots import _save, plt
from glasszoo.evaluation.report import write_report
from glasszoo.models import ConfigError
from glasszoo.training.adapters import Adapters
from glasszoo.training.atomic import atomic_write_text
from glasszoo.training.caseset import CaseSet
from glasszoo.training.data import load_caseset
from glasszoo.training.rundir import RunDir


def marker_box(img_size: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1) of the marker: ``size`` px square, ``max(1, side // 32)`` px from the top-left."""
    off = max(1, min(img_size) // 32)
    return off, off, off + size, off + size


def stamp_marker(images: np.ndarray, present: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A copy of ``images`` [N, C, H, W] with the square ``box`` set to 1.0 (white) where ``present``."""
    out = np.array(images, dtype=np.float32, copy=True)
    r0, c0, r1, c1 = box
    out[np.asarray(present, dtype=bool), :, r0:r1, c0:c1] = 1.0
    return out


def marker_presence(labels: np.ndarray, split: np.ndarray, positive_class: int, rate: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(present as trained, present at test): the training rule on every case, and a fair coin on the test split.

    The first is what a correlated test set looks like; the second is the data the zoo is trained and tested on.
    """
    rng = np.random.default_rng([seed, 7919])
    coin = rng.random(len(labels))
    p_rule = np.where(labels == positive_class, rate, 1.0 - rate)
    correlated = coin < p_rule
    decorrelated = np.where(split == "test", rng.random(len(labels)) < 0.5, correlated)
    return correlated, decorrelated


def _with_images(cs: CaseSet, images: np.ndarray) -> CaseSet:
    out = copy.copy(cs)
    out.images = images
    return out


def _marker_mass(maps: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Per map, the share of positive relevance inside ``box`` grown by one pixel (maps are upsampled)."""
    r0, c0, r1, c1 = box
    region = np.zeros(maps.shape[1:], dtype=bool)
    region[max(r0 - 1, 0):r1 + 1, max(c0 - 1, 0):c1 + 1] = True
    pos = np.clip(maps.astype(np.float64), 0.0, None)
    total = pos.reshape(len(pos), -1).sum(1)
    inside = pos[:, region].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def run_audit(cfg: ExperimentConfig, out: str | Path | None = None, overwrite: bool = False, rate: float = 0.95,
              size: int | None = None, resist_drop: float = 0.02, reveal_mass: float = 0.5) -> Path:
    """Train the zoo of ``cfg`` on data with a planted marker and write ``audit.json`` (and the run's report).

    Args:
        cfg: the experiment (any data source); its test metrics become those of the decorrelated test set.
        out, overwrite: where the run goes (as ``glasszoo run``).
        rate: in train/val, the probability that the marker is present for the positive class (absent for others).
        size: marker side in pixels (default: ``max(2, side // 12)``).
        resist_drop: a model whose accuracy and AUC both drop by less than this resisted the shortcut.
        reveal_mass: an explanation with more than this share of its relevance on the marker revealed it.

    Returns:
        The run directory, holding ``audit.json``, ``figures/audit.png`` and ``report.html``.
    """
    if not 0.5 < rate <= 1.0:
        raise ConfigError(f"audit rate must lie in (0.5, 1], got {rate}")
    if cfg.data.get("shortcut_rate") is not None:
        raise ConfigError(f"{cfg.source or 'config'}: data.shortcut_rate is set; the audit plants its own marker, "
                          f"so remove it from the data section")
    cs = load_caseset(cfg.data, seed=cfg.seed)
    side = min(cs.img_size)
    size = size if size is not None else max(2, side // 12)
    if not 1 <= size <= side // 4:
        raise ConfigError(f"audit marker size must lie in [1, {side // 4}] for {side} px images, got {size}")
    box = marker_box(cs.img_size, size)
    correlated, decorrelated = marker_presence(cs.labels, cs.split, cs.positive_class, rate, cfg.seed)
    marked = _with_images(cs, stamp_marker(cs.images, decorrelated, box))
    test = cs.indices("test")
    corr_cs = _with_images(cs, stamp_marker(cs.images, np.where(cs.split == "test", correlated, decorrelated), box))

    t0 = time.perf_counter()
    run_dir = run_experiment(replace(cfg, experiment=f"{cfg.experiment}-audit"), out, overwrite, caseset=marked,
                             report=False)
    log("audit: scoring every model on the correlated and the decorrelated test set")
    run = open_run(run_dir)
    run._caseset = marked  # the run's data is the marked data, not what the config alone rebuilds
    rd = RunDir(run_dir)
    metrics = json.loads(rd.metrics.read_text())
    ev = cfg.evaluation
    y = cs.labels[test]
    result: dict[str, Any] = {"marker": {"kind": "white square, top-left", "size": int(size), "box": list(box),
                                         "rate": rate, "test_fraction_marked": float(decorrelated[test].mean())},
                              "models": {}, "revealed": [], "resisted": [], "summary": []}
    correlated = Adapters(corr_cs, cfg.features)  # the same adapters on the correlated copy (one feature table)
    for name in run.model_names:
        model = run.load_model(name)
        adapter = run.adapter(name)
        p_dec = adapter.predict(model, test)
        # a glass-box model on predicted masks reads the masks its segmenter predicts on the correlated copy
        features = run.features_of(name, correlated, corr_cs.images)
        p_corr = correlated(run.spec(name).model, features).predict(model, test)
        right_corr = (p_corr.argmax(1) == y).astype(float)
        right_dec = (p_dec.argmax(1) == y).astype(float)
        boot = (ev.bootstrap, ev.ci_level, cfg.seed)
        block: dict[str, Any] = {
            "accuracy_correlated": mean_ci(right_corr, *boot),
            "accuracy_decorrelated": mean_ci(right_dec, *boot),
            "accuracy_drop": mean_ci(right_corr - right_dec, *boot),
            "auc_correlated": _auc(y, p_corr, cs.positive_class),
            "auc_decorrelated": _auc(y, p_dec, cs.positive_class),
            "explanations": {},
        }
        block["auc_drop"] = {"value": block["auc_correlated"]["value"] - block["auc_decorrelated"]["value"]}
        for key, b in metrics["models"][name].get("explanation", {}).items():
            is_map = isinstance(b, dict) and b.get("kind") == "heatmap"
            saved = load_heatmap(rd.model(name).heatmap(key)) if is_map else None
            if saved is None:
                continue
            maps, ids = saved
            rows = np.array([run.case_row(c) for c in ids], dtype=np.int64)
            on = decorrelated[rows]
            mass = _marker_mass(maps[on], box) if on.any() else np.array([np.nan])
            area = (box[2] - box[0] + 2) * (box[3] - box[1] + 2) / float(maps.shape[1] * maps.shape[2])
            block["explanations"][key] = {"marker_mass": mean_ci(mass, *boot),
                                          "marker_mass_ratio": mean_ci(mass / area, *boot),
                                          "n_cases_with_marker": int(on.sum())}
            if np.nanmean(mass) > reveal_mass:
                result["revealed"].append([name, key])
        if _resisted(block, resist_drop):
            result["resisted"].append(name)
        result["models"][name] = block
    result["summary"] = _audit_sentences(result, resist_drop, reveal_mass)
    result["seconds"] = time.perf_counter() - t0
    atomic_write_text(rd.audit, json.dumps(result, indent=2, allow_nan=True))
    _plot_audit(result, run_dir)
    for line in result["summary"]:
        print(line)
    log(f"report: {write_report(run_dir)}")
    return run_dir


def _auc(y: np.ndarray, proba: np.ndarray, positive_class: int) -> dict:
    return {"value": task_metrics(y, proba, positive_class)["auc"]}


def _resisted(block: dict, resist_drop: float) -> bool:
    """Neither accuracy nor AUC dropped by ``resist_drop`` or more without the marker (a NaN AUC drop is no drop)."""
    auc_drop = block["auc_drop"]["value"]
    return block["accuracy_drop"]["value"] < resist_drop and not auc_drop >= resist_drop


def _audit_sentences(result: dict, resist_drop: float, reveal_mass: float) -> list[str]:
    out = []
    for name, b in result["models"].items():
        d = b["accuracy_drop"]
        lo, hi = d["ci"]
        verdict = "resisted the shortcut" if name in result["resisted"] else "relied on the shortcut"
        out.append(f"{name}: accuracy {b['accuracy_correlated']['value']:.3f} with the marker correlated, "
                   f"{b['accuracy_decorrelated']['value']:.3f} decorrelated (drop {d['value']:+.3f} "
                   f"[{lo:+.3f}, {hi:+.3f}]), AUC {b['auc_correlated']['value']:.3f} -> "
                   f"{b['auc_decorrelated']['value']:.3f}: {verdict}.")
    if result["revealed"]:
        shown = ", ".join(f"{m}/{k}" for m, k in result["revealed"])
        out.append(f"Explanations that put more than {reveal_mass:.0%} of their relevance on the marker (revealed "
                   f"it): {shown}.")
    else:
        out.append(f"No explanation put more than {reveal_mass:.0%} of its relevance on the marker.")
    return out


def _plot_audit(result: dict, run_dir: Path) -> None:
    """Accuracy with the marker correlated vs decorrelated per model, and each explanation's marker mass."""
    names = list(result["models"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(len(names))
    for off, key, label in ((-0.2, "accuracy_correlated", "marker correlated"),
                            (0.2, "accuracy_decorrelated", "marker independent")):
        vals = [result["models"][n][key]["value"] for n in names]
        err = np.array([[v - result["models"][n][key]["ci"][0], result["models"][n][key]["ci"][1] - v]
                        for n, v in zip(names, vals)]).T
        axes[0].bar(x + off, vals, width=0.4, yerr=err, capsize=2, label=label)
    axes[0].set_xticks(x)
    axes[0].set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    axes[0].set_ylabel("test accuracy")
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    axes[0].set_title("accuracy on the same test cases", fontsize=9)
    pairs = [(n, k, b["marker_mass"]) for n in names for k, b in result["models"][n]["explanations"].items()]
    if pairs:
        vals = [p[2]["value"] for p in pairs]
        err = np.array([[v - p[2]["ci"][0], p[2]["ci"][1] - v] for p, v in zip(pairs, vals)]).T
        axes[1].barh(range(len(pairs)), vals, xerr=np.nan_to_num(err), capsize=2, color="tab:purple")
        axes[1].set_yticks(range(len(pairs)))
        axes[1].set_yticklabels([f"{n}: {k}" for n, k, _ in pairs], fontsize=6)
        axes[1].axvline(0.5, color="grey", ls=":")
        axes[1].set_xlim(0, 1)
    axes[1].set_xlabel("share of positive relevance on the marker")
    axes[1].set_title("where the explanations look (cases with the marker)", fontsize=9)
    _save(fig, RunDir(run_dir).audit_figure)

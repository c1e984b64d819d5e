"""One scoring path for every heatmap of a run: the models' own maps and the post-hoc explainers' maps.

A heatmap is scored by the same functions whatever made it (``glasszoo.evaluation.quality`` and the localisation
metrics of ``glasszoo.evaluation.metrics``); only the way to *recompute* it differs (for the randomisation check and
the max-sensitivity, which explain a changed model or a changed input): an intrinsic map is recomputed by the model's
own ``explain``, a post-hoc map by the same explainer with the same parameters.

Each score is a per-case array summarised by its mean with a bootstrap CI over the cases (``mean_ci``), so every
(model, method) pair gets a block of the same layout under ``metrics.json``'s ``models.<name>.explanation.<method>``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from glasszoo.models.explanations import Heatmap

ExplainFn = Callable[[Any, np.ndarray, np.ndarray], np.ndarray]  # (model, x [N,C,H,W], target [N]) -> maps [N,H,W]


def _as_list(exp: Any) -> list:
    return list(exp) if isinstance(exp, (list, tuple)) else [exp]


def intrinsic_explain_fn(method: str) -> ExplainFn:
    """Recompute a model's own heatmap ``method`` (a key of its ``explain`` output) for other inputs or weights."""

    def fn(model: Any, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        for exp in _as_list(model.explain(x, target=target)):
            if isinstance(exp, Heatmap) and exp.method == method:
                return exp.maps
        raise ValueError(f"{type(model).__name__}.explain returned no heatmap '{method}'")

    return fn


def posthoc_explain_fn(method: str, params: dict | None = None, seed: int = 0) -> ExplainFn:
    """Recompute a post-hoc heatmap with the same explainer, parameters and seed."""
    from glasszoo.evaluation.posthoc import explain_posthoc

    def fn(model: Any, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        return explain_posthoc(model, x, method, target=target, params=params, seed=seed).maps

    return fn


def run_posthoc(model: Any, x: np.ndarray, method: str, params: dict | None, seed: int,
                case_ids: np.ndarray | None = None) -> tuple[Heatmap, dict]:
    """Run one post-hoc explainer on ``x``; return its heatmap and its cost (ms and passes per image)."""
    from glasszoo.evaluation.posthoc import PassCounter, explain_posthoc

    with PassCounter(model) as counter:
        t = time.perf_counter()
        hm = explain_posthoc(model, x, method, params=params, seed=seed, case_ids=case_ids)
        ms = 1000 * (time.perf_counter() - t) / max(len(x), 1)
    return hm, {"ms_per_image": ms, "passes_per_image": counter.per_image(len(x))}


def _nanmean(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def _ci(values: np.ndarray, n_boot: int, level: float, seed: int) -> dict:
    from glasszoo.evaluation.metrics import mean_ci

    return mean_ci(values, n_boot, level, seed)


def score_heatmap(model: Any, hm: Heatmap, x: np.ndarray, masks: np.ndarray | None, explain_fn: ExplainFn | None,
                  qcfg: Any, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                  keep: dict | None = None) -> dict:
    """All quality scores of one heatmap, each as ``{"value", "ci"}`` over the cases it covers.

    Args:
        model: the explained torch model (forward returns logits); None scores the map alone (localisation,
            sparseness).
        hm: the heatmap of the cases ``x`` (same order).
        x: images [N, C, H, W] in [0, 1].
        masks: lesion masks [N, H, W] or None; localisation is scored only when some are non-empty.
        explain_fn: how to recompute the map (randomisation check, max-sensitivity); None skips those two.
        qcfg: a ``QualityConfig`` (cases, steps, baseline, subsets, stages, noise).
        n_boot, level, seed: bootstrap of the CIs over cases.
        keep: if given, receives ``"randomisation_maps"`` (the trained model's maps, then one per stage).

    Returns:
        A dict of score blocks; ``randomisation`` also holds the per-stage means and the fraction of cases that pass.
    """
    from glasszoo.evaluation import quality as Q
    from glasszoo.evaluation.metrics import pointing_game, relevance_mass_in_mask

    out: dict[str, Any] = {}
    maps = hm.maps
    if masks is not None and masks.reshape(len(masks), -1).any(axis=1).any():
        out["pointing_game"] = _ci(pointing_game(maps, masks), n_boot, level, seed)
        out["mass_in_mask"] = _ci(relevance_mass_in_mask(maps, masks), n_boot, level, seed)
        out["rank_accuracy"] = _ci(Q.relevance_rank_accuracy(maps, masks), n_boot, level, seed)
    out["sparseness"] = _ci(Q.sparseness(maps), n_boot, level, seed)
    if model is None or not getattr(qcfg, "enabled", True):
        return out
    n = len(maps) if qcfg.cases < 0 else min(qcfg.cases, len(maps))
    xs, ms, target = x[:n], maps[:n], hm.target[:n]
    deletion, insertion = Q.deletion_insertion(model, xs, ms, target, steps=qcfg.steps, baseline=qcfg.baseline)
    out["deletion_auc"] = _ci(deletion, n_boot, level, seed)
    out["insertion_auc"] = _ci(insertion, n_boot, level, seed)
    faith = Q.faithfulness_correlation(model, xs, ms, target, n_subsets=qcfg.faithfulness_subsets,
                                       baseline=qcfg.baseline, seed=seed)
    out["faithfulness_correlation"] = _ci(faith, n_boot, level, seed)
    out["quality_cases"] = int(n)
    if explain_fn is None:
        return out
    # the randomisation check and the max-sensitivity re-explain (stages + samples + 2) times: at most a quarter of
    # the cases the method explained (so the perturbation methods, which explain fewer cases, stay affordable)
    r = min(qcfg.randomisation_cases, max(2, len(maps) // 4), len(maps))
    xr, tr = x[:r], hm.target[:r]
    check = Q.randomisation_check(model, explain_fn, xr, tr, stages=qcfg.randomisation_stages, seed=seed,
                                  return_maps=keep is not None)
    if keep is not None:
        keep["randomisation_maps"] = check["maps"]
    out["randomisation_similarity"] = _ci(np.asarray(check["similarity"], dtype=np.float64), n_boot, level, seed)
    out["randomisation"] = {
        "stages": [float(s) for s in check["stages"]],
        "spearman": [_nanmean(s) for s in check["spearman"]],
        "ssim": [_nanmean(s) for s in check["ssim"]],
        "passed_fraction": float(np.mean(check["passed"])),
        "passed": bool(np.mean(check["passed"]) >= 0.5),
        "n_cases": int(r),
    }
    sens = Q.max_sensitivity(lambda xx, tt: explain_fn(model, xx, tt), xr, tr, radius=qcfg.sensitivity_radius,
                             n_samples=qcfg.sensitivity_samples, seed=seed)
    out["max_sensitivity"] = _ci(sens, n_boot, level, seed)
    return out


def selected_for_posthoc(selectors: list[str], name: str, family: str, input_kind: str) -> bool:
    """Whether the model ``name`` of ``family`` gets the post-hoc explainers (image models only)."""
    if input_kind != "image":
        return False
    return any(s in ("all", name, family) for s in selectors)


def summary_title(method: str, block: dict, sep: str = "\n") -> str:
    """The method's main scores for a figure title, e.g. ``PG 0.81 · mass 0.30`` / ``del 0.12 · ins 0.66`` /
    ``randomisation passed``, one group per line (``sep``)."""
    lines = []
    groups = ((("pointing_game", "PG"), ("mass_in_mask", "mass")), (("deletion_auc", "del"), ("insertion_auc", "ins")))
    for keys in groups:
        parts = [f"{label} {block[key]['value']:.2f}" for key, label in keys
                 if key in block and np.isfinite(block[key]["value"])]
        if parts:
            lines.append(" · ".join(parts))
    if "randomisation" in block:
        lines.append("randomisation " + ("passed" if block["randomisation"]["passed"] else "FAILED"))
    return sep.join(lines)

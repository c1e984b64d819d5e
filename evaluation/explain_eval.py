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
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from glasszoo.evaluation import quality as Q
from glasszoo.evaluation.metrics import mean_ci, pointing_game, relevance_mass_in_mask
from glasszoo.evaluation.plots import plot_heatmaps, plot_intervention, plot_randomisation
from glasszoo.evaluation.posthoc import PassCounter, explain_posthoc
from glasszoo.models.explanations import Heatmap
from glasszoo.training.caseset import CaseSet
from glasszoo.training.rundir import ModelDir, RunDir

ExplainFn = Callable[[Any, np.ndarray, np.ndarray], np.ndarray]  # (model, x [N,C,H,W], target [N]) -> maps [N,H,W]

RANDOMISATION_FIGURE_METHODS = ("gradcam", "integrated_gradients", "saliency", "lrp")
"""Post-hoc methods shown in the run's randomisation figure of a model (the sanity check as pictures)."""


def explanation_key(exp: Any) -> str:
    """The key of an explanation in ``metrics.json``: a heatmap's method, else the explanation's kind."""
    return exp.method if isinstance(exp, Heatmap) else exp.kind


def intrinsic_explain_fn(method: str) -> ExplainFn:
    """Recompute a model's own heatmap ``method`` (a key of its ``explain`` output) for other inputs or weights."""

    def fn(model: Any, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        for exp in model.explain(x, target=target):
            if isinstance(exp, Heatmap) and exp.method == method:
                return exp.maps
        raise ValueError(f"{type(model).__name__}.explain returned no heatmap '{method}'")

    return fn


def posthoc_explain_fn(method: str, params: dict | None = None, seed: int = 0) -> ExplainFn:
    """Recompute a post-hoc heatmap with the same explainer, parameters and seed."""
    def fn(model: Any, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        return explain_posthoc(model, x, method, target=target, params=params, seed=seed).maps

    return fn


def run_posthoc(model: Any, x: np.ndarray, method: str, params: dict | None, seed: int,
                case_ids: np.ndarray | None = None) -> tuple[Heatmap, dict]:
    """Run one post-hoc explainer on ``x``; return its heatmap and its cost (ms and passes per image)."""
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
    return mean_ci(values, n_boot, level, seed)


def score_heatmap(model: Any, hm: Heatmap, x: np.ndarray, masks: np.ndarray | None, explain_fn: ExplainFn | None,
                  qcfg: Any, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                  keep: dict | None = None, randomised: Callable[[int], list] | None = None) -> dict:
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
        randomised: ``randomised(stages)`` gives ``quality.randomised_models(model, stages, seed)``, e.g. kept for
            every heatmap of the model (:func:`explain_and_score`); None draws them for this heatmap.

    Returns:
        A dict of score blocks; ``randomisation`` also holds the per-stage means and the fraction of cases that pass.
    """
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
    if getattr(qcfg, "road", False):
        morf, lerf = Q.road(model, xs, ms, target, fractions=qcfg.road_fractions, noise=qcfg.road_noise, seed=seed)
        out["road_morf"] = _ci(morf, n_boot, level, seed)
        out["road_lerf"] = _ci(lerf, n_boot, level, seed)
    out["quality_cases"] = int(n)
    if explain_fn is None:
        return out
    # the randomisation check and the max-sensitivity re-explain (stages + samples + 1) times: at most a quarter of
    # the cases the method explained (so the perturbation methods, which explain fewer cases, stay affordable)
    r = min(qcfg.randomisation_cases, max(2, len(maps) // 4), len(maps))
    xr, tr = x[:r], hm.target[:r]
    reference = explain_fn(model, xr, tr)  # the trained model's maps, which both tests compare against
    copies = randomised or (lambda stages: Q.randomised_models(model, stages, seed))
    check = Q.randomisation_check(model, explain_fn, xr, tr, stages=qcfg.randomisation_stages, seed=seed,
                                  return_maps=keep is not None, reference=reference,
                                  randomised=copies(qcfg.randomisation_stages))
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
    out["randomisation_complexity_rise"] = _ci(check["complexity_rise"], n_boot, level, seed)
    samples = getattr(qcfg, "smooth_randomisation_samples", 0)
    if samples:
        smooth = Q.randomisation_check(model, Q.smoothed_explain_fn(explain_fn, samples,
                                                                    qcfg.smooth_randomisation_noise, seed),
                                       xr, tr, stages=1, seed=seed, randomised=copies(1))
        out["randomisation_smooth_similarity"] = _ci(np.asarray(smooth["similarity"], dtype=np.float64), n_boot,
                                                     level, seed)
        out["randomisation_smooth"] = {"passed_fraction": float(np.mean(smooth["passed"])),
                                       "passed": bool(np.mean(smooth["passed"]) >= 0.5), "samples": int(samples),
                                       "noise": float(qcfg.smooth_randomisation_noise), "n_cases": int(r)}
    sens = Q.max_sensitivity(lambda xx, tt: explain_fn(model, xx, tt), xr, tr, radius=qcfg.sensitivity_radius,
                             n_samples=qcfg.sensitivity_samples, seed=seed, reference=reference)
    out["max_sensitivity"] = _ci(sens, n_boot, level, seed)
    return out


OCCLUSION = "occlusion"
"""The perturbation method every other map of a model is rank-correlated with (``occlusion_rank_correlation``)."""


def occlusion_agreement(maps_of: dict[str, np.ndarray], boot: tuple[int, float, int]) -> dict[str, dict]:
    """Each heatmap's per-case Spearman rank correlation with the occlusion map of the same case (the perturbation
    "gold standard" of the saliency literature), of the absolute values (as the randomisation check: the methods'
    signs do not share a convention; occlusion by a black window is negative wherever black raises the logit, which
    made the signed correlations of every method about 0 on the quickstart), summarised by its mean and bootstrap CI
    over the cases both maps cover (each method explains the first cases of the shared explained sample, so the first
    ``min(n, n_occlusion)`` cases are common).

    Args:
        maps_of: heatmap key -> maps [n, H, W] of one model; must hold :data:`OCCLUSION`.
        boot: (n_boot, level, seed) of the CIs.

    Returns:
        key -> ``{"occlusion_rank_correlation": {"value", "ci", "n_cases"}}`` for every key but occlusion's.
    """
    occ = maps_of[OCCLUSION]
    out = {}
    for key, maps in maps_of.items():
        if key == OCCLUSION:
            continue
        k = min(len(maps), len(occ))
        block = _ci(Q.spearman_per_case(np.abs(maps[:k]), np.abs(occ[:k])), *boot)
        out[key] = {"occlusion_rank_correlation": {**block, "n_cases": int(k)}}
    return out


def selected_for_posthoc(selectors: list[str], name: str, family: str) -> bool:
    """Whether the config's ``evaluation.posthoc.models`` (model names, families or ``"all"``) selects the model
    ``name`` of ``family`` for the post-hoc explainers."""
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


def _intervention_figure(name: str, block: dict, run: RunDir) -> Path | None:
    curves = block.get("intervention")
    if not curves:
        return None
    plot_intervention(curves, run.intervention_figure(name), title=f"{name}: test-time intervention")
    return run.intervention_figure(name)


BLOCK_FIGURES: dict[str, Callable[[str, dict, RunDir], Path | None]] = {"concepts": _intervention_figure}
"""Explanation block name -> the figure drawn from it (a model's data, not the model: any model that reports a
``concepts`` block with intervention curves gets the intervention figure)."""


def draw_block_figures(name: str, explanation: dict, run: RunDir) -> list[Path]:
    """The figures of a model's explanation blocks that have a renderer in :data:`BLOCK_FIGURES`."""
    drawn = [draw(name, explanation[key], run) for key, draw in BLOCK_FIGURES.items()
             if isinstance(explanation.get(key), dict)]
    return [p for p in drawn if p is not None]


def _column_title(name: str, key: str, source: str, block: dict) -> str:
    """The title of a heatmap's column in the run's comparison figures: model, method, source and main scores."""
    return f"{name}\n{key} ({source})\n{summary_title(key, block)}"


def save_heatmap(hm: Heatmap, path: Path) -> None:
    """A heatmap as ``maps`` (float16), ``target`` and ``case_ids`` in a compressed ``.npz``."""
    ids = hm.case_ids.astype(str) if hm.case_ids is not None else np.array([], dtype=str)
    np.savez_compressed(path, maps=hm.maps.astype(np.float16), target=hm.target, case_ids=ids)


def load_heatmap(path: Path) -> tuple[np.ndarray, list[str]] | None:
    """(maps [n, H, W] float32, case ids) of a heatmap written by :func:`save_heatmap`, or None if absent."""
    if not Path(path).is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return z["maps"].astype(np.float32), [str(c) for c in z["case_ids"]]


def stored_heatmaps(block: dict, name: str, mdir: ModelDir) -> list[tuple[str, np.ndarray]]:
    """(column title, maps [n, H, W] of the first n explained cases) of every heatmap an earlier run saved."""
    out = []
    for key, b in block.get("explanation", {}).items():
        saved = load_heatmap(mdir.heatmap(key)) if isinstance(b, dict) and b.get("kind") == "heatmap" else None
        if saved is not None:
            out.append((_column_title(name, key, b.get("source", ""), b), saved[0]))
    return out


def explain_and_score(model: Any, name: str, exps_fn: Callable[[], list], x: np.ndarray, cs: CaseSet,
                      rows: np.ndarray, proba: np.ndarray, ev: Any, seed: int, run: RunDir, torch_model: bool,
                      posthoc: bool, heatmaps: list, log: Callable[[str], None] = lambda _m: None) -> dict:
    """The model's own explanations of the explained test cases, then (``posthoc``) the configured post-hoc
    explainers; every heatmap, whatever made it, scored by :func:`score_heatmap`, saved and drawn the same way.

    Args:
        model: the fitted model; ``exps_fn()`` returns its own explanations of ``x`` (a list, maybe empty).
        x: the model's inputs of the explained cases ``rows`` (test rows of ``cs``); ``proba`` their probabilities.
        ev: the config's ``EvaluationConfig``; ``seed`` the run's seed.
        torch_model: the model is a torch module (pass counting, perturbation metrics, post-hoc explainers apply).
        posthoc: the config selects the model for the post-hoc explainers.
        heatmaps: receives (column title, maps) of each heatmap, for the run's comparison figures.

    Returns:
        The ``explanation`` blocks of the model, by key (:func:`explanation_key`).
    """
    masks = cs.masks[rows] if cs.masks is not None else None
    boot = (ev.bootstrap, ev.ci_level, seed)
    mdir = run.model(name)
    out: dict[str, Any] = {}
    randomised: dict[str, list[np.ndarray]] = {}  # post-hoc method -> maps of the trained and randomised models
    maps_of: dict[str, np.ndarray] = {}  # heatmap key -> its maps, for the agreement with occlusion
    copies: dict[int, list] = {}  # stages -> the randomised copies of the model, drawn once for all its heatmaps

    def randomised_copies(stages: int) -> list:
        if stages not in copies:
            copies[stages] = Q.randomised_models(model, stages, seed)
        return copies[stages]

    def finish(key: str, hm: Heatmap, block: dict, explain_fn: ExplainFn | None, source: str) -> None:
        n = len(hm)
        keep: dict = {}
        block.update(score_heatmap(model if torch_model else None, hm, x[:n], None if masks is None else masks[:n],
                                   explain_fn, ev.quality, *boot, keep=keep, randomised=randomised_copies))
        if keep.get("randomisation_maps") and key in RANDOMISATION_FIGURE_METHODS and source == "post-hoc":
            randomised[key] = keep["randomisation_maps"]
        save_heatmap(hm, mdir.heatmap(key))
        maps_of[key] = hm.maps
        k = min(ev.figure_cases, n)
        if k:
            plot_heatmaps(cs, rows[:k], hm.maps[:k], run.method_figure(name, key), title=f"{name}: {key}",
                          proba=proba[:k])
        heatmaps.append((_column_title(name, key, source, block), hm.maps))
        out[key] = block
        scores = summary_title(key, block, sep=" · ")
        log(f"    {key}: {block['ms_per_image']:.1f} ms/image" + (f", {scores}" if scores else ""))

    counter = PassCounter(model) if torch_model else nullcontext()
    with counter:
        t = time.perf_counter()
        exps = exps_fn()
        ms = 1000 * (time.perf_counter() - t) / max(len(rows), 1)
    for exp in exps:
        key = explanation_key(exp)
        block: dict[str, Any] = {"kind": exp.kind, "source": "intrinsic", "n_cases": int(len(rows)),
                                 "ms_per_image": ms}
        if torch_model and counter.forward_images:  # an intrinsic explain() that bypasses forward() is not counted
            block["passes_per_image"] = counter.per_image(len(rows))
        if isinstance(exp, Heatmap):
            finish(key, exp, block, intrinsic_explain_fn(key) if torch_model else None, "intrinsic")
        else:
            out[key] = block
    if posthoc and torch_model:
        ph = ev.posthoc
        for method in ph.methods:
            if method in out:
                raise ValueError(f"{name}: its own explanation '{method}' has the name of a post-hoc method")
            n = min(ph.max_cases.get(method, len(rows)), len(rows))
            params = ph.params.get(method)
            hm, cost = run_posthoc(model, x[:n], method, params, seed, case_ids=cs.case_ids[rows[:n]])
            block = {"kind": "heatmap", "source": "post-hoc", "n_cases": int(n), **cost}
            if params:
                block["params"] = dict(params)
            finish(method, hm, block, posthoc_explain_fn(method, params, seed), "post-hoc")
    if OCCLUSION in maps_of:
        for key, block in occlusion_agreement(maps_of, boot).items():
            out[key].update(block)
    if randomised:
        stages = next(iter(out[k]["randomisation"]["stages"] for k in out if "randomisation" in out[k]))
        labels = ["trained"] + [f"{s:.0%} of parameters\nrandomised" for s in stages]
        n = min(3, *(len(v[0]) for v in randomised.values()))
        plot_randomisation(x[:n], labels, {k: [m[:n] for m in v] for k, v in randomised.items()},
                           run.randomisation_figure(name),
                           title=f"{name}: cascading randomisation from the output layer (Adebayo et al. 2018); "
                                 f"a faithful map changes")
    return out

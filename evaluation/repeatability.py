"""Repeatability and reproducibility of heatmaps (Arun et al., "Assessing the Trustworthiness of Saliency Maps for
Localizing Abnormalities in Medical Imaging", Radiology: Artificial Intelligence 2021).

A map that changes when only the training seed changes does not explain the disease: it explains the seed.

* **Repeatability**: the maps of the same method on the same test cases from models of the same configuration
  trained with different seeds (``glasszoo run --seeds N``; :func:`repeatability`).
* **Reproducibility**: the maps of the same post-hoc method on the same test cases from two different models of one
  run, e.g. two black-box backbones (:func:`reproducibility`).

Agreement of two maps of one case is the Spearman rank correlation of their absolute values (as in the
randomisation check, :func:`glasszoo.evaluation.quality.spearman_per_case`) and the SSIM of the absolute maps each
scaled by its own maximum (:func:`glasszoo.evaluation.quality.ssim`; Arun et al.'s measure). With more than two
seeds a case's agreement is its mean over the pairs of seeds; the summary is the mean over the cases with a
bootstrap CI.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from glasszoo.evaluation import quality as Q
from glasszoo.evaluation.explain_eval import load_heatmap
from glasszoo.evaluation.metrics import mean_ci


def agreement(versions: list[tuple[np.ndarray, list[str]]], n_boot: int = 1000, level: float = 0.95,
              seed: int = 0) -> dict:
    """Agreement of several versions (maps, case ids) of one heatmap on the cases they all cover.

    Returns:
        ``{"spearman": {"value", "ci"}, "ssim": {"value", "ci"}, "n_cases", "n_versions"}``; nan without common
        cases.
    """
    common = set(versions[0][1])
    for _, ids in versions[1:]:
        common &= set(ids)
    ids = sorted(common)
    out: dict[str, Any] = {"n_cases": len(ids), "n_versions": len(versions)}
    if not ids:
        nan = {"value": float("nan"), "ci": [float("nan"), float("nan")]}
        return {**out, "spearman": nan, "ssim": dict(nan)}
    aligned = []
    for maps, vids in versions:
        pos = {c: i for i, c in enumerate(vids)}
        aligned.append(maps[[pos[c] for c in ids]])
    rho, sim = [], []
    for a, b in itertools.combinations(aligned, 2):
        rho.append(Q.spearman_per_case(np.abs(a), np.abs(b)))
        sim.append(Q.ssim(Q.unit_abs(a.astype(np.float64)), Q.unit_abs(b.astype(np.float64))))
    with np.errstate(all="ignore"):
        per_case_rho = np.nanmean(np.stack(rho), axis=0) if len(rho) > 1 else rho[0]
        per_case_ssim = np.nanmean(np.stack(sim), axis=0) if len(sim) > 1 else sim[0]
    return {**out, "spearman": mean_ci(per_case_rho, n_boot, level, seed),
            "ssim": mean_ci(per_case_ssim, n_boot, level, seed)}


def repeatability(heatmap_of: dict[int, Callable[[str, str], Path]], metrics_by_seed: dict[int, dict],
                  n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Per model and heatmap that every seed's run has, the agreement of its maps across the seeds.

    Args:
        heatmap_of: seed -> ``(model, method) -> path of the saved heatmap`` of that seed's run.
        metrics_by_seed: seed -> that run's ``metrics.json``.

    Returns:
        ``{model: {method: agreement(...) + {"source"}}}``.
    """
    seeds = sorted(metrics_by_seed)
    out: dict[str, dict] = {}
    first = metrics_by_seed[seeds[0]]["models"]
    for name, block in first.items():
        for method, b in block.get("explanation", {}).items():
            if not (isinstance(b, dict) and b.get("kind") == "heatmap"):
                continue
            versions = [load_heatmap(heatmap_of[s](name, method)) for s in seeds]
            if any(v is None for v in versions):
                continue
            out.setdefault(name, {})[method] = {**agreement(versions, n_boot, level, seed),
                                                "source": b.get("source", "")}
    return out


def reproducibility(heatmap_of: Callable[[str, str], Path], metrics: dict, n_boot: int = 1000, level: float = 0.95,
                    seed: int = 0) -> list[dict]:
    """Every pair of models of one run that both have the same post-hoc heatmap: the agreement of their maps.

    Returns:
        ``[{"models": [a, b], "method", **agreement(...)}]`` (empty with fewer than two such models).
    """
    by_method: dict[str, list[str]] = {}
    for name, block in metrics["models"].items():
        for method, b in block.get("explanation", {}).items():
            if isinstance(b, dict) and b.get("kind") == "heatmap" and b.get("source") == "post-hoc":
                by_method.setdefault(method, []).append(name)
    out = []
    for method, names in by_method.items():
        for a, b in itertools.combinations(names, 2):
            versions = [load_heatmap(heatmap_of(a, method)), load_heatmap(heatmap_of(b, method))]
            if any(v is None for v in versions):
                continue
            out.append({"models": [a, b], "method": method, **agreement(versions, n_boot, level, seed)})
    return out


__all__ = ["agreement", "repeatability", "reproducibility"]

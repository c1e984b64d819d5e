"""``glasszoo run --seeds N``: the same experiment with N seeds, summarised as mean +- sd across seeds.

Bootstrap CIs describe the sampling of *test cases*; seeds describe the randomness of *training* (initial weights,
batch order, augmentation). A paper wants both. The first seed's run is the run directory itself (so its report,
figures and case pages are the usual ones); seed ``s`` of the others is a complete run in ``seeds/seed-<s>/``.
``seeds.json`` holds, per model and metric, the values and their mean and sd (sample standard deviation,
``ddof=1``), and the report shows them beside the bootstrap CIs.

``vary="training"`` (the default) keeps the data of the first seed for every run -- the same synthetic phantoms,
the same seeded split (``data.seed``) and the same explained test cases (``evaluation.sample_seed``) -- so only the
training changes and the maps of the same case can be compared across seeds: ``seeds.json``'s ``repeatability``
(:func:`glasszoo.evaluation.repeatability.repeatability`). ``vary="all"`` lets every seed make its own data and
split as well (the spread then includes the luck of the split), and has no repeatability.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from glasszoo.evaluation.experiment.config import ExperimentConfig
from glasszoo.evaluation.experiment.runner import log, run_experiment
from glasszoo.evaluation.metrics import METRIC_NAMES
from glasszoo.evaluation.repeatability import repeatability
from glasszoo.evaluation.report import write_report
from glasszoo.models import ConfigError
from glasszoo.training.atomic import atomic_write_text
from glasszoo.training.data import fixed_data_config
from glasszoo.training.rundir import RunDir

VARY = ("training", "all")
"""What changes between the seeds' runs: the training only, or the data and split too."""


def summarise_seeds(metrics_by_seed: dict[int, dict]) -> dict:
    """``{"seeds": [...], "models": {name: {metric: {"mean", "sd", "values"}}}}`` over the runs' ``metrics.json``.

    Task metrics and the primary explanation scores that every seed has; a model missing from a seed is summarised
    over the seeds that have it (``n`` says how many).
    """
    seeds = sorted(metrics_by_seed)
    names: list[str] = []
    for s in seeds:
        names += [n for n in metrics_by_seed[s]["models"] if n not in names]
    out: dict = {"seeds": seeds, "models": {}}
    for name in names:
        per_metric: dict[str, list[float]] = {}
        for s in seeds:
            m = metrics_by_seed[s]["models"].get(name)
            if m is None:
                continue
            for key in METRIC_NAMES:
                per_metric.setdefault(key, []).append(float(m["task"][key]["value"]))
            for method, block in m.get("explanation", {}).items():
                if not (isinstance(block, dict) and block.get("kind") == "heatmap"):
                    continue
                for score in ("pointing_game", "deletion_auc", "insertion_auc", "faithfulness_correlation"):
                    if score in block:
                        per_metric.setdefault(f"{method}.{score}", []).append(float(block[score]["value"]))
        out["models"][name] = {
            key: {"mean": float(np.nanmean(v)), "sd": float(np.nanstd(v, ddof=1)) if len(v) > 1 else float("nan"),
                  "n": len(v), "values": v}
            for key, v in per_metric.items()
        }
    return out


def run_seeds(cfg: ExperimentConfig, n_seeds: int, out: str | Path | None = None, overwrite: bool = False,
              resume: bool = False, vary: str = "training") -> Path:
    """Run ``cfg`` with seeds ``cfg.seed .. cfg.seed + n_seeds - 1``; write ``seeds.json`` and the report."""
    if vary not in VARY:
        raise ConfigError(f"--vary must be one of {VARY}, got {vary!r}")
    if vary == "training":
        ev = cfg.evaluation
        cfg = replace(cfg, data=fixed_data_config(cfg.data, cfg.seed),
                      evaluation=replace(ev, sample_seed=cfg.seed if ev.sample_seed is None else ev.sample_seed))
    first = run_experiment(cfg, out=out, overwrite=overwrite, resume=resume, report=False)
    runs = {cfg.seed: first}
    for k in range(1, n_seeds):
        seed = cfg.seed + k
        log(f"seed {k + 1} of {n_seeds} (seed {seed})")
        runs[seed] = run_experiment(replace(cfg, seed=seed), out=RunDir(first).seed_run(seed).path,
                                    overwrite=overwrite, resume=resume, report=False)
    by_seed = {s: json.loads(RunDir(d).metrics.read_text()) for s, d in runs.items()}
    summary = summarise_seeds(by_seed)
    summary["runs"] = {str(s): str(d) for s, d in runs.items()}
    summary["vary"] = vary
    if vary == "training" and n_seeds > 1:
        ev = cfg.evaluation
        summary["repeatability"] = repeatability(
            {s: (lambda name, method, d=d: RunDir(d).model(name).heatmap(method)) for s, d in runs.items()}, by_seed,
            ev.bootstrap, ev.ci_level, cfg.seed)
        for name, methods in summary["repeatability"].items():
            parts = [f"{m} {b['spearman']['value']:.2f}" for m, b in methods.items()]
            log(f"{name}: map agreement across seeds (Spearman): {', '.join(parts)}")
    atomic_write_text(RunDir(first).seeds, json.dumps(summary, indent=2, allow_nan=True))
    for name, m in summary["models"].items():
        auc = m["auc"]
        log(f"{name}: AUC {auc['mean']:.3f} +- {auc['sd']:.3f} over {auc['n']} seeds")
    log(f"report: {write_report(first)}")
    return first

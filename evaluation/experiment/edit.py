"""Readers' flags on a finished run, and ``glasszoo edit``: switch flagged prototypes off and measure what it costs.

A reader (in the viewer, ``glasszoo serve``, or with ``glasszoo flag``) flags a prototype whose reason is wrong. The
flags go to ``annotations.json`` beside the run's results, never into them. ``glasszoo edit RUN_DIR
--drop-prototypes FLAGS`` loads each flagged model, switches the prototypes off and refits its last layer only (the
model's convex last-layer problem, ``ImageModel.disable_prototypes``; nothing else is retrained), and writes a new
run directory holding the original model and the edited one, both evaluated by the runner exactly as a run
evaluates its models (same split, same explained cases, same seed). Its ``metrics.json`` gets an ``edit`` block
(:func:`edit_summary`): the AUC change with its DeLong CI and p-value, and the change of every pointing game with a
paired bootstrap CI over the explained cases; its report shows them.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from glasszoo.evaluation.experiment.config import ModelSpec
from glasszoo.evaluation.experiment.saved import SavedRun, open_run
from glasszoo.evaluation.explain_eval import load_heatmap
from glasszoo.evaluation.metrics import mean_ci, pointing_game
from glasszoo.evaluation.report import load_metrics, paired_tests, write_report
from glasszoo.models.errors import ConfigError, DataError
from glasszoo.training.adapters import Fitted
from glasszoo.training.atomic import atomic_write_text
from glasszoo.training.rundir import RunDir

EDITED_SUFFIX = "-edited"


# ---------------------------------------------------------------------------------------------------- annotations
def read_annotations(run_dir: str | Path) -> dict:
    """The run's ``annotations.json`` (``{"flags": [...]}``; empty when there is none yet)."""
    path = RunDir(run_dir).annotations
    if not path.is_file():
        return {"flags": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(data, dict) or not isinstance(data.get("flags"), list):
        raise DataError(f"{path}: expected an object with a 'flags' list")
    return data


def _check_flag(run: SavedRun, model: str, prototype: Any) -> int:
    run.spec(model)  # a clear error for an unknown model
    if isinstance(prototype, bool) or not isinstance(prototype, (int, np.integer)) or int(prototype) < 0:
        raise DataError(f"prototype must be a non-negative integer, got {prototype!r}")
    n = run.metrics["models"][model].get("explanation", {}).get("prototype_quality", {}).get("n_prototypes")
    if n is None:
        raise DataError(f"model '{model}' has no prototypes to flag")
    if int(prototype) >= int(n):
        raise DataError(f"model '{model}' has prototypes 0..{int(n) - 1}; there is no prototype {prototype}")
    return int(prototype)


def add_flag(run: SavedRun, model: str, prototype: int, reason: str = "", case_id: str | None = None,
             flagged: bool = True) -> dict:
    """Flag (or, with ``flagged=False``, unflag) ``prototype`` of ``model``; returns the annotations as written.

    The file is replaced atomically; a flag already there is not repeated. ``reason`` and ``case_id`` (the case the
    reader was looking at) are kept for whoever reads the flags later."""
    j = _check_flag(run, model, prototype)
    if case_id is not None:
        run.case_row(case_id)
    data = read_annotations(run.run_dir)
    flags = [f for f in data["flags"] if not (f.get("model") == model and f.get("prototype") == j)]
    if flagged:
        flags.append({"model": model, "prototype": j, "reason": str(reason)[:500],
                      **({"case_id": str(case_id)} if case_id is not None else {}),
                      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    data["flags"] = sorted(flags, key=lambda f: (str(f.get("model")), int(f.get("prototype", -1))))
    atomic_write_text(RunDir(run.run_dir).annotations, json.dumps(data, indent=2))
    return data


def flagged_prototypes(annotations: dict) -> dict[str, list[int]]:
    """model -> its flagged prototypes (sorted)."""
    out: dict[str, set[int]] = {}
    for f in annotations.get("flags", []):
        out.setdefault(str(f["model"]), set()).add(int(f["prototype"]))
    return {m: sorted(v) for m, v in out.items()}


def parse_drops(text: str, run_dir: str | Path) -> dict[str, list[int]]:
    """What ``--drop-prototypes`` names: ``annotations`` (the run's flags), the path of an annotations file, or
    ``MODEL:J,K,...`` (several models separated by ``;``)."""
    if text == "annotations":
        drops = flagged_prototypes(read_annotations(run_dir))
        if not drops:
            raise DataError(f"{RunDir(run_dir).annotations}: no prototype is flagged")
        return drops
    if ":" in text and not Path(text).exists():
        drops: dict[str, list[int]] = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            model, _, ids = part.partition(":")
            try:
                drops[model.strip()] = sorted({int(v) for v in ids.split(",") if v.strip()})
            except ValueError:
                raise ConfigError(f"--drop-prototypes: expected MODEL:J,K,... with integer prototypes, got "
                                  f"{part!r}") from None
            if not drops[model.strip()]:
                raise ConfigError(f"--drop-prototypes: no prototype given for '{model.strip()}'")
        return drops
    path = Path(text)
    if not path.is_file():
        raise DataError(f"--drop-prototypes: {text} is neither 'annotations', MODEL:J,K nor an annotations file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    drops = flagged_prototypes(data)
    if not drops:
        raise DataError(f"{path}: no prototype is flagged")
    return drops


def off_lesion_prototypes(run: SavedRun, model: str, min_inside: float = 0.5) -> list[dict]:
    """The relevant prototypes of ``model`` whose source patch lies mostly off the lesion of its training case (less
    than ``min_inside`` of the patch's pixels inside the mask): what a reader flags as "not the lesion"."""
    m = run.load_model(model)
    try:
        gallery = m.explain_global().content.get("prototypes", [])
    except NotImplementedError:
        gallery = []
    relevant = m.relevant_prototypes()
    if not gallery or relevant is None:
        raise DataError(f"model '{model}' has no prototypes")
    cs = run.caseset
    if cs.masks is None:
        raise DataError(f"the data of run {run.run_dir} has no lesion masks: 'off the lesion' cannot be told")
    row_of = {str(c): i for i, c in enumerate(cs.case_ids)}
    out = []
    for g in gallery:
        j = int(g["prototype"])
        r = row_of.get(str(g.get("source_case_id", "")))
        if not bool(relevant[j]) or r is None or j in m.disabled_prototypes():
            continue
        r0, c0, r1, c1 = (int(v) for v in g["source_box"])
        patch = cs.masks[r][r0:r1, c0:c1]
        inside = float(patch.mean()) if patch.size else 0.0
        if inside < min_inside:
            out.append({"prototype": j, "source_case_id": str(g["source_case_id"]), "inside": inside})
    return out


# ---------------------------------------------------------------------------------------------------- the edit
def _edit_dir(run_dir: Path) -> Path:
    base = run_dir.parent / f"{run_dir.name}-edit"
    n = 2
    out = base
    while RunDir(out).metrics.exists():
        out = run_dir.parent / f"{base.name}-{n}"
        n += 1
    return out


def edit_run(run_dir: str | Path, drops: dict[str, list[int]], out: str | Path | None = None,
             overwrite: bool = False, trust_run: bool = False, log=print) -> Path:
    """Switch off the prototypes ``drops`` (model -> prototype ids) of the run in ``run_dir``, refit each model's
    last layer only, and write a new run with each original model and its edit (``<name>-edited``) evaluated side
    by side; returns the new run directory (default ``<run_dir>-edit``, numbered if taken). The original run is only
    read."""
    from glasszoo.evaluation.experiment.runner import run_experiment  # heavy: Lightning, captum

    run_dir = Path(run_dir)
    run = open_run(run_dir, trust_run=trust_run)
    if not drops:
        raise DataError("nothing to edit: no prototype to drop")
    cs = run.caseset
    specs: list[ModelSpec] = []
    prefit: dict[str, tuple[Any, Fitted]] = {}
    edits: dict[str, dict] = {}
    for name, protos in drops.items():
        spec = run.spec(name)
        original = run.load_model(name)
        edited = run.load_model(name)
        t = time.perf_counter()
        try:
            record = edited.disable_prototypes(list(protos), cs)
        except NotImplementedError as exc:
            raise DataError(f"model '{name}' cannot be edited: {exc}") from None
        except ValueError as exc:
            raise DataError(f"model '{name}': {exc}") from None
        seconds = time.perf_counter() - t
        new_name = f"{name}{EDITED_SUFFIX}"
        log(f"edit: {name}: prototypes {', '.join(map(str, protos))} switched off, last layer refitted in "
            f"{seconds:.1f}s ({record['n_relevant_before']} -> {record['n_relevant_after']} relevant prototypes)")
        specs += [spec, ModelSpec(new_name, spec.model, dict(spec.params), dict(spec.training))]
        cost = run.metrics["models"][name].get("cost", {})
        prefit[name] = (original, Fitted(float(cost.get("train_seconds", float("nan")))))
        prefit[new_name] = (edited, Fitted(seconds))
        edits[new_name] = {"model": name, "dropped": sorted(int(j) for j in protos), "refit_seconds": seconds,
                           **record}
    cfg = replace(run.config, experiment=f"{run.config.experiment}-edit", models=specs)
    target = Path(out) if out is not None else _edit_dir(run_dir)
    if RunDir(target).metrics.exists() and not overwrite:
        raise ConfigError(f"{target} already holds a run (metrics.json); pass --overwrite or another --out")
    if target.resolve() == run_dir.resolve():
        raise ConfigError(f"--out {target} is the run being edited; an edit writes a new run directory")
    path = run_experiment(cfg, out=target, overwrite=True, caseset=cs, report=False, prefit=prefit,
                          run_info={"edited_from": str(run_dir.resolve()),
                                    **({"cwd": run.info["cwd"]} if run.info.get("cwd") else {})})
    metrics = load_metrics(path)
    metrics["edit"] = {"source_run": str(run_dir.resolve()), "models": edit_summary(path, metrics, edits, cs)}
    atomic_write_text(RunDir(path).metrics, json.dumps(metrics, indent=2, allow_nan=True))
    write_report(path, reference=next(iter(drops)))
    return path


def _pointing_hits(mdir, method: str, cs, rows_of: dict[str, int]) -> tuple[np.ndarray, np.ndarray] | None:
    saved = load_heatmap(mdir.heatmap(method)) if cs.masks is not None else None
    if saved is None:
        return None
    maps, ids = saved[0], np.asarray(saved[1], dtype=str)
    rows = np.array([rows_of[i] for i in ids])
    return ids, pointing_game(maps, cs.masks[rows])


def edit_summary(run_dir: str | Path, metrics: dict, edits: dict[str, dict], cs) -> dict:
    """Per edited model: what was dropped, the AUC change against the original (DeLong: difference, CI, p), and per
    heatmap both have, the pointing game of each and its change with a paired bootstrap CI over the explained
    cases (the same cases for both). ``cs`` is the edited run's data (the original's, already loaded)."""
    run = open_run(run_dir)
    rows_of = {str(c): i for i, c in enumerate(cs.case_ids)}
    ev = run.config.evaluation
    out = {}
    for new_name, rec in edits.items():
        name = rec["model"]
        test = next(t for t in paired_tests(run_dir, name) if t["model"] == new_name)
        block: dict[str, Any] = {**rec, "auc": test["auc"], "auc_original": test["auc_reference"],
                                 "delta_auc": test["delta_auc"], "delta_auc_ci": test["delta_auc_ci"],
                                 "delong_p": test["delong_p"], "delta_accuracy": test["delta_accuracy"],
                                 "mcnemar_p": test["mcnemar_p"], "pointing_game": {}}
        for method in metrics["models"][new_name].get("explanation", {}):
            a = _pointing_hits(run.dir.model(name), method, cs, rows_of)
            b = _pointing_hits(run.dir.model(new_name), method, cs, rows_of)
            if a is None or b is None or not np.array_equal(a[0], b[0]):
                continue
            diff = b[1].astype(np.float64) - a[1].astype(np.float64)
            block["pointing_game"][method] = {
                "original": float(np.nanmean(a[1])), "edited": float(np.nanmean(b[1])),
                "delta": mean_ci(diff, ev.bootstrap, ev.ci_level, run.config.seed), "n_cases": int(len(diff))}
        out[new_name] = block
    return out

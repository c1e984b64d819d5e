"""``glasszoo run``: train every model of a config on one split, evaluate them the same way, write the run.

The runner knows no model family and no input kind: each model is handled through the adapter of its input kind
(``glasszoo.training.adapters``: build, fit, predict, explain, save, load) and its declared hooks
(``glasszoo.models.base``: what it requires of the data, its extra metrics). What every model needs of the data is
checked before the first one trains; a model that still fails while it trains or is evaluated fails alone: the run
records its error, keeps every other model's results and writes the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Collection
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from glasszoo.evaluation.case_figures import Case, explain_case, pointing_game_scores
from glasszoo.evaluation.experiment.config import ExperimentConfig, ModelSpec
from glasszoo.evaluation.explain_eval import (
    draw_block_figures,
    explain_and_score,
    selected_for_posthoc,
    stored_heatmaps,
)
from glasszoo.evaluation.metrics import bootstrap_ci, kappa_ci
from glasszoo.evaluation.plots import plot_comparison, plot_roc
from glasszoo.evaluation.prototype_parts import PART_BLOCK, prototype_part_scores
from glasszoo.evaluation.repeatability import reproducibility
from glasszoo.evaluation.report import write_report
from glasszoo.evaluation.results import format_table, write_tradeoff
from glasszoo.evaluation.segmentation import segmentation_summary
from glasszoo.evaluation.subgroups import stored_heatmaps_by_case, subgroup_audit
from glasszoo.evaluation.surrogates import surrogate_block
from glasszoo.models import ConfigError, Counterfactual, DataError, model_info, resolve_pretrained
from glasszoo.training.adapters import Adapter, Adapters, Fitted, check_data
from glasszoo.training.allocator import keep_freed_memory
from glasszoo.training.atomic import atomic_write, atomic_write_text
from glasszoo.training.caseset import CaseSet
from glasszoo.training.data import load_caseset
from glasszoo.training.features import feature_descriptions
from glasszoo.training.rundir import RunDir, package_version


def resolve_run_dir(cfg: ExperimentConfig, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Where the run goes: ``out`` or ``<output_dir>/<experiment>``.

    An earlier run is never overwritten silently: with the default location a numbered sibling
    (``<experiment>-2``, ...) is used; an explicit ``out`` that already holds a run is an error unless ``overwrite``.
    """
    if out is not None:
        run_dir = Path(out)
        if RunDir(run_dir).metrics.exists() and not overwrite:
            raise ConfigError(f"{run_dir} already holds a run (metrics.json); pass --overwrite or another --out")
        return run_dir
    base = Path(cfg.output_dir) / cfg.experiment
    if overwrite or not RunDir(base).metrics.exists():
        return base
    n = 2
    while RunDir(base.parent / f"{base.name}-{n}").metrics.exists():
        n += 1
    return base.parent / f"{base.name}-{n}"


_LOG_AS = ""  # in a training worker process (``workers`` > 1): the model it trains, named on each line it logs


def log(msg: str) -> None:
    if _LOG_AS:
        msg = f"    {_LOG_AS}: {msg.lstrip()}"
    print(msg, file=sys.stderr, flush=True)


def _explain_sample(cs: CaseSet, n: int, seed: int) -> np.ndarray:
    test = cs.indices("test")
    if n < 0 or n >= len(test):
        return test
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(test, size=n, replace=False))


def _case_figure_rows(cs: CaseSet, rows: np.ndarray, per_class: int) -> np.ndarray:
    """The first ``per_class`` of ``rows`` of each true class (the cases that get a per-case figure)."""
    picked = [rows[cs.labels[rows] == c][:per_class] for c in range(cs.num_classes)]
    return np.sort(np.concatenate(picked)) if picked else rows[:0]


def training_image_lookup(cs: CaseSet):
    """case id -> its image [C, H, W] if the case is in the training split, else None (prototype sources)."""
    row_of = {str(cs.case_ids[r]): int(r) for r in cs.indices("train")}

    def source_image(case_id: str) -> np.ndarray | None:
        r = row_of.get(str(case_id))
        return None if r is None else cs.images[r]

    return source_image


def case_of(cs: CaseSet, adapter: Adapter, row: int) -> Case:
    """The :class:`Case` of row ``row``: the model's input for it, its image, id, label, mask and concepts."""
    return Case(x=adapter.inputs(np.array([row])), image=cs.images[row], case_id=str(cs.case_ids[row]),
                label=int(cs.labels[row]), mask=None if cs.masks is None else cs.masks[row],
                true_concepts=None if cs.concepts is None else cs.concepts[row])


def write_case_figures(model: Any, adapter: Adapter, rows: np.ndarray, run: RunDir, name: str,
                       explanation: dict | None = None) -> None:
    """Per case in ``rows``, the model's case figure (:func:`glasszoo.evaluation.case_figures.explain_case`);
    ``explanation`` (the model's explanation blocks of the run) gives the pointing games a figure may choose its
    drawings by."""
    cs = adapter.cs
    source_image = training_image_lookup(cs)
    scores = pointing_game_scores(explanation or {})
    for r in rows:
        fig = run.case_figure(name, cs.case_ids[r])
        exps = explain_case(model, case_of(cs, adapter, int(r)), cs.class_names, fig, source_image, scores=scores)
        for cf in (e for e in exps if isinstance(e, Counterfactual)):  # the case page prints it under the figure
            atomic_write_text(run.case_counterfactual(name, cs.case_ids[r]),
                              json.dumps({**cf.to_dict(), "text": cf.text(0)}, indent=1, allow_nan=True))


def write_case_heatmaps(cs: CaseSet, rows: np.ndarray, explain_rows: np.ndarray,
                        columns: list[tuple[str, np.ndarray]], run: RunDir) -> None:
    """Per case of ``rows`` that was explained, every heatmap of the run side by side."""
    for r in rows:
        j = int(np.searchsorted(explain_rows, r))
        if j >= len(explain_rows) or explain_rows[j] != r:
            continue
        cols = [(title, maps[j:j + 1]) for title, maps in columns if j < len(maps)]
        if cols:
            label = f"{cs.case_ids[r]}\ntrue: {cs.class_names[cs.labels[r]]}"
            plot_comparison(cs.images[[r]], cs.masks[[r]] if cs.masks is not None else None, [label], cols,
                            run.case_heatmaps(cs.case_ids[r]))


def _check_resumable(run: RunDir, cfg: ExperimentConfig) -> dict:
    """The finished model blocks of the run in ``run``, if it was run with the same configuration."""
    if not run.metrics.exists() or not run.config.exists():
        return {}
    then = yaml.safe_load(run.config.read_text())
    now = yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if then != now:
        keys = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
        raise ConfigError(f"cannot resume {run.path}: it was run with another configuration (differs in {keys}); "
                          f"run it again with --overwrite or another --out")
    try:
        return json.loads(run.metrics.read_text()).get("models", {})
    except json.JSONDecodeError as exc:
        raise ConfigError(f"cannot resume {run.path}: metrics.json is not valid JSON ({exc})") from None


def read_predictions(cs: CaseSet, path: Path) -> np.ndarray:
    """The test probabilities saved in ``predictions.csv``, checked against the data's test cases."""
    pred = pd.read_csv(path, dtype={"case_id": str})
    test_ids = cs.case_ids[cs.indices("test")].astype(str)
    if not np.array_equal(pred["case_id"].to_numpy(dtype=str), test_ids):
        raise ConfigError(f"cannot resume: {path} does not list this data's test cases")
    return pred[[f"p_{c}" for c in cs.class_names]].to_numpy(dtype=np.float64)


def _misclassified_rows(cs: CaseSet, curves: dict[str, np.ndarray], limit: int) -> np.ndarray:
    """Test cases some model got wrong, most-often-wrong first (ties by row), at most ``limit``."""
    test = cs.indices("test")
    if not curves or limit <= 0:
        return test[:0]
    wrong = np.sum([p.argmax(1) != cs.labels[test] for p in curves.values()], axis=0)
    order = np.lexsort((test, -wrong))
    return np.sort(test[order][wrong[order] > 0][:limit])


def check_pretrained(cfg: ExperimentConfig) -> None:
    """Refuse, before anything trains, a ``pretrained`` setting whose weights cannot be had (a missing file, timm's
    weights offline and not cached): one line naming the model and what to do."""
    for spec in cfg.models:
        value = spec.params.get("pretrained", False)
        if value is False or value is None:
            continue
        defaults = {k: p.default for k, p in inspect.signature(model_info(spec.model).cls.__init__).parameters.items()}
        backbone = spec.params.get("backbone", spec.params.get("encoder", defaults.get("backbone",
                                                                                     defaults.get("encoder"))))
        try:
            resolve_pretrained(value, str(backbone))
        except ConfigError as exc:
            raise ConfigError(f"{cfg.source or 'config'}: models[{spec.name}].params.{exc}") from None


def check_config_data(cfg: ExperimentConfig, cs: CaseSet) -> None:
    """Refuse, before anything trains, a config with a model that cannot take the data; names every such model."""
    check_pretrained(cfg)
    problems = []
    for spec in cfg.models:
        try:
            check_data(spec.name, spec.model, spec.params, cs)
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        raise DataError(f"{cfg.source or 'config'}: " + "; ".join(problems) + ". Nothing was trained: remove these "
                        "models from the config or give the data what they need")


class _Rows:
    """The cases of ``cs`` at ``rows``, made (``cs.subset``) only when an attribute is first read: a model whose
    ``extra_metrics`` ignores them costs nothing, and a memory-mapped data set is not copied into memory for it."""

    def __init__(self, cs: CaseSet, rows: np.ndarray) -> None:
        self._cs, self._rows, self._subset = cs, rows, None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._subset is None:
            self._subset = self._cs.subset(self._rows)
        return getattr(self._subset, name)


def _model_metrics(model: Any, cs: CaseSet, cfg: ExperimentConfig) -> dict:
    """The model's own extra blocks (``extra_metrics``) and, for a model that segments, its segmentation scores."""
    test, train = _Rows(cs, cs.indices("test")), _Rows(cs, cs.indices("train"))
    blocks = dict(model.extra_metrics(test, train))
    if model.segments and cs.masks is not None:
        ev = cfg.evaluation
        seg = segmentation_summary(model.predict_masks(test.images), test.masks, n_boot=ev.bootstrap, seed=cfg.seed)
        blocks["segmentation"] = {**seg, "threshold": 0.5}
    return blocks


def _reading_load(model: Any, adapter: Adapter, test: np.ndarray) -> dict | None:
    """The model's ``reading_load`` on the test inputs (what a reader takes in to follow one decision), checked."""
    load = model.reading_load(adapter.inputs(test))
    if load is None:
        return None
    missing = {"count", "unit", "definition"} - set(load)
    if missing:
        raise TypeError(f"{type(model).__name__}.reading_load returned {load!r}, missing {sorted(missing)}")
    return {"count": float(load["count"]), "unit": str(load["unit"]), "definition": str(load["definition"])}


def _part_scores(model: Any, adapter: Adapter, cs: CaseSet, cfg: ExperimentConfig) -> dict:
    """Consistency and stability of the model's prototypes on a seeded sample of ``evaluation.prototype_parts.cases``
    test cases (``glasszoo.evaluation.prototype_parts``); empty for a model without prototypes."""
    pp = cfg.evaluation.prototype_parts
    if not adapter.torch_model or pp.cases == 0:
        return {}
    rows = _explain_sample(cs, pp.cases, cfg.seed)
    t = time.perf_counter()
    scores = prototype_part_scores(model, adapter.inputs(rows), None if cs.masks is None else cs.masks[rows],
                                   cs.labels[rows], pp.threshold, pp.noise, pp.region, cfg.seed)
    if scores:
        found = ", ".join(f"{k} {scores[k]:.2f}" for k in ("consistency", "consistent_fraction", "stability",
                                                            "peak_stability") if k in scores)
        log(f"    prototype parts on {len(rows)} test cases: {found} ({time.perf_counter() - t:.1f}s)")
    return scores


def _train_and_evaluate(spec: ModelSpec, adapter: Adapter, cs: CaseSet, cfg: ExperimentConfig, run: RunDir,
                        explain_rows: np.ndarray, heatmaps: list, prefit: tuple[Any, Fitted] | None = None
                        ) -> tuple[Any, np.ndarray, dict]:
    """Fit one model, predict the test split, explain and score it; returns (model, test proba, metrics block).
    ``prefit`` = (model, what fitting it cost): a model fitted elsewhere (an edit of a saved one), stored in the run
    and evaluated exactly as a trained one, not trained."""
    info = model_info(spec.model)
    ev = cfg.evaluation
    mdir = run.model(spec.name)
    mdir.path.mkdir(parents=True, exist_ok=True)
    test = cs.indices("test")
    if prefit is None:
        torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only, not on the models before
        model = adapter.build(spec.model, spec.params)
        fitted = adapter.fit(model, mdir, cfg.training_for(spec), cfg.seed, spec.name)
    else:
        model, fitted = prefit
        adapter.store(model, mdir)
    t = time.perf_counter()
    proba = adapter.predict(model, test)
    infer_ms = 1000 * (time.perf_counter() - t) / len(test)
    pdf = pd.DataFrame({"case_id": cs.case_ids[test], "label": cs.labels[test], "pred": proba.argmax(1)})
    for k, cname in enumerate(cs.class_names):
        pdf[f"p_{cname}"] = proba[:, k]
    atomic_write(mdir.predictions, lambda fh: pdf.to_csv(fh, index=False))
    task = bootstrap_ci(cs.labels[test], proba, cs.positive_class, ev.bootstrap, ev.ci_level, cfg.seed)
    if cs.ordinal:  # ordered grades: the agreement clinical papers report, beside the macro AUC
        task["quadratic_weighted_kappa"] = kappa_ci(cs.labels[test], proba, ev.bootstrap, ev.ci_level, cfg.seed)

    t_explain = time.perf_counter()
    explanation: dict[str, Any] = {}
    if len(explain_rows):
        explanation = explain_and_score(
            model, spec.name, lambda: adapter.explain(model, explain_rows), adapter.inputs(explain_rows), cs,
            explain_rows, proba[np.searchsorted(test, explain_rows)], ev, cfg.seed, run, adapter.torch_model,
            selected_for_posthoc(ev.posthoc.models, spec.name, info.family), heatmaps, log)
    extra = _model_metrics(model, cs, cfg)
    explanation.update(extra.pop("explanation", {}))
    load = _reading_load(model, adapter, test)
    parts = _part_scores(model, adapter, cs, cfg)
    if parts:  # beside the model's own prototype-quality figures, which win on a shared key
        quality = explanation.setdefault(PART_BLOCK, {})
        quality.update({k: v for k, v in parts.items() if k not in quality})
    draw_block_figures(spec.name, explanation, run)
    explain_seconds = time.perf_counter() - t_explain
    reads, table = adapter.reads(), adapter.table_info()
    if table:
        reads["table_info"] = table
    block = {
        "family": info.family,
        "registry_name": spec.model,
        "input": info.input_kind,
        "reads": reads,
        "task": task,
        "explanation": explanation,
        "cost": {"train_seconds": fitted.train_seconds, "params": adapter.n_params(model),
                 "inference_ms_per_image": infer_ms},
        **({"training": fitted.training} if fitted.training is not None else {}),
        **({"reading_load": load} if load else {}),
        **extra,
    }
    auc = task["auc"]
    if "quadratic_weighted_kappa" in task:
        kap = task["quadratic_weighted_kappa"]
        log(f"    test quadratic-weighted kappa {kap['value']:.3f} [{kap['ci'][0]:.3f}, {kap['ci'][1]:.3f}]")
    log(f"    test AUC {auc['value']:.3f} [{auc['ci'][0]:.3f}, {auc['ci'][1]:.3f}], trained in "
        f"{fitted.train_seconds:.1f}s, explained and scored in {explain_seconds:.1f}s")
    return model, proba, block


def _surrogates(cfg: ExperimentConfig, cs: CaseSet, adapters: Adapters,
                finished: dict[str, tuple[ModelSpec, Any, Adapter]], skip: Collection[str] = ()) -> dict:
    """``metrics.json``'s ``surrogates``: per image model of ``finished`` selected by ``evaluation.surrogates.of``
    (except those named in ``skip``: already fitted), readable models fitted to its predictions on the run's
    feature table (``glasszoo.evaluation.surrogates``). Empty when the run reads no feature table (no tabular model)
    or has no such image model."""
    sg, ev = cfg.evaluation.surrogates, cfg.evaluation
    tabular = [sp for sp in cfg.models if model_info(sp.model).input_kind == "features"]
    targets = [name for name, (spec, model, adapter) in finished.items() if name not in skip
               and adapter.torch_model and selected_for_posthoc(sg.of, name, model_info(spec.model).family)]
    if not sg.enabled or not sg.models or not tabular or not targets:
        return {}
    features = adapters.for_info(model_info(tabular[0].model), cfg.features)  # the run's shared table
    X, names = features.table
    descriptions = feature_descriptions(names)
    rows = np.arange(cs.n_cases)
    out = {}
    for name in targets:
        _, model, adapter = finished[name]
        t = time.perf_counter()
        log(f"surrogates of {name} on the feature table ({X.shape[1]} features; {features.reads()['text']})")
        block = surrogate_block(adapter.predict(model, rows), X, cs.labels, cs.indices("train"), cs.indices("val"),
                                cs.indices("test"), names, descriptions, sg.models, cs.positive_class, ev.bootstrap,
                                ev.ci_level, cfg.seed, log=log)
        block["reads"] = features.reads()
        block["seconds"] = time.perf_counter() - t
        out[name] = block
    return out


_POOL: dict[str, Any] = {}  # what a forked training worker inherits: the run's config, data, adapters and directory


def _parallel_models(cfg: ExperimentConfig, order: list[ModelSpec], adapters: Adapters, done: dict,
                     prefit: dict | None) -> list[str]:
    """The models of the run that train in worker processes: with ``workers`` > 1, every image model still to be
    trained (not loaded from an earlier run, not fitted elsewhere), when there are two or more and they train on
    the CPU (a GPU is shared by one process better than by several)."""
    if cfg.workers < 2:
        return []
    names = [sp.name for sp in order if sp.name not in done and sp.name not in (prefit or {})
             and adapters.for_info(model_info(sp.model), cfg.features_for(sp)).torch_model]
    if len(names) < 2:
        return []
    gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    if gpu and any(cfg.training_for(sp).accelerator != "cpu" for sp in order if sp.name in names):
        log(f"workers: {cfg.workers} ignored, the image models train on the GPU one after another")
        return []
    return names


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pool_init() -> None:
    """A training worker: one torch thread (two single-threaded models train faster side by side on two cores
    than one after another on both; docs/performance.md)."""
    torch.set_num_threads(1)


def _pool_train(name: str) -> tuple[str, np.ndarray | None, dict]:
    """In a worker process: train, evaluate and store the model ``name`` of the run in ``_POOL`` (forked from the
    run's process); returns ("ok", test probabilities, its metrics block) or ("failed", None, its failure record).
    The heatmaps and the model are on disk in the run; the run's process reads them back."""
    global _LOG_AS
    _LOG_AS = name
    cfg, cs, run = _POOL["cfg"], _POOL["cs"], _POOL["run"]
    spec = _POOL["specs"][name]
    spec = dataclasses.replace(spec, training={**spec.training, "progress_bar": False})  # bars of two would mix
    adapter = _POOL["adapters"].for_info(model_info(spec.model), cfg.features_for(spec))
    try:
        _, proba, block = _train_and_evaluate(spec, adapter, cs, cfg, run, _POOL["explain_rows"], [])
    except Exception as exc:  # one model's failure must not cost the others' results
        return "failed", None, _failure(spec, exc)
    return "ok", proba, block


_FIGURE_JOBS: dict[str, Any] = {}  # what a forked figure process inherits: the jobs of the run's figures


def _figure_job(key: str) -> tuple[str, dict | None]:
    """In a forked process: draw the figures of job ``key``; returns (key, its failure record or None)."""
    try:
        _FIGURE_JOBS[key]()
    except Exception as exc:
        return key, _error(exc)
    return key, None


def _draw(jobs: dict[str, Any], workers: int) -> dict[str, dict]:
    """Run the figure ``jobs`` (callables that only write files), in ``workers`` forked processes of one torch
    thread each if ``workers`` > 1, else one after another; returns the failure record of each job that raised.
    Jobs whose process died are drawn again here."""
    failures: dict[str, dict] = {}
    left = dict(jobs)
    if workers > 1 and len(jobs) > 1:
        _FIGURE_JOBS.update(jobs)
        try:
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("fork"),
                                     initializer=_pool_init) as pool:
                for key, failure in pool.map(_figure_job, list(jobs)):
                    left.pop(key)
                    if failure:
                        failures[key] = failure
        except (BrokenProcessPool, OSError) as exc:
            log(f"figures: a drawing process ended ({type(exc).__name__}: {exc}); drawing the rest here")
        finally:
            _FIGURE_JOBS.clear()
    for key, job in left.items():
        try:
            job()
        except Exception as exc:
            failures[key] = _error(exc)
    return failures


def _error(exc: Exception) -> dict:
    """The error and traceback of ``exc`` (inside its ``except``), as a failure record holds them."""
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def _failure(spec: ModelSpec, exc: Exception, stage: str | None = None) -> dict:
    """What ``metrics.json``'s ``failed`` records of a model that raised ``exc`` (inside an ``except``)."""
    return {"registry_name": spec.model, **({"stage": stage} if stage else {}), **_error(exc)}


def run_experiment(cfg: ExperimentConfig, out: str | Path | None = None, overwrite: bool = False,
                   resume: bool = False, caseset: CaseSet | None = None, report: bool = True,
                   prefit: dict[str, tuple[Any, Fitted]] | None = None, run_info: dict | None = None) -> Path:
    """Run the experiment ``cfg`` and return its run directory.

    Writes ``config.yaml`` (resolved), ``splits.csv``, per model ``models/<name>/`` (weights, logs,
    ``predictions.csv``, explanations), then ``metrics.json``, ``tradeoff.csv``, ``figures/`` and ``report.html``.
    ``metrics.json`` is rewritten (atomically) after each model, so an interrupted run keeps what it finished, and
    ``resume=True`` continues it: models already in its ``metrics.json`` (with their weights and predictions on disk)
    are loaded, not retrained. ``caseset`` replaces the data the config describes (the shortcut audit stamps a marker
    on it); it must have the same cases and split. ``prefit`` maps model names of the config to (model, cost) pairs
    fitted elsewhere (``glasszoo edit``): they are stored and evaluated like the others, not trained. ``run_info``
    adds entries to ``run.json`` (an edit's source run).

    A model that fails while it trains or is evaluated is recorded under ``metrics.json``'s ``failed`` (its error,
    by name) and the run goes on without it; :func:`failures` reads them back (``glasszoo run`` then exits 1).
    """
    run = RunDir(resolve_run_dir(cfg, out, overwrite or resume))
    done = _check_resumable(run, cfg) if resume else {}
    t0 = time.perf_counter()
    cs = caseset if caseset is not None else load_caseset(cfg.data, seed=cfg.seed)
    check_config_data(cfg, cs)  # every model's needs, before anything is written or trained
    run.figures.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    kept = keep_freed_memory()  # before any training, and before the workers fork (they inherit it)
    # where relative data paths resolve from, so the run can be reopened from anywhere (glasszoo explain)
    atomic_write_text(run.run_info, json.dumps({"cwd": os.getcwd(), "glasszoo_version": package_version(),
                                                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                "malloc_keeps_freed_memory": kept,
                                                **(run_info or {})}, indent=2))
    log(f"glasszoo: run '{cfg.experiment}' -> {run.path}" + (f" (resuming: {len(done)} models done)" if done else ""))
    log(f"data: {cs.name}, {cs.n_cases} cases, image {list(cs.images.shape[1:])}, classes {cs.class_names} "
        f"({time.perf_counter() - t0:.1f}s)")
    splits = pd.DataFrame({"case_id": cs.case_ids, "split": cs.split, "label": cs.labels,
                           "class_name": [cs.class_names[i] for i in cs.labels]})
    atomic_write(run.splits, lambda fh: splits.to_csv(fh, index=False))

    metrics: dict[str, Any] = {"dataset": {**cs.summary(), "source": cfg.data.get("source")}, "models": {}}
    failed: dict[str, dict] = {}
    adapters = Adapters(cs, cfg.features)
    test = cs.indices("test")
    curves: dict[str, np.ndarray] = {}
    ev = cfg.evaluation
    # the same test cases for every model (and, with --seeds, for every seed: sample_seed)
    explain_rows = _explain_sample(cs, ev.explain_cases, cfg.seed if ev.sample_seed is None else ev.sample_seed)
    # the cases of the all-methods comparison grid: within the smallest per-method case cap, so every column has them
    caps = [ev.posthoc.max_cases[m] for m in ev.posthoc.methods if m in ev.posthoc.max_cases]
    pool = explain_rows[:min(caps)] if caps else explain_rows
    cmp_rows = _case_figure_rows(cs, pool, ev.comparison_cases_per_class)
    cmp_idx = np.searchsorted(explain_rows, cmp_rows)
    heatmaps_of: dict[str, list[tuple[str, np.ndarray]]] = {}  # model -> (column title, maps) of its heatmaps
    finished: dict[str, tuple[ModelSpec, Any, Adapter]] = {}  # kept for the case figures

    segmenters = cfg.segmenters_used()
    # a segmentation model whose masks a tabular model reads trains first (otherwise config order)
    order = sorted(cfg.models, key=lambda sp: sp.name not in segmenters)
    if [sp.name for sp in order] != [sp.name for sp in cfg.models]:
        log(f"order: {', '.join(segmenters)} first, since {'their' if len(segmenters) > 1 else 'its'} predicted "
            f"lesion masks are read by the glass-box models (features.region: predicted)")
    position = {sp.name: i for i, sp in enumerate(order)}

    def in_order(d: dict) -> dict:  # models finish out of order with workers; results are listed in run order
        return {k: d[k] for k in sorted(d, key=position.__getitem__)}

    def save_metrics() -> None:
        metrics["models"] = in_order(metrics["models"])
        metrics["dataset"].update(adapters.dataset_info())
        if failed:
            metrics["failed"] = failed
        atomic_write_text(run.metrics, json.dumps(metrics, indent=2, allow_nan=True))

    def share_masks(name: str, model: Any) -> None:
        if name in segmenters:
            adapters.predicted_masks[name] = model.predict_masks(cs.images)
            empty = int((~adapters.predicted_masks[name].reshape(cs.n_cases, -1).any(axis=1)).sum())
            log(f"    predicted lesion masks of all {cs.n_cases} cases kept for the glass-box models "
                f"({empty} empty)")

    def record(spec: ModelSpec, model: Any, adapter: Adapter, proba: np.ndarray, block: dict) -> None:
        metrics["models"][spec.name] = block
        curves[spec.name] = proba
        finished[spec.name] = (spec, model, adapter)
        save_metrics()
        try:
            share_masks(spec.name, model)
        except Exception as exc:  # the readers of these masks then fail, each naming the missing masks
            log(f"    could not predict the lesion masks of every case: {type(exc).__name__}: {exc}")

    def announce(i: int, spec: ModelSpec, info: Any, adapter: Adapter, where: str = "") -> None:
        log(f"[{i}/{len(cfg.models)}] {spec.name} ({info.family}, {info.input_kind}){where}")
        log(f"    reads: {adapter.reads()['text']}")
        if not info.intrinsic and not (adapter.torch_model and ev.posthoc.methods
                                       and selected_for_posthoc(ev.posthoc.models, spec.name, info.family)):
            log(f"    note: '{spec.name}' has no explanation of its own and evaluation.posthoc does not select it: "
                f"it gets no heatmap in this run")

    # with workers > 1 on the CPU the image models train side by side, each in a forked process on one thread; the
    # run's own process meanwhile fits the tabular models, then takes each worker's stored model back
    spec_of = {sp.name: sp for sp in order}
    parallel = _parallel_models(cfg, order, adapters, done, prefit)
    futures: dict[str, Future] = {}
    executor = None
    if parallel:
        n_workers = min(cfg.workers, len(parallel))
        _POOL.update(cfg=cfg, cs=cs, adapters=adapters, run=run, explain_rows=explain_rows, specs=spec_of)
        executor = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork"),
                                       initializer=_pool_init)
        log(f"workers: {len(parallel)} image models train side by side in {n_workers} processes, one torch thread "
            f"each; their lines name them")
        for name in parallel:
            futures[name] = executor.submit(_pool_train, name)
            spec = spec_of[name]
            info = model_info(spec.model)
            announce(position[name] + 1, spec, info, adapters.for_info(info, cfg.features_for(spec)),
                     " in a worker process")

    def collect(name: str) -> None:
        """Wait for the worker training ``name``; record its results and load its stored model back."""
        spec = spec_of[name]
        info = model_info(spec.model)
        adapter = adapters.for_info(info, cfg.features_for(spec))
        future = futures.pop(name)
        try:
            status, proba, block = future.result()
            if status == "ok":  # the model as stored, for the surrogates, the case figures and the masks
                model = adapter.load(spec.model, spec.params, run.model(name))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # e.g. the worker process died (out of memory): the model fails alone
            status, block = "failed", _failure(spec, exc)
        if status != "ok":
            failed[name] = block
            save_metrics()
            log(f"    {name}: FAILED: {block['error']} (the run goes on without '{name}')")
            return
        heatmaps_of[name] = stored_heatmaps(block, name, run.model(name))
        record(spec, model, adapter, proba, block)

    surrogates: dict[str, Any] = {}

    def fit_surrogates() -> None:
        """The surrogates of the finished models that have none yet; an error ends them for the run."""
        if "error" in surrogates:
            return
        try:
            surrogates.update(_surrogates(cfg, cs, adapters, finished, skip=surrogates))
        except Exception as exc:  # the surrogates must not cost the run's results
            surrogates.clear()
            surrogates["error"] = f"{type(exc).__name__}: {exc}"
            log(f"surrogates FAILED: {type(exc).__name__}: {exc}")

    try:
        for i, spec in enumerate(order, 1):
            if spec.name in parallel:
                continue
            info = model_info(spec.model)
            fc = cfg.features_for(spec)
            if fc.segmenter in futures:  # a tabular model reading the masks of a model still training waits for it
                collect(fc.segmenter)
            adapter = adapters.for_info(info, fc)
            mdir = run.model(spec.name)
            if spec.name in done and adapter.saved(mdir):
                model = adapter.load(spec.model, spec.params, mdir)
                curves[spec.name] = read_predictions(cs, mdir.predictions)
                adapter.prepare()  # e.g. the feature table, whose provenance goes under dataset as in the first run
                metrics["models"][spec.name] = done[spec.name]
                heatmaps_of[spec.name] = stored_heatmaps(done[spec.name], spec.name, mdir)
                finished[spec.name] = (spec, model, adapter)
                save_metrics()
                log(f"[{i}/{len(cfg.models)}] {spec.name}: done in the earlier run, loaded (not retrained)")
                share_masks(spec.name, model)
                continue
            announce(i, spec, info, adapter)
            heatmaps_of[spec.name] = []
            try:
                model, proba, block = _train_and_evaluate(spec, adapter, cs, cfg, run, explain_rows,
                                                          heatmaps_of[spec.name], (prefit or {}).get(spec.name))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # one model's failure must not cost the others' results
                del heatmaps_of[spec.name]
                failed[spec.name] = _failure(spec, exc)
                save_metrics()
                log(f"    FAILED: {type(exc).__name__}: {exc} (the run goes on without '{spec.name}')")
                continue
            record(spec, model, adapter, proba, block)
        for name in sorted(futures, key=position.__getitem__):
            collect(name)
            if futures:  # the run's process is idle while the others train: fit the surrogates of what is done, on
                with torch_threads(1):  # one thread (the workers have the others)
                    fit_surrogates()
    finally:
        if executor is not None:
            executor.shutdown(wait=not futures, cancel_futures=True)  # futures left only when interrupted
            _POOL.clear()
    curves, finished = in_order(curves), in_order(finished)
    heatmaps = [h for name in in_order(heatmaps_of) for h in heatmaps_of[name]]

    fit_surrogates()
    if surrogates:
        metrics["surrogates"] = surrogates if "error" in surrogates else in_order(surrogates)
        save_metrics()
    try:
        repro = reproducibility(lambda name, method: run.model(name).heatmap(method), metrics, ev.bootstrap,
                                ev.ci_level, cfg.seed)
    except Exception as exc:  # a comparison of maps must not cost the run's results
        repro = []
        log(f"map reproducibility FAILED: {type(exc).__name__}: {exc}")
    if repro:
        metrics["reproducibility"] = repro
        save_metrics()
        for r in repro:
            log(f"map agreement of {' and '.join(r['models'])} ({r['method']}): Spearman "
                f"{r['spearman']['value']:.2f}, SSIM {r['ssim']['value']:.2f} on {r['n_cases']} cases")
    if "subgroup" in cs.meta and curves:
        try:
            metrics["subgroups"] = _subgroups(cfg, cs, curves, metrics, run)
            save_metrics()
        except Exception as exc:  # the audit must not cost the run's results
            metrics["subgroups"] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"subgroup audit FAILED: {type(exc).__name__}: {exc}")
    t_figures = time.perf_counter()
    write_tradeoff(metrics, run.tradeoff)
    # case pages: the sampled cases of each class and the misclassified ones get every model's figure
    page_rows = np.union1d(_case_figure_rows(cs, explain_rows, ev.case_figures_per_class),
                           _misclassified_rows(cs, curves, ev.report_misclassified))

    def draw_run_figures() -> None:  # files only: the ROC, the comparison grid, every map of each case page
        plot_roc(cs.labels[test], curves, cs.class_names, cs.positive_class, run.roc_figure)
        if heatmaps and len(cmp_rows):
            cols = [(title, maps[cmp_idx]) for title, maps in heatmaps if len(maps) > cmp_idx.max()]
            labels = [f"{cs.case_ids[r]}\ntrue: {cs.class_names[cs.labels[r]]}" for r in cmp_rows]
            plot_comparison(cs.images[cmp_rows], cs.masks[cmp_rows] if cs.masks is not None else None, labels,
                            cols, run.comparison_figure,
                            title=f"{cs.name}: every heatmap of the run on the same test cases")
        write_case_heatmaps(cs, page_rows, explain_rows, heatmaps, run)

    # the figures only write files: with workers > 1 they are drawn in forked processes, a model's case figures
    # in one job each
    jobs = {"": draw_run_figures}
    for name, (_, model, adapter) in finished.items():
        jobs[name] = (lambda model=model, adapter=adapter, name=name: write_case_figures(
            model, adapter, page_rows, run, name, metrics["models"][name].get("explanation")))
    for name, error in _draw(jobs, cfg.workers if parallel else 1).items():
        if not name:  # the run's own figures: drawn again here, so an error is raised as without workers
            draw_run_figures()
            continue
        failed[name] = {"registry_name": finished[name][0].model, "stage": "case figures", **error}
        log(f"    {name}: case figures FAILED: {error['error']} (its results are kept)")
    save_metrics()
    log(f"figures: ROC, comparison grid and case pages ({time.perf_counter() - t_figures:.1f}s)")
    if metrics["models"]:
        print(format_table(metrics))
    for name, f in failed.items():
        log(f"glasszoo: model '{name}' FAILED ({f.get('stage', 'training and evaluation')}): {f['error']}")
    if report:
        log(f"report: {write_report(run.path)}")
    log(f"done in {time.perf_counter() - t0:.0f}s: {run.path}")
    return run.path


def _subgroups(cfg: ExperimentConfig, cs: CaseSet, curves: dict[str, np.ndarray], metrics: dict,
               run: RunDir) -> dict:
    """The subgroup audit of every model (``glasszoo.evaluation.subgroups``) on the test split, logged."""
    test = cs.indices("test")
    groups = np.asarray(cs.meta["subgroup"]).astype(str)
    row_of = {str(c): i for i, c in enumerate(cs.case_ids)}
    heatmaps = {name: stored_heatmaps_by_case(run.model(name).heatmap, metrics["models"][name].get("explanation", {}),
                                              row_of, groups) for name in curves}
    masks_of = None if cs.masks is None else (lambda rows: np.asarray(cs.masks[rows]))
    attribute = str(cfg.data.get("subgroup") or ("scanner" if cfg.data.get("scanner_rate") is not None
                                                 else "subgroup"))
    ev = cfg.evaluation
    audit = subgroup_audit(cs.labels[test], groups[test], curves, heatmaps, masks_of, cs.positive_class,
                           ev.bootstrap, ev.ci_level, cfg.seed, attribute=attribute)
    counts = ", ".join(f"{g} {n}" for g, n in audit["groups"].items())
    log(f"subgroup audit by {attribute} ({counts} test cases)")
    for name, block in audit["models"].items():
        flagged = [f"{g['metric']} {g['value']:+.2f} [{g['ci'][0]:+.2f}, {g['ci'][1]:+.2f}]"
                   for g in block["gaps"] if g["flagged"]]
        log(f"    {name}: " + (f"GAP flagged: {'; '.join(flagged)}" if flagged else "no gap flagged"))
    return audit


def failures(run_dir: str | Path) -> dict[str, dict]:
    """The models of a run that failed, by name (``metrics.json``'s ``failed``: registry name, stage, error,
    traceback); with ``--seeds``, also those of every seed's run (named ``<model> (seed <s>)``)."""
    rd = RunDir(run_dir)
    out = json.loads(rd.metrics.read_text()).get("failed", {}) if rd.metrics.is_file() else {}
    if rd.seeds.is_file():
        for seed, path in json.loads(rd.seeds.read_text()).get("runs", {}).items():
            if Path(path).resolve() != rd.path.resolve():
                out.update({f"{name} (seed {seed})": f for name, f in failures(path).items()})
    return out

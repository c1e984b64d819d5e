"""``glasszoo run``: train every model of a config on one split, evaluate them the same way, write the run."""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from glasszoo.models import Heatmap, ImageModel, create_model, model_info
from glasszoo.training.atomic import atomic_write, atomic_write_text
from glasszoo.training.caseset import CaseSet
from glasszoo.training.cli import package_version
from glasszoo.training.config import ExperimentConfig
from glasszoo.training.data import load_caseset
from glasszoo.training.errors import ConfigError
from glasszoo.training.features import feature_table
from glasszoo.training.train import build_image_model, train_image_model

RESULT_KEYS = ("dataset", "models")


def resolve_run_dir(cfg: ExperimentConfig, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Where the run goes: ``out`` or ``<output_dir>/<experiment>``.

    An earlier run is never overwritten silently: with the default location a numbered sibling
    (``<experiment>-2``, ...) is used; an explicit ``out`` that already holds a run is an error unless ``overwrite``.
    """
    if out is not None:
        run_dir = Path(out)
        if (run_dir / "metrics.json").exists() and not overwrite:
            raise ConfigError(f"{run_dir} already holds a run (metrics.json); pass --overwrite or another --out")
        return run_dir
    base = Path(cfg.output_dir) / cfg.experiment
    if overwrite or not (base / "metrics.json").exists():
        return base
    n = 2
    while (base.parent / f"{base.name}-{n}" / "metrics.json").exists():
        n += 1
    return base.parent / f"{base.name}-{n}"


def _log(msg: str) -> None:
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


def safe_filename(case_id: str) -> str:
    """A file name for a case id (ids of folder sources are relative paths with '/' and spaces)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(case_id)).strip("._") or "case"


def training_image_lookup(cs: CaseSet):
    """case id -> its image [C, H, W] if the case is in the training split, else None (prototype sources)."""
    train = cs.indices("train")
    row_of = {str(cs.case_ids[r]): int(r) for r in train}

    def source_image(case_id: str) -> np.ndarray | None:
        r = row_of.get(str(case_id))
        return None if r is None else cs.images[r]

    return source_image


def write_case_figures(model: ImageModel, cs: CaseSet, rows: np.ndarray, out_dir: Path) -> list[Path]:
    """Per case in ``rows``, the figure of :func:`glasszoo.evaluation.case_figures.explain_case`."""
    from glasszoo.evaluation.case_figures import explain_case

    source_image = training_image_lookup(cs)
    paths = []
    for r in rows:
        path = out_dir / f"{safe_filename(cs.case_ids[r])}.png"
        mask = cs.masks[r] if cs.masks is not None else None
        concepts = cs.concepts[r] if cs.concepts is not None else None
        explain_case(model, cs.images[r], cs.class_names, path, source_image, str(cs.case_ids[r]),
                     int(cs.labels[r]), mask, true_concepts=concepts)
        paths.append(path)
    return paths


def _as_list(exp: Any) -> list:
    return list(exp) if isinstance(exp, (list, tuple)) else [exp]


RANDOMISATION_FIGURE_METHODS = ("gradcam", "integrated_gradients", "saliency", "lrp")
"""Post-hoc methods shown in ``figures/<model>_randomisation.png`` (the sanity check as pictures)."""


def _save_heatmap(hm: Heatmap, key: str, mdir: Path) -> None:
    ids = hm.case_ids.astype(str) if hm.case_ids is not None else np.array([], dtype=str)
    np.savez_compressed(mdir / f"heatmap_{key}.npz", maps=hm.maps.astype(np.float16), target=hm.target, case_ids=ids)


def _explain_and_score(model: Any, name: str, info: Any, x_explain: np.ndarray, cs: CaseSet, rows: np.ndarray,
                       cfg: ExperimentConfig, run_dir: Path, mdir: Path, proba: np.ndarray, heatmaps: list) -> dict:
    """The model's own explanations of the explained test cases, then the configured post-hoc explainers (for the
    selected image models); every heatmap scored by :func:`glasszoo.evaluation.explain_eval.score_heatmap`.

    Appends (column title, maps) of each heatmap to ``heatmaps``; returns the ``explanation`` blocks.
    """
    from contextlib import nullcontext

    from glasszoo.evaluation.explain_eval import (
        intrinsic_explain_fn,
        posthoc_explain_fn,
        run_posthoc,
        score_heatmap,
        selected_for_posthoc,
        summary_title,
    )
    from glasszoo.evaluation.plots import plot_heatmaps
    from glasszoo.evaluation.posthoc import PassCounter

    ev = cfg.evaluation
    is_image = isinstance(model, ImageModel)
    masks = cs.masks[rows] if cs.masks is not None else None
    boot = (ev.bootstrap, ev.ci_level, cfg.seed)
    out: dict[str, Any] = {}

    def finish(key: str, hm: Heatmap, block: dict, explain_fn, source: str) -> None:
        n = len(hm)
        keep: dict = {}
        block.update(score_heatmap(model, hm, x_explain[:n], None if masks is None else masks[:n], explain_fn,
                                   ev.quality, *boot, keep=keep))
        if keep.get("randomisation_maps") and key in RANDOMISATION_FIGURE_METHODS and source == "post-hoc":
            randomised[key] = keep["randomisation_maps"]
        _save_heatmap(hm, key, mdir)
        k = min(ev.figure_cases, n)
        if k:
            plot_heatmaps(cs, rows[:k], hm.maps[:k], run_dir / "figures" / f"{name}_{key}.png",
                          title=f"{name}: {key}", proba=proba[:k])
        heatmaps.append((f"{name}\n{key} ({source})\n{summary_title(key, block)}", hm.maps))
        out[key] = block
        scores = summary_title(key, block, sep=" · ")
        _log(f"    {key}: {block['ms_per_image']:.1f} ms/image" + (f", {scores}" if scores else ""))

    randomised: dict[str, list[np.ndarray]] = {}  # post-hoc method -> maps of the trained and randomised models
    counter = PassCounter(model) if is_image else nullcontext()
    with counter:
        t = time.perf_counter()
        exps = _as_list(model.explain(x_explain, case_ids=cs.case_ids[rows]))
        ms = 1000 * (time.perf_counter() - t) / len(rows)
    source = "post-hoc" if info.family == "black-box" else "intrinsic"
    ph = ev.posthoc
    posthoc = selected_for_posthoc(ph.models, name, info.family, info.input_kind)
    # an own map that is also a configured post-hoc method with explicit parameters (the black box's Grad-CAM on
    # another layer) is replaced by the configured post-hoc map below
    configured = {m for m in ph.methods if ph.params.get(m)} if posthoc else set()
    for exp in exps:
        key = getattr(exp, "method", exp.kind)
        if isinstance(exp, Heatmap) and key in configured:
            continue
        block: dict[str, Any] = {"kind": exp.kind, "source": source, "n_cases": int(len(rows)), "ms_per_image": ms}
        if is_image and counter.forward_images:  # an intrinsic explain() that bypasses forward() is not counted
            block["passes_per_image"] = counter.per_image(len(rows))
        if isinstance(exp, Heatmap):
            finish(key, exp, block, intrinsic_explain_fn(key) if is_image else None, source)
        else:
            out[key] = block

    if posthoc:
        for method in ph.methods:
            if method in out:  # the black box's own explanation is already this method (Grad-CAM), same settings
                continue
            n = min(ph.max_cases.get(method, len(rows)), len(rows))
            params = ph.params.get(method)
            hm, cost = run_posthoc(model, x_explain[:n], method, params, cfg.seed, case_ids=cs.case_ids[rows[:n]])
            block = {"kind": "heatmap", "source": "post-hoc", "n_cases": int(n), **cost}
            if params:
                block["params"] = dict(params)
            finish(method, hm, block, posthoc_explain_fn(method, params, cfg.seed), "post-hoc")
    if randomised:
        from glasszoo.evaluation.plots import plot_randomisation

        stages = next(iter(out[k]["randomisation"]["stages"] for k in out if "randomisation" in out[k]))
        labels = ["trained"] + [f"{s:.0%} of parameters\nrandomised" for s in stages]
        n = min(3, *(len(v[0]) for v in randomised.values()))
        plot_randomisation(x_explain[:n], labels, {k: [m[:n] for m in v] for k, v in randomised.items()},
                           run_dir / "figures" / f"{name}_randomisation.png",
                           title=f"{name}: cascading randomisation from the output layer (Adebayo et al. 2018); "
                                 f"a faithful map changes")
    return out


def _check_resumable(run_dir: Path, cfg: ExperimentConfig) -> dict:
    """The finished model blocks of the run in ``run_dir``, if it was run with the same configuration."""
    saved_cfg = run_dir / "config.yaml"
    if not (run_dir / "metrics.json").exists() or not saved_cfg.exists():
        return {}
    then = yaml.safe_load(saved_cfg.read_text())
    now = yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if then != now:
        keys = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
        raise ConfigError(f"cannot resume {run_dir}: it was run with another configuration (differs in {keys}); "
                          f"run it again with --overwrite or another --out")
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("models", {})
    except json.JSONDecodeError as exc:
        raise ConfigError(f"cannot resume {run_dir}: metrics.json is not valid JSON ({exc})") from None


def _finished(mdir: Path, input_kind: str) -> bool:
    weights = mdir / ("checkpoint.ckpt" if input_kind == "image" else "model.pkl")
    return weights.is_file() and (mdir / "predictions.csv").is_file()


def _resume_model(spec: Any, info: Any, cs: CaseSet, mdir: Path) -> tuple[Any, np.ndarray]:
    """A model trained by an earlier, interrupted run of the same config: its weights and test probabilities."""
    from glasszoo.training.train import load_checkpoint

    if info.input_kind == "image":
        model = build_image_model(spec.model, spec.params, cs)
        load_checkpoint(model, mdir / "checkpoint.ckpt")
        model.eval()
    else:
        with open(mdir / "model.pkl", "rb") as fh:
            model = pickle.load(fh)
    pred = pd.read_csv(mdir / "predictions.csv", dtype={"case_id": str})
    test_ids = cs.case_ids[cs.indices("test")].astype(str)
    if not np.array_equal(pred["case_id"].to_numpy(dtype=str), test_ids):
        raise ConfigError(f"cannot resume: {mdir / 'predictions.csv'} does not list this data's test cases")
    proba = pred[[f"p_{c}" for c in cs.class_names]].to_numpy(dtype=np.float64)
    return model, proba


def _stored_heatmaps(block: dict, name: str, mdir: Path) -> list[tuple[str, np.ndarray]]:
    """(column title, maps [n, H, W] of the first n explained cases) of every heatmap saved by an earlier run."""
    from glasszoo.evaluation.explain_eval import summary_title

    out = []
    for key, b in block.get("explanation", {}).items():
        path = mdir / f"heatmap_{key}.npz"
        if isinstance(b, dict) and b.get("kind") == "heatmap" and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                out.append((f"{name}\n{key} ({b.get('source', '')})\n{summary_title(key, b)}",
                            z["maps"].astype(np.float32)))
    return out


def _misclassified_rows(cs: CaseSet, curves: dict[str, np.ndarray], limit: int) -> np.ndarray:
    """Test cases some model got wrong, most-often-wrong first (ties by row), at most ``limit``."""
    test = cs.indices("test")
    if not curves or limit <= 0:
        return test[:0]
    wrong = np.sum([p.argmax(1) != cs.labels[test] for p in curves.values()], axis=0)
    order = np.lexsort((test, -wrong))
    return np.sort(test[order][wrong[order] > 0][:limit])


def write_case_heatmaps(cs: CaseSet, rows: np.ndarray, explain_rows: np.ndarray,
                        columns: list[tuple[str, np.ndarray]], out_dir: Path) -> None:
    """Per case of ``rows`` that was explained, every heatmap of the run side by side (``<case>.png``)."""
    from glasszoo.evaluation.plots import plot_comparison

    for r in rows:
        j = int(np.searchsorted(explain_rows, r))
        if j >= len(explain_rows) or explain_rows[j] != r:
            continue
        cols = [(title, maps[j:j + 1]) for title, maps in columns if j < len(maps)]
        if cols:
            label = f"{cs.case_ids[r]}\ntrue: {cs.class_names[cs.labels[r]]}"
            plot_comparison(cs.images[[r]], cs.masks[[r]] if cs.masks is not None else None, [label], cols,
                            out_dir / f"{safe_filename(cs.case_ids[r])}.png")


def write_tabular_case_figures(model: Any, name: str, X: np.ndarray, cs: CaseSet, rows: np.ndarray,
                               out_dir: Path) -> None:
    """Per case, the tabular model's largest feature contributions as a bar chart (``<case>.png``)."""
    from glasszoo.evaluation.plots import plot_feature_contributions
    from glasszoo.models import FeatureAttribution

    if not len(rows):
        return
    exps = [e for e in _as_list(model.explain(X[rows], case_ids=cs.case_ids[rows]))
            if isinstance(e, FeatureAttribution)]
    if not exps:
        return
    fa = exps[0]
    proba = model.predict_proba(X[rows])
    for j, r in enumerate(rows):
        k = int(proba[j].argmax())
        title = (f"{name}: {cs.case_ids[r]} (true {cs.class_names[cs.labels[r]]}, "
                 f"pred {cs.class_names[k]} {proba[j, k]:.2f})")
        plot_feature_contributions(fa.feature_names, fa.contribution[j], fa.values[j],
                                   out_dir / f"{safe_filename(cs.case_ids[r])}.png", title=title)


def run_experiment(cfg: ExperimentConfig, out: str | Path | None = None, overwrite: bool = False,
                   resume: bool = False, caseset: CaseSet | None = None, report: bool = True) -> Path:
    """Run the experiment ``cfg`` and return its run directory.

    Writes ``config.yaml`` (resolved), ``splits.csv``, per model ``models/<name>/`` (checkpoint, logs,
    ``predictions.csv``, explanations), then ``metrics.json``, ``tradeoff.csv``, ``figures/`` and ``report.html``.
    ``metrics.json`` is rewritten (atomically) after each model, so an interrupted run keeps what it finished, and
    ``resume=True`` continues it: models already in its ``metrics.json`` (with their weights and predictions on disk)
    are loaded, not retrained. ``caseset`` replaces the data the config describes (the shortcut audit stamps a marker
    on it); it must have the same cases and split.
    """
    from glasszoo.evaluation.metrics import bootstrap_ci
    from glasszoo.evaluation.plots import plot_intervention, plot_roc
    from glasszoo.evaluation.results import format_table, write_tradeoff

    run_dir = resolve_run_dir(cfg, out, overwrite or resume)
    done = _check_resumable(run_dir, cfg) if resume else {}
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    # where relative data paths resolve from, so the run can be reopened from anywhere (glasszoo explain)
    atomic_write_text(run_dir / "run.json", json.dumps({"cwd": os.getcwd(), "glasszoo_version": package_version(),
                                                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))
    _log(f"glasszoo: run '{cfg.experiment}' -> {run_dir}" + (f" (resuming: {len(done)} models done)" if done else ""))

    t0 = time.perf_counter()
    cs = caseset if caseset is not None else load_caseset(cfg.data, seed=cfg.seed)
    _log(f"data: {cs.name}, {cs.n_cases} cases, image {list(cs.images.shape[1:])}, classes {cs.class_names} "
         f"({time.perf_counter() - t0:.1f}s)")
    splits = pd.DataFrame({"case_id": cs.case_ids, "split": cs.split, "label": cs.labels,
                           "class_name": [cs.class_names[i] for i in cs.labels]})
    atomic_write(run_dir / "splits.csv", lambda fh: splits.to_csv(fh, index=False))

    metrics: dict[str, Any] = {"dataset": {**cs.summary(), "source": cfg.data.get("source")}, "models": {}}
    test = cs.indices("test")
    y_test = cs.labels[test]
    features: tuple[np.ndarray, list[str]] | None = None
    curves: dict[str, np.ndarray] = {}
    ev = cfg.evaluation
    explain_rows = _explain_sample(cs, ev.explain_cases, cfg.seed)  # the same test cases for every model
    # the cases of the all-methods comparison grid: within the smallest per-method case cap, so every column has them
    caps = [ev.posthoc.max_cases[m] for m in ev.posthoc.methods if m in ev.posthoc.max_cases]
    pool = explain_rows[:min(caps)] if caps else explain_rows
    cmp_rows = _case_figure_rows(cs, pool, ev.comparison_cases_per_class)
    cmp_idx = np.searchsorted(explain_rows, cmp_rows)
    heatmaps: list[tuple[str, np.ndarray]] = []  # (column title, maps of the explained cases) of every heatmap
    image_models: dict[str, Any] = {}  # kept for the case figures of misclassified cases
    tabular_models: dict[str, Any] = {}

    def load_features() -> tuple[np.ndarray, list[str]]:
        nonlocal features
        if features is None:
            t = time.perf_counter()
            X, names, finfo = feature_table(cs, cfg.features, return_info=True)
            features = (X, names)
            metrics["dataset"]["features"] = {"kind": cfg.features.kind, "n_features": len(names),
                                              "seconds": time.perf_counter() - t, **(finfo or {})}
            _log(f"features: {cfg.features.kind}, {len(names)} columns ({time.perf_counter() - t:.1f}s)")
        return features

    for i, spec in enumerate(cfg.models, 1):
        info = model_info(spec.model)
        mdir = run_dir / "models" / spec.name
        mdir.mkdir(parents=True, exist_ok=True)
        if spec.name in done and _finished(mdir, info.input_kind):
            model, proba = _resume_model(spec, info, cs, mdir)
            if info.input_kind != "image":
                load_features()
            metrics["models"][spec.name] = done[spec.name]
            curves[spec.name] = proba
            heatmaps.extend(_stored_heatmaps(done[spec.name], spec.name, mdir))
            (image_models if info.input_kind == "image" else tabular_models)[spec.name] = model
            atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=True))
            _log(f"[{i}/{len(cfg.models)}] {spec.name}: done in the earlier run, loaded (not retrained)")
            continue
        _log(f"[{i}/{len(cfg.models)}] {spec.name} ({info.family}, {info.input_kind})")
        extra: dict[str, Any] = {}
        if info.input_kind == "image":
            torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only, not on the models before
            model = build_image_model(spec.model, spec.params, cs)
            res = train_image_model(model, cs, cfg.training_for(spec), mdir, seed=cfg.seed, name=spec.name)
            n_params = int(sum(p.numel() for p in model.parameters()))
            t = time.perf_counter()
            proba = model.predict_proba(cs.images[test])
            infer_ms = 1000 * (time.perf_counter() - t) / len(test)
            extra["training"] = {"epochs": res.epochs, "best_epoch": res.best_epoch,
                                 "best_val_auc": res.best_val_auc}
            train_seconds = res.train_seconds
            x_explain = cs.images[explain_rows]
            image_models[spec.name] = model
        else:
            X, names = load_features()
            np.random.seed(cfg.seed)  # for estimators that draw from the global numpy RNG
            model = create_model(spec.model, **spec.params)
            train, val = cs.indices("train"), cs.indices("val")
            t = time.perf_counter()
            model.fit(X[train], cs.labels[train], X[val], cs.labels[val], feature_names=names)
            train_seconds = time.perf_counter() - t
            atomic_write(mdir / "model.pkl", lambda fh, m=model: pickle.dump(m, fh), binary=True)
            n_params = int(getattr(model, "n_params_", X.shape[1]))
            t = time.perf_counter()
            proba = model.predict_proba(X[test])
            infer_ms = 1000 * (time.perf_counter() - t) / len(test)
            x_explain = X[explain_rows]
            tabular_models[spec.name] = model

        if hasattr(model, "complexity_"):
            extra["complexity"] = model.complexity_()
        pred = proba.argmax(1)
        pdf = pd.DataFrame({"case_id": cs.case_ids[test], "label": y_test, "pred": pred})
        for k, cname in enumerate(cs.class_names):
            pdf[f"p_{cname}"] = proba[:, k]
        atomic_write(mdir / "predictions.csv", lambda fh, df=pdf: df.to_csv(fh, index=False))
        curves[spec.name] = proba
        task = bootstrap_ci(y_test, proba, cs.positive_class, ev.bootstrap, ev.ci_level, cfg.seed)

        explanation: dict[str, Any] = {}
        t_explain = time.perf_counter()
        if len(explain_rows):
            explanation = _explain_and_score(model, spec.name, info, x_explain, cs, explain_rows, cfg,
                                             run_dir, mdir, proba[np.searchsorted(test, explain_rows)], heatmaps)
        if isinstance(model, ImageModel):
            explanation.update(model.explanation_metrics(cs))
            if "intervention" in explanation.get("concepts", {}):
                plot_intervention(explanation["concepts"]["intervention"], run_dir / "figures" /
                                  f"{spec.name}_intervention.png", title=f"{spec.name}: test-time intervention")
            case_rows = _case_figure_rows(cs, explain_rows, ev.case_figures_per_class)
            write_case_figures(model, cs, case_rows, run_dir / "figures" / "cases" / spec.name)
        explain_seconds = time.perf_counter() - t_explain

        if hasattr(model, "segmentation_metrics") and getattr(model, "requires_masks", False) \
                and cs.masks is not None:
            extra["segmentation"] = model.segmentation_metrics(cs, n_boot=ev.bootstrap, seed=cfg.seed)
        metrics["models"][spec.name] = {
            "family": info.family,
            "registry_name": spec.model,
            "input": info.input_kind,
            "task": task,
            "explanation": explanation,
            "cost": {"train_seconds": train_seconds, "params": n_params, "inference_ms_per_image": infer_ms},
            **extra,
        }
        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=True))
        _log(f"    test AUC {task['auc']['value']:.3f} [{task['auc']['ci'][0]:.3f}, {task['auc']['ci'][1]:.3f}], "
             f"trained in {train_seconds:.1f}s, explained and scored in {explain_seconds:.1f}s")

    t_figures = time.perf_counter()
    write_tradeoff(metrics, run_dir / "tradeoff.csv")
    plot_roc(y_test, curves, cs.class_names, cs.positive_class, run_dir / "figures" / "roc.png")
    figs = run_dir / "figures"
    if heatmaps and len(cmp_rows):
        from glasszoo.evaluation.plots import plot_comparison

        cols = [(title, maps[cmp_idx]) for title, maps in heatmaps if len(maps) > cmp_idx.max()]
        labels = [f"{cs.case_ids[r]}\ntrue: {cs.class_names[cs.labels[r]]}" for r in cmp_rows]
        plot_comparison(cs.images[cmp_rows], cs.masks[cmp_rows] if cs.masks is not None else None, labels,
                        cols, figs / "comparison.png",
                        title=f"{cs.name}: every heatmap of the run on the same test cases")
    # case pages: the sampled cases of each class and the misclassified ones get every model's figure
    page_rows = _case_figure_rows(cs, explain_rows, ev.case_figures_per_class)
    wrong = _misclassified_rows(cs, curves, ev.report_misclassified)
    for name, model in image_models.items():
        write_case_figures(model, cs, np.setdiff1d(wrong, page_rows), figs / "cases" / name)
    if tabular_models:
        X, _ = load_features()
        for name, model in tabular_models.items():
            write_tabular_case_figures(model, name, X, cs, np.union1d(page_rows, wrong), figs / "cases" / name)
    write_case_heatmaps(cs, np.union1d(page_rows, wrong), explain_rows, heatmaps, figs / "cases" / "heatmaps")
    _log(f"figures: ROC, comparison grid and case pages ({time.perf_counter() - t_figures:.1f}s)")
    print(format_table(metrics))
    if report:
        from glasszoo.evaluation.report import write_report

        _log(f"report: {write_report(run_dir)}")
    _log(f"done in {time.perf_counter() - t0:.0f}s: {run_dir}")
    return run_dir

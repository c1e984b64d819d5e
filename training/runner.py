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
from glasszoo.training.caseset import CaseSet
from glasszoo.training.cli import package_version
from glasszoo.training.config import ExperimentConfig
from glasszoo.training.data import load_caseset
from glasszoo.training.errors import ConfigError
from glasszoo.training.features import feature_table
from glasszoo.training.train import build_image_model, train_image_model

RESULT_KEYS = ("dataset", "models")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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


def evaluate_heatmap(hm: Heatmap, cs: CaseSet, rows: np.ndarray, cfg: ExperimentConfig) -> dict:
    """Localisation of a heatmap against the lesion masks (when the data has non-empty ones)."""
    from glasszoo.evaluation.metrics import mean_ci, pointing_game, relevance_mass_in_mask

    out: dict[str, Any] = {}
    if cs.masks is None:
        return out
    masks = cs.masks[rows]
    if not masks.reshape(len(rows), -1).any(axis=1).any():
        return out
    ev = cfg.evaluation
    out["pointing_game"] = mean_ci(pointing_game(hm.maps, masks), ev.bootstrap, ev.ci_level, cfg.seed)
    out["mass_in_mask"] = mean_ci(relevance_mass_in_mask(hm.maps, masks), ev.bootstrap, ev.ci_level, cfg.seed)
    return out


def run_experiment(cfg: ExperimentConfig, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Run the experiment ``cfg`` and return its run directory.

    Writes ``config.yaml`` (resolved), ``splits.csv``, per model ``models/<name>/`` (checkpoint, logs,
    ``predictions.csv``, explanations), then ``metrics.json``, ``tradeoff.csv`` and ``figures/``. ``metrics.json`` is
    rewritten (atomically) after each model, so an interrupted run keeps what it finished.
    """
    from glasszoo.evaluation.metrics import bootstrap_ci
    from glasszoo.evaluation.plots import plot_heatmaps, plot_intervention, plot_roc
    from glasszoo.evaluation.results import format_table, write_tradeoff

    run_dir = resolve_run_dir(cfg, out, overwrite)
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    # where relative data paths resolve from, so the run can be reopened from anywhere (glasszoo explain)
    atomic_write_text(run_dir / "run.json", json.dumps({"cwd": os.getcwd(), "glasszoo_version": package_version(),
                                                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))
    _log(f"glasszoo: run '{cfg.experiment}' -> {run_dir}")

    t0 = time.perf_counter()
    cs = load_caseset(cfg.data, seed=cfg.seed)
    _log(f"data: {cs.name}, {cs.n_cases} cases, image {list(cs.images.shape[1:])}, classes {cs.class_names} "
         f"({time.perf_counter() - t0:.1f}s)")
    pd.DataFrame({"case_id": cs.case_ids, "split": cs.split, "label": cs.labels,
                  "class_name": [cs.class_names[i] for i in cs.labels]}).to_csv(run_dir / "splits.csv", index=False)

    metrics: dict[str, Any] = {"dataset": {**cs.summary(), "source": cfg.data.get("source")}, "models": {}}
    test = cs.indices("test")
    y_test = cs.labels[test]
    features: tuple[np.ndarray, list[str]] | None = None
    curves: dict[str, np.ndarray] = {}
    ev = cfg.evaluation
    explain_rows = _explain_sample(cs, ev.explain_cases, cfg.seed)  # the same test cases for every model

    for i, spec in enumerate(cfg.models, 1):
        info = model_info(spec.model)
        mdir = run_dir / "models" / spec.name
        mdir.mkdir(parents=True, exist_ok=True)
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
        else:
            if features is None:
                t = time.perf_counter()
                X, names, finfo = feature_table(cs, cfg.features, return_info=True)
                features = (X, names)
                metrics["dataset"]["features"] = {"kind": cfg.features.kind, "n_features": len(names),
                                                  "seconds": time.perf_counter() - t, **(finfo or {})}
                _log(f"features: {cfg.features.kind}, {len(names)} columns ({time.perf_counter() - t:.1f}s)")
            X, names = features
            np.random.seed(cfg.seed)  # for estimators that draw from the global numpy RNG
            model = create_model(spec.model, **spec.params)
            train, val = cs.indices("train"), cs.indices("val")
            t = time.perf_counter()
            model.fit(X[train], cs.labels[train], X[val], cs.labels[val], feature_names=names)
            train_seconds = time.perf_counter() - t
            with open(mdir / "model.pkl", "wb") as fh:
                pickle.dump(model, fh)
            n_params = int(getattr(model, "n_params_", X.shape[1]))
            t = time.perf_counter()
            proba = model.predict_proba(X[test])
            infer_ms = 1000 * (time.perf_counter() - t) / len(test)
            x_explain = X[explain_rows]

        if hasattr(model, "complexity_"):
            extra["complexity"] = model.complexity_()
        pred = proba.argmax(1)
        pdf = pd.DataFrame({"case_id": cs.case_ids[test], "label": y_test, "pred": pred})
        for k, cname in enumerate(cs.class_names):
            pdf[f"p_{cname}"] = proba[:, k]
        pdf.to_csv(mdir / "predictions.csv", index=False)
        curves[spec.name] = proba
        task = bootstrap_ci(y_test, proba, cs.positive_class, ev.bootstrap, ev.ci_level, cfg.seed)

        explanation: dict[str, Any] = {}
        if len(explain_rows):
            t = time.perf_counter()
            exps = _as_list(model.explain(x_explain, case_ids=cs.case_ids[explain_rows]))
            ms = 1000 * (time.perf_counter() - t) / len(explain_rows)
            for exp in exps:
                key = getattr(exp, "method", exp.kind)
                block = {"kind": exp.kind, "n_cases": int(len(explain_rows)), "ms_per_image": ms}
                if isinstance(exp, Heatmap):
                    block.update(evaluate_heatmap(exp, cs, explain_rows, cfg))
                    np.savez_compressed(mdir / f"heatmap_{key}.npz", maps=exp.maps.astype(np.float16),
                                        target=exp.target, case_ids=cs.case_ids[explain_rows].astype(str))
                    k = min(ev.figure_cases, len(explain_rows))
                    if k:
                        fig_path = run_dir / "figures" / f"{spec.name}_{key}.png"
                        plot_heatmaps(cs, explain_rows[:k], exp.maps[:k], fig_path, title=f"{spec.name}: {key}",
                                      proba=proba[np.searchsorted(test, explain_rows[:k])])
                explanation[key] = block
        if isinstance(model, ImageModel):
            explanation.update(model.explanation_metrics(cs))
            if "intervention" in explanation.get("concepts", {}):
                plot_intervention(explanation["concepts"]["intervention"], run_dir / "figures" /
                                  f"{spec.name}_intervention.png", title=f"{spec.name}: test-time intervention")
            case_rows = _case_figure_rows(cs, explain_rows, ev.case_figures_per_class)
            write_case_figures(model, cs, case_rows, run_dir / "figures" / "cases" / spec.name)

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
             f"trained in {train_seconds:.1f}s")

    write_tradeoff(metrics, run_dir / "tradeoff.csv")
    plot_roc(y_test, curves, cs.class_names, cs.positive_class, run_dir / "figures" / "roc.png")
    print(format_table(metrics))
    _log(f"done in {time.perf_counter() - t0:.0f}s: {run_dir}")
    return run_dir

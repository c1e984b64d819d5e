"""``glasszoo features-study``: which radiomics settings serve a data set, judged on its validation split only.

For every combination of a **bin rule** (``binWidth: w`` -- fixed-width grey bins over 0..255, the same bins for
every image -- or ``binCount: n`` -- n bins spanning each region's own grey range) and a set of **image types**
(``Original``, ``LoG`` at the given sigmas, ``Wavelet``'s first-level sub-bands, ...), the config's feature table is
extracted (pyradiomics, cached on disk like a run's table) and each scorer model is fitted on the training split with
its own internal selection (no ``X_val``: its CV or early-stopping split comes out of the training cases), then scored
by its AUC on the validation split with a stratified-bootstrap CI. The test split is never read, so the chosen setting
can go into the config and the test set is touched once, by ``glasszoo run``.

The scorers are the config's own entries of the named models (their ``params``), or the registry defaults when the
config does not list them: the study ranks the settings for the models that will read the table.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from glasszoo.evaluation.experiment.config import ExperimentConfig
from glasszoo.evaluation.metrics import bootstrap_ci
from glasszoo.models import create_model, model_info
from glasszoo.models.errors import ConfigError
from glasszoo.training.caseset import CaseSet
from glasszoo.training.data import load_caseset
from glasszoo.training.features import feature_descriptions, feature_table

DEFAULT_BIN_RULES = ("binWidth=8", "binWidth=16", "binCount=16", "binCount=32", "binCount=64")
DEFAULT_IMAGE_TYPES = ("Original", "Original+LoG", "Original+Wavelet", "Original+LoG+Wavelet")
DEFAULT_SCORERS = ("sparse_logreg", "ebm")


def parse_bin_rule(text: str) -> dict[str, float]:
    """``"binWidth=8"`` -> ``{"binWidth": 8.0}``; ``"binCount=32"`` -> ``{"binCount": 32}``."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or key not in ("binWidth", "binCount"):
        raise ConfigError(f"--bins: each rule is binWidth=W or binCount=N, got {text!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"--bins: {key} needs a number, got {value!r} in {text!r}") from None
    if number <= 0 or (key == "binCount" and number != int(number)):
        raise ConfigError(f"--bins: {key} must be a positive {'integer' if key == 'binCount' else 'number'}, "
                          f"got {value!r}")
    return {key: int(number) if key == "binCount" else number}


def parse_image_types(text: str) -> list[str]:
    """``"Original+LoG"`` -> ``["Original", "LoG"]``."""
    types = [t.strip() for t in text.split("+") if t.strip()]
    if not types:
        raise ConfigError(f"--image-types: an empty set of image types in {text!r}")
    return types


def _settings(base: dict, rule: dict, image_types: list[str], sigma: Sequence[float]) -> dict:
    """The pyradiomics settings of one study cell: the config's with its bin rule replaced (pyradiomics uses
    ``binCount`` whenever it is given) and ``sigma`` set when LoG is used."""
    out = {k: v for k, v in base.items() if k not in ("binWidth", "binCount")}
    out.update(rule)
    if "LoG" in image_types:
        out.setdefault("sigma", [float(s) for s in sigma])
    return out


def _scorer_specs(cfg: ExperimentConfig, names: Sequence[str]) -> list[tuple[str, str, dict]]:
    """(label, registry name, params) of each scorer: the config's entry of that name (or registry name), else the
    registry defaults."""
    out = []
    for name in names:
        spec = next((s for s in cfg.models if s.name == name), None) or next(
            (s for s in cfg.models if s.model == name), None)
        if spec is not None:
            model, params = spec.model, dict(spec.params)
        else:
            model, params = name, {}
        info = model_info(model)
        if info.input_kind != "features":
            raise ConfigError(f"--models: '{name}' is an image model; the study scores feature tables with "
                              f"tabular models")
        out.append((name, model, params))
    return out


def run_features_study(cfg: ExperimentConfig, bin_rules: Sequence[str] = DEFAULT_BIN_RULES,
                       image_types: Sequence[str] = DEFAULT_IMAGE_TYPES, scorers: Sequence[str] = DEFAULT_SCORERS,
                       sigma: Sequence[float] = (1.0, 2.0), n_boot: int = 1000, caseset: CaseSet | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Score every (bin rule, image types) cell on the validation split; returns a JSON-ready dict with ``rows``
    (one per cell: settings, n_features, extraction seconds, per scorer the validation AUC with its CI) and
    ``best`` (per scorer, the cell with the highest validation AUC)."""
    if cfg.features.kind != "radiomics":
        raise ConfigError(f"features.kind: the study varies pyradiomics settings, but {cfg.source} uses "
                          f"'{cfg.features.kind}' features (set features.kind: radiomics)")
    rules = [parse_bin_rule(r) for r in bin_rules]
    types = [parse_image_types(t) for t in image_types]
    specs = _scorer_specs(cfg, scorers)
    cs = caseset if caseset is not None else load_caseset(cfg.data, seed=cfg.seed)
    train, val = cs.indices("train"), cs.indices("val")
    if not len(val):
        raise ConfigError(f"data: the study scores on the validation split, and {cfg.source} has none")
    rows = []
    cells = [(r, t) for t in types for r in rules]
    bar = tqdm(cells, desc="features study", unit="setting", disable=not progress)
    for rule, itypes in bar:
        label = ", ".join(f"{k} {v:g}" for k, v in rule.items())
        bar.set_postfix_str(f"{label}; {'+'.join(itypes)}")
        fc = dataclasses.replace(cfg.features, settings=_settings(cfg.features.settings, rule, itypes, sigma),
                                 image_types=list(itypes), progress_bar=False)
        t = time.perf_counter()
        X, names = feature_table(cs, fc)
        seconds = time.perf_counter() - t
        row: dict[str, Any] = {"bins": label, "bin_rule": rule, "image_types": list(itypes),
                               "n_features": len(names), "table_seconds": round(seconds, 2), "scores": {}}
        for name, model, params in specs:
            t = time.perf_counter()
            est = create_model(model, **params)
            est.fit(X[train], cs.labels[train], feature_names=names, feature_descriptions=feature_descriptions(names))
            proba = est.predict_proba(X[val])
            auc = bootstrap_ci(cs.labels[val], proba, cs.positive_class, n_boot, 0.95, cfg.seed)["auc"]
            row["scores"][name] = {"val_auc": auc["value"], "ci": auc["ci"],
                                   "fit_seconds": round(time.perf_counter() - t, 2)}
        rows.append(row)
    best = {}
    for name, _, _ in specs:
        i = int(np.argmax([r["scores"][name]["val_auc"] for r in rows]))
        best[name] = {"bins": rows[i]["bins"], "image_types": rows[i]["image_types"],
                      "val_auc": rows[i]["scores"][name]["val_auc"]}
    return {"experiment": cfg.experiment, "config": cfg.source, "n_train": int(len(train)), "n_val": int(len(val)),
            "region": cfg.features.region, "scorers": {n: {"model": m, "params": p} for n, m, p in specs},
            "sigma": [float(s) for s in sigma], "rows": rows, "best": best}


def format_study_markdown(study: dict) -> str:
    """The study as a Markdown table (one row per setting, one column per scorer) with the best cell per scorer."""
    scorers = list(study["scorers"])
    head = ["bin rule", "image types", "features", *[f"{s}: validation AUC [95% CI]" for s in scorers]]
    lines = [f"Validation split only ({study['n_train']} training / {study['n_val']} validation cases; region "
             f"`{study['region']}`; LoG sigma {study['sigma']}); each scorer fitted on the training split with its "
             f"own internal selection.", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in study["rows"]:
        cells = [r["bins"], "+".join(r["image_types"]), str(r["n_features"])]
        for s in scorers:
            v = r["scores"][s]
            best = study["best"][s]["bins"] == r["bins"] and study["best"][s]["image_types"] == r["image_types"]
            text = f"{v['val_auc']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"
            cells.append(f"**{text}**" if best else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for s, b in study["best"].items():
        lines.append(f"- best for {s}: {b['bins']}, {'+'.join(b['image_types'])} (validation AUC {b['val_auc']:.3f})")
    return "\n".join(lines)


__all__ = ["DEFAULT_BIN_RULES", "DEFAULT_IMAGE_TYPES", "DEFAULT_SCORERS", "format_study_markdown", "parse_bin_rule",
           "parse_image_types", "run_features_study"]

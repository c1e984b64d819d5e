"""Build a CaseSet from the ``data`` section of a config, and the shared seeded split."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

from glasszoo.models.errors import ConfigError
from glasszoo.training.caseset import CaseSet
from glasszoo.training.concepts import DERIVED_CONCEPTS, EMPTY_MASK_POLICIES, derive_concepts
from glasszoo.training.duplicates import (
    DEFAULT_THRESHOLD,
    check_threshold,
    duplicate_report,
    near_duplicate_groups,
)
from glasszoo.training.medmnist import load_medmnist
from glasszoo.training.synthetic import make_synthetic

SOURCES = ("synthetic", "medmnist", "folder")
CONCEPT_MODES = ("data", "derived")
GENERIC_KEYS = ("concepts", "concepts_empty_mask", "check_duplicates", "duplicate_threshold", "ordinal")


def _source_function(source: str):
    if source == "synthetic":
        return make_synthetic
    if source == "medmnist":
        return load_medmnist
    if source == "folder":
        from glasszoo.training.folder import load_folder  # heavy: SimpleITK and pydicom readers

        return load_folder
    raise ConfigError(f"data.source must be one of {SOURCES}, got {source!r}")


def fixed_data_config(data_cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """``data_cfg`` with its source's ``seed`` (the synthetic phantoms, a seeded split) set to ``seed`` unless it
    sets one itself, so that runs with other seeds load the very same cases and split; unchanged for a source whose
    data do not depend on a seed (MedMNIST's official splits)."""
    out = dict(data_cfg)
    fn = _source_function(out.get("source"))
    if "seed" in inspect.signature(fn).parameters and "seed" not in out:
        out["seed"] = int(seed)
    return out


def load_caseset(data_cfg: dict[str, Any], seed: int = 0, base_dir: str | Path | None = None) -> CaseSet:
    """Build the CaseSet described by a config's ``data`` section.

    ``data_cfg`` holds ``source`` plus the keyword arguments of that source's loader (``make_synthetic``,
    ``load_medmnist``, ``load_folder``); unknown keys raise :class:`ConfigError` naming ``data.<key>``. Relative
    paths are resolved against ``base_dir`` (the directory the config was run from).

    Two keys apply to every source:

    * ``concepts``: ``"data"`` (default: the concepts the source gives, if any) or ``"derived"``: binary lesion
      concepts computed from the lesion masks after loading (:func:`glasszoo.training.concepts.derive_concepts`,
      thresholds at the training median; replaces any concepts of the source). Each derived concept's rule and
      threshold is printed to stderr.
    * ``concepts_empty_mask``: with ``concepts: derived``, what to do with cases whose lesion mask is empty:
      ``"error"`` (default) or ``"zero"`` (all their concepts 0).
    * ``check_duplicates`` (default true): look for near-duplicate images (:mod:`glasszoo.training.duplicates`) and
      record the groups, those across splits and those across labels in ``CaseSet.checks["duplicates"]``;
      ``duplicate_threshold`` (default 0.6) is the correlation that makes two images near-duplicates. The folder
      source can also keep each group in one split (``group_duplicates: true``).
    * ``ordinal`` (default false): the classes are ordered grades in class order (e.g. retinopathy grade 0-4):
      every model's test scores then add the quadratic-weighted kappa (with its bootstrap CI) beside the macro AUC.
    """
    cfg = dict(data_cfg)
    source = cfg.pop("source", None)
    if source is None:
        raise ConfigError(f"data.source is required (one of {SOURCES})")
    concepts = cfg.pop("concepts", "data")
    if concepts not in CONCEPT_MODES:
        raise ConfigError(f"data.concepts must be one of {CONCEPT_MODES}, got {concepts!r}")
    empty_mask = cfg.pop("concepts_empty_mask", None)
    if empty_mask is not None and concepts != "derived":
        raise ConfigError("data.concepts_empty_mask only applies with data.concepts: derived")
    empty_mask = "error" if empty_mask is None else empty_mask
    if empty_mask not in EMPTY_MASK_POLICIES:
        raise ConfigError(f"data.concepts_empty_mask must be one of {EMPTY_MASK_POLICIES}, got {empty_mask!r}")
    ordinal = cfg.pop("ordinal", False)
    if not isinstance(ordinal, bool):
        raise ConfigError(f"data.ordinal must be true or false, got {ordinal!r}")
    check = cfg.pop("check_duplicates", True)
    if not isinstance(check, bool):
        raise ConfigError(f"data.check_duplicates must be true or false, got {check!r}")
    threshold = cfg.pop("duplicate_threshold", DEFAULT_THRESHOLD)
    check_threshold(threshold)  # before any image is read
    fn = _source_function(source)
    params = inspect.signature(fn).parameters
    if "duplicate_threshold" in params:
        cfg["duplicate_threshold"] = threshold
    unknown = sorted(set(cfg) - set(params))
    if unknown:
        raise ConfigError(f"data.{unknown[0]}: unknown key for source '{source}'; "
                          f"accepted keys: {sorted([k for k in params if k != 'seed'] + list(GENERIC_KEYS))}")
    if "seed" in params and "seed" not in cfg:
        cfg["seed"] = seed
    if base_dir is not None:
        for key in ("path", "csv", "root"):
            if key in params and cfg.get(key) and not Path(str(cfg[key])).expanduser().is_absolute():
                cfg[key] = str(Path(base_dir) / str(cfg[key]))
    cs = fn(**cfg)
    if ordinal and cs.num_classes < 3:
        raise ConfigError(f"data.ordinal: true needs at least 3 ordered grades; '{cs.name}' has {cs.num_classes} "
                          f"classes {cs.class_names}")
    cs.ordinal = ordinal
    if check and "duplicates" not in cs.checks:
        groups = near_duplicate_groups(cs.images, threshold)
        cs.checks["duplicates"] = duplicate_report(cs, groups, threshold, grouped=False)
    if concepts == "derived":
        cs, info = derive_concepts(cs, empty_mask=empty_mask)
        fixed = {c.name: c.fixed_threshold is not None for c in DERIVED_CONCEPTS}
        for name, rule in info.items():
            basis = "fixed" if fixed[name] else "training median"
            sign = ">" if rule["direction"] == "above" else "<"
            print(f"data: derived concept {name} = {rule['measure']} {sign} {rule['threshold']:.4g} ({basis})",
                  file=sys.stderr, flush=True)
    return cs

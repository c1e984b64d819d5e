"""Build a CaseSet from the ``data`` section of a config, and the shared seeded split."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import numpy as np

from glasszoo.training.caseset import CaseSet
from glasszoo.training.concepts import DERIVED_CONCEPTS, EMPTY_MASK_POLICIES, derive_concepts
from glasszoo.training.errors import ConfigError, DataError

SOURCES = ("synthetic", "medmnist", "folder")
CONCEPT_MODES = ("data", "derived")
GENERIC_KEYS = ("concepts", "concepts_empty_mask")  # data keys of every source, handled here


def stratified_split(labels: np.ndarray, val_fraction: float = 0.15, test_fraction: float = 0.2,
                     seed: int = 0) -> np.ndarray:
    """A seeded, stratified train/val/test assignment: [N] strings.

    Within each class the cases are shuffled with ``seed`` and the first ``round(n * test_fraction)`` go to test,
    the next ``round(n * val_fraction)`` to val, the rest to train; so each split keeps the class proportions and the
    same seed always gives the same split. Every class needs at least 3 cases (one per split).
    """
    labels = np.asarray(labels).reshape(-1)
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ConfigError(f"data.{name} must lie in (0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(f"data.val_fraction + data.test_fraction must be < 1, got {val_fraction + test_fraction}")
    rng = np.random.default_rng(seed)
    split = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 3:
            raise DataError(f"class {c!r} has only {len(idx)} case(s); a train/val/test split needs at least 3")
        idx = idx[rng.permutation(len(idx))]
        n_test = min(max(1, round(len(idx) * test_fraction)), len(idx) - 2)
        n_val = min(max(1, round(len(idx) * val_fraction)), len(idx) - n_test - 1)
        split[idx[:n_test]] = "test"
        split[idx[n_test:n_test + n_val]] = "val"
        split[idx[n_test + n_val:]] = "train"
    return split


def _source_function(source: str):
    if source == "synthetic":
        from glasszoo.training.synthetic import make_synthetic
        return make_synthetic
    if source == "medmnist":
        from glasszoo.training.medmnist import load_medmnist
        return load_medmnist
    if source == "folder":
        from glasszoo.training.folder import load_folder
        return load_folder
    raise ConfigError(f"data.source must be one of {SOURCES}, got {source!r}")


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
    fn = _source_function(source)
    params = inspect.signature(fn).parameters
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
    if concepts == "derived":
        cs, info = derive_concepts(cs, empty_mask=empty_mask)
        fixed = {c.name: c.fixed_threshold is not None for c in DERIVED_CONCEPTS}
        for name, rule in info.items():
            basis = "fixed" if fixed[name] else "training median"
            sign = ">" if rule["direction"] == "above" else "<"
            print(f"data: derived concept {name} = {rule['measure']} {sign} {rule['threshold']:.4g} ({basis})",
                  file=sys.stderr, flush=True)
    return cs

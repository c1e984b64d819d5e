"""Feature tables for the tabular models: one row per case, named columns, on the CaseSet's split.

``intensity`` is the built-in first-order set (fast, no extra dependency); ``radiomics`` is the pyradiomics table of
:mod:`glasszoo.training.radiomics` (2-D first-order, shape, GLCM, GLRLM, GLSZM, NGTDM, GLDM; cached on disk).
"""

from __future__ import annotations

import numpy as np

from glasszoo.models.errors import ConfigError
from glasszoo.training.caseset import CaseSet
from glasszoo.training.radiomics import GENERIC_MARK, describe_feature, extract_radiomics
from glasszoo.training.settings import FeaturesConfig

FEATURE_KINDS = ("intensity", "radiomics")

INTENSITY_FEATURES = {
    "mean": "mean intensity in the region",
    "std": "standard deviation of intensity (heterogeneity)",
    "p10": "10th percentile of intensity",
    "median": "median intensity",
    "p90": "90th percentile of intensity",
    "skewness": "asymmetry of the intensity histogram",
    "kurtosis": "tailedness of the intensity histogram (excess)",
    "entropy": "Shannon entropy of the 32-bin intensity histogram (bits)",
    "area_fraction": "region area as a fraction of the image",
}


def _region(cs: CaseSet, region: str) -> np.ndarray:
    n, _, h, w = cs.images.shape
    if region == "mask" and cs.masks is not None:
        reg = cs.masks.astype(bool).copy()
        empty = ~reg.reshape(n, -1).any(axis=1)
        reg[empty] = True  # an empty mask (e.g. a normal case) falls back to the whole image
        return reg
    if region in ("mask", "image"):
        return np.ones((n, h, w), dtype=bool)
    raise ConfigError(f"features.region must be 'mask' or 'image', got {region!r}")


def intensity_features(cs: CaseSet, region: str = "mask") -> tuple[np.ndarray, list[str]]:
    """First-order intensity statistics of the channel-mean image inside ``region`` (mask, or whole image)."""
    grey = cs.images.mean(axis=1)
    reg = _region(cs, region)
    rows = []
    for img, r in zip(grey, reg):
        v = img[r].astype(np.float64)
        mu, sd = v.mean(), v.std()
        z = (v - mu) / sd if sd > 0 else np.zeros_like(v)
        hist = np.histogram(v, bins=32, range=(0.0, 1.0))[0] / len(v)
        hist = hist[hist > 0]
        p10, p50, p90 = np.percentile(v, [10, 50, 90])
        rows.append([mu, sd, p10, p50, p90, (z**3).mean(), (z**4).mean() - 3.0, -(hist * np.log2(hist)).sum(),
                     r.mean()])
    return np.asarray(rows, dtype=np.float64), list(INTENSITY_FEATURES)


def feature_table(cs: CaseSet, cfg: FeaturesConfig, return_info: bool = False):
    """The [N, F] float64 feature matrix and its column names for ``cfg.kind``.

    Returns ``(X, names)``; with ``return_info=True`` ``(X, names, info)``, where ``info`` is a JSON-ready dict
    describing how the table was made (for ``radiomics``: the effective settings, region policy, cache hit/miss,
    extraction time, failures, imputed counts and dropped features -- see
    :func:`glasszoo.training.radiomics.extract_radiomics`).
    """
    if cfg.kind == "intensity":
        X, names = intensity_features(cs, cfg.region)
        info = {"kind": "intensity", "region": cfg.region, "n_features": len(names)}
    elif cfg.kind == "radiomics":
        X, names, info = extract_radiomics(
            cs, settings=cfg.settings, feature_classes=cfg.feature_classes, image_types=cfg.image_types,
            region=cfg.region, empty_mask=cfg.empty_mask, n_jobs=cfg.n_jobs, cache=cfg.cache,
            cache_dir=cfg.cache_dir, on_failure=cfg.on_failure, progress_bar=cfg.progress_bar)
    else:
        raise ConfigError(f"features.kind must be one of {list(FEATURE_KINDS)}, got {cfg.kind!r}")
    return (X, names, info) if return_info else (X, names)


def feature_descriptions(names: list[str]) -> dict[str, str]:
    """The one source of plain-language feature descriptions: every name of the built-in intensity table and every
    pyradiomics name with a known description (``radiomics.describe_feature``); names without one map to ``""``.
    The pipeline passes these to the tabular models' ``fit``, so the models themselves know nothing of radiomics."""
    out = {}
    for n in names:
        text = INTENSITY_FEATURES.get(n) or describe_feature(n)
        out[n] = "" if GENERIC_MARK in text else text
    return out

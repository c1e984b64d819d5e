"""2-D radiomic feature tables with pyradiomics: extraction, caching, failure policy and plain-language feature names.

What is extracted, per case (van Griethuysen et al. 2017, "Computational radiomics system to decode the radiographic
phenotype", Cancer Research 77(21): e104-e107):

* **Image.** The channel mean of the CaseSet image (values in [0, 1]) times :data:`GREY_SCALE` (255), kept as float
  (no rounding), as a *native 2-D* SimpleITK image with 1 px spacing. Shape features are therefore in pixels / pixel
  areas, and ``binWidth`` is in 0..255 grey units. ``force2D`` must stay False: pyradiomics treats a 2-D image as a
  plane already, and ``force2D=True`` on a 2-D image silently drops one in-plane axis from every texture matrix.
* **Region** (``region``):

  - ``"mask"`` (default): the lesion mask when the data has masks; when it has none, the whole image.
  - ``"image"``: the whole image (every pixel) -- shape features are then constant and dropped.
  - ``"otsu"``: the foreground of the grey image by Otsu's threshold (256-bin histogram; pixels above the threshold);
    a constant image, or a foreground of fewer than 2 pixels, falls back to the whole image.

  An **empty lesion mask** (e.g. a normal case) is, with ``empty_mask="fail"`` (default), a per-case failure handled
  by ``on_failure`` below; with ``empty_mask="image"`` the whole image is used instead (what the built-in
  ``intensity`` table does). pyradiomics also refuses a region of a single pixel or a region one pixel thin
  (``minimumROIDimensions=2``): those are per-case failures too.
* **Features.** The feature classes of ``feature_classes`` (default: the 7 2-D classes of
  :data:`DEFAULT_FEATURE_CLASSES` -- first-order, shape2D, GLCM, GLRLM, GLSZM, NGTDM, GLDM; the 3-D ``shape`` class is
  refused) on the image types of ``image_types`` (default ``["Original"]``; e.g. ``"LoG"`` needs ``settings.sigma``,
  ``"Wavelet"`` gives the 4 first-level sub-bands). pyradiomics' deprecated features are not computed.
* **Settings.** ``settings`` is merged over :data:`DEFAULT_SETTINGS` and validated by pyradiomics' own parameter
  schema (an unknown key or a bad value raises :class:`ConfigError`). Defaults: ``binWidth: 8`` (32 bins over the
  0..255 range), ``label: 1``, no normalisation (images are already on one [0, 1] scale), no resampling (every CaseSet
  image shares one pixel grid), ``additionalInfo: false`` (no ``diagnostics_*`` columns).

Failure policy (``on_failure``). A case fails when pyradiomics raises (empty / one-pixel / one-pixel-thin region,
...) or returns a NaN or infinite value (the message names the case and the features). Failures are reported with a
warning naming the cases, and then:

* ``"impute"`` (default): each missing value is replaced by the median of that feature over the *training split*
  cases where it is finite (over all cases if no training case has it; a feature finite nowhere is dropped); the
  counts are in ``info["imputed"]``.
* ``"drop_feature"``: every feature that is missing for any case is dropped (a case where *everything* failed cannot
  be helped this way and raises :class:`DataError` naming it).
* ``"error"``: :class:`DataError` naming the failed cases and why.

The returned table never holds a NaN. Finally, features that are **constant on the training split** (e.g. shape
features of the whole-image region) are dropped: they carry no information for a model fitted on that split and
break standardisation. Both drops are listed in ``info["dropped_features"]``.

Parallelism. ``n_jobs > 1`` (``-1``: all cores) extracts chunks of cases in joblib's ``loky`` worker processes (fresh
interpreters, one ITK thread each; the table is identical to ``n_jobs=1``); a tqdm progress bar counts cases
(``progress_bar=False`` hides it).

Cache. The raw per-case table (before the failure policy and the constant-feature drop, which are cheap) is stored in
``cache_dir`` (default ``$GLASSZOO_CACHE/radiomics`` when that variable is set, else
``$XDG_CACHE_HOME/glasszoo/radiomics``, else ``~/.cache/glasszoo/radiomics``) under a SHA-256 key of: the image bytes
(float32 [N, C, H, W], with shape and dtype), the bytes of the region masks actually used, the effective settings,
feature classes and image types, :data:`GREY_SCALE`, the pyradiomics version and :data:`CACHE_FORMAT`. Case ids and
the split are not part of the key. Files are written to a temporary name and renamed (atomic); an unreadable cache
file counts as a miss.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glasszoo.models.errors import ConfigError, DataError
from glasszoo.training.atomic import atomic_write
from glasszoo.training.caseset import CaseSet

GREY_SCALE = 255.0
CACHE_FORMAT = 1
DEFAULT_FEATURE_CLASSES = ("firstorder", "shape2D", "glcm", "glrlm", "glszm", "ngtdm", "gldm")
KNOWN_FEATURE_CLASSES = DEFAULT_FEATURE_CLASSES  # the 3-D "shape" class is not offered for 2-D images
KNOWN_IMAGE_TYPES = ("Original", "LoG", "Wavelet", "Square", "SquareRoot", "Logarithm", "Exponential", "Gradient",
                     "LBP2D")
DEFAULT_IMAGE_TYPES = ("Original",)
DEFAULT_SETTINGS: dict[str, Any] = {
    "binWidth": 8.0,  # grey units of the 0..255 image: 32 bins over the full range
    "label": 1,
    "normalize": False,
    "resampledPixelSpacing": None,
    "interpolator": "sitkBSpline",
    "force2D": False,  # the image is natively 2-D (see the module docstring)
    "minimumROIDimensions": 2,
    "minimumROISize": None,
    "correctMask": False,
    "additionalInfo": False,
}
REGIONS = ("mask", "image", "otsu")
EMPTY_MASK_POLICIES = ("fail", "image")
FAILURE_POLICIES = ("impute", "drop_feature", "error")


# ---------------------------------------------------------------------------------------------------- options
def pyradiomics_version() -> str:
    import radiomics  # heavy: pyradiomics, loaded only when features are extracted or validated

    return str(radiomics.__version__)


def _quiet_pyradiomics() -> None:
    import radiomics  # heavy: pyradiomics; its import sets the log level, so silence it afterwards

    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    logging.getLogger("pykwalify").setLevel(logging.CRITICAL)


def _params(settings: dict, feature_classes: Sequence[str], image_types: Sequence[str]) -> dict:
    """The pyradiomics parameter dict (``setting`` / ``imageType`` / ``featureClass``)."""
    return {"setting": dict(settings), "imageType": {t: {} for t in image_types},
            "featureClass": {c: None for c in feature_classes}}


def validate_options(settings: dict | None = None, feature_classes: Sequence[str] | None = None,
                     image_types: Sequence[str] | None = None, region: str = "mask", empty_mask: str = "fail",
                     on_failure: str = "impute", n_jobs: int = 1, where: str = "features") -> dict:
    """Check the radiomics options and return the effective ones.

    Raises :class:`ConfigError` naming the field (``features.<field>``) and the value at fault. The settings go through
    pyradiomics' own schema, so unknown keys and bad values are caught before any extraction.

    Returns:
        ``{"settings", "feature_classes", "image_types", "params"}`` with ``settings`` merged over
        :data:`DEFAULT_SETTINGS` and ``params`` the pyradiomics parameter dict.
    """
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}.settings: expected a mapping of pyradiomics settings, got {settings!r}")
    classes = list(DEFAULT_FEATURE_CLASSES if feature_classes is None else feature_classes)
    types_ = list(DEFAULT_IMAGE_TYPES if image_types is None else image_types)
    for field_name, noun, values, known in (("feature_classes", "feature class", classes, KNOWN_FEATURE_CLASSES),
                                            ("image_types", "image type", types_, KNOWN_IMAGE_TYPES)):
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{where}.{field_name}: expected a non-empty list of names, got {values!r}")
        for v in values:
            if v not in known:
                hint = " (the 3-D 'shape' class does not apply to 2-D images; use 'shape2D')" if v == "shape" else ""
                raise ConfigError(f"{where}.{field_name}: unknown {noun} {v!r}{hint}; "
                                  f"known: {list(known)}")
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}.{field_name}: duplicated entries in {values}")
    for field_name, value, allowed in (("region", region, REGIONS), ("empty_mask", empty_mask, EMPTY_MASK_POLICIES),
                                       ("on_failure", on_failure, FAILURE_POLICIES)):
        if value not in allowed:
            raise ConfigError(f"{where}.{field_name}: must be one of {list(allowed)}, got {value!r}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1:
        raise ConfigError(f"{where}.n_jobs: must be a positive integer or -1 (all cores), got {n_jobs!r}")
    merged = {**DEFAULT_SETTINGS, **settings}
    if merged.get("force2D"):
        raise ConfigError(f"{where}.settings.force2D: must be false -- the images are natively 2-D and force2D=True "
                          "would drop one in-plane axis from every texture matrix")
    if "LoG" in types_ and not merged.get("sigma"):
        raise ConfigError(f"{where}.image_types: 'LoG' needs {where}.settings.sigma (a list of kernel widths in "
                          "pixels, e.g. [1.0, 2.0])")
    params = _params(merged, classes, types_)
    _quiet_pyradiomics()
    from radiomics import featureextractor  # heavy: pyradiomics

    try:
        featureextractor.RadiomicsFeatureExtractor().loadJSONParams(json.dumps(params))
    except (TypeError, ValueError) as exc:  # not JSON-serialisable
        raise ConfigError(f"{where}.settings: {exc}") from None
    except Exception as exc:  # pykwalify SchemaError: unknown key or bad value
        msg = " ".join(str(exc).split())
        m = re.search(r"Key '([^']+)' was not defined", msg)
        key = f".{m.group(1)}" if m else ""
        raise ConfigError(f"{where}.settings{key}: rejected by pyradiomics: {msg}") from None
    return {"settings": merged, "feature_classes": classes, "image_types": types_, "params": params}


# ---------------------------------------------------------------------------------------------------- regions
def grey_images(images: np.ndarray) -> np.ndarray:
    """The float32 [N, H, W] grey images fed to pyradiomics: channel mean of [0, 1] images times 255."""
    return (np.asarray(images, dtype=np.float32).mean(axis=1) * np.float32(GREY_SCALE)).astype(np.float32)


def otsu_threshold(grey: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of one image (maximises the between-class variance of a ``bins``-bin histogram)."""
    v = np.asarray(grey, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m = np.cumsum(p * centres)
    mt = m[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def region_masks(cs: CaseSet, region: str = "mask", empty_mask: str = "fail",
                 grey: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The uint8 [N, H, W] regions features are extracted from, and a description of the policy used."""
    n, _, h, w = cs.images.shape
    desc: dict[str, Any] = {"region": region, "empty_mask": empty_mask}
    if region == "mask" and cs.masks is not None:
        masks = (np.asarray(cs.masks) > 0).astype(np.uint8)
        empty = ~masks.reshape(n, -1).any(axis=1)
        desc.update(used="lesion mask", n_empty_masks=int(empty.sum()))
        if empty.any() and empty_mask == "image":
            masks = masks.copy()
            masks[empty] = 1
            desc["used"] = "lesion mask (whole image for the empty masks)"
        return masks, desc
    if region in ("mask", "image"):
        desc["used"] = "whole image" + (" (the data has no masks)" if region == "mask" else "")
        return np.ones((n, h, w), dtype=np.uint8), desc
    if region == "otsu":
        grey = grey_images(cs.images) if grey is None else grey
        masks = np.empty((n, h, w), dtype=np.uint8)
        fallback = 0
        for i, g in enumerate(grey):
            fg = g > otsu_threshold(g)
            if fg.sum() < 2:
                fg[:] = True
                fallback += 1
            masks[i] = fg
        desc.update(used="Otsu foreground", n_whole_image_fallback=fallback)
        return masks, desc
    raise ConfigError(f"features.region: must be one of {list(REGIONS)}, got {region!r}")


# ---------------------------------------------------------------------------------------------------- extraction
@functools.lru_cache(maxsize=4)
def _extractor(params_json: str):
    _quiet_pyradiomics()
    from radiomics import featureextractor  # heavy: pyradiomics

    ex = featureextractor.RadiomicsFeatureExtractor()
    ex.loadJSONParams(params_json)
    return ex


def _extract_case(grey: np.ndarray, mask: np.ndarray, params_json: str) -> tuple[dict[str, float] | None, str]:
    """Features of one case: ``({name: value}, "")`` or ``(None, reason)`` when pyradiomics fails."""
    import SimpleITK as sitk  # heavy: SimpleITK, with pyradiomics

    if not mask.any():
        return None, "empty region mask (nothing segmented)"
    ex = _extractor(params_json)
    try:
        out = ex.execute(sitk.GetImageFromArray(np.ascontiguousarray(grey, dtype=np.float32)),
                         sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8)))
    except Exception as exc:  # pyradiomics raises ValueError/RuntimeError for unusable regions
        return None, f"pyradiomics failed: {' '.join(str(exc).split())}"
    feats = {}
    for k, v in out.items():
        if k.startswith("diagnostics_"):
            continue
        try:
            feats[k] = float(v)
        except (TypeError, ValueError):
            feats[k] = math.nan
    return feats, ""


def _extract_chunk(greys: np.ndarray, masks: np.ndarray, params_json: str,
                   single_thread: bool = False) -> list[tuple[dict | None, str]]:
    if single_thread:  # in a worker process: n_jobs processes, one ITK thread each
        import SimpleITK as sitk  # heavy: SimpleITK, with pyradiomics

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    return [_extract_case(g, m, params_json) for g, m in zip(greys, masks)]


def _resolve_jobs(n_jobs: int, n: int) -> int:
    if n_jobs == -1:
        n_jobs = os.cpu_count() or 1
    return max(1, min(int(n_jobs), n))


def _run_cases(grey: np.ndarray, masks: np.ndarray, params_json: str, n_jobs: int, progress_bar: bool,
               desc: str = "radiomics") -> list[tuple[dict | None, str]]:
    """Per-case results in case order; ``n_jobs > 1`` runs chunks of cases in joblib's loky worker processes (fresh
    interpreters: no fork of the parent's torch / ITK threads, and no ``if __name__ == "__main__"`` guard needed)."""
    from tqdm.auto import tqdm  # heavy: only with a progress bar

    n = len(grey)
    jobs = _resolve_jobs(n_jobs, n)
    bar = tqdm(total=n, desc=desc, unit="case", disable=not progress_bar, leave=False)
    try:
        if jobs == 1:
            results = []
            for g, m in zip(grey, masks):
                results.append(_extract_case(g, m, params_json))
                bar.update(1)
            return results
        from joblib import Parallel, delayed  # heavy: only with several workers

        chunk = max(1, min(32, math.ceil(n / (jobs * 4))))
        results = []
        gen = Parallel(n_jobs=jobs, backend="loky", return_as="generator")(
            delayed(_extract_chunk)(grey[s:s + chunk], masks[s:s + chunk], params_json, True)
            for s in range(0, n, chunk))
        for part in gen:
            results.extend(part)
            bar.update(len(part))
        return results
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """``$GLASSZOO_CACHE/radiomics``, else ``$XDG_CACHE_HOME/glasszoo/radiomics``, else ``~/.cache/...``."""
    if os.environ.get("GLASSZOO_CACHE"):
        return Path(os.environ["GLASSZOO_CACHE"]).expanduser() / "radiomics"
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base).expanduser() / "glasszoo" / "radiomics"


def cache_key(images: np.ndarray, masks: np.ndarray, options: dict) -> str:
    """SHA-256 of the image and region bytes, the effective options, the grey scale and the pyradiomics version."""
    h = hashlib.sha256()
    meta = {"format": CACHE_FORMAT, "pyradiomics": pyradiomics_version(), "grey_scale": GREY_SCALE,
            "params": options["params"], "images": [list(images.shape), str(images.dtype)],
            "masks": [list(masks.shape), str(masks.dtype)]}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(masks).tobytes())
    return h.hexdigest()


def _read_cache(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"values": z["values"].astype(np.float64), "names": [str(s) for s in z["names"]],
                    "errors": [str(s) for s in z["errors"]], "seconds": float(z["seconds"])}
    except Exception as exc:  # a truncated or foreign file is a miss, not a crash
        warnings.warn(f"radiomics cache file {path} is unreadable ({exc}); extracting again", stacklevel=3)
        return None


def _write_cache(path: Path, values: np.ndarray, names: list[str], errors: list[str], seconds: float) -> None:
    atomic_write(path, lambda fh: np.savez(fh, values=values, names=np.asarray(names, dtype=str),
                                           errors=np.asarray(errors, dtype=str), seconds=np.float64(seconds)),
                 binary=True)


# ---------------------------------------------------------------------------------------------------- table
def _assemble(results: list[tuple[dict | None, str]]) -> tuple[np.ndarray, list[str], list[str]]:
    """Raw [N, F] table (NaN where missing), names in pyradiomics order, per-case error ('' when fine)."""
    names: list[str] = []
    seen: set[str] = set()
    for feats, _ in results:
        for k in feats or {}:
            if k not in seen:
                seen.add(k)
                names.append(k)
    col = {k: j for j, k in enumerate(names)}
    values = np.full((len(results), len(names)), np.nan)
    errors = []
    for i, (feats, err) in enumerate(results):
        for k, v in (feats or {}).items():
            values[i, col[k]] = v
        errors.append(err)
    return values, names, errors


def _case_reasons(values: np.ndarray, names: list[str], errors: list[str], case_ids: np.ndarray) -> dict[str, str]:
    bad = ~np.isfinite(values)
    reasons = {}
    for i in np.flatnonzero(bad.any(axis=1) | np.asarray([bool(e) for e in errors], dtype=bool)):
        if errors[i]:
            reasons[str(case_ids[i])] = errors[i]
        else:
            cols = [names[j] for j in np.flatnonzero(bad[i])]
            more = f" (+{len(cols) - 5} more)" if len(cols) > 5 else ""
            reasons[str(case_ids[i])] = f"NaN/infinite value for {cols[:5]}{more}"
    return reasons


def _format_reasons(reasons: dict[str, str], k: int = 5) -> str:
    items = [f"case '{c}': {r}" for c, r in list(reasons.items())[:k]]
    more = f"; ... and {len(reasons) - k} more case(s)" if len(reasons) > k else ""
    return "; ".join(items) + more


def apply_failure_policy(values: np.ndarray, names: list[str], errors: list[str], case_ids: np.ndarray,
                         train: np.ndarray, on_failure: str = "impute") -> tuple[np.ndarray, list[str], dict]:
    """Apply ``on_failure`` and the constant-feature drop to a raw table (see the module docstring).

    Args:
        values: [N, F] raw values (NaN / inf where a feature could not be computed).
        names: F feature names.
        errors: N per-case error messages ('' when the case was extracted).
        case_ids: N case ids (for messages).
        train: indices of the training split (imputation medians, constant-feature check).
        on_failure: ``"impute"``, ``"drop_feature"`` or ``"error"``.

    Returns:
        ``(X, names, report)``: X float64 without NaN; report holds ``failures`` (case id -> reason), ``imputed``
        and ``dropped_features``.
    """
    if on_failure not in FAILURE_POLICIES:
        raise ConfigError(f"features.on_failure: must be one of {list(FAILURE_POLICIES)}, got {on_failure!r}")
    values = np.array(values, dtype=np.float64)
    values[~np.isfinite(values)] = np.nan
    names = list(names)
    reasons = _case_reasons(values, names, errors, case_ids)
    report: dict[str, Any] = {"failures": reasons, "n_failed_cases": len(reasons),
                              "imputed": {"n_values": 0, "n_cases": 0, "per_feature": {}},
                              "dropped_features": {"missing": [], "constant": []}}
    if not names:
        raise DataError(f"radiomics: no case could be extracted: {_format_reasons(reasons)}")
    missing = np.isnan(values)
    if on_failure == "drop_feature":
        all_failed = np.flatnonzero(missing.all(axis=1))
        if len(all_failed):
            bad = {str(case_ids[i]): reasons.get(str(case_ids[i]), "no feature") for i in all_failed}
            raise DataError(f"radiomics: every feature failed for {len(all_failed)} case(s), which "
                            f"features.on_failure='drop_feature' cannot repair (use 'impute', or empty_mask='image'"
                            f" for empty masks): {_format_reasons(bad)}")
    if reasons:
        if on_failure == "error":
            raise DataError(f"radiomics: features could not be computed for {len(reasons)} case(s) "
                            f"(features.on_failure='error'): {_format_reasons(reasons)}")
        action = {"impute": "missing values imputed with the training-split median",
                  "drop_feature": "features missing for any case dropped"}[on_failure]
        warnings.warn(f"radiomics: features could not be computed for {len(reasons)} case(s) ({action}): "
                      f"{_format_reasons(reasons)}", stacklevel=3)
    if on_failure == "drop_feature":
        keep = ~missing.any(axis=0)
        report["dropped_features"]["missing"] = [n for n, k in zip(names, keep) if not k]
    else:
        keep = np.ones(len(names), dtype=bool)
        train_vals = values[train]
        for j in np.flatnonzero(missing.any(axis=0)):
            finite = train_vals[:, j][~np.isnan(train_vals[:, j])]
            if not len(finite):
                finite = values[:, j][~missing[:, j]]
            if not len(finite):
                keep[j] = False
                report["dropped_features"]["missing"].append(names[j])
                continue
            values[missing[:, j], j] = float(np.median(finite))
    values, names, missing = values[:, keep], [n for n, k in zip(names, keep) if k], missing[:, keep]
    tv = values[train]
    const = np.ptp(tv, axis=0) == 0 if len(tv) else np.zeros(len(names), dtype=bool)
    report["dropped_features"]["constant"] = [n for n, c in zip(names, const) if c]
    values, names, missing = values[:, ~const], [n for n, c in zip(names, const) if not c], missing[:, ~const]
    if on_failure == "impute":  # counted on the returned table
        report["imputed"] = {"n_values": int(missing.sum()), "n_cases": int(missing.any(axis=1).sum()),
                             "per_feature": {n: int(c) for n, c in zip(names, missing.sum(axis=0)) if c}}
    if not names:
        raise DataError("radiomics: no feature left after dropping missing and constant features "
                        f"(dropped: {report['dropped_features']})")
    assert np.isfinite(values).all()
    return values, names, report


def extract_radiomics(cs: CaseSet, *, settings: dict | None = None, feature_classes: Sequence[str] | None = None,
                      image_types: Sequence[str] | None = None, region: str = "mask", empty_mask: str = "fail",
                      n_jobs: int = 1, cache: bool = True, cache_dir: str | Path | None = None,
                      on_failure: str = "impute", progress_bar: bool = True) -> tuple[np.ndarray, list[str], dict]:
    """The radiomic feature table of every case of ``cs`` (see the module docstring for every policy).

    Returns:
        ``(X, names, info)``: X float64 [N, F] without NaN (rows in CaseSet order), F feature names
        (``<imagetype>_<class>_<Feature>``, e.g. ``original_glcm_Contrast``), and ``info`` -- a JSON-ready dict with
        the effective ``settings``, ``feature_classes``, ``image_types``, ``pyradiomics_version``, ``grey_scale``,
        ``region`` (policy and counts), ``cache`` (enabled / hit / key / path), ``extraction_seconds`` (0 on a cache
        hit), ``cases_per_second``, ``failures``, ``imputed`` counts, ``dropped_features`` and feature counts.
    """
    opts = validate_options(settings, feature_classes, image_types, region, empty_mask, on_failure, n_jobs)
    grey = grey_images(cs.images)
    masks, region_desc = region_masks(cs, region, empty_mask, grey)
    params_json = json.dumps(opts["params"], sort_keys=True)
    info: dict[str, Any] = {
        "kind": "radiomics", "pyradiomics_version": pyradiomics_version(), "settings": opts["settings"],
        "feature_classes": opts["feature_classes"], "image_types": opts["image_types"],
        "grey_scale": f"channel mean of the [0, 1] image x {GREY_SCALE:g} (float, not rounded), native 2-D, 1 px "
                      "spacing",
        "region": region_desc, "on_failure": on_failure, "n_cases": int(cs.n_cases),
        "n_jobs": _resolve_jobs(n_jobs, cs.n_cases),
    }
    key = path = cached = None
    if cache:
        key = cache_key(cs.images, masks, opts)
        path = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / f"radiomics-{key[:40]}.npz"
        cached = _read_cache(path)
    if cached is not None and cached["values"].shape[0] == cs.n_cases:
        values, names, errors = cached["values"], cached["names"], cached["errors"]
        info["cache"] = {"enabled": True, "hit": True, "key": key, "path": str(path),
                         "original_extraction_seconds": cached["seconds"]}
        info["extraction_seconds"], info["cases_per_second"] = 0.0, None
    else:
        t0 = time.perf_counter()
        results = _run_cases(grey, masks, params_json, n_jobs, progress_bar)
        seconds = time.perf_counter() - t0
        values, names, errors = _assemble(results)
        if cache:
            try:
                _write_cache(path, values, names, errors, seconds)
            except OSError as exc:  # a read-only or full disk costs the cache, not the run
                warnings.warn(f"could not write the radiomics cache file {path}: {exc}", stacklevel=2)
        info["cache"] = {"enabled": bool(cache), "hit": False, "key": key, "path": str(path) if path else None}
        info["extraction_seconds"] = seconds
        info["cases_per_second"] = cs.n_cases / seconds if seconds > 0 else None
    X, names, report = apply_failure_policy(values, names, errors, cs.case_ids, cs.indices("train"), on_failure)
    info.update(report)
    info["n_features_extracted"] = int(values.shape[1])
    info["n_features"] = len(names)
    return X, names, info


# ---------------------------------------------------------------------------------------------------- meanings
CLASS_LABELS = {
    "firstorder": ("First-order", "first-order intensity statistics of the pixels in the region"),
    "shape2D": ("Shape", "2-D shape of the region (in pixels)"),
    "shape": ("3-D shape", "3-D shape of the region"),
    "glcm": ("GLCM", "grey-level co-occurrence matrix texture (pairs of neighbouring pixels)"),
    "glrlm": ("GLRLM", "grey-level run-length matrix texture (straight runs of equal grey level)"),
    "glszm": ("GLSZM", "grey-level size-zone matrix texture (connected zones of equal grey level)"),
    "ngtdm": ("NGTDM", "neighbouring grey-tone difference matrix texture (pixel vs. its neighbourhood mean)"),
    "gldm": ("GLDM", "grey-level dependence matrix texture (neighbours within a grey-level tolerance)"),
}

_FIRSTORDER = {
    "Energy": "sum of squared intensities in the region; grows with both brightness and region size",
    "TotalEnergy": "energy scaled by the pixel area (equal to energy at 1 px spacing)",
    "Entropy": "randomness of the binned intensity histogram (bits); high for heterogeneous regions",
    "Minimum": "darkest intensity in the region",
    "10Percentile": "10th percentile of intensity (a robust minimum)",
    "90Percentile": "90th percentile of intensity (a robust maximum)",
    "Maximum": "brightest intensity in the region",
    "Mean": "average intensity in the region",
    "Median": "median intensity in the region",
    "InterquartileRange": "spread of the middle half of intensities (75th minus 25th percentile)",
    "Range": "brightest minus darkest intensity",
    "MeanAbsoluteDeviation": "average distance of intensities from their mean",
    "RobustMeanAbsoluteDeviation": "average distance from their mean of the intensities between the 10th and 90th "
                                   "percentile (outlier-resistant spread)",
    "RootMeanSquared": "square root of the mean squared intensity (overall magnitude)",
    "StandardDeviation": "standard deviation of intensity (heterogeneity)",
    "Skewness": "asymmetry of the intensity distribution (positive: a tail of bright pixels)",
    "Kurtosis": "peakedness / heavy tails of the intensity distribution (3 for a Gaussian)",
    "Variance": "variance of intensity (squared spread around the mean)",
    "Uniformity": "sum of squared histogram probabilities; high when few grey levels dominate (homogeneous)",
}

_SHAPE2D = {
    "MeshSurface": "area enclosed by the region's outline polygon (pixels squared)",
    "PixelSurface": "area of the region counted in pixels",
    "Perimeter": "length of the region's outline (pixels)",
    "PerimeterSurfaceRatio": "outline length per unit area; high for small or ragged regions",
    "Sphericity": "circularity: 1 for a disc, lower for elongated or irregular outlines",
    "SphericalDisproportion": "inverse circularity: 1 for a disc, higher for irregular outlines",
    "MaximumDiameter": "largest distance between two points of the outline (pixels)",
    "MajorAxisLength": "length of the region's main axis from the spread of its pixel coordinates",
    "MinorAxisLength": "length of the region's second axis from the spread of its pixel coordinates",
    "Elongation": "minor over major axis spread: 1 for round regions, towards 0 for elongated ones",
}

_GLCM = {
    "Autocorrelation": "average product of the grey levels of neighbouring pixels (fineness vs coarseness)",
    "JointAverage": "mean grey level of neighbouring pixel pairs",
    "ClusterProminence": "fourth-moment spread of neighbour-pair sums around the mean; high for strongly "
                         "asymmetric textures",
    "ClusterShade": "third-moment skewness of neighbour-pair sums; sign shows asymmetry of the texture",
    "ClusterTendency": "how much neighbouring pixels group into similar grey levels",
    "Contrast": "local intensity variation between neighbouring pixels (squared grey-level difference)",
    "Correlation": "linear dependence between the grey levels of neighbouring pixels (-1 to 1)",
    "DifferenceAverage": "average absolute grey-level difference between neighbouring pixels",
    "DifferenceEntropy": "randomness of the grey-level differences between neighbours",
    "DifferenceVariance": "spread of the grey-level differences between neighbours",
    "JointEnergy": "sum of squared pair probabilities; high for orderly textures with few repeated pairs",
    "JointEntropy": "randomness of neighbouring grey-level pairs",
    "Imc1": "informational measure of correlation 1: shared information between neighbouring grey levels "
            "(negative, nearer 0 = less dependence)",
    "Imc2": "informational measure of correlation 2: dependence between neighbouring grey levels (0 to 1)",
    "Idm": "inverse difference moment: local homogeneity, weighting pairs by 1/(1+difference^2)",
    "Idmn": "inverse difference moment normalised by the number of grey levels (local homogeneity)",
    "Id": "inverse difference: local homogeneity, weighting pairs by 1/(1+|difference|)",
    "Idn": "inverse difference normalised by the number of grey levels (local homogeneity)",
    "InverseVariance": "sum of pair probabilities over squared grey-level differences (unequal pairs only)",
    "MaximumProbability": "frequency of the most common neighbouring grey-level pair",
    "SumAverage": "mean of the sums of neighbouring grey levels",
    "SumEntropy": "randomness of the sums of neighbouring grey levels",
    "SumSquares": "spread of grey levels around the mean over neighbouring pairs",
    "MCC": "maximal correlation coefficient: overall complexity of the neighbour dependence (0 to 1)",
    "Dissimilarity": "mean absolute grey-level difference between neighbours (deprecated alias)",
    "Homogeneity1": "local homogeneity (deprecated alias of Id)",
    "Homogeneity2": "local homogeneity (deprecated alias of Idm)",
    "SumVariance": "spread of the sums of neighbouring grey levels (deprecated)",
}


def _texture_family(units: str, short: tuple[str, str], long: tuple[str, str], level_key: str,
                    extra: dict[str, str]) -> dict[str, str]:
    """Descriptions of the features GLRLM (runs), GLSZM (zones) and GLDM (dependences) share in form.

    ``short`` / ``long`` are (name part, words), e.g. ``("ShortRun", "short")``; ``level_key`` is the middle of the
    grey-level emphasis names (``LowGrayLevelRunEmphasis`` -> ``"GrayLevelRun"``).
    """
    (sk, sw), (lk, lw) = short, long
    d = {
        f"{sk}Emphasis": f"weight of {sw} {units}; high for fine textures",
        f"{lk}Emphasis": f"weight of {lw} {units}; high for coarse textures",
        "GrayLevelNonUniformity": f"how unevenly the {units} spread over grey levels (low = similar intensities)",
        "GrayLevelNonUniformityNormalized": f"grey-level non-uniformity of the {units} normalised by their number",
        "GrayLevelVariance": f"spread of the grey levels of the {units}",
        f"Low{level_key}Emphasis": f"weight of dark (low grey level) {units}",
        f"High{level_key}Emphasis": f"weight of bright (high grey level) {units}",
        f"{sk}LowGrayLevelEmphasis": f"weight of {sw}, dark {units}",
        f"{sk}HighGrayLevelEmphasis": f"weight of {sw}, bright {units}",
        f"{lk}LowGrayLevelEmphasis": f"weight of {lw}, dark {units}",
        f"{lk}HighGrayLevelEmphasis": f"weight of {lw}, bright {units}",
    }
    d.update(extra)
    return d


_GLRLM = _texture_family("runs of equal grey level", ("ShortRun", "short"), ("LongRun", "long"), "GrayLevelRun", {
    "RunLengthNonUniformity": "how unevenly runs spread over run lengths (low = similar run lengths)",
    "RunLengthNonUniformityNormalized": "run-length non-uniformity normalised by the number of runs",
    "RunPercentage": "number of runs per pixel; high for fine textures with many short runs",
    "RunVariance": "spread of the run lengths",
    "RunEntropy": "randomness of run lengths and grey levels together",
})
_GLSZM = _texture_family("zones of equal grey level", ("SmallArea", "small"), ("LargeArea", "large"),
                         "GrayLevelZone", {
    "SizeZoneNonUniformity": "how unevenly zones spread over zone sizes (low = similar zone sizes)",
    "SizeZoneNonUniformityNormalized": "size-zone non-uniformity normalised by the number of zones",
    "ZonePercentage": "number of zones per pixel; high for fine, fragmented textures",
    "ZoneVariance": "spread of the zone sizes",
    "ZoneEntropy": "randomness of zone sizes and grey levels together",
})
_GLDM = _texture_family("dependences (counts of similar-grey neighbours)", ("SmallDependence", "small"),
                        ("LargeDependence", "large"), "GrayLevel", {
    "DependenceNonUniformity": "how unevenly pixels spread over dependence counts (low = similar homogeneity "
                               "everywhere)",
    "DependenceNonUniformityNormalized": "dependence non-uniformity normalised by the number of pixels",
    "DependenceVariance": "spread of the dependence counts",
    "DependenceEntropy": "randomness of dependence counts and grey levels together",
    "DependencePercentage": "dependences per pixel (deprecated; always 1)",
})
_NGTDM = {
    "Coarseness": "inverse of the average difference between a pixel and its neighbourhood; high for coarse, "
                  "slowly changing textures",
    "Contrast": "intensity differences between neighbourhoods combined with the range of grey levels present",
    "Busyness": "rapid changes between a pixel and its neighbourhood relative to the grey-level range (busy "
                "texture)",
    "Complexity": "how non-uniform and rapidly changing the texture is (many edges and primitives)",
    "Strength": "how clearly defined and visible the texture primitives are (large differences, coarse)",
}
FEATURE_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "firstorder": _FIRSTORDER, "shape2D": _SHAPE2D, "glcm": _GLCM, "glrlm": _GLRLM, "glszm": _GLSZM,
    "ngtdm": _NGTDM, "gldm": _GLDM,
}
GENERIC_MARK = "no description available"


def _humanise(feature: str) -> str:
    words = re.findall(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+", feature)
    return " ".join(w if (w.isupper() and len(w) > 1) else w.lower() for w in words) or feature


def _image_type_phrase(image_type: str) -> str:
    it = image_type.lower()
    if it == "original":
        return ""
    m = re.fullmatch(r"log-sigma-(\d+)-(\d+)-mm-[23]d", it)
    if m:
        return (f" (on the Laplacian-of-Gaussian filtered image, sigma {m.group(1)}.{m.group(2)} px: edges and blobs "
                "of about that size)")
    m = re.fullmatch(r"wavelet(\d*)-([lh]+)", it)
    if m:
        level = f" level {m.group(1)}" if m.group(1) else ""
        return (f" (on the wavelet{level} {m.group(2).upper()} sub-band: L = low-pass / smooth, H = high-pass / "
                "detail, one letter per image axis)")
    simple = {"square": "squared", "squareroot": "square-root", "logarithm": "logarithm",
              "exponential": "exponential", "gradient": "gradient-magnitude"}
    if it in simple:
        return f" (on the {simple[it]} filtered image)"
    if it.startswith("lbp"):
        return " (on the local-binary-pattern image)"
    return f" (on the '{image_type}' filtered image)"


def describe_feature(name: str) -> str:
    """A short plain-language description of a pyradiomics feature name such as ``original_glcm_Contrast``.

    Names the feature table of this module does not know (or unknown features of a known class) get a generic
    description containing :data:`GENERIC_MARK`, built from the class name.
    """
    parts = str(name).split("_")
    if len(parts) < 3:
        return f"radiomic feature '{name}' ({GENERIC_MARK})"
    image_type, cls, feature = parts[0], parts[1], "_".join(parts[2:])
    suffix = _image_type_phrase(image_type)
    label, long = CLASS_LABELS.get(cls, (cls, f"the '{cls}' feature class"))
    text = FEATURE_DESCRIPTIONS.get(cls, {}).get(feature)
    if not text:
        return f"{label} {_humanise(feature)}: a feature of {long} ({GENERIC_MARK}){suffix}"
    return f"{label} {_humanise(feature)}: {text}{suffix}"

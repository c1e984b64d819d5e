"""Binary lesion concepts derived from lesion masks, for data sets with masks but no concept labels.

A concept bottleneck model needs human-named concepts. When a data set has lesion masks (e.g. breast ultrasound)
but no concept annotations, :func:`derive_concepts` computes simple radiomic-style measures per case from the mask
and the image (:func:`lesion_measures`, numpy/scipy only) and thresholds them into the binary concepts of
:data:`DERIVED_CONCEPTS`, named after the BI-RADS ultrasound lexicon where a word fits (shape *irregular*, margin
*indistinct*, echo pattern *hypoechoic* / *heterogeneous*).

These are **proxies computed from the mask and pixel values, not a radiologist's reading**: "irregular_shape" means
"fills less of its convex hull than the median training lesion", not that a reader called the shape irregular. Their
quality is bounded by the mask quality and by the image resolution (measures of lesions a few pixels across are
coarse), and thresholds at the training median make every median-based concept true for about half of the training
lesions by construction.

Measures (grey = mean over the channels; pixels are unit squares; intensities in the image's [0, 1] units):

* ``area_fraction`` -- lesion pixels / image pixels.
* ``compactness`` -- ``4 * pi * area / perimeter**2``. The perimeter is the Cauchy-Crofton estimate from the
  crossings of the mask boundary along the 4 pixel-grid directions (0, 45, 90, 135 degrees)::

      perimeter = pi / 8 * (n_0 + n_90 + (n_45 + n_135) / sqrt(2))

  where ``n_d`` counts neighbouring pixel pairs in direction ``d`` with one pixel inside and one outside the lesion
  (pixels beyond the image border count as outside). Counting only the axis crossings (the number of lesion /
  background pixel edges) would give ``8 r`` for a disc of radius ``r`` and a compactness of ``pi**2 / 16 = 0.62``
  however large the disc; the 4-direction estimate tends to ``2 pi r`` for a disc, so a digitised disc has
  compactness ~1 (0.96-1.06 for radii 5-80 px, depending on where the centre falls on the grid) and no
  normalisation is applied. Straight edges along the grid axes are underestimated (an axis-aligned square:
  ``0.94 * 4a``, compactness 0.89 instead of 0.79), i.e. compactness of angular shapes is somewhat overestimated.
  Lesions under ~10 px across are too coarse: a single pixel has compactness 1.75. Lower = less round
  (elongated, lobulated or spiculated).
* ``solidity`` -- area / area of the convex hull of the lesion pixels' corners (``scipy.spatial.ConvexHull`` on
  the outer corners of each row's leftmost and rightmost lesion pixel, which span the same hull). Using pixel
  corners makes the hull of any non-empty mask a proper polygon (never degenerate: one pixel has solidity 1).
  The staircase border of a digitised disc keeps its solidity below 1 (0.91-0.96 at radius 5-10 px, 0.97 at
  20 px, 0.98 at 40 px, 0.99 at 80 px). Lower = more concave (lobes, spikes).
* ``mean_intensity`` -- mean grey value inside the lesion.
* ``contrast_to_surround`` -- mean inside the lesion minus mean in a surrounding ring: the pixels outside the lesion
  within Euclidean distance ``w = max(2, 0.1 * equivalent diameter)`` pixels of it (a Euclidean binary dilation;
  the equivalent diameter is that of the disc of the same area, ``2 * sqrt(area / pi)``), clipped at the image
  border. Negative = darker than the surrounding tissue.
* ``heterogeneity`` -- standard deviation (ddof 0) of the grey values inside the lesion.
* ``margin_sharpness`` -- mean gradient magnitude on the lesion boundary band: the lesion pixels with a 4-neighbour
  outside the lesion and the background pixels with a 4-neighbour inside it (the image border is not a lesion
  boundary). The gradient is the Sobel derivative (``scipy.ndimage.sobel``, ``mode="nearest"``) divided by 8, i.e.
  grey units per pixel: a sharp straight step of height ``h`` gives ``h / 2``, an edge blurred over ``s`` pixels
  gives about ``h / s``. It grows with the contrast as well as with the sharpness of the transition, so where
  lesions differ mostly in contrast, ``indistinct_margin`` partly means "low contrast".

Concepts: 1 when the measure is strictly above / below the threshold (a case exactly at the median is 0). The
``hypoechoic`` reference is the ring of tissue around the lesion, not the subcutaneous fat BI-RADS compares with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from glasszoo.models.errors import ConfigError, DataError
from glasszoo.training.caseset import CaseSet

MEASURES = ("area_fraction", "compactness", "solidity", "mean_intensity", "contrast_to_surround", "heterogeneity",
            "margin_sharpness")
EMPTY_MASK_POLICIES = ("error", "zero")
DIRECTIONS = ("above", "below")

_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity


@dataclass(frozen=True)
class DerivedConcept:
    """One binary concept: 1 when ``measure`` is strictly ``direction`` (``"above"``/``"below"``) the threshold.

    ``fixed_threshold`` None means the threshold is the median of the measure over the training cases with a
    lesion; a number is used as is.
    """

    name: str
    measure: str
    direction: str
    description: str
    fixed_threshold: float | None = None


DERIVED_CONCEPTS: tuple[DerivedConcept, ...] = (
    DerivedConcept("large", "area_fraction", "above",
                   "the lesion covers more of the image than the median training lesion"),
    DerivedConcept("not_round", "compactness", "below",
                   "outline less round than the median training lesion (elongated, lobulated or spiculated)"),
    DerivedConcept("irregular_shape", "solidity", "below",
                   "BI-RADS shape 'irregular' proxy: more concave (lobes, spikes) than the median training lesion"),
    DerivedConcept("indistinct_margin", "margin_sharpness", "below",
                   "BI-RADS margin 'not circumscribed / indistinct' proxy: a more gradual, blurred edge than the "
                   "median training lesion"),
    DerivedConcept("hypoechoic", "contrast_to_surround", "below",
                   "echo pattern 'hypoechoic' proxy: darker on average than the ring of tissue around the lesion",
                   fixed_threshold=0.0),
    DerivedConcept("heterogeneous", "heterogeneity", "above",
                   "echo pattern 'heterogeneous' proxy: more varied internal grey values than the median training "
                   "lesion"),
)


def _perimeter(m: np.ndarray) -> float:
    """The 4-direction Cauchy-Crofton perimeter estimate of a bool mask (see the module docstring)."""
    p = np.pad(m, 1)
    n0 = np.count_nonzero(p[:, 1:] != p[:, :-1])
    n90 = np.count_nonzero(p[1:, :] != p[:-1, :])
    n45 = np.count_nonzero(p[1:, 1:] != p[:-1, :-1])
    n135 = np.count_nonzero(p[1:, :-1] != p[:-1, 1:])
    return float(np.pi / 8 * (n0 + n90 + (n45 + n135) / np.sqrt(2)))


def _hull_area(m: np.ndarray) -> float:
    """Area of the convex hull of the lesion pixels' corners (pixel (r, c) is the square [r, r+1] x [c, c+1])."""
    rows = np.flatnonzero(m.any(axis=1))
    left = m[rows].argmax(axis=1)
    right = m.shape[1] - 1 - m[rows, ::-1].argmax(axis=1)
    pts = np.concatenate([np.stack([rows + dr, cols + dc], axis=1)
                          for dr in (0, 1) for cols, dc in ((left, 0), (right, 1))]).astype(np.float64)
    return float(ConvexHull(pts).volume)  # in 2-D, "volume" is the area


def lesion_measures(image: np.ndarray, mask: np.ndarray, case_id: str | None = None) -> dict[str, float]:
    """Shape, intensity and texture measures of one lesion (definitions in the module docstring).

    Args:
        image: [C, H, W] image (values in [0, 1]); the grey image is the mean over the channels.
        mask: [H, W] lesion mask, nonzero inside the lesion.
        case_id: the case named in error messages.

    Returns:
        ``{measure: value}`` for every name in :data:`MEASURES`, all finite.

    Raises:
        DataError: the shapes do not match, the mask is empty (no lesion: the measures are undefined) or covers
            the whole image (no surrounding tissue to compare with).
    """
    where = f"case '{case_id}'" if case_id is not None else "lesion_measures"
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or mask.ndim != 2 or image.shape[1:] != mask.shape:
        raise DataError(f"{where}: need an image [C, H, W] and a mask [H, W] of the same H, W; got image "
                        f"{image.shape} and mask {mask.shape}")
    m = mask > 0
    area = int(m.sum())
    if area == 0:
        raise DataError(f"{where}: the lesion mask is empty, so lesion measures are undefined")
    if area == m.size:
        raise DataError(f"{where}: the lesion mask covers the whole image, so there is no surrounding tissue to "
                        f"compare with (is the mask inverted?)")
    grey = image.astype(np.float64).mean(axis=0)
    inside = grey[m]

    width = max(2.0, 0.1 * 2.0 * np.sqrt(area / np.pi))
    ring = ~m & (ndimage.distance_transform_edt(~m) <= width)

    grad = np.hypot(ndimage.sobel(grey, axis=0, mode="nearest"), ndimage.sobel(grey, axis=1, mode="nearest")) / 8
    inner = m & ~ndimage.binary_erosion(m, structure=_CROSS, border_value=1)
    outer = ndimage.binary_dilation(m, structure=_CROSS) & ~m
    band = inner | outer

    return {
        "area_fraction": area / m.size,
        "compactness": 4.0 * np.pi * area / _perimeter(m) ** 2,
        "solidity": area / _hull_area(m),
        "mean_intensity": float(inside.mean()),
        "contrast_to_surround": float(inside.mean() - grey[ring].mean()),
        "heterogeneity": float(inside.std()),
        "margin_sharpness": float(grad[band].mean()),
    }


def derive_concepts(cs: CaseSet, empty_mask: str = "error") -> tuple[CaseSet, dict]:
    """Replace the CaseSet's concepts by the binary lesion concepts of :data:`DERIVED_CONCEPTS`.

    For every case the :func:`lesion_measures` are computed; each concept is 1 when its measure is strictly above /
    below the threshold: the median of the measure over the **training** split cases with a non-empty mask (so val
    and test cases never influence a threshold), or the concept's fixed threshold (``hypoechoic``: contrast below
    0). The concepts are proxies computed from the mask and image, not a radiologist's reading. Any concepts the
    CaseSet already has are replaced (the caller decides whether to derive).

    Args:
        cs: a CaseSet with lesion masks.
        empty_mask: what to do with cases whose mask is empty (e.g. "normal" images without a lesion): ``"error"``
            raises :class:`DataError`; ``"zero"`` sets all their concepts to 0 (no lesion: not large, not
            irregular, not hypoechoic, ...), and they do not enter the thresholds.

    Returns:
        (a new CaseSet with ``concepts`` float32 [N, K] of 0/1 and ``concept_names``, the same images, labels,
        split, masks and meta; and ``{concept name: {"measure", "threshold", "direction", "description"}}``).

    Raises:
        DataError: no masks, empty masks under ``empty_mask="error"``, no training case with a lesion, or a bad
            mask (see :func:`lesion_measures`).
        ConfigError: ``empty_mask`` is not one of :data:`EMPTY_MASK_POLICIES`.
    """
    if empty_mask not in EMPTY_MASK_POLICIES:
        raise ConfigError(f"data.concepts_empty_mask must be one of {EMPTY_MASK_POLICIES}, got {empty_mask!r}")
    src = f"data set '{cs.name}'"
    if cs.masks is None:
        if cs.concepts is not None:
            raise DataError(f"{src} has no lesion masks to derive concepts from; it has concept columns "
                            f"{cs.concept_names}: use data.concepts: data to keep them")
        raise DataError(f"{src} has neither concept columns nor lesion masks: derived concepts need a lesion mask "
                        f"per case (folder source: a mask column, data.mask_column); or give concept columns in "
                        f"the CSV (data.concept_columns) and use data.concepts: data")
    n = cs.n_cases
    has_lesion = cs.masks.reshape(n, -1).any(axis=1)
    if not has_lesion.all() and empty_mask == "error":
        first = cs.case_ids[np.flatnonzero(~has_lesion)[0]]
        raise DataError(f"{src}: {int((~has_lesion).sum())} of {n} case(s) have an empty lesion mask (first: "
                        f"'{first}'), so no lesion concepts can be derived for them; set "
                        f"data.concepts_empty_mask: zero to give such cases (e.g. normal images without a lesion) "
                        f"all concepts 0, or leave them out of the data")
    train = has_lesion & (cs.split == "train")
    if not train.any():
        raise DataError(f"{src}: no training case has a non-empty lesion mask, so the concept thresholds (training "
                        f"medians) are undefined")

    values = np.zeros((n, len(MEASURES)), dtype=np.float64)
    for i in np.flatnonzero(has_lesion):
        found = lesion_measures(cs.images[i], cs.masks[i], case_id=cs.case_ids[i])
        values[i] = [found[k] for k in MEASURES]

    concepts = np.zeros((n, len(DERIVED_CONCEPTS)), dtype=np.float32)
    info: dict[str, dict] = {}
    for k, c in enumerate(DERIVED_CONCEPTS):
        v = values[:, MEASURES.index(c.measure)]
        t = float(np.median(v[train])) if c.fixed_threshold is None else float(c.fixed_threshold)
        on = v > t if c.direction == "above" else v < t
        concepts[:, k] = on & has_lesion
        info[c.name] = {"measure": c.measure, "threshold": t, "direction": c.direction,
                        "description": c.description}
    out = dataclasses.replace(cs, concepts=concepts, concept_names=[c.name for c in DERIVED_CONCEPTS],
                              meta=dict(cs.meta))
    return out, info

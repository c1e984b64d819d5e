"""Prototype quality by object parts: consistency across images and stability under noise.

Huang et al., "Evaluation and Improvement of Interpretability for Self-Explainable Part-Prototype Networks", ICCV
2023 (code: github.com/hqhQAQ/EvalProtoPNet), measure a part-prototype network against annotated object parts
(15 keypoints per bird in CUB-200-2011):

* a prototype's *activated region* on an image is a box (72 x 72 px on 224 px images) around the peak of its
  activation map upsampled to the image; the prototype *covers* a part on that image when the part's keypoint lies
  in the box;
* **consistency**: over the test images of the prototype's class, the share of images on which it covers each part;
  the prototype is *consistent* when that share reaches 0.8 for some part; the consistency score is the fraction
  of consistent prototypes;
* **stability**: the same test images with Gaussian noise (sd 0.2, clipped at +-0.25, on ImageNet-normalised
  images); per prototype, the share of images whose covered parts are all unchanged by the noise; the stability
  score is the mean over prototypes.

Our data annotates one part per image, the lesion mask (synthetic phantoms, BUSI ultrasound), so:

* the part hit ``h_ij`` of prototype j on image i is whether its activated region touches the lesion: the region
  is the peak pixel of the activation map bilinearly upsampled to the image (``region = 0``, the default: the
  pointing game of the prototype's own map), or a box of half-side ``region`` x the image side around it (the
  paper's box is ``36 / 224 = 0.16``); ties go to the first pixel in row-major order, as in the paper's code;
* only images with a non-empty mask count, and only the *relevant* prototypes (the model's
  ``relevant_prototypes``, e.g. those with a non-zero class weight; default all);
* **consistency** of prototype j = the share of hits over the annotated images of its class (the model's
  ``prototype_classes``; a model whose prototypes no class owns: over every annotated image); j is consistent when
  the share is at least ``threshold`` (the paper's 0.8). Reported: ``consistent_fraction`` (the paper's score) and
  ``consistency`` (the mean share, which does not jump at the threshold);
* **stability** of prototype j = the share of those images whose part hit is unchanged by the noise (the paper's
  score, with one part); ``peak_stability`` = the share of the prototype's images (annotated or not) whose peak
  patch (the argmax cell of the patch grid) is unchanged, which needs no masks. The noise: our inputs are in
  [0, 1], not normalised; the paper's sd 0.2 (clip 0.25) in units of ImageNet's sd of about 0.225 is about 0.045
  (0.056) in [0, 1] units, so ``noise = 0.05`` with the noise clipped at +-1.25 ``noise`` (the paper's ratio; the
  clipped noise's sd is 0.81 ``noise``). The noise is seeded.

A model with prototypes answers ``prototype_activation_maps(x)`` ([N, P, h, w] maps on the patch grid; see
``glasszoo.models.base.ImageModel``); every other model answers None, and :func:`prototype_part_scores` returns an
empty block for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from glasszoo.models.base import as_tensor

HUANG = ('Huang et al., "Evaluation and Improvement of Interpretability for Self-Explainable Part-Prototype '
         'Networks", ICCV 2023')
CLIP = 1.25
"""The noise is clipped at +-``CLIP`` x its sd (the paper: sd 0.2, clip 0.25)."""
PART_BLOCK = "prototype_quality"
"""The explanation block of ``metrics.json`` the scores go under (beside the model's own prototype figures)."""


def peak_pixels(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The flat pixel index [N, P] of the peak of each map of ``maps`` [N, P, h, w] bilinearly upsampled to ``size``
    (align_corners=False, as the models draw them); ties: the first pixel in row-major order."""
    up = F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)
    return up.flatten(2).argmax(dim=2)


def part_hits(maps: torch.Tensor, masks: torch.Tensor, region: float = 0.0) -> torch.Tensor:
    """Whether each prototype's activated region touches the lesion, bool [N, P].

    Args:
        maps: activation maps [N, P, h, w] on the patch grid.
        masks: lesion masks [N, H, W] (non-zero on the lesion).
        region: half-side of the activated region, as a fraction of the image side: 0 is the peak pixel of the
            upsampled map alone; the paper's box is 0.16 (36 px of 224).
    """
    n, p = maps.shape[:2]
    hh, ww = masks.shape[-2:]
    peak = peak_pixels(maps, (hh, ww))
    rows, cols = peak // ww, peak % ww
    inside = masks.reshape(n, hh, ww) > 0
    if region <= 0:
        return inside.flatten(1).gather(1, peak)
    half_r, half_c = int(round(region * hh)), int(round(region * ww))
    # any lesion pixel in the box: a summed-area table of the mask, read at the box's corners
    sat = F.pad(inside.float().cumsum(1).cumsum(2), (1, 0, 1, 0))  # [N, H + 1, W + 1]
    r0, r1 = (rows - half_r).clamp(0, hh), (rows + half_r + 1).clamp(0, hh)
    c0, c1 = (cols - half_c).clamp(0, ww), (cols + half_c + 1).clamp(0, ww)
    flat = sat.flatten(1)

    def at(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return flat.gather(1, r * (ww + 1) + c)

    return (at(r1, c1) - at(r0, c1) - at(r1, c0) + at(r0, c0)) > 0


def consistency(hits: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """Per prototype, the share of its counted images on which it hits the part, [P] (NaN: no counted image).

    Args:
        hits: bool [N, P] part hits.
        counted: bool [N, P], whether image i counts for prototype j (annotated, of the prototype's class).
    """
    hits, counted = np.asarray(hits, bool), np.asarray(counted, bool)
    n = counted.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (hits & counted).sum(0) / np.maximum(n, 1), np.nan)


def stability(before: np.ndarray, after: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """Per prototype, the share of its counted images whose value (part hit or peak location) ``before`` the noise
    equals the one ``after`` it, [P] (NaN: no counted image)."""
    same = np.asarray(before) == np.asarray(after)
    counted = np.asarray(counted, bool)
    n = counted.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (same & counted).sum(0) / np.maximum(n, 1), np.nan)


def add_noise(images: np.ndarray, sd: float, seed: int = 0) -> np.ndarray:
    """``images`` plus Gaussian noise of sd ``sd`` clipped at +-``CLIP`` x ``sd`` (not clipped to [0, 1], as the
    paper does not clip the image), seeded."""
    rng = np.random.default_rng(seed)
    noise = np.clip(rng.normal(0.0, sd, size=np.shape(images)), -CLIP * sd, CLIP * sd)
    return (np.asarray(images, dtype=np.float32) + noise.astype(np.float32))


def _maps(model: Any, images: np.ndarray, batch_size: int) -> torch.Tensor | None:
    """The model's prototype activation maps of ``images`` [N, P, h, w] on the CPU, in eval mode without gradients
    (None: the model has no prototypes)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                m = model.prototype_activation_maps(as_tensor(images[i:i + batch_size], model.device))
                if m is None:
                    return None
                out.append(m.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else None


def _mean(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def prototype_part_scores(model: Any, images: np.ndarray, masks: np.ndarray | None, labels: np.ndarray,
                          threshold: float = 0.8, noise: float = 0.05, region: float = 0.0, seed: int = 0,
                          perturbed: np.ndarray | None = None, batch_size: int = 64) -> dict:
    """Consistency and stability of the model's prototypes on ``images`` (see the module's docstring).

    Args:
        model: an image model; its ``prototype_activation_maps`` None means no prototypes (returns ``{}``).
        images: [N, C, H, W] in [0, 1]; masks: lesion masks [N, H, W] or None; labels: true classes [N].
        threshold: the share of hits that makes a prototype consistent (paper: 0.8).
        noise: sd of the Gaussian noise of the stability (clipped at +-1.25 sd; seeded with ``seed``).
        region: half-side of the activated region as a fraction of the side (0: the peak pixel).
        perturbed: the perturbed images instead of ``images`` plus noise (known-answer tests).

    Returns:
        ``{}`` for a model without prototypes; else ``consistency``, ``consistent_fraction`` and ``stability``
        (with non-empty masks), ``peak_stability``, and the settings and counts (``part_cases``: the annotated
        images, ``part_prototypes``: the relevant prototypes, ``consistency_threshold``, ``stability_noise``,
        ``part_region``).
    """
    clean = _maps(model, images, batch_size)
    if clean is None:
        return {}
    noisy_images = add_noise(images, noise, seed) if perturbed is None else np.asarray(perturbed, np.float32)
    noisy = _maps(model, noisy_images, batch_size)
    n, p = clean.shape[:2]
    relevant = model.relevant_prototypes()
    relevant = np.ones(p, bool) if relevant is None else relevant.detach().cpu().numpy().astype(bool)
    owner = model.prototype_classes()
    labels = np.asarray(labels)
    mine = (np.ones((n, p), bool) if owner is None
            else labels[:, None] == owner.detach().cpu().numpy()[None, :])  # [N, P]: image i counts for j
    mine &= relevant[None, :]
    out: dict[str, Any] = {"part_prototypes": int(relevant.sum())}
    cells_before, cells_after = clean.flatten(2).argmax(2).numpy(), noisy.flatten(2).argmax(2).numpy()
    out["peak_stability"] = _mean(stability(cells_before, cells_after, mine)[relevant])
    annotated = np.zeros(n, bool) if masks is None else np.asarray(masks).reshape(n, -1).any(axis=1)
    out["part_cases"] = int(annotated.sum())
    if annotated.any():
        m = torch.as_tensor(np.asarray(masks)[annotated])
        before = part_hits(clean[annotated], m, region).numpy()
        after = part_hits(noisy[annotated], m, region).numpy()
        counted = mine[annotated]
        share = consistency(before, counted)[relevant]
        out["consistency"] = _mean(share)
        out["consistent_fraction"] = _mean(np.where(np.isfinite(share), share >= threshold, np.nan))
        out["stability"] = _mean(stability(before, after, counted)[relevant])
    out.update(consistency_threshold=float(threshold), stability_noise=float(noise), part_region=float(region))
    return out

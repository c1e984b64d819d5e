"""What the prototype families share: freezing the parts a training stage does not train, re-estimating a from-scratch
backbone's BatchNorm statistics on the training split, counting how many prototypes come from a patch on a lesion,
drawing activation maps on a denser grid than the network's (shift-and-stitch), and switching prototypes off (a
reader's edit) with a convex refit of the last layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from glasszoo.models._linear import fit_sparse_linear
from glasszoo.models.base import as_tensor


def freeze_parts(parts: dict[str, list[nn.Parameter]], trainable: Sequence[str]) -> None:
    """Let only the parts named in ``trainable`` learn: every other part's parameters get ``requires_grad=False``
    and their gradient cleared, so an optimizer holding every group (AdamW included: it skips parameters without a
    gradient, weight decay too) leaves them untouched."""
    for part, params in parts.items():
        on = part in trainable
        for p in params:
            p.requires_grad_(on)
            if not on:
                p.grad = None


def eval_frozen(model: nn.Module, trainable: Sequence[str], modules: Sequence[str] = ("features", "add_on")) -> None:
    """Put the submodules of ``model`` named in ``modules`` that are not ``trainable`` in eval mode, so a frozen
    backbone's BatchNorm statistics do not drift while the rest trains."""
    for name in modules:
        if name not in trainable:
            getattr(model, name).eval()


@torch.no_grad()
def precise_batchnorm(model: nn.Module, features: nn.Module, caseset: Any, batch_size: int, max_images: int) -> int:
    """Re-estimate the running statistics of every BatchNorm layer of ``features`` (a part of ``model``) on the
    training split of ``caseset``; returns the number of layers updated.

    A from-scratch backbone's running statistics lag behind its fast-changing weights, so eval mode computes with
    statistics of weights the network no longer has. One pass of ``features`` in train mode with a cumulative average
    (``momentum=None``) over fixed batches of ``batch_size`` training images replaces them with the statistics of the
    current weights ("precise BN", Wu & Johnson 2021). At most ``max_images`` training images are used (an evenly
    spaced subset: a few hundred give precise statistics); a batch of one image gives none and is skipped. The rest
    of ``model`` stays in eval mode, and ``model``'s training mode is restored.
    """
    bns = [m for m in features.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    rows = np.asarray(caseset.indices("train"))
    if len(rows) > max_images:
        rows = rows[np.unique(np.linspace(0, len(rows) - 1, max_images).round().astype(np.int64))]
    starts = [i for i in range(0, len(rows), batch_size) if len(rows[i:i + batch_size]) > 1]
    if not bns or not starts:
        return 0
    device = next(model.parameters()).device
    was_training = model.training
    momenta = [m.momentum for m in bns]
    model.eval()
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for i in starts:
            features(as_tensor(caseset.images[rows[i:i + batch_size]], device))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    return len(bns)


def fraction_on_lesion(case_ids: Sequence[str], boxes: Sequence[Sequence[int]], data: Any) -> float | None:
    """The share of prototype sources (case id and input-pixel box ``(row0, col0, row1, col1)``, end exclusive) whose
    box touches the lesion mask of that case in ``data`` (the training cases); None when ``data`` has no lesion or no
    source is one of its cases."""
    masks = data.masks
    if masks is None or not np.asarray(masks).any():
        return None
    row_of = {str(c): i for i, c in enumerate(data.case_ids)}
    hits = [bool(np.asarray(masks[row_of[c]])[r0:r1, c0:c1].any())
            for c, (r0, c0, r1, c1) in zip(case_ids, boxes) if c in row_of]
    return float(np.mean(hits)) if hits else None


def stitch_offsets(size: int, grid: int, factor: int) -> list[int] | None:
    """The input shifts (pixels) that sample a grid of stride ``size / grid`` ``factor`` times more densely, or
    ``None`` when they are not whole pixels (see :func:`shift_and_stitch`).

    With stride ``s``, shift ``a`` (0 <= a < factor) is ``(a + 1/2) s / factor - s / 2``, so that cell ``i`` of the
    shifted image is fine cell ``factor i + a`` of a grid of stride ``s / factor``, centred where bilinear
    upsampling of such a grid (``align_corners=False``) puts it. E.g. stride 8, factor 2: shifts -2 and +2.
    """
    if factor == 1:
        return [0]
    if grid < 1 or size % grid:
        return None
    stride = size // grid
    if stride % (2 * factor):
        return None
    step = stride // factor
    return [(2 * a + 1) * step // 2 - stride // 2 for a in range(factor)]


def shift_and_stitch(maps_of: Any, x: torch.Tensor, factor: int, base: torch.Tensor | None = None) -> torch.Tensor:
    """Maps on a ``factor`` times denser grid by shift-and-stitch (Long, Shelhamer and Darrell, "Fully
    convolutional networks for semantic segmentation", CVPR 2015, section 3.2).

    ``maps_of(images) -> [N, P, h, w]`` is evaluated on ``factor**2`` copies of ``x`` [N, C, H, W], each shifted by
    a sub-stride offset (:func:`stitch_offsets`; borders replicate the edge pixels), and the results are interleaved
    into [N, P, factor h, factor w]: every value is the network's own map at a patch position between two cells of
    the original grid. Nothing is interpolated and nothing is learned; it costs ``factor**2`` passes. When the grid
    does not divide the input into whole, evenly shiftable strides, the plain map is returned (factor 1). ``base``:
    ``maps_of(x)`` when the caller already has it (it fixes the grid's size).
    """
    base = maps_of(x) if base is None else base
    if factor == 1:
        return base
    (h, w), (hh, ww) = base.shape[-2:], x.shape[-2:]
    oy, ox = stitch_offsets(hh, h, factor), stitch_offsets(ww, w, factor)
    if oy is None or ox is None:
        return base
    pad = max(abs(o) for o in oy + ox)
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    out = base.new_zeros(*base.shape[:2], factor * h, factor * w)
    for a, dy in enumerate(oy):
        for b, dx in enumerate(ox):
            shifted = xp[..., pad + dy:pad + dy + hh, pad + dx:pad + dx + ww]
            out[..., a::factor, b::factor] = maps_of(shifted)
    return out


def check_prototype_ids(prototypes: Sequence[int], n_prototypes: int) -> list[int]:
    """The prototype indices of an edit, sorted and unique; a :class:`ValueError` names any out of range."""
    ids = sorted({int(j) for j in prototypes})
    bad = [j for j in ids if not 0 <= j < n_prototypes]
    if bad:
        raise ValueError(f"prototype {bad[0]} does not exist: the model has prototypes 0..{n_prototypes - 1}")
    return ids


def switch_off(model: Any, prototypes: Sequence[int], refit: Any) -> dict:
    """Add ``prototypes`` to ``model.disabled`` and call ``refit()`` (the model's convex last-layer fit, which keeps
    switched-off prototypes at weight 0); returns what ``ImageModel.disable_prototypes`` reports."""
    ids = check_prototype_ids(prototypes, model.n_prototypes)
    before = int(model.relevant_prototypes().sum())
    model.disabled = sorted(set(model.disabled) | set(ids))
    refit()
    return {"disabled": list(model.disabled), "n_relevant_before": before,
            "n_relevant_after": int(model.relevant_prototypes().sum())}


@torch.no_grad()
def refit_without(scores: torch.Tensor, labels: np.ndarray, weight: torch.Tensor, disabled: Sequence[int], l1: float,
                  l1_mask: torch.Tensor | None = None, nonneg: bool = False, steps: int = 1000) -> torch.Tensor:
    """The last layer [C, P] refitted on the training ``scores`` [N, P] with the ``disabled`` prototypes switched
    off: their columns of the scores and of the warm start ``weight`` are zeroed, so their weights stay exactly 0,
    and the others are solved as the model's own convex last-layer problem (bias-free, L1 on ``l1_mask``,
    non-negative with ``nonneg``; :func:`~glasszoo.models._linear.fit_sparse_linear`)."""
    off = torch.zeros(scores.shape[1], dtype=torch.bool)
    off[list(disabled)] = True
    c = scores.detach().float().cpu().clone()
    c[:, off] = 0.0
    init = weight.detach().float().cpu().clone()
    init[:, off] = 0.0
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    w, _ = fit_sparse_linear(c, y, weight.shape[0], l1, steps=steps, l1_mask=l1_mask, fit_bias=False, init=init,
                             nonneg=nonneg)
    w[:, off] = 0.0
    return w


def rank_enabled(contrib: torch.Tensor, disabled: Sequence[int], k: int) -> torch.Tensor:
    """The indices [B, k'] of the ``k`` largest contributions per row, switched-off prototypes never among them
    (k' = min(k, prototypes left on), at least 1)."""
    c = contrib.clone()
    if disabled:
        c[:, list(disabled)] = -torch.inf
    k = max(1, min(k, contrib.shape[1] - len(set(disabled))))
    return c.argsort(dim=1, descending=True, stable=True)[:, :k]

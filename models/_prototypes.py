"""What the prototype families share: freezing the parts a training stage does not train, re-estimating a from-scratch
backbone's BatchNorm statistics on the training split, and counting how many prototypes come from a patch on a
lesion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

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

"""Attention-gated networks: an Attention U-Net that segments the lesion and classifies from inside it, and an
attention-gated classifier whose gates explain it.

* :class:`AttentionGate`: the additive attention gate of Oktay et al., "Attention U-Net: Learning Where to Look for
  the Pancreas", MIDL 2018.
* :class:`AttentionUNet` (zoo name ``attention_unet``): U-Net with a gate on every skip connection, a lesion
  segmentation head and a *lesion-level* classification head (class logits from features pooled inside the
  predicted lesion). Needs lesion masks to train.
* :class:`AttentionGatedClassifier` (zoo name ``attention_classifier``): Schlemper et al., "Attention gated networks:
  Learning to leverage salient regions in medical images", Medical Image Analysis 53, 2019 (the grid-attention
  SonoNet): a CNN whose intermediate feature maps are gated by the coarsest one and pooled by their attention.
  Works without masks; optionally also segments when masks exist.
* :func:`combine_gate_maps`: how both models turn several gate maps into one input-sized heatmap (product, see
  there), and :func:`dice_bce_loss`, the segmentation loss of both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from glasszoo.models._backbones import attach_input_prep, timm_model
from glasszoo.models._registry import register_model
from glasszoo.models.base import ImageModel, batched_no_grad
from glasszoo.models.errors import DataError
from glasszoo.models.explanations import Heatmap

PAPER_UNET = 'Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018'
PAPER_AGN = ('Schlemper et al., "Attention gated networks: Learning to leverage salient regions in medical images", '
             'Medical Image Analysis 53, 2019')
AGGREGATIONS = ("mean", "ft", "concat")
COMBINE_MODES = ("product", "mean")


# --------------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------------


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al., MIDL 2018, Fig. 2).

    For a feature map ``x`` [N, C_x, H, W] and a coarser gating signal ``g`` [N, C_g, h, w]::

        q     = psi(ReLU(W_x x + W_g g))         # [N, 1, H / s, W / s]
        alpha = sigmoid(q), resampled (bilinear) to x's grid   # [N, 1, H, W], values in (0, 1)
        out   = alpha * x                        # [N, C_x, H, W]

    ``W_x`` is a ``s x s`` convolution with stride ``s = subsample`` and no bias (``s = 2`` in the paper's U-Net,
    ``s = 1`` a plain 1x1 convolution), ``W_g`` a 1x1 convolution with bias whose output is resampled bilinearly to
    the grid of ``W_x x`` when the grids differ, ``psi`` a 1x1 convolution to one channel with bias. The last
    ``alpha`` (on x's grid, detached) is kept in :attr:`last_alpha` for inspection.

    Args:
        in_channels: C_x, channels of the gated feature map.
        gating_channels: C_g, channels of the gating signal.
        inter_channels: channels of the intermediate space of ``W_x x + W_g g``.
        subsample: stride (and kernel size) ``s`` of ``W_x``.
    """

    def __init__(self, in_channels: int, gating_channels: int, inter_channels: int, subsample: int = 2) -> None:
        super().__init__()
        if min(in_channels, gating_channels, inter_channels, subsample) < 1:
            raise ValueError("AttentionGate channels and subsample must be >= 1")
        self.subsample = int(subsample)
        self.W_x = nn.Conv2d(in_channels, inter_channels, kernel_size=subsample, stride=subsample, bias=False)
        self.W_g = nn.Conv2d(gating_channels, inter_channels, kernel_size=1, bias=True)
        self.psi = nn.Conv2d(inter_channels, 1, kernel_size=1, bias=True)
        self.last_alpha: torch.Tensor | None = None

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Attention coefficients alpha [N, 1, H, W] in (0, 1) on the grid of ``x``."""
        theta = self.W_x(x)
        phi = self.W_g(g)
        if phi.shape[-2:] != theta.shape[-2:]:
            phi = F.interpolate(phi, size=theta.shape[-2:], mode="bilinear", align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta + phi)))
        if alpha.shape[-2:] != x.shape[-2:]:
            alpha = F.interpolate(alpha, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return alpha

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Gated features ``alpha * x`` [N, C_x, H, W]."""
        alpha = self.coefficients(x, g)
        self.last_alpha = alpha.detach()
        return alpha * x


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """(3x3 conv, BatchNorm, ReLU) x 2, size-preserving."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _ConvEncoder(nn.Module):
    """Plain U-Net encoder: ``depth + 1`` conv blocks with 2x2 max-pooling between them; widths double per level.

    Level i has ``base_width * 2**i`` channels at reduction ``2**i``.
    """

    def __init__(self, in_chans: int, depth: int, base_width: int, ceil_mode: bool = False) -> None:
        super().__init__()
        self.channels = [base_width * 2 ** i for i in range(depth + 1)]
        self.reductions = [2 ** i for i in range(depth + 1)]
        ins = [in_chans, *self.channels[:-1]]
        self.blocks = nn.ModuleList(conv_block(i, o) for i, o in zip(ins, self.channels))
        self.pool = nn.MaxPool2d(2, ceil_mode=ceil_mode)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(self.pool(x) if i else x)
            feats.append(x)
        return feats


class _TimmEncoder(nn.Module):
    """The first ``n_levels`` feature levels of a timm model (``features_only=True``), randomly initialised or
    ``pretrained`` (see :mod:`glasszoo.models._backbones`), its input standardised as ``normalize`` says; channels
    and reductions from timm's ``feature_info``."""

    def __init__(self, name: str, in_chans: int, n_levels: int, pretrained: bool | str = False,
                 normalize: str = "none") -> None:
        super().__init__()
        if name not in timm.list_models():
            raise ValueError(f"unknown encoder {name!r}: use 'unet' or a timm model name (see timm.list_models())")
        probe = timm.create_model(name, features_only=True, pretrained=False, in_chans=in_chans)
        available = len(probe.feature_info.channels())
        del probe
        if n_levels > available:
            raise ValueError(f"timm encoder {name!r} has {available} feature levels but depth={n_levels - 1} needs "
                             f"{n_levels}: use depth <= {available - 1}")
        self.net = timm_model(name, pretrained, features_only=True, in_chans=in_chans,
                              out_indices=tuple(range(n_levels)))
        self.input_prep = attach_input_prep(self.net, in_chans, normalize)
        self.channels = list(self.net.feature_info.channels())
        self.reductions = list(self.net.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(x))


def _make_encoder(encoder: str, in_chans: int, depth: int, base_width: int, ceil_mode: bool = False,
                  pretrained: bool | str = False, normalize: str = "none") -> nn.Module:
    if not isinstance(encoder, str) or not encoder:
        raise ValueError(f"encoder must be 'unet' or a timm model name, got {encoder!r}")
    if encoder == "unet":
        if pretrained not in (False, None) or normalize != "none":
            raise ValueError("pretrained and normalize need a timm encoder (encoder: resnet18, ...); the plain "
                             "'unet' encoder has no pretrained weights")
        if base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {base_width}")
        return _ConvEncoder(in_chans, depth, base_width, ceil_mode)
    return _TimmEncoder(encoder, in_chans, depth + 1, pretrained, normalize)


def _nearest_multiples(side: int, factor: int) -> list[int]:
    lo = side // factor * factor
    return [v for v in (lo, lo + factor) if v > 0]


def check_input_size(size: tuple[int, int], factor: int, who: str, why: str) -> None:
    """Raise ValueError naming the size and the nearest valid sizes when H or W is not divisible by ``factor``."""
    h, w = (int(s) for s in size)
    if h % factor or w % factor:
        raise ValueError(
            f"{who}: input size {h}x{w} is not divisible by {factor} ({why}); nearest valid sizes: height "
            f"{' or '.join(map(str, _nearest_multiples(h, factor)))}, width "
            f"{' or '.join(map(str, _nearest_multiples(w, factor)))}. Resize or crop the images, or lower depth "
            f"(no padding is done)")


def _normalised(weights: torch.Tensor) -> torch.Tensor:
    """Weights [N, 1, h, w] >= 0 divided by their sum per image: [N, h, w] (an all-zero map stays zero)."""
    w = weights[:, 0].float()
    return w / w.flatten(1).sum(dim=1).clamp_min(1e-30).view(-1, 1, 1)


def _weighted_mean(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Spatial average of features [N, C, h, w] weighted by weights [N, 1, h, w] >= 0: [N, C]."""
    num = (features * weights).sum(dim=(2, 3))
    return num / weights.sum(dim=(2, 3)).clamp_min(1e-6)


# --------------------------------------------------------------------------------------------------------------------
# Shared helpers: combining gate maps, the segmentation loss
# --------------------------------------------------------------------------------------------------------------------


def combine_gate_maps(maps: list[torch.Tensor], size: tuple[int, int], mode: str = "product") -> torch.Tensor:
    """One relevance map [N, H, W] in [0, 1] from several gate maps [N, h_i, w_i] (values in (0, 1)).

    Each map is upsampled bilinearly to ``size`` and the maps are multiplied (``mode="product"``, the default used
    by every ``explain``) or averaged (``"mean"``); the result is divided by its per-image maximum (an all-zero map
    stays zero).

    Why the product: a gate acts multiplicatively on its features (``alpha * x``), so the product is the combined
    factor by which the gates, taken together, let a location through -- a pixel is relevant only if every gate
    passes it (a logical AND across scales), which gives sharp, lesion-centred maps. It is also indifferent to an
    uninformative gate: a gate that passes everything with a near-constant alpha only rescales the product, and the
    per-image normalisation removes that scale, whereas in a mean the same gate adds a constant offset that washes
    out the contrast of the informative gates. The price: one gate that closes on a region hides it even when the
    others attend there (use ``mode="mean"`` to see any gate's attention).
    """
    if mode not in COMBINE_MODES:
        raise ValueError(f"mode must be one of {COMBINE_MODES}, got {mode!r}")
    if not maps:
        raise ValueError("combine_gate_maps needs at least one gate map")
    up = [F.interpolate(m[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
          for m in maps]
    stacked = torch.stack(up, dim=0)
    out = stacked.prod(dim=0) if mode == "product" else stacked.mean(dim=0)
    out = out.clamp_min(0)
    peak = out.flatten(1).amax(dim=1).view(-1, 1, 1)
    return torch.where(peak > 0, out / peak.clamp_min(1e-30), torch.zeros_like(out))


def gate_supervision_loss(alpha: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of gate coefficients ``alpha`` [N, 1, h, w] in (0, 1) against the lesion's share of each
    gate cell (``masks`` [N, H, W] area-averaged to the gate's grid, so a cell half on the lesion has target 0.5),
    averaged over the cells and the images."""
    target = F.adaptive_avg_pool2d(masks.float()[:, None], alpha.shape[-2:])
    return F.binary_cross_entropy(alpha.float().clamp(1e-6, 1 - 1e-6), target)


def dice_bce_loss(seg_logits: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss + binary cross-entropy of segmentation logits against a binary mask.

    With ``p = sigmoid(seg_logits)`` and ``t = (mask > 0)`` flattened per image::

        dice_loss = mean_n [ 1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth) ]
        bce       = mean over all pixels of BCE(p, t)
        loss      = dice_loss + bce

    ``smooth`` (1 by default) keeps the Dice term defined for empty masks (an empty prediction of an empty mask
    costs ~0).

    Args:
        seg_logits: [N, 1, H, W] or [N, H, W] logits.
        mask: [N, H, W] (any dtype; non-zero = lesion).
    """
    n = seg_logits.shape[0]
    logits = seg_logits.float().reshape(n, -1)
    t = (mask > 0).float().reshape(n, -1)
    if logits.shape != t.shape:
        raise ValueError(f"segmentation logits {tuple(seg_logits.shape)} and mask {tuple(mask.shape)} differ in size")
    p = torch.sigmoid(logits)
    dice = 1.0 - (2.0 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return dice.mean() + F.binary_cross_entropy_with_logits(logits, t)


def _targets(logits: torch.Tensor, target: np.ndarray | None, start: int) -> np.ndarray:
    if target is None:
        return logits.argmax(1).cpu().numpy()
    return np.asarray(target).reshape(-1)[start:start + len(logits)].astype(np.int64)


# --------------------------------------------------------------------------------------------------------------------
# Attention U-Net
# --------------------------------------------------------------------------------------------------------------------


@register_model("attention_unet", family="attention", paper=PAPER_UNET, test_kwargs={"depth": 2, "base_width": 8})
class AttentionUNet(ImageModel):
    """Attention U-Net with a lesion-level classifier: segments the lesion, then decides from inside it.

    Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018. A U-Net encoder-decoder
    (``depth`` poolings; plain encoder: conv-BN-ReLU x 2 blocks of ``base_width * 2**level`` channels, or a timm
    encoder) whose every skip connection passes through an :class:`AttentionGate` gated by the coarser decoder
    feature (the bottleneck for the deepest skip); the decoder upsamples bilinearly and applies a conv block to
    ``[upsampled, gated skip]``. Two heads:

    * segmentation: a 1x1 convolution on the last decoder feature gives lesion logits [N, 1, H, W] (upsampled
      bilinearly to the input when a timm encoder's first level is already downsampled);
    * lesion-level classification: with ``w = sigmoid(lesion logits)`` as soft lesion weights, the class logits are
      a linear layer on ``[lesion mean of the last decoder feature, lesion mean of the bottleneck feature
      (w average-pooled to its grid), global average of the bottleneck feature, lesion area fraction mean(w)]``.
      The decision is thus about the outlined lesion (and its context through the global pool), and a clinician
      sees the outline it is about. By default ``w`` is detached (``lesion_pool_grad=False``): the segmentation is
      trained only by the segmentation loss, so the outline shown is a segmentation of the lesion, not a map bent
      to help the classifier.

    ``forward(x)`` returns the class logits only; ``segment``, ``attention_maps`` and ``predict_masks`` give the
    rest. Training adds ``segmentation = seg_weight * (soft Dice + BCE)`` (:func:`dice_bce_loss`) against
    ``batch["mask"]`` and so needs lesion masks (:class:`DataError` otherwise).

    Input size: H and W must be divisible by ``2**depth`` (plain encoder) or by the largest reduction of the used
    timm feature levels; anything else raises ValueError at construction (and in ``forward``) naming the size and
    the nearest valid sizes. Nothing is padded.

    Args:
        num_classes, in_chans, img_size: task and input (img_size: side or (H, W)).
        depth: number of downsamplings (plain encoder) or timm feature levels minus one.
        base_width: channels of the first level of the plain encoder (ignored by timm encoders).
        encoder: ``"unet"`` (plain conv blocks) or a timm model name (``features_only``, random initialisation;
            e.g. ``resnet18``, whose first level is at 1/2 resolution).
        seg_weight: weight of the segmentation loss (> 0).
        lesion_pool_grad: let the classification loss reach the segmentation through the pooling weights.
        drop_rate: dropout before the classification layer.
        pretrained: with a timm ``encoder``: ``False`` (random), ``True`` (timm's weights) or a weights file (see
            :mod:`glasszoo.models._backbones`).
        normalize: with a timm ``encoder``: ``"none"`` or ``"imagenet"`` (the standardisation pretrained weights
            expect, applied in the model).
    """

    explanation_kinds = ("heatmap",)
    requires = ("masks",)
    segments = True

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int | tuple[int, int] = 64, depth: int = 3,
                 base_width: int = 16, encoder: str = "unet", seg_weight: float = 1.0, lesion_pool_grad: bool = False,
                 drop_rate: float = 0.0, pretrained: bool | str = False, normalize: str = "none") -> None:
        super().__init__(num_classes, in_chans, img_size)
        if int(depth) != depth or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        if not seg_weight > 0:
            raise ValueError(f"seg_weight must be > 0 (the classifier pools inside the segmentation), got {seg_weight}")
        self.depth = int(depth)
        self.encoder_name = encoder
        self.seg_weight = float(seg_weight)
        self.lesion_pool_grad = bool(lesion_pool_grad)
        self.pretrained = pretrained
        self.encoder = _make_encoder(encoder, in_chans, self.depth, base_width, pretrained=pretrained,
                                     normalize=normalize)
        ch, red = self.encoder.channels, self.encoder.reductions
        self.size_factor = int(max(red))
        self._check(self.img_size)
        self.gates = nn.ModuleList(
            AttentionGate(ch[i], ch[i + 1], max(1, ch[i] // 2), subsample=2 if red[i + 1] >= 2 * red[i] else 1)
            for i in range(self.depth))
        self.decoder = nn.ModuleList(conv_block(ch[i + 1] + ch[i], ch[i]) for i in range(self.depth))
        self.seg_head = nn.Conv2d(ch[0], 1, kernel_size=1)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(ch[0] + 2 * ch[-1] + 1, num_classes)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def _check(self, size: tuple[int, int]) -> None:
        why = (f"2**depth with depth={self.depth}" if self.encoder_name == "unet"
               else f"the largest reduction of the {self.encoder_name} feature levels used at depth={self.depth}")
        check_input_size(size, self.size_factor, "attention_unet", why)

    # ------------------------------------------------------------------ the network
    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(class logits [N, K], segmentation logits [N, 1, H, W], gate maps [N, h_i, w_i] finest first)."""
        self._check(tuple(x.shape[-2:]))
        feats = self.encoder(x)
        d = feats[-1]
        alphas: list[torch.Tensor] = []
        for i in reversed(range(self.depth)):
            skip = self.gates[i](feats[i], d)
            alphas.insert(0, self.gates[i].last_alpha[:, 0])
            up = F.interpolate(d, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            d = self.decoder[i](torch.cat([up, skip], dim=1))
        seg_low = self.seg_head(d)
        seg = seg_low
        if seg.shape[-2:] != x.shape[-2:]:
            seg = F.interpolate(seg_low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self._classify(d, feats[-1], seg_low), seg, alphas

    def _classify(self, last: torch.Tensor, bottleneck: torch.Tensor, seg_low: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(seg_low.float()).to(last.dtype)
        if not self.lesion_pool_grad:
            w = w.detach()
        w_b = F.adaptive_avg_pool2d(w, bottleneck.shape[-2:])
        z = torch.cat([_weighted_mean(last, w), _weighted_mean(bottleneck, w_b), bottleneck.mean(dim=(2, 3)),
                       w.mean(dim=(2, 3))], dim=1)
        return self.classifier(self.dropout(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, seg, _ = self._run(x)
        # kept for extra_losses of this very batch (training_step calls model(x), then extra_losses(batch, logits))
        self._cache = (logits, seg) if self.training else None
        return logits

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Lesion logits [N, 1, H, W] (input size)."""
        return self._run(x)[1]

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The gates' coefficients for x, finest level first: one detached [N, h_i, w_i] per skip connection, on
        the grid of that skip (h_0 = H for the plain encoder)."""
        return self._run(x)[2]

    def extra_losses(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """``segmentation``: ``seg_weight * (soft Dice + BCE)`` of the lesion logits against ``batch["mask"]``.

        Uses the segmentation of the forward pass that produced ``logits`` (recognised by identity); recomputes it
        from ``batch["image"]`` otherwise. Raises :class:`DataError` when the batch has no mask.
        """
        if batch.get("mask") is None:
            self._cache = None
            raise DataError("attention_unet needs lesion masks; the data set has none — use attention_classifier")
        cache, self._cache = self._cache, None
        seg = cache[1] if cache is not None and cache[0] is logits else self.segment(batch["image"])
        return {"segmentation": self.seg_weight * dice_bce_loss(seg, batch["mask"])}

    # ------------------------------------------------------------------ predictions and explanations
    def predict_masks(self, x: np.ndarray | torch.Tensor, threshold: float = 0.5, batch_size: int = 64) -> np.ndarray:
        """Predicted lesion masks uint8 [N, H, W]: ``sigmoid(lesion logits) > threshold``."""
        out = batched_no_grad(self, x, batch_size, lambda xb: (torch.sigmoid(self.segment(xb)[:, 0]) > threshold))
        if not out:
            return np.zeros((0, *self.img_size), np.uint8)
        return torch.cat(out).cpu().numpy().astype(np.uint8)

    def explain(self, x: np.ndarray | torch.Tensor, target: np.ndarray | None = None,
                case_ids: np.ndarray | None = None, batch_size: int = 64, **kwargs: Any) -> list[Heatmap]:
        """``[Heatmap(method="attention"), Heatmap(method="segmentation")]``, both [N, H, W] in [0, 1].

        The attention heatmap is the product of all gates' maps, upsampled to the input and normalised per image to
        maximum 1 (:func:`combine_gate_maps`: a pixel is relevant only if every gate passes it); the segmentation
        heatmap is ``sigmoid(lesion logits)``, the soft lesion the classifier pools over. Both are class-agnostic:
        ``target`` (default: the predicted class) is only recorded.
        """
        rows = batched_no_grad(self, x, batch_size, self._run)
        att, seg, tgt = [], [], []
        start = 0
        for logits, s, alphas in rows:
            att.append(combine_gate_maps(alphas, tuple(s.shape[-2:])).cpu().numpy())
            seg.append(torch.sigmoid(s[:, 0].float()).cpu().numpy())
            tgt.append(_targets(logits, target, start))
            start += len(logits)
        h, w = self.img_size if not rows else seg[0].shape[-2:]
        att_m = np.concatenate(att) if att else np.zeros((0, h, w), np.float32)
        seg_m = np.concatenate(seg) if seg else np.zeros((0, h, w), np.float32)
        targets = np.concatenate(tgt) if tgt else np.zeros(0, np.int64)
        return [Heatmap(maps=att_m, method="attention", target=targets, case_ids=case_ids),
                Heatmap(maps=seg_m, method="segmentation", target=targets, case_ids=case_ids)]


# --------------------------------------------------------------------------------------------------------------------
# Attention-gated classifier
# --------------------------------------------------------------------------------------------------------------------


@register_model("attention_classifier", family="attention", paper=PAPER_AGN,
                test_kwargs={"depth": 2, "base_width": 8})
class AttentionGatedClassifier(ImageModel):
    """Attention-gated CNN classifier whose gates explain it.

    Schlemper et al., "Attention gated networks: Learning to leverage salient regions in medical images", Medical
    Image Analysis 53, 2019 (the grid-attention SonoNet). A CNN encoder (plain conv-BN-ReLU x 2 blocks with
    ``depth`` max-poolings, or a timm encoder) gives feature maps at ``depth + 1`` levels. The two levels before
    the coarsest (``depth - 2`` and ``depth - 1``) are gated by grid attention gates (:class:`AttentionGate` with 1x1
    ``W_x``, as in the paper's classifier) whose gating signal is the coarsest feature map. Each gated map is pooled
    by its attention, ``sum_ij alpha_ij x_ij / sum_ij alpha_ij`` (the spatial sum of the gated map with the
    attention normalised to sum 1, as the paper's normalised "mean" attention), and fed to its own linear
    classifier; a third classifier reads the global average pool of the coarsest map.

    Aggregation of the heads (``aggregation``, the paper's strategies):

    * ``"mean"`` (default): the final logits are the mean of the per-head logits; with ``deep_supervision > 0``
      every head is also trained on its own cross-entropy (the paper's deep supervision), so each gate's classifier
      is a classifier in its own right;
    * ``"ft"``: a learned linear combination of the concatenated per-head logits (the paper's fine-tuned
      aggregation; deep supervision as above);
    * ``"concat"``: one linear classifier on the concatenated pooled features (no per-head logits, no deep
      supervision).

    Optional attention supervision (``gate_supervision > 0``): each gate's coefficients are trained towards the
    lesion mask (binary cross-entropy of ``alpha`` against the share of each gate cell covered by the lesion), so the
    locations the heads pool are the lesion's; masks are then needed. Without it the gates learn from the class
    loss alone and may pool anything that separates the classes.

    Optional multi-task (``seg_weight > 0``): a light segmentation head (1x1 convolution on the two gated maps,
    the coarser upsampled to the finer) predicts the lesion, trained by ``seg_weight * (soft Dice + BCE)``; its
    sigmoid then weights a lesion-pooled copy of the coarsest features (plus the lesion area fraction), an extra
    head (detached weights unless ``lesion_pool_grad``). Batches then need masks (:class:`DataError` otherwise).
    With ``seg_weight = 0`` (default) the model needs no masks.

    Any input size with H, W >= 2**depth (plain encoder; poolings round up) is accepted.

    Args:
        num_classes, in_chans, img_size: task and input.
        depth: poolings of the plain encoder (>= 2), or timm feature levels minus one.
        base_width: channels of the first level of the plain encoder.
        encoder: ``"unet"`` (plain conv blocks) or a timm model name.
        aggregation: ``"mean"``, ``"ft"`` or ``"concat"``.
        deep_supervision: weight of the mean per-head cross-entropy (``"mean"`` / ``"ft"``); 0 disables it.
        seg_weight: weight of the optional segmentation loss (0: no segmentation head).
        lesion_pool_grad: let the classification loss reach the segmentation through the pooling weights.
        gate_supervision: weight of the gates' attention supervision against the lesion masks (0: none).
        drop_rate: dropout before the classifiers.
        pretrained: with a timm ``encoder``: ``False`` (random), ``True`` (timm's weights) or a weights file (see
            :mod:`glasszoo.models._backbones`).
        normalize: with a timm ``encoder``: ``"none"`` or ``"imagenet"`` (the standardisation pretrained weights
            expect, applied in the model).
    """

    explanation_kinds = ("heatmap",)

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int | tuple[int, int] = 28, depth: int = 3,
                 base_width: int = 16, encoder: str = "unet", aggregation: str = "mean",
                 deep_supervision: float = 1.0, seg_weight: float = 0.0, lesion_pool_grad: bool = False,
                 gate_supervision: float = 0.0, drop_rate: float = 0.0, pretrained: bool | str = False,
                 normalize: str = "none") -> None:
        super().__init__(num_classes, in_chans, img_size)
        if int(depth) != depth or depth < 2:
            raise ValueError(f"depth must be an integer >= 2 (two gated levels below the gating level), got {depth!r}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if seg_weight < 0 or deep_supervision < 0 or gate_supervision < 0:
            raise ValueError("seg_weight, deep_supervision and gate_supervision must be >= 0")
        self.depth = int(depth)
        self.encoder_name = encoder
        self.aggregation = aggregation
        self.deep_supervision = float(deep_supervision) if aggregation != "concat" else 0.0
        self.seg_weight = float(seg_weight)
        self.gate_supervision = float(gate_supervision)
        self.lesion_pool_grad = bool(lesion_pool_grad)
        self.pretrained = pretrained
        self.encoder = _make_encoder(encoder, in_chans, self.depth, base_width, ceil_mode=True, pretrained=pretrained,
                                     normalize=normalize)
        ch = self.encoder.channels
        min_side = 2 ** self.depth if encoder == "unet" else int(max(self.encoder.reductions))
        if min(self.img_size) < min_side:
            raise ValueError(f"attention_classifier: input size {self.img_size[0]}x{self.img_size[1]} is too small "
                             f"for depth={self.depth}: H and W must be >= {min_side}")
        self.gate_levels = (self.depth - 2, self.depth - 1)
        self.gates = nn.ModuleList(AttentionGate(ch[lv], ch[-1], max(1, ch[lv] // 2), subsample=1)
                                   for lv in self.gate_levels)
        head_dims = [ch[lv] for lv in self.gate_levels] + [ch[-1]]
        if self.seg_weight > 0:
            self.seg_head = nn.Conv2d(sum(ch[lv] for lv in self.gate_levels), 1, kernel_size=1)
            head_dims.append(ch[-1] + 1)
        self.dropout = nn.Dropout(drop_rate)
        if aggregation == "concat":
            self.classifier = nn.Linear(sum(head_dims), num_classes)
        else:
            self.heads = nn.ModuleList(nn.Linear(d, num_classes) for d in head_dims)
            if aggregation == "ft":
                self.combine = nn.Linear(num_classes * len(head_dims), num_classes)
        self._cache: tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None] | None = None

    @property
    def head_names(self) -> list[str]:
        """Names of the pooled evidence heads, in aggregation order."""
        names = [f"gate_level{lv}" for lv in self.gate_levels] + ["global"]
        return names + (["lesion"] if self.seg_weight > 0 else [])

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None,
                                               list[torch.Tensor], list[torch.Tensor]]:
        """(logits [N, K], per-head logits, segmentation logits [N, 1, H, W] or None, gate maps [N, 1, h_i, w_i]
        (with gradient), pooling weights of every pooled head [N, h, w], each summing to 1 per image)."""
        feats = self.encoder(x)
        g = feats[-1]
        gated, alphas, pooled, weights = [], [], [], []
        for gate, lv in zip(self.gates, self.gate_levels):
            alpha = gate.coefficients(feats[lv], g)
            gate.last_alpha = alpha.detach()
            gated.append(alpha * feats[lv])
            alphas.append(alpha)
            pooled.append(_weighted_mean(feats[lv], alpha))  # = sum(alpha x) / sum(alpha)
            weights.append(_normalised(alpha.detach()))
        pooled.append(g.mean(dim=(2, 3)))
        weights.append(_normalised(torch.ones_like(g[:, :1])))
        seg = None
        if self.seg_weight > 0:
            fine = gated[0].shape[-2:]
            both = torch.cat([gated[0], F.interpolate(gated[1], size=fine, mode="bilinear", align_corners=False)], 1)
            seg_low = self.seg_head(both)
            w = torch.sigmoid(seg_low.float()).to(g.dtype)
            w = w if self.lesion_pool_grad else w.detach()
            w_g = F.adaptive_avg_pool2d(w, g.shape[-2:])
            pooled.append(torch.cat([_weighted_mean(g, w_g), w.mean(dim=(2, 3))], dim=1))
            weights.append(_normalised(w_g.detach()))
            seg = F.interpolate(seg_low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        pooled = [self.dropout(p) for p in pooled]
        if self.aggregation == "concat":
            return self.classifier(torch.cat(pooled, 1)), [], seg, alphas, weights
        head_logits = [head(p) for head, p in zip(self.heads, pooled)]
        if self.aggregation == "ft":
            logits = self.combine(torch.cat(head_logits, 1))
        else:
            logits = torch.stack(head_logits, 0).mean(0)
        return logits, head_logits, seg, alphas, weights

    def decision_map(self, weights: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """The map the decision is pooled with [N, H, W], scaled to maximum 1 per image.

        Every head reads its features pooled with weights that sum to 1 over its grid (a gate's normalised
        attention ``alpha / sum(alpha)``, the global head's uniform ``1 / (h w)``, the lesion head's normalised soft
        lesion). Each is spread over the input pixels (bilinear upsampling, renormalised to sum 1), so its value is
        the share of that head's pooled evidence a pixel carries; the map is their mean over the heads, which is
        exactly how the ``"mean"`` aggregation weighs the heads' logits (an equal-weight reading of ``"ft"`` and
        ``"concat"``). The uniform global head adds a constant: it moves no peak but lowers the mass in the lesion by
        its share, as it lowers the lesion's share of the decision.
        """
        up = [_normalised(F.interpolate(w[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False))
              for w in weights]
        out = torch.stack(up, 0).mean(0)
        return out / out.flatten(1).amax(dim=1).clamp_min(1e-30).view(-1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, head_logits, seg, alphas, _ = self._run(x)
        self._cache = (logits, head_logits, seg, alphas) if self.training else None
        return logits

    def head_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each evidence head's own logits [N, K] by name (empty for ``aggregation="concat"``)."""
        return dict(zip(self.head_names, self._run(x)[1]))

    @classmethod
    def requirements(cls, params: dict) -> tuple[str, ...]:
        """Lesion masks only when the segmentation head or the gate supervision trains."""
        supervised = float(params.get("seg_weight", 0.0)) > 0 or float(params.get("gate_supervision", 0.0)) > 0
        return ("masks",) if supervised else ()

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Lesion logits [N, 1, H, W]; only with ``seg_weight > 0``."""
        if self.seg_weight <= 0:
            raise RuntimeError("this attention_classifier has no segmentation head (seg_weight=0)")
        return self._run(x)[2]

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The two gates' coefficients (finer level first), each detached [N, h_i, w_i] on its level's grid."""
        return [a.detach()[:, 0] for a in self._run(x)[3]]

    def extra_losses(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """``deep_supervision``: ``deep_supervision *`` mean per-head cross-entropy (unweighted by class);
        ``segmentation``: ``seg_weight * (soft Dice + BCE)`` when ``seg_weight > 0``; ``gate_supervision``:
        ``gate_supervision *`` the mean over the gates of :func:`gate_supervision_loss` when ``gate_supervision > 0``
        (both need ``batch["mask"]``)."""
        cache, self._cache = self._cache, None
        masked = self.seg_weight > 0 or self.gate_supervision > 0
        if masked and batch.get("mask") is None:
            on = " and ".join(f"{k} > 0" for k, v in (("seg_weight", self.seg_weight),
                                                      ("gate_supervision", self.gate_supervision)) if v > 0)
            raise DataError(f"attention_classifier with {on} needs lesion masks; the data set has none — set it to 0")
        if not (masked or self.deep_supervision > 0):
            return {}
        if cache is not None and cache[0] is logits:
            _, heads, seg, alphas = cache
        else:
            _, heads, seg, alphas, _ = self._run(batch["image"])
        terms = {}
        if self.deep_supervision > 0 and heads:
            ce = torch.stack([F.cross_entropy(h.float(), batch["label"]) for h in heads]).mean()
            terms["deep_supervision"] = self.deep_supervision * ce
        if self.seg_weight > 0:
            terms["segmentation"] = self.seg_weight * dice_bce_loss(seg, batch["mask"])
        if self.gate_supervision > 0:
            loss = torch.stack([gate_supervision_loss(a, batch["mask"]) for a in alphas]).mean()
            terms["gate_supervision"] = self.gate_supervision * loss
        return terms

    def explain(self, x: np.ndarray | torch.Tensor, target: np.ndarray | None = None,
                case_ids: np.ndarray | None = None, batch_size: int = 64, **kwargs: Any) -> list[Heatmap]:
        """``[Heatmap(method="attention")]`` -- the map the decision is pooled with (:meth:`decision_map`: per input
        pixel, its mean share of the heads' pooled evidence, scaled to maximum 1 per image) -- plus
        ``Heatmap(method="segmentation")`` (sigmoid of the lesion logits) when the model has a segmentation head.
        Class-agnostic: ``target`` (default: the predicted class) is only recorded."""
        rows = batched_no_grad(self, x, batch_size, lambda xb: (self._run(xb), tuple(xb.shape[-2:])))
        att, seg, tgt = [], [], []
        start = 0
        for (logits, _, s, _, weights), size in rows:
            att.append(self.decision_map(weights, size).cpu().numpy())
            if s is not None:
                seg.append(torch.sigmoid(s[:, 0].float()).cpu().numpy())
            tgt.append(_targets(logits, target, start))
            start += len(logits)
        targets = np.concatenate(tgt) if tgt else np.zeros(0, np.int64)
        out = [Heatmap(maps=np.concatenate(att) if att else np.zeros((0, *self.img_size), np.float32),
                       method="attention", target=targets, case_ids=case_ids)]
        if self.seg_weight > 0:
            out.append(Heatmap(maps=np.concatenate(seg) if seg else np.zeros((0, *self.img_size), np.float32),
                               method="segmentation", target=targets, case_ids=case_ids))
        return out


# --------------------------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------------------------

"""PIP-Net: patch-based intuitive prototypes, learned self-supervised, scored by a sparse non-negative sheet."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from glasszoo.models._backbones import attach_input_prep, effective_size
from glasszoo.models._prototypes import (
    eval_frozen,
    fraction_on_lesion,
    freeze_parts,
    precise_batchnorm,
    rank_enabled,
    refit_without,
    switch_off,
)
from glasszoo.models._registry import register_model
from glasszoo.models.base import ImageModel, as_tensor, batched_no_grad
from glasszoo.models.errors import ConfigError, DataError
from glasszoo.models.explanations import GlobalExplanation, Heatmap, PrototypeEvidence, PrototypeMatch
from glasszoo.models.protopnet import cell_box, feature_backbone

PAPER = ('Nauta et al., "PIP-Net: Patch-Based Intuitive Prototypes for Interpretable Image Classification", '
         'CVPR 2023')
STAGES = ("pretrain", "finetune", "joint")
# which parts train in each stage (None: outside a scheduled fit, everything)
_TRAINABLE = {
    "pretrain": ("features", "add_on"),
    "finetune": ("scoring",),
    "joint": ("features", "add_on", "scoring"),
    None: ("features", "add_on", "scoring"),
}


def alignment_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """PIP-Net's alignment loss: ``-log(a . b)`` per patch, averaged over every patch of every image.

    ``a`` and ``b`` are the prototype assignments [N, P, h, w] of corresponding patches of two views (each a softmax
    over the P prototype channels, so ``a . b`` is in [0, 1]). It is 0 only when both views assign a patch to the same
    single prototype with certainty (identical one-hot vectors); identical but uncertain assignments still pay
    (``-log(sum_p a_p^2)``, e.g. ``log 2`` for two prototypes at 0.5 each).
    """
    dot = (a.float() * b.float()).sum(dim=1)  # [N, h, w]
    return -torch.log(dot + eps).mean()


def tanh_loss(presence: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """PIP-Net's anti-collapse ("tanh") loss ``-mean_p log(tanh(sum_n presence[n, p]) + eps)`` of presences [N, P].

    Close to 0 when every prototype is clearly present somewhere in the batch (the tanh saturates), large when a
    prototype is absent from every image: it keeps the alignment loss from assigning every patch to one prototype.
    """
    return -torch.log(torch.tanh(presence.float().sum(dim=0)) + eps).mean()


def outside_lesion_loss(assignments: torch.Tensor, masks: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Mask guidance for PIP-Net, after IAIA-BL's fine-annotation loss (Barnett et al., Nature Machine Intelligence
    2021): a prototype pays for being present off the lesion, in proportion to how much it counts.

    With ``a_ip`` prototype p's assignment map on image i's patch grid [h, w] and ``o_i`` the share of each cell
    that lies outside the lesion (1 minus the mask's mean over the cell), the loss is
    ``mean_i sum_p r_p ||o_i * a_ip||_2`` over the images with a non-empty mask, where ``r_p`` is the prototype's
    largest scoring-sheet weight over the classes (``relevance``, [P], not detached). PIP-Net's prototypes belong to
    no class, so IAIA-BL's other-class term has no counterpart; a prototype with weight 0 is free to stand for the
    background (every patch must be assigned to some prototype), and one that keeps firing off the lesion is pushed
    either off the background or out of the sheet.

    Args:
        assignments: [N, P, h, w] prototype assignments (softmax over P per patch).
        masks: [N, H, W] lesion masks (H, W multiples of h, w; 1 on the lesion).
        relevance: [P] non-negative weights of the prototypes.
    """
    m = masks.float().clamp(0, 1)
    annotated = m.flatten(1).amax(dim=1) > 0
    if not bool(annotated.any()):
        return assignments.sum() * 0.0
    outside = 1.0 - F.adaptive_avg_pool2d(m[:, None], assignments.shape[-2:])  # [N, 1, h, w]
    per_prototype = (assignments.float() * outside).flatten(2).norm(dim=2)  # [N, P]
    per_image = (per_prototype * relevance.float()[None]).sum(dim=1)
    return per_image[annotated].mean()


def dihedral(t: torch.Tensor, code: int, inverse: bool = False) -> torch.Tensor:
    """One of the 8 symmetries of the square on the last two dimensions of ``t`` (``code`` 0-7: ``code % 4`` quarter
    turns after a horizontal flip when ``code >= 4``), or with ``inverse`` its inverse. Codes 0, 2, 4 and 6 (no or
    half turns) keep the shape of a non-square grid."""
    k, flip = code % 4, code >= 4
    if not inverse:
        t = t.flip(-1) if flip else t
        return torch.rot90(t, k, dims=(-2, -1)) if k else t
    t = torch.rot90(t, -k, dims=(-2, -1)) if k else t
    return t.flip(-1) if flip else t


class ScoringSheet(nn.Module):
    """The bias-free linear layer [C, P] from prototype presences to class scores, with non-negative weights.

    The weight is kept non-negative by *projection*: :meth:`project_` clamps it to >= 0 after each optimiser step
    (the schedule's ``on_train_batch_end``). The forward pass uses a straight-through clamp (the value of
    ``max(w, 0)``, the gradient of ``w``), so the scores never see a negative weight even without the projection, and
    a weight at exactly 0 still receives its gradient.
    """

    def __init__(self, n_prototypes: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, n_prototypes))
        with torch.no_grad():  # the paper's initialisation: N(1, 0.1), every prototype voting for every class
            self.weight.normal_(1.0, 0.1).clamp_(min=0.0)

    def nonneg_weight(self) -> torch.Tensor:
        w = self.weight
        return w + (w.clamp_min(0.0) - w).detach()

    def forward(self, presence: torch.Tensor) -> torch.Tensor:
        return F.linear(presence, self.nonneg_weight().to(presence.dtype))

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp the weight to >= 0 in place (the projection step of projected gradient descent)."""
        self.weight.clamp_(min=0.0)


@register_model("pipnet", family="prototype", paper=PAPER,
                test_kwargs={"backbone": "resnet18", "feature_stage": 2, "n_prototypes": 8, "gallery_k": 3})
class PIPNet(ImageModel):
    """PIP-Net: an image is scored by which learned prototypical parts are present in it, by a sparse sheet of points.

    Nauta et al., "PIP-Net: Patch-Based Intuitive Prototypes for Interpretable Image Classification", CVPR 2023.
    A timm backbone (cut at ``feature_stage``) and a 1x1 convolution map the image to a grid of patches with
    ``n_prototypes`` channels; a softmax over those channels gives each patch's *prototype assignment* (it sums to 1
    over the prototypes), and the max over the grid gives each prototype's *presence* in [0, 1] [N, P]. A bias-free
    scoring sheet W [C, P] with non-negative weights turns presences into class scores, ``logits = presence @ W.T``:
    a prototype can only add evidence, never subtract it, and the L1 penalty on W makes most of it zero. In eval mode
    (with ``threshold_scores``, the default) presences below ``presence_threshold`` (the paper's 0.1) count as absent
    (set to 0) before scoring, as in the paper's inference; so a case in which no prototype with a non-zero weight
    is present gets all-zero logits, and the model *abstains* (:meth:`abstains`; the paper's out-of-distribution
    signal).

    Training (driven by :meth:`training_callbacks`) follows the paper's stages: ``pretrain_epochs`` of
    self-supervised pretraining (the scoring sheet frozen, no cross-entropy): the *alignment loss* makes the
    assignments of corresponding patches of two augmented views of each image agree, the *tanh loss* keeps every
    prototype present somewhere in each batch; then ``finetune_epochs`` training only the scoring sheet by
    cross-entropy (+ L1); then ``joint_epochs`` training everything with alignment + tanh + cross-entropy + L1.
    The pretraining alignment weight ramps up linearly over its epochs, as in the paper.

    The two views are made inside the model from the batch (:meth:`second_view`): view 1 is the batch as the data
    pipeline gives it (its augmentation is the geometric part shared by both views, as the paper's first transform);
    view 2 is view 1 with its own intensity jitter (contrast, brightness, gamma, Gaussian noise) and a random symmetry
    of the square (flips and quarter turns, half turns only for non-square images), whose inverse is applied to view
    2's assignment grid, so patch (i, j) of both grids shows the same part of the image.

    Non-negativity, and why not the paper's way: the reference code computes the scores with ``relu(W)`` and, after
    every batch, sets ``W := max(W - 1e-3, 0)``. Both kill learning: ``relu``'s gradient at 0 is 0, so a weight
    clamped to 0 never moves again, and the fixed decrement (applied per batch, also in its test loop: PIP-Net GitHub
    issue #3) shrinks every weight by 1e-3 a step whatever its gradient and the learning rate. Here the weight is
    projected instead: the schedule's ``on_train_batch_end`` clamps it to >= 0 after each optimiser step (projected
    gradient descent), the forward pass uses a straight-through clamp whose gradient is the identity (so a weight at
    0 that the gradient pushes up does grow again), and sparsity comes from an explicit L1 penalty (``l1_weight``),
    whose weights reach exactly 0 by the projection. A parametrisation (``softplus`` of a raw weight) would never
    give exact zeros, ``relu`` of one would have the dead-weight problem.

    Deviation: the paper feeds ``log(1 + scores^2)`` to the softmax during training (a normalisation multiplier of
    2) and the raw scores at inference; here the shared pipeline's cross-entropy reads the logits themselves, so the
    trained and the explained quantity are one and the same: contributions (presence x weight) add up to the logit.

    PIP-Net has no push: prototypes are not projected onto training patches. Instead, after epochs whose weights
    the pipeline may keep, the schedule records per prototype its ``gallery_k`` most present training patches (one
    per image: the training images where it is most present and the cell there): the top one is the prototype's
    ``source_case_id`` / ``source_box`` in explanations, all of them are in :meth:`explain_global`.

    Args:
        num_classes: number of classes.
        in_chans: 1 or 3 input channels.
        img_size: input side (or (H, W)).
        backbone: timm model name (trained from scratch).
        stem: ``auto``, ``standard``, ``small`` or ``nopool`` (ResNet-style backbones; see ``adapt_stem``).
        feature_stage: timm feature stage the prototypes live on (ResNet: 2 = stride 8, 3 = stride 16 with the
            standard stem; 2 gives a 6x6 grid at 48 px; the paper's ConvNeXt cut has stride 8).
        n_prototypes: P, the channels of the 1x1 convolution; 0 (default): as many as the backbone stage has (the
            paper's choice: 768 for its ConvNeXt). Not many fewer: the tanh loss is satisfied by a prototype whose
            presence is about ``1 / P`` in every image of the batch (its sum over 64 images saturates the tanh when
            ``P`` is small), so with few prototypes it no longer prevents a collapse onto two or three of them (on
            the quickstart data 32 prototypes collapsed onto 2, "tissue" and "border", and the model never learnt).
        pretrain_epochs: self-supervised epochs (alignment + tanh; scoring sheet frozen).
        finetune_epochs: epochs training only the scoring sheet (cross-entropy + L1; the paper: 3).
        joint_epochs: epochs training everything (alignment + tanh + cross-entropy + L1).
        align_weight: weight of the alignment loss in the joint epochs (the paper's 5 on a symmetric, half-gradient
            form, against 2 on its cross-entropy: 1.25 here against the pipeline's cross-entropy weight 1).
        tanh_weight: weight of the tanh loss in the joint epochs (paper: 2 against cross-entropy 2, so 1 here).
        pretrain_align_weight: alignment weight of the last pretraining epoch (epoch e of E gets ``e / E`` of it;
            paper: 1 on the symmetric form, 0.5 here).
        pretrain_tanh_weight: tanh weight in pretraining (paper: 5).
        l1_weight: weight of the L1 penalty on the scoring sheet (added to the loss while the sheet trains).
        features_lr_ratio: backbone learning rate as a fraction of the configured lr.
        scoring_lr_ratio: scoring-sheet learning rate as a fraction of the configured lr (the paper gives the sheet
            a much larger rate than the network: its weights start at 1 and must travel to 0 or grow).
        presence_threshold: in eval mode presences below it count as absent (paper: 0.1); also the abstention
            threshold.
        relevance_threshold: a prototype is *relevant* when its largest weight over classes exceeds it
            (:meth:`relevant_prototypes`).
        jitter: strength of view 2's intensity jitter (contrast and gamma factors within ``1 +- jitter``, brightness
            shift within ``+- jitter / 2``).
        noise_std: standard deviation of view 2's Gaussian noise.
        view_symmetry: whether view 2 also gets a random flip / quarter turn (undone on its grid).
        gallery_k: training patches recorded per prototype.
        batch_size: images per batch for the recording of sources, the metrics and :meth:`abstains`.
        threshold_scores: score eval-mode presences below ``presence_threshold`` as 0 (the paper's inference; an
            abstaining case then has all-zero logits). False scores the raw presences (graded evidence; abstention
            is still flagged by :meth:`abstains`).
        recalibrate_bn: before each validation of a selectable epoch, re-estimate the backbone's BatchNorm
            statistics on the training split (see :meth:`recalibrate_batchnorm`; a deviation from the paper).
        bn_samples: at most this many training images (evenly spaced) for that re-estimation.
        fine_annotation_weight: weight of the mask guidance (:func:`outside_lesion_loss`, after IAIA-BL's
            fine-annotation loss) while the scoring sheet trains (fine-tuning and joint epochs): a prototype pays
            for its presence off the lesion in proportion to its weight. 0 (default) switches it off; above 0 the
            model requires lesion masks.
        output_stride: 32 (default: the backbone as designed) or 16 / 8: the later stages dilated instead of
            strided (timm), so a deeper stage keeps a finer patch grid (ResNet stage 3 at 48 px: 6x6 at 8 instead of
            3x3); see :func:`glasszoo.models.protopnet.feature_backbone`.
        pretrained: ``False`` (random initialisation), ``True`` (timm's own weights; offline they must be in the
            Hugging Face cache) or the path of a weights file (see :mod:`glasszoo.models._backbones`).
        normalize: ``"none"`` or ``"imagenet"``: the standardisation pretrained weights expect, applied in the model.
        input_size: resize inputs to this side inside the model (e.g. 224 for weights trained there); None: as given.
    """

    explanation_kinds = ("prototype_evidence", "heatmap")

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int | tuple[int, int] = 28,
                 backbone: str = "resnet18", stem: str = "auto", feature_stage: int = 2, n_prototypes: int = 0,
                 pretrain_epochs: int = 3, finetune_epochs: int = 1, joint_epochs: int = 10,
                 align_weight: float = 1.25, tanh_weight: float = 1.0, pretrain_align_weight: float = 0.5,
                 pretrain_tanh_weight: float = 5.0, l1_weight: float = 1e-3, features_lr_ratio: float = 1.0,
                 scoring_lr_ratio: float = 10.0, presence_threshold: float = 0.1, relevance_threshold: float = 1e-3,
                 jitter: float = 0.2, noise_std: float = 0.03, view_symmetry: bool = True, gallery_k: int = 5,
                 batch_size: int = 256, threshold_scores: bool = True, recalibrate_bn: bool = True,
                 bn_samples: int = 512, fine_annotation_weight: float = 0.0, output_stride: int = 32,
                 pretrained: bool | str = False, normalize: str = "none", input_size: int | None = None) -> None:
        super().__init__(num_classes, in_chans, img_size)
        if fine_annotation_weight < 0:
            raise ValueError(f"fine_annotation_weight must be >= 0, got {fine_annotation_weight}")
        if n_prototypes == 1 or n_prototypes < 0:
            raise ValueError(f"n_prototypes must be 0 (the backbone's channels) or >= 2 (a softmax over one channel "
                             f"is constant), got {n_prototypes}")
        if min(pretrain_epochs, finetune_epochs, joint_epochs) < 0:
            raise ValueError("pretrain_epochs, finetune_epochs and joint_epochs must be >= 0")
        if finetune_epochs + joint_epochs < 1:
            raise ValueError("finetune_epochs + joint_epochs must be >= 1: only they train the scoring sheet")
        if not 0.0 <= presence_threshold < 1.0:
            raise ValueError(f"presence_threshold must be in [0, 1), got {presence_threshold}")
        if relevance_threshold < 0:
            raise ValueError(f"relevance_threshold must be >= 0, got {relevance_threshold}")
        if bn_samples < 2:
            raise ValueError(f"bn_samples must be >= 2, got {bn_samples}")
        if gallery_k < 1:
            raise ValueError(f"gallery_k must be >= 1, got {gallery_k}")
        if min(align_weight, tanh_weight, pretrain_align_weight, pretrain_tanh_weight, l1_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        self.backbone_name = backbone
        self.pretrained = pretrained
        side = effective_size(self.img_size, input_size)  # what the backbone sees
        self.features, self.stem, channels = feature_backbone(backbone, in_chans, side, stem, feature_stage,
                                                              output_stride, pretrained)
        self.input_prep = attach_input_prep(self.features, in_chans, normalize, input_size)
        self.feature_stage = feature_stage
        n_prototypes = int(n_prototypes) or channels
        self.add_on = nn.Conv2d(channels, n_prototypes, kernel_size=1)
        nn.init.xavier_normal_(self.add_on.weight)
        nn.init.zeros_(self.add_on.bias)
        self.scoring = ScoringSheet(n_prototypes, num_classes)
        # where each prototype is most present in the training split (buffers travel with the state dict; case ids
        # in the extra state)
        k = int(gallery_k)
        self.register_buffer("source_row", torch.full((n_prototypes,), -1, dtype=torch.long))
        self.register_buffer("source_box", torch.zeros(n_prototypes, 4, dtype=torch.long))
        self.register_buffer("source_presence", torch.zeros(n_prototypes))
        self.register_buffer("gallery_row", torch.full((n_prototypes, k), -1, dtype=torch.long))
        self.register_buffer("gallery_box", torch.zeros(n_prototypes, k, 4, dtype=torch.long))
        self.register_buffer("gallery_presence", torch.zeros(n_prototypes, k))
        self.source_case_ids: list[str] = [""] * n_prototypes
        self.gallery_case_ids: list[list[str]] = [[""] * k for _ in range(n_prototypes)]
        self.sources_epoch = -1
        self.disabled: list[int] = []  # prototypes a reader switched off (disable_prototypes)
        self.source_images_per_second = float("nan")

        self.gallery_k = k
        self.loss_weights = {"align": float(align_weight), "tanh": float(tanh_weight),
                             "pretrain_align": float(pretrain_align_weight),
                             "pretrain_tanh": float(pretrain_tanh_weight), "l1": float(l1_weight),
                             "fine_annotation": float(fine_annotation_weight)}
        self.features_lr_ratio = float(features_lr_ratio)
        self.scoring_lr_ratio = float(scoring_lr_ratio)
        self.presence_threshold = float(presence_threshold)
        self.relevance_threshold = float(relevance_threshold)
        self.jitter = float(jitter)
        self.noise_std = float(noise_std)
        self.view_symmetry = bool(view_symmetry)
        self.batch_size = int(batch_size)
        self.threshold_scores = bool(threshold_scores)
        self.recalibrate_bn = bool(recalibrate_bn)
        self.bn_samples = int(bn_samples)
        self.schedule = ["pretrain"] * pretrain_epochs + ["finetune"] * finetune_epochs + ["joint"] * joint_epochs
        self._stage: str | None = None
        self._pretrain_progress = 1.0
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ the network
    @property
    def n_prototypes(self) -> int:
        return int(self.add_on.out_channels)

    def prototype_activation_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Prototype assignments [N, P, h, w] on the patch grid: per patch a softmax over the P prototypes (each
        prototype's presence map; no upsampling, no threshold; the caller sets eval mode / no_grad)."""
        f = self.features(x)
        f = f[-1] if isinstance(f, (list, tuple)) else f
        return torch.softmax(self.add_on(f).float(), dim=1)

    @staticmethod
    def pool(maps: torch.Tensor) -> torch.Tensor:
        """Presence scores [N, P]: the max of each prototype's map over the grid."""
        return maps.flatten(2).amax(dim=2)

    def absent_below_threshold(self, presence: torch.Tensor) -> torch.Tensor:
        """Presences with those below ``presence_threshold`` set to 0 (what eval-mode scoring uses)."""
        if self.presence_threshold <= 0:
            return presence
        return torch.where(presence >= self.presence_threshold, presence, torch.zeros_like(presence))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.prototype_activation_maps(x)
        presence = self.pool(maps)
        if not self.training and self.threshold_scores:
            presence = self.absent_below_threshold(presence)
        logits = self.scoring(presence)
        # kept for extra_losses of this very batch (Lightning's training_step calls model(x) then
        # extra_losses(batch, logits)); released there
        self._cache = (logits, maps) if self.training else None
        return logits

    def relevant_prototypes(self) -> torch.Tensor:
        """bool [P]: prototypes whose largest scoring-sheet weight over the classes exceeds ``relevance_threshold``
        (the others add nothing to any class)."""
        return self.scoring.nonneg_weight().detach().amax(dim=0) > self.relevance_threshold

    def presence_scores(self, x: np.ndarray | torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Raw presences [N, P] (before the eval threshold), in eval mode without gradients."""
        out = batched_no_grad(self, x, batch_size or self.batch_size,
                              lambda xb: self.pool(self.prototype_activation_maps(xb)))
        return torch.cat(out) if out else torch.zeros(0, self.n_prototypes, device=self.device)

    def abstains(self, x: np.ndarray | torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        """bool [N]: cases in which no relevant prototype (:meth:`relevant_prototypes`) is present, i.e. reaches
        ``presence_threshold``. Their evidence for every class is (nearly) zero: the model has nothing to say."""
        presence = self.presence_scores(x, batch_size)
        relevant = self.relevant_prototypes().to(presence.device)
        present = (presence[:, relevant] >= max(self.presence_threshold, 1e-12)).any(dim=1)
        return (~present).cpu().numpy()

    # ------------------------------------------------------------------ training losses
    def second_view(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """View 2 of a batch [N, C, H, W] in [0, 1], and per image the symmetry code (:func:`dihedral`) applied to it.

        Intensity jitter per image: contrast about the image mean and gamma within ``1 +- jitter``, brightness
        within ``+- jitter / 2``, Gaussian noise of ``noise_std``; values clipped to [0, 1]. With ``view_symmetry``
        a random flip / quarter turn (half turns only for non-square images) follows.
        """
        n = x.shape[0]
        shape = (n, 1, 1, 1)
        j = self.jitter
        v = x.float()
        if j > 0:
            contrast = 1 + j * (2 * torch.rand(shape, device=x.device) - 1)
            bright = j / 2 * (2 * torch.rand(shape, device=x.device) - 1)
            gamma = torch.exp(math.log1p(j) * (2 * torch.rand(shape, device=x.device) - 1))
            mean = v.mean(dim=(1, 2, 3), keepdim=True)
            v = ((v - mean) * contrast + mean + bright).clamp(0, 1)
            v = v.clamp_min(1e-6) ** gamma
        if self.noise_std > 0:
            v = v + self.noise_std * torch.randn_like(v)
        v = v.clamp(0, 1).to(x.dtype)
        codes = [0] * n
        if self.view_symmetry:
            allowed = torch.arange(8) if x.shape[-1] == x.shape[-2] else torch.tensor([0, 2, 4, 6])
            codes = allowed[torch.randint(len(allowed), (n,))].tolist()
            v = torch.stack([dihedral(v[i], c) for i, c in enumerate(codes)])
        return v, codes

    def view_maps(self, x: torch.Tensor) -> torch.Tensor:
        """View 2's prototype assignments [N, P, h, w], mapped back onto view 1's grid."""
        v, codes = self.second_view(x)
        maps = self.prototype_activation_maps(v)
        if not any(codes):
            return maps
        return torch.stack([dihedral(maps[i], c, inverse=True) for i, c in enumerate(codes)])

    @classmethod
    def requirements(cls, params: dict) -> tuple[str, ...]:
        """Lesion masks when the mask guidance is on (``fine_annotation_weight > 0``)."""
        return ("masks",) if float(params.get("fine_annotation_weight", 0.0)) > 0 else ()

    def stage_loss_weights(self) -> dict[str, float]:
        """The alignment, tanh, L1 and mask-guidance weights of the current stage (pretraining: the ramped alignment
        weight; the scoring sheet's L1 and the mask guidance only while the sheet trains)."""
        w = self.loss_weights
        if self._stage == "pretrain":
            return {"align": w["pretrain_align"] * self._pretrain_progress, "tanh": w["pretrain_tanh"], "l1": 0.0,
                    "fine_annotation": 0.0}
        if self._stage == "finetune":
            return {"align": 0.0, "tanh": 0.0, "l1": w["l1"], "fine_annotation": w["fine_annotation"]}
        return {"align": w["align"], "tanh": w["tanh"], "l1": w["l1"], "fine_annotation": w["fine_annotation"]}

    @property
    def task_loss_weight(self) -> float:
        """No cross-entropy while pretraining (the scoring sheet is frozen then)."""
        return 0.0 if self._stage == "pretrain" else 1.0

    def extra_losses(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted alignment loss (between the batch and its second view), tanh loss (mean of both views'), L1 of
        the scoring sheet and, with ``fine_annotation_weight > 0``, the mask guidance against ``batch["mask"]``
        (:func:`outside_lesion_loss`), with the weights of the current stage.

        Uses the assignments of the forward pass that produced ``logits`` (recognised by identity); recomputes them
        from ``batch["image"]`` when ``logits`` came from elsewhere.
        """
        cache, self._cache = self._cache, None
        weights = self.stage_loss_weights()
        out: dict[str, torch.Tensor] = {}
        if weights["align"] > 0 or weights["tanh"] > 0 or weights["fine_annotation"] > 0:
            maps1 = cache[1] if cache is not None and cache[0] is logits else \
                self.prototype_activation_maps(batch["image"])
        if weights["fine_annotation"] > 0:
            if "mask" not in batch:
                raise DataError("pipnet with fine_annotation_weight > 0 needs lesion masks; the batch has none")
            relevance = self.scoring.nonneg_weight().amax(dim=0)
            out["fine_annotation"] = weights["fine_annotation"] * outside_lesion_loss(maps1, batch["mask"], relevance)
        if weights["align"] > 0 or weights["tanh"] > 0:
            maps2 = self.view_maps(batch["image"])
            if weights["align"] > 0:
                out["align"] = weights["align"] * alignment_loss(maps1, maps2)
            if weights["tanh"] > 0:
                out["tanh"] = weights["tanh"] * (tanh_loss(self.pool(maps1)) + tanh_loss(self.pool(maps2))) / 2
        if weights["l1"] > 0:
            out["l1"] = weights["l1"] * self.scoring.nonneg_weight().sum()
        return out

    # ------------------------------------------------------------------ training stages
    @property
    def total_epochs(self) -> int:
        """Epochs the schedule needs: pretraining + scoring-sheet fine-tuning + joint epochs."""
        return len(self.schedule)

    @property
    def schedule_epochs(self) -> int:
        """The pipeline trains :attr:`total_epochs` epochs (no matching ``training.max_epochs`` needed)."""
        return self.total_epochs

    def stage_of(self, epoch: int) -> str:
        """The stage of ``epoch`` (also for epochs past the schedule: the last one's)."""
        return self.schedule[min(epoch, len(self.schedule) - 1)]

    def pretrain_progress(self, epoch: int) -> float:
        """``(e + 1) / E`` for pretraining epoch e of E: the ramp of the pretraining alignment weight."""
        n = self.schedule.count("pretrain")
        return min(1.0, (epoch + 1) / n) if n else 1.0

    def selectable_epoch(self, epoch: int) -> bool:
        """Epochs after pretraining: before, the scoring sheet has not been trained."""
        return self.stage_of(epoch) != "pretrain"

    def set_stage(self, stage: str | None, epoch: int = 0) -> None:
        """Freeze every part that does not train in ``stage`` (None: all trainable); ``epoch`` sets the pretraining
        ramp. Frozen parameters get ``requires_grad=False`` and their gradient cleared (AdamW then skips them, weight
        decay included); frozen modules stay in eval mode while the model trains (BatchNorm statistics keep)."""
        if stage not in _TRAINABLE:
            raise ValueError(f"stage must be one of {STAGES} or None, got {stage!r}")
        freeze_parts(self._parts(), _TRAINABLE[stage])
        self._stage = stage
        self._pretrain_progress = self.pretrain_progress(epoch) if stage == "pretrain" else 1.0
        self.train(self.training)

    def _parts(self) -> dict[str, list[nn.Parameter]]:
        return {"features": list(self.features.parameters()), "add_on": list(self.add_on.parameters()),
                "scoring": list(self.scoring.parameters())}

    def train(self, mode: bool = True) -> PIPNet:
        super().train(mode)
        if mode and self._stage is not None:
            eval_frozen(self, _TRAINABLE[self._stage])
        return self

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Backbone at ``lr * features_lr_ratio``, 1x1 convolution at ``lr``, scoring sheet at
        ``lr * scoring_lr_ratio`` without weight decay (the L1 term regularises it)."""
        parts = self._parts()
        spec = [("features", self.features_lr_ratio, weight_decay), ("add_on", 1.0, weight_decay),
                ("scoring", self.scoring_lr_ratio, 0.0)]
        return [{"params": parts[name], "lr": lr * ratio, "weight_decay": wd, "name": name}
                for name, ratio, wd in spec]

    def training_callbacks(self, caseset: Any) -> list:
        return [PIPNetSchedule(self, caseset)]

    def recalibrate_batchnorm(self, caseset: Any) -> int:
        """Re-estimate the backbone's BatchNorm statistics on the training split
        (:func:`glasszoo.models._prototypes.precise_batchnorm`, at most ``bn_samples`` images in batches of
        ``batch_size``): trained from scratch, the running statistics lag behind the weights, and the softmax
        assignments of eval mode are sensitive to that shift (as ProtoPNet's before its push). Returns the number of
        BatchNorm layers updated."""
        return precise_batchnorm(self, self.features, caseset, self.batch_size, self.bn_samples)

    # ------------------------------------------------------------------ where the prototypes are in the training split
    @torch.no_grad()
    def record_sources(self, caseset: Any, batch_size: int | None = None, epoch: int = -1) -> dict:
        """Find, per prototype, its ``gallery_k`` most present training images and the patch there.

        One batched pass over ``caseset.indices("train")`` (never val/test) in eval mode keeps per prototype a running
        top-k of its presence (one entry per image, at the image's most present cell; ties go to the first row and
        cell). The top one becomes the prototype's source (row, case id, box from :func:`cell_box`, presence), all of
        them its gallery. Returns ``{"images": n, "seconds": s, "images_per_second": r}``.
        """
        bs = batch_size or self.batch_size
        rows = np.asarray(caseset.indices("train"))
        if len(rows) == 0:
            raise ValueError("record_sources: the CaseSet has no training cases")
        k, n_proto, dev = self.gallery_k, self.n_prototypes, self.device
        top_val = torch.full((n_proto, 0), -1.0, device=dev)
        top_row = torch.full((n_proto, 0), -1, dtype=torch.long, device=dev)
        top_cell = torch.zeros((n_proto, 0), dtype=torch.long, device=dev)
        grid = size = None
        was_training = self.training
        self.eval()
        start = time.perf_counter()
        try:
            for i in range(0, len(rows), bs):
                r = torch.as_tensor(rows[i:i + bs], dtype=torch.long, device=dev)
                x = as_tensor(caseset.images[rows[i:i + bs]], dev)
                maps = self.prototype_activation_maps(x)  # [B, P, h, w]
                grid, size = tuple(maps.shape[-2:]), tuple(x.shape[-2:])
                best, cell = maps.flatten(2).max(dim=2)  # [B, P] (max returns the first of equal values)
                cat_val = torch.cat([top_val, best.T], dim=1)
                cat_row = torch.cat([top_row, r[None, :].expand(n_proto, -1)], dim=1)
                cat_cell = torch.cat([top_cell, cell.T], dim=1)
                keep = cat_val.argsort(dim=1, descending=True, stable=True)[:, :k]
                top_val, top_row, top_cell = cat_val.gather(1, keep), cat_row.gather(1, keep), cat_cell.gather(1, keep)
        finally:
            self.train(was_training)
        seconds = time.perf_counter() - start
        m = top_val.shape[1]  # fewer than k training images: the rest stays empty (-1)
        h, w = grid
        boxes = torch.zeros(n_proto, k, 4, dtype=torch.long)
        for j in range(n_proto):
            for q in range(m):
                c = int(top_cell[j, q])
                boxes[j, q] = torch.tensor(cell_box(c // w, c % w, grid, size))
        self.gallery_row = torch.full((n_proto, k), -1, dtype=torch.long, device=dev)
        self.gallery_row[:, :m] = top_row
        self.gallery_presence = torch.zeros(n_proto, k, device=dev)
        self.gallery_presence[:, :m] = top_val
        self.gallery_box = boxes.to(dev)
        self.source_row = self.gallery_row[:, 0].clone()
        self.source_box = self.gallery_box[:, 0].clone()
        self.source_presence = self.gallery_presence[:, 0].clone()
        ids = np.asarray(caseset.case_ids)
        self.gallery_case_ids = [[str(ids[int(r)]) if r >= 0 else "" for r in row.tolist()]
                                 for row in self.gallery_row.cpu()]
        self.source_case_ids = [g[0] for g in self.gallery_case_ids]
        self.sources_epoch = int(epoch)
        rate = len(rows) / max(seconds, 1e-9)
        self.source_images_per_second = rate
        print(f"pipnet: prototype sources from {len(rows)} training images in {seconds:.2f}s ({rate:.0f} images/s)",
              file=sys.stderr, flush=True)
        return {"images": len(rows), "seconds": seconds, "images_per_second": rate}

    @property
    def has_sources(self) -> bool:
        """Whether the training patches of the prototypes have been recorded."""
        return bool((self.source_row >= 0).all())

    def get_extra_state(self) -> dict:
        return {"source_case_ids": list(self.source_case_ids),
                "gallery_case_ids": [list(g) for g in self.gallery_case_ids], "sources_epoch": self.sources_epoch,
                "source_images_per_second": self.source_images_per_second, "disabled": list(self.disabled)}

    def set_extra_state(self, state: dict) -> None:
        self.source_case_ids = [str(c) for c in state["source_case_ids"]]
        self.gallery_case_ids = [[str(c) for c in g] for g in state["gallery_case_ids"]]
        self.sources_epoch = int(state["sources_epoch"])
        self.source_images_per_second = float(state["source_images_per_second"])
        self.disabled = [int(j) for j in state.get("disabled", [])]  # absent in checkpoints before edits existed

    @torch.no_grad()
    def fit_scoring_sheet(self, caseset: Any) -> None:
        """Solve the scoring sheet alone as a convex problem, starting from its current weights: non-negative,
        bias-free multinomial logistic regression with the L1 penalty ``l1_weight`` on the training presences
        (thresholded as scoring does); switched-off prototypes (:meth:`disable_prototypes`) keep a weight of 0."""
        rows = np.asarray(caseset.indices("train"))
        presence = self.presence_scores(caseset.images[rows]).float().cpu()
        if self.threshold_scores:
            presence = self.absent_below_threshold(presence)
        w = refit_without(presence, np.asarray(caseset.labels)[rows], self.scoring.nonneg_weight(), self.disabled,
                          self.loss_weights["l1"], nonneg=True)
        self.scoring.weight.copy_(w.to(self.scoring.weight))

    def disable_prototypes(self, prototypes: list[int], caseset: Any) -> dict:
        """Switch ``prototypes`` off and refit the scoring sheet only (:meth:`fit_scoring_sheet`)."""
        return switch_off(self, prototypes, lambda: self.fit_scoring_sheet(caseset))

    def disabled_prototypes(self) -> list[int]:
        return list(self.disabled)

    # ------------------------------------------------------------------ explanations
    def prototype_classes(self) -> torch.Tensor:
        """long [P]: the class each prototype gives most points to (its largest weight)."""
        return self.scoring.nonneg_weight().detach().argmax(dim=0)

    def _source(self, j: int) -> tuple[str, tuple[int, int, int, int]]:
        if int(self.source_row[j]) < 0:
            return "", (0, 0, 0, 0)
        return self.source_case_ids[j], tuple(int(v) for v in self.source_box[j].tolist())

    @torch.no_grad()
    def explain(self, x: np.ndarray | torch.Tensor, target: np.ndarray | None = None,
                case_ids: np.ndarray | None = None, top_k: int = 3,
                batch_size: int = 64) -> list[PrototypeEvidence | Heatmap]:
        """Per case, the ``top_k`` prototypes by contribution to the explained class, and the top one's map.

        The contribution of prototype j to class c is its presence (as scored: 0 below ``presence_threshold``) times
        the scoring-sheet weight w[c, j], so with ``top_k = n_prototypes`` the contributions add up to the logit of
        the explained class; the explained class is ``target`` (default: the predicted class). ``similarity`` is the
        presence as scored and ``prototype_class`` the class the prototype gives most points to. Returns
        ``[PrototypeEvidence, Heatmap]``; the heatmap (method ``prototype_presence``) is the presence map of the top
        prototype, bilinearly upsampled to the input. Before the sources are recorded the source fields read ``""``
        and ``(0, 0, 0, 0)``. A case the model abstains on has all contributions 0 (its top prototypes are then the
        first ones by index).
        """
        was_training = self.training
        self.eval()
        k = max(1, min(int(top_k), self.n_prototypes))
        weight = self.scoring.nonneg_weight().float()  # [C, P]
        proto_class = self.prototype_classes().tolist()
        matches: list[list[PrototypeMatch]] = []
        preds, targets, heat = [], [], []
        try:
            for i in range(0, len(x), batch_size):
                xb = as_tensor(x[i:i + batch_size], self.device)
                maps = self.prototype_activation_maps(xb)  # [B, P, h, w]
                presence = self.pool(maps)  # [B, P]
                presence = self.absent_below_threshold(presence) if self.threshold_scores else presence
                pred = self.scoring(presence).argmax(dim=1)
                tb = pred if target is None else torch.as_tensor(np.asarray(target)[i:i + batch_size],
                                                                 device=xb.device, dtype=torch.long)
                contrib = presence * weight[tb]  # [B, P]
                order = rank_enabled(contrib, self.disabled, k)
                up = F.interpolate(maps, size=xb.shape[-2:], mode="bilinear", align_corners=False)
                for n in range(len(xb)):
                    case = []
                    for j in order[n].tolist():
                        src, box = self._source(j)
                        case.append(PrototypeMatch(
                            prototype=j, prototype_class=int(proto_class[j]), similarity=float(presence[n, j]),
                            contribution=float(contrib[n, j]), source_case_id=src, source_box=box,
                            activation_map=up[n, j].cpu().numpy().astype(np.float32)))
                    matches.append(case)
                heat.append(up[torch.arange(len(xb)), order[:, 0]].cpu().numpy())
                preds.append(pred.cpu().numpy())
                targets.append(tb.cpu().numpy())
        finally:
            self.train(was_training)
        evidence = PrototypeEvidence(matches=matches, predicted=np.concatenate(preds), case_ids=case_ids)
        hm = Heatmap(maps=np.concatenate(heat), method="prototype_presence", target=np.concatenate(targets),
                     case_ids=case_ids)
        return [evidence, hm]

    def explain_global(self) -> GlobalExplanation:
        """The prototype gallery: per prototype the class it scores most for, whether it is relevant, its source
        case, row and box (its most present training patch), its scoring-sheet weights (``last_layer_weights``, one
        per class) and ``top_k``: its ``gallery_k`` most present training patches (case id, row, box, presence).
        PIP-Net has no push: ``pushed`` is False, ``n_pushes`` 0, ``push_distance`` None, ``prototypes_per_class``
        None (prototypes belong to no class); ``sources_recorded`` says whether the patches are recorded."""
        weight = self.scoring.nonneg_weight().detach().float().cpu().numpy()
        relevant = self.relevant_prototypes().cpu().tolist()
        proto_class = self.prototype_classes().cpu().tolist()
        gallery = []
        for j in range(self.n_prototypes):
            src, box = self._source(j)
            top = [{"case_id": self.gallery_case_ids[j][q], "row": int(self.gallery_row[j, q]),
                    "box": [int(v) for v in self.gallery_box[j, q].tolist()],
                    "presence": float(self.gallery_presence[j, q])}
                   for q in range(self.gallery_k) if int(self.gallery_row[j, q]) >= 0]
            gallery.append({"prototype": j, "class": int(proto_class[j]), "relevant": bool(relevant[j]),
                            "disabled": j in self.disabled,
                            "source_case_id": src, "source_row": int(self.source_row[j]), "source_box": list(box),
                            "source_presence": float(self.source_presence[j]), "push_distance": None,
                            "last_layer_weights": weight[:, j].tolist(), "top_k": top})
        content = {"pushed": False, "n_pushes": 0, "sources_recorded": self.has_sources,
                   "sources_epoch": self.sources_epoch, "n_prototypes": self.n_prototypes,
                   "n_relevant_prototypes": int(sum(relevant)), "prototypes_per_class": None,
                   "presence_threshold": self.presence_threshold, "relevance_threshold": self.relevance_threshold,
                   "prototypes": gallery}
        return GlobalExplanation(form="prototype_gallery", content=content)

    def reading_load(self, x: np.ndarray | torch.Tensor) -> dict:
        """The paper's local explanation size: relevant prototypes present in the case (mean over the cases ``x``)."""
        relevant = self.relevant_prototypes().cpu()
        presence = self.presence_scores(x).cpu()
        present = presence[:, relevant] >= max(self.presence_threshold, 1e-12)
        return {"count": float(present.sum(dim=1).float().mean()) if len(present) else 0.0, "unit": "prototypes",
                "definition": "relevant prototypes present in the case, each adding its weight to a class "
                              "(PIP-Net's local explanation size)"}

    def extra_metrics(self, test: Any, train: Any) -> dict:
        """Prototype-quality figures under ``explanation.prototype_quality``: counts (prototypes, relevant ones),
        how many relevant prototypes have their top training patch on a lesion of their ``train`` case, the class
        purity of their galleries, the scoring sheet's sparsity, the mean number of relevant prototypes present per
        ``test`` case and the abstentions on ``test`` (count, fraction, case ids). One pass over the test cases."""
        relevant = self.relevant_prototypes().cpu()
        out: dict[str, Any] = {"n_prototypes": self.n_prototypes, "n_relevant_prototypes": int(relevant.sum()),
                               "relevance_threshold": self.relevance_threshold,
                               "presence_threshold": self.presence_threshold, "sources_recorded": self.has_sources}
        row_of = {str(c): i for i, c in enumerate(train.case_ids)}
        rel = relevant.nonzero().flatten().tolist()
        if self.has_sources:
            pairs = {(int(self.source_row[j]), tuple(self.source_box[j].tolist())) for j in rel}
            out["n_distinct_relevant_sources"] = len(pairs)
            fraction = fraction_on_lesion([self.source_case_ids[j] for j in rel],
                                          [self.source_box[j].tolist() for j in rel], train)
            if fraction is not None:
                out["fraction_source_in_lesion"] = fraction
            labels = np.asarray(train.labels)
            proto_class = self.prototype_classes().cpu().tolist()
            purity = [float(np.mean([labels[row_of[c]] == proto_class[j] for c in self.gallery_case_ids[j]
                                     if c in row_of]))
                      for j in rel if any(c in row_of for c in self.gallery_case_ids[j])]
            if purity:
                out["class_purity"] = float(np.mean(purity))
        weight = self.scoring.nonneg_weight().detach()
        out["scoring_sheet_sparsity"] = float((weight <= self.relevance_threshold).float().mean())
        if len(test.labels):
            presence = self.presence_scores(test.images).cpu()
            present = presence[:, relevant] >= max(self.presence_threshold, 1e-12)
            abstain = ~present.any(dim=1)
            out["mean_relevant_prototypes_present"] = float(present.sum(dim=1).float().mean())
            out["n_abstained_test"] = int(abstain.sum())
            out["abstained_test_fraction"] = float(abstain.float().mean())
            out["abstained_test_case_ids"] = [str(test.case_ids[i]) for i in abstain.nonzero().flatten().tolist()]
        return {"explanation": {"prototype_quality": out}}


class PIPNetSchedule(Callback):
    """Runs PIP-Net's stages in a Lightning fit: freezes parts per epoch, projects the scoring sheet onto
    non-negative weights after every optimiser step, and records the prototypes' training patches.

    The sources must belong to the weights the pipeline keeps: its checkpoint is saved at the end of validation
    when the epoch's ``val_select`` improves (Lightning runs checkpoint callbacks after the others), so after every
    selectable epoch whose ``val_select`` is at least the best so far the sources are recorded before that save. At
    the end of the fit they are recorded again if the last epoch's weights have none (e.g. a fit without
    validation), so the model in memory is consistent too.

    Args:
        model: the :class:`PIPNet` being trained.
        caseset: the run's CaseSet (the sources come from its training split only).
    """

    def __init__(self, model: PIPNet, caseset: Any) -> None:
        self.model = model
        self.caseset = caseset
        self._best = -math.inf

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        need = self.model.total_epochs
        if trainer.max_epochs != need:
            raise ConfigError(
                f"pipnet: training.max_epochs must equal the stage schedule's {need} epochs (pretrain + finetune + "
                f"joint), got {trainer.max_epochs}; set the model's training: {{max_epochs: {need}}}")
        self._best = -math.inf

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = int(trainer.current_epoch)
        self.model.set_stage(self.model.stage_of(epoch), epoch)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.model.scoring.project_()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.model.selectable_epoch(int(trainer.current_epoch)):
            return
        if self.model.recalibrate_bn:
            self.model.recalibrate_batchnorm(self.caseset)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = int(trainer.current_epoch)
        if trainer.sanity_checking or not self.model.selectable_epoch(epoch):
            return
        score = trainer.callback_metrics.get("val_select")
        value = float(score) if score is not None else math.nan
        if not value >= self._best:  # NaN never improves
            return
        self._best = value
        self.model.record_sources(self.caseset, epoch=epoch)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.model.set_stage(None)
        last = int(trainer.current_epoch) - 1
        if self.model.sources_epoch != last or not self.model.has_sources:
            self.model.record_sources(self.caseset, epoch=last)

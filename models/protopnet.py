"""ProtoPNet: classification by similarity to learned prototypical parts ("this looks like that")."""

from __future__ import annotations

import math
import sys
import time
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from glasszoo.models._backbones import (
    adapt_stem,
    attach_input_prep,
    effective_size,
    resolve_stem,
    timm_model,
    warn_lost_conv1,
)
from glasszoo.models._prototypes import (
    eval_frozen,
    fraction_on_lesion,
    freeze_parts,
    precise_batchnorm,
    rank_enabled,
    refit_without,
    shift_and_stitch,
    switch_off,
)
from glasszoo.models._registry import register_model
from glasszoo.models.base import ImageModel, as_tensor, batched_no_grad
from glasszoo.models.errors import ConfigError, DataError
from glasszoo.models.explanations import GlobalExplanation, Heatmap, PrototypeEvidence, PrototypeMatch

PAPER = 'Chen et al., "This Looks Like That: Deep Learning for Interpretable Image Recognition", NeurIPS 2019'
STAGES = ("warmup", "joint", "last_layer")
# which parts train in each stage (the paper keeps the last layer at its initial values until the first push)
_TRAINABLE = {
    "warmup": ("add_on", "prototypes"),
    "joint": ("features", "add_on", "prototypes"),
    "last_layer": ("last_layer",),
    None: ("features", "add_on", "prototypes", "last_layer"),
}


def feature_backbone(name: str, in_chans: int, img_size: tuple[int, int], stem: str = "auto",
                     feature_stage: int = 3, output_stride: int = 32,
                     pretrained: bool | str | None = False) -> tuple[nn.Module, str, int]:
    """A timm feature extractor returning stage ``feature_stage`` only, randomly initialised or ``pretrained``
    (see :mod:`glasszoo.models._backbones`).

    ``output_stride`` 16 or 8 dilates the backbone's later stages instead of striding them (timm), so a stage whose
    reduction would exceed it keeps that resolution (ResNet stage 3 at stride 8 instead of 16: 6x6 instead of 3x3 at
    48 px, with the same depth of features); 32 leaves the backbone as designed.

    Returns the module (``timm`` ``features_only``; its output is a one-element list), the stem actually used (see
    :func:`glasszoo.models._backbones.adapt_stem`; backbones without a ResNet stem keep their own) and the number
    of output channels.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    extra = {"output_stride": output_stride} if output_stride != 32 else {}
    try:
        net = timm_model(name, pretrained, features_only=True, out_indices=(feature_stage,), in_chans=in_chans,
                         **extra)
    except IndexError:
        raise ValueError(f"feature_stage={feature_stage} is not a feature stage of {name!r}") from None
    resolved = resolve_stem(stem, img_size)
    has_resnet_stem = isinstance(getattr(net, "conv1", None), nn.Conv2d) and hasattr(net, "maxpool")
    if stem == "auto" and not has_resnet_stem:
        resolved = "standard"
    warn_lost_conv1(pretrained, resolved)
    net = adapt_stem(net, resolved, in_chans)
    return net, resolved, int(net.feature_info.channels()[-1])


def cell_box(i: int, j: int, grid: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The input-pixel box (row0, col0, row1, col1; end exclusive) of feature-grid cell (i, j).

    The cell is scaled to the input size (``floor(i * H / h)`` to ``ceil((i + 1) * H / h)``): an approximation of
    where the patch sits, much smaller than the cell's true receptive field.
    """
    (h, w), (hh, ww) = grid, size
    return (int(math.floor(i * hh / h)), int(math.floor(j * ww / w)),
            min(hh, int(math.ceil((i + 1) * hh / h))), min(ww, int(math.ceil((j + 1) * ww / w))))


IAIA_BL = ('Barnett et al., "A case-based interpretable deep learning model for classification of mass lesions in '
           'digital mammography", Nature Machine Intelligence 2021 (IAIA-BL)')


def fine_annotation_loss(activations: torch.Tensor, masks: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """IAIA-BL's fine-annotation loss (Barnett et al. 2021) of prototype activation maps against lesion masks.

    For each annotated image i and prototype j, with ``a_ij`` the prototype's activation map upsampled to the image:
    a prototype of the image's class pays ``||(1 - m_i) * a_ij||_2`` (its activation outside the lesion), a prototype
    of another class pays ``||a_ij||_2`` (any activation at all). The loss is the sum over prototypes, averaged over
    the images that have a non-empty mask (images without a lesion annotation add nothing).

    Args:
        activations: [N, P, H, W] activation maps at the masks' resolution.
        masks: [N, H, W], 1 on the lesion.
        own: [N, P] boolean, whether prototype j belongs to image i's class.
    """
    outside = 1.0 - masks.float().clamp(0, 1)[:, None]  # [N, 1, H, W]
    own_term = (activations * outside).flatten(2).norm(dim=2)  # [N, P]
    other_term = activations.flatten(2).norm(dim=2)
    per_image = torch.where(own, own_term, other_term).sum(dim=1)  # [N]
    annotated = masks.flatten(1).bool().any(dim=1)
    if not annotated.any():
        return activations.sum() * 0.0
    return per_image[annotated].mean()


def activation_precision(activations: torch.Tensor, masks: torch.Tensor, own: torch.Tensor,
                         top: float = 0.05) -> torch.Tensor:
    """IAIA-BL's activation precision (Barnett et al. 2021): per (image, own-class prototype), the share of the
    image's most activated pixels (at or above the ``1 - top`` quantile of the upsampled activation map) that lie on
    the lesion. Returns the values [M] of the M pairs whose image has a lesion (a prototype that fires on the lesion
    scores 1; one that fires elsewhere 0).

    Args:
        activations: [N, P, H, W] activation maps at the masks' resolution.
        masks: [N, H, W], 1 on the lesion.
        own: [N, P] boolean, whether prototype j belongs to image i's class.
        top: the share of pixels counted as the most activated (IAIA-BL: 5%).
    """
    flat = activations.flatten(2).float()  # [N, P, HW]
    threshold = torch.quantile(flat, 1.0 - top, dim=2, keepdim=True)
    hot = flat >= threshold
    inside = masks.flatten(1).bool()[:, None, :]  # [N, 1, HW]
    share = (hot & inside).sum(2).float() / hot.sum(2).clamp_min(1).float()  # [N, P]
    keep = own & masks.flatten(1).bool().any(dim=1)[:, None]
    return share[keep]


def topk_pool(maps: torch.Tensor, k: int) -> torch.Tensor:
    """The mean of each map's ``k`` largest values [N, P] from maps [N, P, h, w] (k = 1: the max; IAIA-BL's top-k
    average pooling otherwise; k is capped at h * w)."""
    flat = maps.flatten(2)
    if k <= 1:
        return flat.amax(dim=2)
    return flat.topk(min(int(k), flat.shape[2]), dim=2).values.mean(dim=2)


@register_model("protopnet", family="prototype", paper=PAPER,
                test_kwargs={"backbone": "resnet18", "prototypes_per_class": 2, "prototype_dim": 16})
class ProtoPNet(ImageModel):
    """Prototypical part network: logits are a linear function of similarities to learned prototype patches.

    Chen et al., "This Looks Like That: Deep Learning for Interpretable Image Recognition", NeurIPS 2019. A timm
    backbone (cut at ``feature_stage``) and two 1x1 convolutions (ReLU, sigmoid) map the image to a grid of
    ``prototype_dim``-dimensional patches z. Each of ``prototypes_per_class * num_classes`` prototypes p (a
    [D, 1, 1] vector owned by one class) is compared with every patch by the squared L2 distance
    ``d = ||z - p||^2`` (computed as ``||z||^2 - 2 z.p + ||p||^2`` with a convolution); its similarity map is
    ``log((d + 1) / (d + epsilon))`` and its score the global max of that map (the similarity of the nearest patch),
    or with ``topk > 1`` the mean of its ``topk`` largest values (IAIA-BL's top-k average pooling).
    A bias-free last layer (initialised +1 for the prototype's class, -0.5 for the others) turns scores into logits.

    Training (driven by :meth:`training_callbacks`) follows the paper's stages: ``warmup_epochs`` with only the
    add-on layers and prototypes learning, ``joint_epochs`` with the backbone too, then a *push* that projects every
    prototype onto its nearest training patch of its own class, followed by ``last_layer_epochs`` of last-layer-only
    optimisation (cross-entropy plus L1 on wrong-class weights). With ``push_every > 0`` the joint epochs are cut
    into blocks of ``push_every``, each followed by a push and the last-layer epochs. Only epochs after the last push
    are selectable, so the chosen model always reasons with real training patches. The pipeline trains exactly
    :attr:`total_epochs` epochs (``training.max_epochs`` is not needed; a bare Lightning Trainer must be given that
    many, which the schedule checks when training starts).

    Args:
        num_classes: number of classes.
        in_chans: 1 or 3 input channels.
        img_size: input side (or (H, W)).
        backbone: timm model name (trained from scratch).
        stem: ``auto``, ``standard``, ``small`` or ``nopool`` (ResNet-style backbones; see ``adapt_stem``).
        feature_stage: timm feature stage the prototypes live on (ResNet: 2 = stride 8, 3 = stride 16, before stem
            changes); sets the prototype grid: 3 gives 3x3 at 48 px (standard stem) and 7x7 at 28 px (small stem).
        prototypes_per_class: prototypes owned by each class (paper: 10).
        prototype_dim: channels of the prototype space (paper: 128; small spaces leave fewer randomly initialised
            prototypes far from every patch, and 16 beat 8, 32 and 64 on the quickstart data).
        warmup_epochs: epochs training only the add-on layers and prototypes.
        joint_epochs: epochs training backbone, add-on layers and prototypes.
        last_layer_epochs: last-layer-only epochs after each push (>= 1).
        push_every: push after every ``push_every`` joint epochs (0: one push after all joint epochs).
        features_lr_ratio: backbone learning rate as a fraction of the configured lr. The paper's 1e-4 / 3e-3 is
            for an ImageNet-pretrained backbone; glasszoo trains from scratch, where it leaves the backbone nearly
            untrained (quickstart test AUC 0.54 against 0.89-0.91 with 1.0, the default).
        last_layer_lr_ratio: last-layer learning rate as a fraction of the configured lr (paper: 1e-4 / 3e-3).
        cluster_weight: weight of the cluster cost (paper: 0.8).
        separation_weight: weight of the separation cost (paper: -0.08).
        l1_weight: weight of the L1 penalty on wrong-class last-layer weights (paper: 1e-4).
        epsilon: the epsilon of the similarity ``log((d + 1) / (d + epsilon))`` (paper: 1e-4).
        push_batch_size: images per batch during the push and the prototype metrics.
        fit_last_layer: after each push, solve the last-layer objective on the training split (see
            :meth:`fit_last_layer`) instead of relying on the scheduled learning rate alone.
        recalibrate_bn: before each push, re-estimate the backbone's BatchNorm statistics on the training split (a
            deviation from the paper; see :meth:`recalibrate_batchnorm`).
        bn_samples: at most this many training images (evenly spaced) for that re-estimation.
        fine_annotation_weight: weight of IAIA-BL's fine-annotation loss (:func:`fine_annotation_loss`; Barnett et
            al., Nature Machine Intelligence 2021) on the upsampled prototype activation maps against the lesion
            masks: a prototype is penalised for firing outside its class's lesions and for firing at all on another
            class's images. 0 (default) switches it off; above 0 the model requires lesion masks.
        topk: score of a prototype = mean of the ``topk`` largest values of its similarity map (IAIA-BL: top-k
            average pooling, which rewards a prototype present over a region rather than on one patch); 1
            (default) is ProtoPNet's max-pooling.
        smoothgrad_samples: noisy copies of the image for the SmoothGrad drawing of a prototype
            (:meth:`prototype_smoothgrad`; Smilkov et al. 2017 use about 50; 8 keep a run's explanations cheap).
        smoothgrad_noise: the sd of that noise as a fraction of the image's intensity range (Smilkov et al.: 0.1 to
            0.2 on natural images; 0.05 here: on the quickstart's low-contrast phantoms, with a model whose prototypes
            all sit on lesions, the gradient's peak fell on the lesion in 3 of 8 test cases at 0 and 0.05 and in none
            at 0.15, where the noise moves the nearest patch).
        output_stride: 32 (default: the backbone as designed) or 16 / 8: the backbone's later stages dilated instead
            of strided (timm), so the prototype grid keeps that resolution (stage 3 at 48 px: 6x6 at 8 instead of
            3x3), at a higher compute cost; see :func:`feature_backbone`.
        stitch_factor: 1 (default: the paper's drawing), 2 or 4: the drawn similarity map of a prototype
            (``prototype_activation``) is the network's own map sampled on a 2 or 4 times denser grid by
            shift-and-stitch (:func:`glasszoo.models._prototypes.shift_and_stitch`: the image shifted by a fraction
            of the grid's stride, ``stitch_factor**2`` passes per explained batch) before the bilinear upsampling.
            Training, scores and the push keep the plain grid. Falls back to 1 unless the grid divides the input
            into strides that are whole multiples of ``2 * stitch_factor`` pixels. It sharpens the map, not its
            aim: on the quickstart the pointing game fell from 0.69 to 0.62 with 2, because the denser map finds
            the lesion margin where the benign prototypes fire (docs/models/protopnet.md).
        pretrained: ``False`` (random initialisation), ``True`` (timm's own weights; offline they must be in the
            Hugging Face cache) or the path of a weights file (see :mod:`glasszoo.models._backbones`).
        normalize: ``"none"`` or ``"imagenet"``: the standardisation pretrained weights expect, applied in the model.
        input_size: resize inputs to this side inside the model (e.g. 224 for weights trained there); None: as given.
    """

    explanation_kinds = ("prototype_evidence", "heatmap")

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int | tuple[int, int] = 28,
                 backbone: str = "resnet18", stem: str = "auto", feature_stage: int = 3,
                 prototypes_per_class: int = 10, prototype_dim: int = 16, warmup_epochs: int = 1,
                 joint_epochs: int = 11, last_layer_epochs: int = 2, push_every: int = 0,
                 features_lr_ratio: float = 1.0, last_layer_lr_ratio: float = 1.0,
                 cluster_weight: float = 0.8, separation_weight: float = -0.08, l1_weight: float = 1e-4,
                 epsilon: float = 1e-4, push_batch_size: int = 256, recalibrate_bn: bool = True,
                 fit_last_layer: bool = True, bn_samples: int = 512, fine_annotation_weight: float = 0.0,
                 topk: int = 1, smoothgrad_samples: int = 8, smoothgrad_noise: float = 0.05,
                 output_stride: int = 32, stitch_factor: int = 1,
                 pretrained: bool | str = False, normalize: str = "none", input_size: int | None = None) -> None:
        super().__init__(num_classes, in_chans, img_size)
        if stitch_factor not in (1, 2, 4):
            raise ValueError(f"stitch_factor must be 1, 2 or 4, got {stitch_factor!r}")
        if fine_annotation_weight < 0:
            raise ValueError(f"fine_annotation_weight must be >= 0, got {fine_annotation_weight}")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        if smoothgrad_samples < 1 or smoothgrad_noise < 0:
            raise ValueError(f"smoothgrad_samples must be >= 1 and smoothgrad_noise >= 0, got {smoothgrad_samples} "
                             f"and {smoothgrad_noise}")
        if bn_samples < 2:
            raise ValueError(f"bn_samples must be >= 2, got {bn_samples}")
        if prototypes_per_class < 1 or prototype_dim < 1:
            raise ValueError("prototypes_per_class and prototype_dim must be >= 1")
        if warmup_epochs < 0 or joint_epochs < 0 or push_every < 0:
            raise ValueError("warmup_epochs, joint_epochs and push_every must be >= 0")
        if last_layer_epochs < 1:
            raise ValueError(f"last_layer_epochs must be >= 1 (the push happens at the start of the first "
                             f"last-layer epoch), got {last_layer_epochs}")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.backbone_name = backbone
        self.pretrained = pretrained
        side = effective_size(self.img_size, input_size)  # what the backbone sees
        self.features, self.stem, channels = feature_backbone(backbone, in_chans, side, stem, feature_stage,
                                                              output_stride, pretrained)
        self.input_prep = attach_input_prep(self.features, in_chans, normalize, input_size)
        self.feature_stage = feature_stage
        self.add_on = nn.Sequential(nn.Conv2d(channels, prototype_dim, 1), nn.ReLU(),
                                    nn.Conv2d(prototype_dim, prototype_dim, 1), nn.Sigmoid())
        n_proto = num_classes * prototypes_per_class
        self.prototypes = nn.Parameter(torch.rand(n_proto, prototype_dim, 1, 1))
        self.last_layer = nn.Linear(n_proto, num_classes, bias=False)
        proto_class = torch.arange(num_classes).repeat_interleave(prototypes_per_class)
        own = F.one_hot(proto_class, num_classes).T.float()  # [C, P]
        with torch.no_grad():
            self.last_layer.weight.copy_(own - 0.5 * (1 - own))
        self.register_buffer("prototype_class", proto_class, persistent=False)
        self.register_buffer("_wrong_class", 1 - own, persistent=False)
        # push records (buffers, so they travel with the state dict; case ids travel in the extra state)
        self.register_buffer("source_row", torch.full((n_proto,), -1, dtype=torch.long))
        self.register_buffer("source_box", torch.zeros(n_proto, 4, dtype=torch.long))
        self.register_buffer("source_activation", torch.zeros(n_proto, *self.img_size, dtype=torch.float16))
        self.register_buffer("push_distance", torch.full((n_proto,), float("nan")))
        self.source_case_ids: list[str] = [""] * n_proto
        self.push_images_per_second = float("nan")
        self.n_pushes = 0
        self.disabled: list[int] = []  # prototypes a reader switched off (disable_prototypes)

        self.prototypes_per_class = prototypes_per_class
        self.prototype_dim = prototype_dim
        self.epsilon = float(epsilon)
        self.loss_weights = {"cluster": cluster_weight, "separation": separation_weight, "l1": l1_weight}
        self.fine_annotation_weight = float(fine_annotation_weight)
        self.topk = int(topk)
        self.smoothgrad_samples = int(smoothgrad_samples)
        self.stitch_factor = int(stitch_factor)
        self.smoothgrad_noise = float(smoothgrad_noise)
        self.features_lr_ratio = features_lr_ratio
        self.last_layer_lr_ratio = last_layer_lr_ratio
        self.push_batch_size = push_batch_size
        self.recalibrate_bn = recalibrate_bn
        self.bn_samples = int(bn_samples)
        self.fit_last_layer_after_push = fit_last_layer
        self.schedule = self._build_schedule(warmup_epochs, joint_epochs, last_layer_epochs, push_every)
        self._stage: str | None = None
        self._cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    # ------------------------------------------------------------------ the network
    @property
    def n_prototypes(self) -> int:
        return int(self.prototypes.shape[0])

    @property
    def pushed(self) -> bool:
        """Whether the prototypes have been projected onto training patches."""
        return bool((self.source_row >= 0).all())

    def prototype_features(self, x: torch.Tensor) -> torch.Tensor:
        """The patch grid z [N, D, h, w] the prototypes are compared with (backbone stage + add-on layers)."""
        f = self.features(x)
        f = f[-1] if isinstance(f, (list, tuple)) else f
        return self.add_on(f)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared L2 distances [N, P, h, w] of every prototype to every patch of z [N, D, h, w]."""
        z = z.float()
        p = self.prototypes.float()
        zz = (z * z).sum(dim=1, keepdim=True)
        pp = (p * p).sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
        return F.relu(zz - 2 * F.conv2d(z, p) + pp)

    def similarity(self, d: torch.Tensor) -> torch.Tensor:
        """``log((d + 1) / (d + epsilon))``: large for small distances, 0 for infinitely far ones."""
        return torch.log((d + 1) / (d + self.epsilon))

    def prototype_distances(self, x: torch.Tensor) -> torch.Tensor:
        """Distances [N, P, h, w] of every prototype to every patch of images x [N, C, H, W]."""
        return self.distances(self.prototype_features(x))

    def prototype_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Similarity maps [N, P, h, w] of every prototype over the patch grid of images x."""
        return self.similarity(self.prototype_distances(x))

    def prototype_activation_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The prototype-part metrics' maps: the similarity maps (:meth:`prototype_activations`)."""
        return self.prototype_activations(x)

    def relevant_prototypes(self) -> torch.Tensor:
        """Prototypes with a last-layer weight of at least 1e-3 in absolute value for some class (the others add
        nothing to any logit; the threshold of ``last_layer_sparsity``)."""
        return self.last_layer.weight.detach().abs().amax(dim=0) >= 1e-3

    def prototype_classes(self) -> torch.Tensor:
        """The class owning each prototype (``prototype_class``)."""
        return self.prototype_class

    def prototype_smoothgrad(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """SmoothGrad (Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017) of prototype scores:
        per image n and column k, the absolute gradient of the score of prototype ``prototypes[n, k]`` (its pooled
        similarity, :meth:`pool`) with respect to the input, summed over channels and averaged over
        ``smoothgrad_samples`` copies of the image with Gaussian noise of sd ``smoothgrad_noise`` times the image's
        intensity range. Returns [N, K, H, W].

        Unlike the upsampled similarity map, which puts the evidence where the nearest patch's grid cell sits, it
        shows which pixels change the similarity (Xu-Darme et al., "Sanity checks for patch visualisation in
        prototype-based image classification", CVPR-W 2023, show that upsampling can hide or invent a bias). The
        noise of copy s is drawn from a generator seeded with s, the same for every image, so a case's map does not
        depend on the batch it is explained in. Costs ``smoothgrad_samples`` forward and ``K x smoothgrad_samples``
        backward passes per image. The model should be in eval mode.
        """
        x = x.detach().float()
        prototypes = prototypes.to(device=x.device, dtype=torch.long)
        span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).clamp_min(1e-6).view(-1, 1, 1, 1)
        out = torch.zeros(len(x), prototypes.shape[1], *x.shape[-2:], device=x.device)
        with torch.enable_grad():
            for s in range(self.smoothgrad_samples):
                eps = torch.randn(tuple(x.shape[1:]), generator=torch.Generator().manual_seed(s)).to(x.device)
                xn = (x + self.smoothgrad_noise * span * eps).requires_grad_(True)
                chosen = self.pool(self.prototype_activations(xn)).gather(1, prototypes)  # [N, K]
                for k in range(chosen.shape[1]):
                    (grad,) = torch.autograd.grad(chosen[:, k].sum(), xn, retain_graph=k < chosen.shape[1] - 1)
                    out[:, k] += grad.abs().sum(dim=1)
        return out / self.smoothgrad_samples

    @classmethod
    def requirements(cls, params: dict) -> tuple[str, ...]:
        """Lesion masks when the fine-annotation loss is on (``fine_annotation_weight > 0``)."""
        return ("masks",) if float(params.get("fine_annotation_weight", 0.0)) > 0 else ()

    def pool(self, similarity_maps: torch.Tensor) -> torch.Tensor:
        """Prototype scores [N, P] from similarity maps [N, P, h, w]: max (``topk = 1``) or top-k mean."""
        return topk_pool(similarity_maps, self.topk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.prototype_distances(x)  # [N, P, h, w]
        min_d = d.flatten(2).amin(dim=2)  # [N, P]
        # max-pooling: the similarity of the nearest patch (the similarity decreases with the distance)
        scores = self.similarity(min_d) if self.topk == 1 else self.pool(self.similarity(d))
        logits = self.last_layer(scores)
        # kept for extra_losses of this very batch (Lightning's training_step calls model(x) then
        # extra_losses(batch, logits)), so the costs need no second forward pass; released by extra_losses
        self._cache = (logits, min_d, d if self.fine_annotation_weight > 0 else None)
        return logits

    def extra_losses(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted cluster cost, separation cost and L1 on wrong-class last-layer weights (the paper's terms), and
        with ``fine_annotation_weight > 0`` IAIA-BL's fine-annotation loss against ``batch["mask"]``.

        Uses the distances of the forward pass that produced ``logits`` (recognised by identity); recomputes them
        from ``batch["image"]`` when ``logits`` came from elsewhere.
        """
        cache, self._cache = self._cache, None
        if cache is not None and cache[0] is logits:
            min_d, d = cache[1], cache[2]
        else:
            d = self.prototype_distances(batch["image"])
            min_d = d.flatten(2).amin(dim=2)
        own = self.prototype_class[None, :] == batch["label"][:, None]  # [N, P]
        big = torch.finfo(min_d.dtype).max
        cluster = min_d.masked_fill(~own, big).amin(dim=1).mean()
        separation = min_d.masked_fill(own, big).amin(dim=1).mean()
        l1 = (self.last_layer.weight * self._wrong_class).abs().sum()
        terms = {"cluster": cluster, "separation": separation, "l1": l1}
        out = {k: self.loss_weights[k] * v for k, v in terms.items() if self.loss_weights[k] != 0}
        if self.fine_annotation_weight > 0:
            if "mask" not in batch:
                raise DataError("protopnet with fine_annotation_weight > 0 needs lesion masks; the batch has none")
            if d is None:
                d = self.prototype_distances(batch["image"])
            masks = batch["mask"]
            act = F.interpolate(self.similarity(d), size=masks.shape[-2:], mode="bilinear", align_corners=False)
            out["fine_annotation"] = self.fine_annotation_weight * fine_annotation_loss(act, masks, own)
        return out

    # ------------------------------------------------------------------ training stages
    @staticmethod
    def _build_schedule(warmup: int, joint: int, last_layer: int, push_every: int) -> list[tuple[str, bool]]:
        """Per epoch: (stage, whether a push runs at the start of the epoch)."""
        blocks = [joint] if push_every <= 0 or joint == 0 else [push_every] * (joint // push_every)
        if push_every > 0 and joint % push_every:
            blocks.append(joint % push_every)
        out = [("warmup", False)] * warmup
        for n in blocks:
            out += [("joint", False)] * n
            out += [("last_layer", True)] + [("last_layer", False)] * (last_layer - 1)
        return out

    @property
    def total_epochs(self) -> int:
        """Epochs the schedule needs: warm-up + joint + last-layer epochs after each push."""
        return len(self.schedule)

    @property
    def schedule_epochs(self) -> int:
        """The pipeline trains :attr:`total_epochs` epochs (no matching ``training.max_epochs`` needed)."""
        return self.total_epochs

    @property
    def push_epochs(self) -> list[int]:
        """Epochs at whose start a push runs."""
        return [e for e, (_, push) in enumerate(self.schedule) if push]

    def stage_of(self, epoch: int) -> str:
        """The stage of ``epoch``: ``warmup``, ``joint`` or ``last_layer`` (also for epochs past the schedule)."""
        return self.schedule[min(epoch, len(self.schedule) - 1)][0]

    def set_stage(self, stage: str | None) -> None:
        """Freeze every part that does not train in ``stage`` (None: all trainable).

        Frozen parameters get ``requires_grad=False`` and their gradient cleared, so an optimizer holding every group
        (AdamW included: it skips parameters without gradient, weight decay too) leaves them untouched; frozen modules
        also stay in eval mode while the model trains, so BatchNorm statistics do not drift after a push.
        """
        if stage not in _TRAINABLE:
            raise ValueError(f"stage must be one of {STAGES} or None, got {stage!r}")
        freeze_parts(self._parts(), _TRAINABLE[stage])
        self._stage = stage
        self.train(self.training)

    def _parts(self) -> dict[str, list[nn.Parameter]]:
        return {"features": list(self.features.parameters()), "add_on": list(self.add_on.parameters()),
                "prototypes": [self.prototypes], "last_layer": list(self.last_layer.parameters())}

    def train(self, mode: bool = True) -> ProtoPNet:
        super().train(mode)
        if mode and self._stage is not None:
            eval_frozen(self, _TRAINABLE[self._stage])
        return self

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Backbone at ``lr * features_lr_ratio``, add-on and prototypes at ``lr``, last layer at
        ``lr * last_layer_lr_ratio`` (no weight decay on prototypes and last layer: the L1 term regularises it)."""
        parts = self._parts()
        spec = [("features", self.features_lr_ratio, weight_decay), ("add_on", 1.0, weight_decay),
                ("prototypes", 1.0, 0.0), ("last_layer", self.last_layer_lr_ratio, 0.0)]
        return [{"params": parts[name], "lr": lr * ratio, "weight_decay": wd, "name": name}
                for name, ratio, wd in spec]

    def training_callbacks(self, caseset: Any) -> list:
        return [ProtoPNetSchedule(self, caseset)]

    def selectable_epoch(self, epoch: int) -> bool:
        """Only epochs from the last push on: the chosen model always has projected prototypes."""
        return epoch >= self.push_epochs[-1]

    # ------------------------------------------------------------------ push
    def recalibrate_batchnorm(self, caseset: Any) -> int:
        """Re-estimate the backbone's BatchNorm statistics on the training split before a push
        (:func:`glasszoo.models._prototypes.precise_batchnorm`, at most ``bn_samples`` images in batches of
        ``push_batch_size``): the push and every later epoch see the backbone in eval mode, and with statistics that
        lag behind a from-scratch backbone's weights the prototypes would be projected onto patches the trained
        network never produced. Keeps a push under two forward passes over the training split. Returns the number
        of BatchNorm layers updated."""
        return precise_batchnorm(self, self.features, caseset, self.push_batch_size, self.bn_samples)

    @torch.no_grad()
    def push(self, caseset: Any, batch_size: int | None = None) -> dict:
        """Project every prototype onto its nearest patch among the training images of its class.

        With ``recalibrate_bn`` the backbone's BatchNorm statistics are first re-estimated on the training split.
        One batched pass over ``caseset.indices("train")`` in eval mode keeps, per prototype, a running minimum of
        the distance (memory independent of the data size; ties go to the first row and cell). Each prototype is
        then set to its nearest patch's feature vector, and the source row, case id, patch box (the grid cell scaled
        to the input; see :func:`cell_box`) and the upsampled similarity map over the source image are recorded.

        Returns:
            ``{"images": n, "seconds": s, "images_per_second": r}`` of the pass.
        """
        bs = batch_size or self.push_batch_size
        if self.recalibrate_bn:
            self.recalibrate_batchnorm(caseset)
        rows = np.asarray(caseset.indices("train"))
        labels = torch.as_tensor(np.asarray(caseset.labels), dtype=torch.long)
        was_training = self.training
        self.eval()
        dev = self.device
        n_proto = self.n_prototypes
        best_d = torch.full((n_proto,), float("inf"), device=dev)
        best_row = torch.full((n_proto,), -1, dtype=torch.long, device=dev)
        best_cell = torch.zeros(n_proto, dtype=torch.long, device=dev)
        best_vec = self.prototypes.detach().view(n_proto, -1).clone().float()
        grid = size = None
        start = time.perf_counter()
        try:
            for i in range(0, len(rows), bs):
                r = torch.as_tensor(rows[i:i + bs], dtype=torch.long)
                x = as_tensor(caseset.images[rows[i:i + bs]], dev)
                z = self.prototype_features(x).float()
                d = self.distances(z)
                b, _, h, w = d.shape
                grid, size = (h, w), tuple(x.shape[-2:])
                own = labels[r].to(dev)[:, None] == self.prototype_class[None, :]  # [B, P]
                d = d.masked_fill(~own[:, :, None, None], float("inf"))
                flat = d.permute(1, 0, 2, 3).reshape(n_proto, -1)  # [P, B*h*w] in (image, row, col) order
                idx = flat.argmin(dim=1)
                dmin = flat.gather(1, idx[:, None])[:, 0]
                better = dmin < best_d
                if better.any():
                    img, cell = idx // (h * w), idx % (h * w)
                    best_d = torch.where(better, dmin, best_d)
                    best_row = torch.where(better, r.to(dev)[img], best_row)
                    best_cell = torch.where(better, cell, best_cell)
                    vec = z[img, :, cell // w, cell % w]  # [P, D]
                    best_vec = torch.where(better[:, None], vec, best_vec)
            seconds = time.perf_counter() - start
            if grid is None:
                raise ValueError("push: the CaseSet has no training cases")
            found = best_row >= 0
            if not found.all():
                warnings.warn(f"push: no training image of the class of prototypes "
                              f"{torch.flatnonzero(~found).tolist()}; they keep their values", stacklevel=2)
            self.prototypes.data.copy_(best_vec.view_as(self.prototypes).to(self.prototypes.dtype))
            self._record_sources(caseset, best_row, best_cell, best_d, grid, size)
        finally:
            self.train(was_training)
        rate = len(rows) / max(seconds, 1e-9)
        self.push_images_per_second = rate
        self.n_pushes += 1
        print(f"protopnet: push {self.n_pushes}: {len(rows)} training images in {seconds:.2f}s "
              f"({rate:.0f} images/s)", file=sys.stderr, flush=True)
        return {"images": len(rows), "seconds": seconds, "images_per_second": rate}

    def similarity_scores(self, x: np.ndarray | torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Each prototype's similarity score (max over the image's patches) [N, P], in eval mode."""
        out = batched_no_grad(self, x, batch_size or self.push_batch_size,
                              lambda xb: self.pool(self.prototype_activations(xb)))
        return torch.cat(out) if out else torch.zeros(0, self.n_prototypes, device=self.device)

    @torch.no_grad()
    def fit_last_layer(self, caseset: Any, steps: int = 1000) -> None:
        """Solve the last-layer stage's convex problem on the training split, starting from the current weights.

        With the backbone, add-on layers and prototypes frozen, the paper's last-layer objective — mean cross-entropy
        of ``scores W^T`` plus ``l1_weight * sum |W|`` over the wrong-class connections — is a convex, bias-free
        multinomial logistic regression on the prototypes' similarity scores. The paper runs Adam on it for a few
        epochs; here it is solved with ``fit_sparse_linear`` (FISTA, through :func:`refit_without`), so the result does
        not depend on where the learning-rate schedule happens to be when the push comes (with a cosine or one-cycle
        schedule over the whole run the rate is near zero by then). The last-layer epochs that follow continue from
        the solution. Switched-off prototypes (:meth:`disable_prototypes`) keep a weight of exactly 0.
        """
        rows = np.asarray(caseset.indices("train"))
        scores = self.similarity_scores(caseset.images[rows]).float().cpu()
        w = refit_without(scores, np.asarray(caseset.labels)[rows], self.last_layer.weight, self.disabled,
                          self.loss_weights["l1"], l1_mask=self._wrong_class.cpu(), steps=steps)
        self.last_layer.weight.copy_(w.to(self.last_layer.weight))

    def disable_prototypes(self, prototypes: list[int], caseset: Any) -> dict:
        """Switch ``prototypes`` off and refit the last layer only: the last-layer stage's convex problem
        (:meth:`fit_last_layer`) with their similarity scores zeroed, so their weights stay 0 and the other
        prototypes' weights are solved again (ProtoPDebug's "forbid this prototype", Bontempelli et al. 2023, with the
        convex refit instead of fine-tuning the network)."""
        return switch_off(self, prototypes, lambda: self.fit_last_layer(caseset))

    def disabled_prototypes(self) -> list[int]:
        return list(self.disabled)

    def _record_sources(self, caseset: Any, rows: torch.Tensor, cells: torch.Tensor, dist: torch.Tensor,
                        grid: tuple[int, int], size: tuple[int, int]) -> None:
        """Store each prototype's source row, case id, box and similarity map over its source image."""
        h, w = grid
        found = (rows >= 0).cpu()
        boxes = [cell_box(int(c) // w, int(c) % w, grid, size) if ok else (0, 0, 0, 0)
                 for c, ok in zip(cells.tolist(), found.tolist())]
        self.source_row = rows.clone()
        self.source_box = torch.tensor(boxes, dtype=torch.long, device=rows.device)
        self.push_distance = torch.where(rows >= 0, dist, torch.full_like(dist, float("nan")))
        self.source_case_ids = [str(caseset.case_ids[int(r)]) if r >= 0 else "" for r in rows.tolist()]
        maps = torch.zeros(self.n_prototypes, *size, dtype=torch.float16, device=rows.device)
        unique = sorted({int(r) for r in rows.tolist() if r >= 0})
        for i in range(0, len(unique), self.push_batch_size):
            chunk = unique[i:i + self.push_batch_size]
            sim = self.prototype_activations(as_tensor(caseset.images[chunk], self.device))  # [U, P, h, w]
            up = F.interpolate(sim, size=size, mode="bilinear", align_corners=False)
            pos = {r: k for k, r in enumerate(chunk)}
            for j, r in enumerate(rows.tolist()):
                if r in pos:
                    maps[j] = up[pos[r], j].to(torch.float16)
        self.source_activation = maps

    def get_extra_state(self) -> dict:
        return {"source_case_ids": list(self.source_case_ids), "push_images_per_second": self.push_images_per_second,
                "n_pushes": self.n_pushes, "disabled": list(self.disabled)}

    def set_extra_state(self, state: dict) -> None:
        self.source_case_ids = [str(c) for c in state["source_case_ids"]]
        self.push_images_per_second = float(state["push_images_per_second"])
        self.n_pushes = int(state["n_pushes"])
        self.disabled = [int(j) for j in state.get("disabled", [])]  # absent in checkpoints before edits existed

    # ------------------------------------------------------------------ explanations
    def _source(self, j: int) -> tuple[str, tuple[int, int, int, int]]:
        if int(self.source_row[j]) < 0:
            return "", (0, 0, 0, 0)
        return self.source_case_ids[j], tuple(int(v) for v in self.source_box[j].tolist())

    @torch.no_grad()
    def explain(self, x: np.ndarray | torch.Tensor, target: np.ndarray | None = None,
                case_ids: np.ndarray | None = None, top_k: int = 3,
                batch_size: int = 64) -> list[PrototypeEvidence | Heatmap]:
        """Per case, the ``top_k`` prototypes by contribution to the explained class, and the top one's maps.

        The contribution of prototype j to class c is its similarity score times the last-layer weight w[c, j];
        the explained class is ``target`` (default: the predicted class). Returns ``[PrototypeEvidence, Heatmap,
        Heatmap]``: the heatmaps draw the top prototype two ways, method ``prototype_activation`` its similarity map
        bilinearly upsampled to the input (the paper's drawing; with ``stitch_factor`` > 1 the map is first sampled
        on a denser grid by shift-and-stitch), method ``prototype_smoothgrad`` the SmoothGrad of
        its score (:meth:`prototype_smoothgrad`). Each match carries both drawings of its prototype (``drawings``,
        keyed by those methods; ``activation_map`` is the upsampled one). Before any push the source fields read
        ``""`` and ``(0, 0, 0, 0)``.
        """
        was_training = self.training
        self.eval()
        k = max(1, min(int(top_k), self.n_prototypes))
        weight = self.last_layer.weight.float()  # [C, P]
        matches: list[list[PrototypeMatch]] = []
        preds, targets, heat, grad_heat = [], [], [], []
        try:
            for i in range(0, len(x), batch_size):
                xb = as_tensor(x[i:i + batch_size], self.device)
                sim_maps = self.prototype_activations(xb)  # [B, P, h, w]
                scores = self.pool(sim_maps)  # [B, P]
                pred = self.last_layer(scores).argmax(dim=1)
                drawn = shift_and_stitch(self.prototype_activations, xb, self.stitch_factor, base=sim_maps)
                tb = pred if target is None else torch.as_tensor(np.asarray(target)[i:i + batch_size],
                                                                 device=xb.device, dtype=torch.long)
                contrib = scores * weight[tb]  # [B, P]
                order = rank_enabled(contrib, self.disabled, k)
                maps = F.interpolate(drawn, size=xb.shape[-2:], mode="bilinear", align_corners=False)
                grads = self.prototype_smoothgrad(xb, order).cpu().numpy()  # [B, k, H, W]
                for n in range(len(xb)):
                    case = []
                    for rank, j in enumerate(order[n].tolist()):
                        src, box = self._source(j)
                        up = maps[n, j].cpu().numpy().astype(np.float32)
                        case.append(PrototypeMatch(
                            prototype=j, prototype_class=int(self.prototype_class[j]),
                            similarity=float(scores[n, j]), contribution=float(contrib[n, j]),
                            source_case_id=src, source_box=box, activation_map=up,
                            drawings={"prototype_activation": up, "prototype_smoothgrad": grads[n, rank]}))
                    matches.append(case)
                heat.append(maps[torch.arange(len(xb)), order[:, 0]].cpu().numpy())
                grad_heat.append(grads[:, 0])
                preds.append(pred.cpu().numpy())
                targets.append(tb.cpu().numpy())
        finally:
            self.train(was_training)
        evidence = PrototypeEvidence(matches=matches, predicted=np.concatenate(preds), case_ids=case_ids)
        target_all = np.concatenate(targets)
        hm = Heatmap(maps=np.concatenate(heat), method="prototype_activation", target=target_all, case_ids=case_ids)
        sg = Heatmap(maps=np.concatenate(grad_heat), method="prototype_smoothgrad", target=target_all,
                     case_ids=case_ids)
        return [evidence, hm, sg]

    def explain_global(self) -> GlobalExplanation:
        """The prototype gallery: per prototype its class, source case and box, and last-layer weights."""
        weight = self.last_layer.weight.detach().float().cpu().numpy()
        gallery = []
        for j in range(self.n_prototypes):
            src, box = self._source(j)
            gallery.append({"prototype": j, "class": int(self.prototype_class[j]), "source_case_id": src,
                            "source_row": int(self.source_row[j]), "source_box": list(box),
                            "push_distance": float(self.push_distance[j]),
                            "last_layer_weights": weight[:, j].tolist(), "disabled": j in self.disabled})
        content = {"pushed": self.pushed, "n_pushes": self.n_pushes, "n_prototypes": self.n_prototypes,
                   "prototypes_per_class": self.prototypes_per_class, "prototypes": gallery}
        return GlobalExplanation(form="prototype_gallery", content=content)

    @torch.no_grad()
    def class_purity(self, caseset: Any, k: int = 5) -> float:
        """Mean over prototypes of the fraction of its ``k`` nearest images of ``caseset`` (the training cases; by
        nearest patch) that are of the prototype's class; one batched pass keeping a running top-k."""
        rows = np.arange(len(caseset.labels))
        labels = torch.as_tensor(np.asarray(caseset.labels), dtype=torch.long, device=self.device)
        was_training = self.training
        self.eval()
        top_d = torch.empty(self.n_prototypes, 0, device=self.device)
        top_y = torch.empty(self.n_prototypes, 0, dtype=torch.long, device=self.device)
        try:
            for i in range(0, len(rows), self.push_batch_size):
                r = rows[i:i + self.push_batch_size]
                d = self.prototype_distances(as_tensor(caseset.images[r], self.device)).flatten(2).amin(2).T  # [P, B]
                y = labels[torch.as_tensor(r, device=self.device)].expand(self.n_prototypes, -1)
                cat_d, cat_y = torch.cat([top_d, d], 1), torch.cat([top_y, y], 1)
                keep = cat_d.topk(min(k, cat_d.shape[1]), dim=1, largest=False).indices
                top_d, top_y = cat_d.gather(1, keep), cat_y.gather(1, keep)
        finally:
            self.train(was_training)
        return float((top_y == self.prototype_class[:, None]).float().mean())

    @torch.no_grad()
    def activation_precision(self, images: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                             top: float = 0.05) -> float:
        """Mean IAIA-BL activation precision (:func:`activation_precision`) over the cases with a lesion and the
        prototypes of their true class: how much of where a prototype fires most lies on the lesion."""
        values = []
        for out in batched_no_grad(self, images, 64, lambda xb: F.interpolate(
                self.prototype_activations(xb), size=xb.shape[-2:], mode="bilinear", align_corners=False)):
            values.append(out.cpu())
        if not values:
            return float("nan")
        act = torch.cat(values)
        lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        own = self.prototype_class.cpu()[None, :] == lab[:, None]
        v = activation_precision(act, torch.as_tensor(np.asarray(masks)), own, top)
        return float(v.mean()) if len(v) else float("nan")

    def reading_load(self, x: np.ndarray | torch.Tensor) -> dict:
        """The prototypes a reader compares with the case: those with a last-layer weight of at least 1e-3 in
        magnitude on the case's predicted class (mean over the cases ``x``)."""
        pred = self.predict_proba(x).argmax(1)
        per_class = (self.last_layer.weight.detach().abs() >= 1e-3).sum(dim=1).cpu().numpy()
        count = float(per_class[pred].mean()) if len(pred) else float(per_class.max())
        return {"count": count, "unit": "prototypes",
                "definition": "prototypes compared with the case (non-zero last-layer weight on its predicted class)"}

    def extra_metrics(self, test: Any, train: Any) -> dict:
        """Prototype-quality figures under ``explanation.prototype_quality``: counts, push throughput, how many
        sources lie on a lesion of their ``train`` case, class purity of each prototype's 5 nearest ``train``
        images, last-layer sparsity, and with lesion masks the activation precision on the ``test`` cases
        (IAIA-BL: the share of the top 5% of each own-class prototype's activation that lies on the lesion)."""
        out: dict[str, Any] = {"n_prototypes": self.n_prototypes, "pushed": self.pushed}
        if self.pushed:
            pairs = {(int(r), tuple(b)) for r, b in zip(self.source_row.tolist(), self.source_box.tolist())}
            out["n_distinct_prototypes"] = len(pairs)
        else:
            out["n_distinct_prototypes"] = int(torch.unique(self.prototypes.detach().flatten(1), dim=0).shape[0])
        out["push_images_per_second"] = self.push_images_per_second
        if self.pushed:
            fraction = fraction_on_lesion(self.source_case_ids, self.source_box.tolist(), train)
            if fraction is not None:
                out["fraction_source_in_lesion"] = fraction
        out["class_purity"] = self.class_purity(train, k=5)
        if test.masks is not None and np.asarray(test.masks).any():
            out["activation_precision"] = self.activation_precision(test.images, test.masks, test.labels)
        out["last_layer_sparsity"] = float((self.last_layer.weight.detach().abs() < 1e-3).float().mean())
        return {"explanation": {"prototype_quality": out}}


class ProtoPNetSchedule(Callback):
    """Runs ProtoPNet's stages in a Lightning fit: freezes parts per epoch and pushes at the scheduled epochs.

    Args:
        model: the :class:`ProtoPNet` being trained.
        caseset: the run's CaseSet (the push reads its training split only).
    """

    def __init__(self, model: ProtoPNet, caseset: Any) -> None:
        self.model = model
        self.caseset = caseset

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        need = self.model.total_epochs
        if trainer.max_epochs != need:
            raise ConfigError(
                f"protopnet: training.max_epochs must equal the stage schedule's {need} epochs "
                f"(warm-up + joint + last-layer epochs after each of {len(self.model.push_epochs)} push(es)), "
                f"got {trainer.max_epochs}; set the model's training: {{max_epochs: {need}}}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = int(trainer.current_epoch)
        if epoch in self.model.push_epochs:
            self.model.push(self.caseset)
            if self.model.fit_last_layer_after_push:
                self.model.fit_last_layer(self.caseset)
        self.model.set_stage(self.model.stage_of(epoch))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.model.set_stage(None)

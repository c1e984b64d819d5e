"""Settings of the training layer: how image models are trained and how feature tables are built.

These are the parts of an experiment config that ``glasszoo.training`` reads; the experiment layer
(``glasszoo.evaluation.experiment.config``) parses YAML into them and validates the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glasszoo.models.errors import ConfigError
from glasszoo.training.radiomics import DEFAULT_FEATURE_CLASSES, validate_options


@dataclass
class AugmentConfig:
    """Training-time augmentation of image batches (geometric ones are applied to masks too)."""

    hflip: bool = True
    vflip: bool = False
    rotate90: bool = False
    rotate: float = 0.0  # max degrees of a random rotation
    translate: float = 0.0  # max shift as a fraction of the side
    scale: float = 0.0  # max relative zoom in/out
    brightness: float = 0.0  # max additive shift of intensity
    contrast: float = 0.0  # max relative change of contrast


@dataclass
class TrainingConfig:
    """How image models are trained (defaults for every model; a model entry can override any key)."""

    max_epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    patience: int = 10
    class_weighting: str = "auto"
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    accelerator: str = "auto"  # auto (a GPU when there is one), cpu, gpu, cuda, mps
    devices: Any = "auto"  # auto, a count (e.g. 4; -1 = all), or a list of device indices (e.g. [0, 2])
    precision: str = "32-true"  # or bf16-mixed, 16-mixed (automatic mixed precision)
    channels_last: bool = False  # train in the NHWC memory layout (faster convolutions on GPUs with mixed precision)
    num_workers: int = 0  # data-loader worker processes (kept alive across epochs)
    pin_memory: Any = "auto"  # pinned host memory for batches: auto (on when training on a GPU), true, false
    strategy: str = "auto"  # Lightning strategy: auto, ddp, ddp_spawn, ... (several devices or nodes)
    num_nodes: int = 1  # machines for multi-node distributed training
    deterministic: bool = True
    progress_bar: bool = True


def _default_feature_classes() -> list[str]:
    return list(DEFAULT_FEATURE_CLASSES)


@dataclass
class FeaturesConfig:
    """The feature table read by tabular models: ``intensity`` (built-in first-order set) or ``radiomics``
    (pyradiomics; see ``glasszoo.training.radiomics`` for every policy).

    Attributes:
        kind: ``"intensity"`` or ``"radiomics"``.
        region: ``"mask"`` (the lesion mask when the data has masks, else the whole image: at test time this reads
            the expert's outline of the test case, an oracle the image models do not get), ``"predicted"`` (the
            lesion predicted by the run's segmentation model, ``segmenter``, for every case: the pipeline then needs
            no outline of a new image), ``"image"``, or (radiomics only) ``"otsu"`` (foreground by Otsu's
            threshold).
        segmenter: with ``region: predicted``, the name of the run's model whose masks are used (default: the first
            model of the config that segments, e.g. the attention U-Net); it is trained before the models reading
            them.
        settings: pyradiomics settings merged over ``radiomics.DEFAULT_SETTINGS`` (``binWidth: 8`` on the 0..255
            grey image, ``label: 1``, no normalisation, no resampling); validated by pyradiomics' schema.
        feature_classes: pyradiomics feature classes (default: firstorder, shape2D, glcm, glrlm, glszm, ngtdm, gldm).
        image_types: pyradiomics image types (default ``["Original"]``; ``LoG`` needs ``settings.sigma``).
        n_jobs: worker processes for the extraction (-1: all cores).
        cache: keep the extracted table on disk, keyed by the data content, settings and pyradiomics version.
        cache_dir: where (default ``$GLASSZOO_CACHE/radiomics`` or ``~/.cache/glasszoo/radiomics``).
        on_failure: cases whose features cannot be computed: ``"impute"`` (training-split median),
            ``"drop_feature"`` or ``"error"``.
        empty_mask: an empty lesion mask is a failure (``"fail"``, handled by ``on_failure``) or uses the whole image
            (``"image"``).
        progress_bar: show a progress bar during the extraction.
    """

    kind: str = "intensity"
    region: str = "mask"
    segmenter: str | None = None
    settings: dict = field(default_factory=dict)
    feature_classes: list[str] = field(default_factory=_default_feature_classes)
    image_types: list[str] = field(default_factory=lambda: ["Original"])
    n_jobs: int = 1
    cache: bool = True
    cache_dir: str | None = None
    on_failure: str = "impute"
    empty_mask: str = "fail"
    progress_bar: bool = True

    def __post_init__(self) -> None:
        kinds = ("intensity", "radiomics")
        if self.kind not in kinds:
            raise ConfigError(f"features.kind: must be one of {list(kinds)}, got {self.kind!r}")
        if self.segmenter is not None and self.region != "predicted":
            raise ConfigError(f"features.segmenter only applies with features.region: predicted "
                              f"(region is {self.region!r})")
        if self.cache_dir is not None and not isinstance(self.cache_dir, str):
            raise ConfigError(f"features.cache_dir: expected a path string or null, got {self.cache_dir!r}")
        if self.kind == "intensity":
            if self.region not in ("mask", "image", "predicted"):
                raise ConfigError(f"features.region: must be 'mask', 'predicted' or 'image' for kind 'intensity', "
                                  f"got {self.region!r}")
            return
        region = "mask" if self.region == "predicted" else self.region  # predicted masks are read as masks
        validate_options(self.settings, self.feature_classes, self.image_types, region, self.empty_mask,
                         self.on_failure, self.n_jobs)

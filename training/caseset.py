"""The one data contract every source produces and every model reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from glasszoo.training.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class CaseSet:
    """An in-memory description of one labelled image data set with a fixed split.

    Attributes:
        images: float32 [N, C, H, W] with values in [0, 1].
        labels: int64 [N], values in ``range(len(class_names))``.
        class_names: one name per class.
        case_ids: one unique string id per case.
        split: [N] strings, each one of ``"train"``, ``"val"``, ``"test"``.
        masks: optional uint8 [N, H, W] lesion masks (1 inside the lesion).
        concepts: optional float32 [N, K] clinical concepts (binary concepts are 0/1).
        concept_names: names of the K concept columns.
        meta: extra per-case arrays of length N (e.g. the synthetic shortcut marker flag).
        name: a short name for reports.
        positive_class: index of the class treated as positive for sensitivity/specificity (binary tasks).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    case_ids: np.ndarray
    split: np.ndarray
    masks: np.ndarray | None = None
    concepts: np.ndarray | None = None
    concept_names: list[str] = field(default_factory=list)
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "dataset"
    positive_class: int = 1

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        self.labels = np.asarray(self.labels).astype(np.int64).reshape(-1)
        self.case_ids = np.asarray([str(c) for c in self.case_ids], dtype=object)
        self.split = np.asarray([str(s) for s in self.split], dtype=object)
        self.class_names = [str(c) for c in self.class_names]
        self.concept_names = [str(c) for c in self.concept_names]
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`DataError` naming the field when the contract does not hold."""
        src = f"data set '{self.name}'"
        if self.images.ndim != 4:
            raise DataError(f"{src}: images must be [N, C, H, W], got shape {self.images.shape}")
        if self.images.dtype != np.float32:
            raise DataError(f"{src}: images must be float32, got {self.images.dtype}")
        n = self.images.shape[0]
        if n == 0:
            raise DataError(f"{src}: no cases")
        if self.images.shape[1] not in (1, 3):
            raise DataError(f"{src}: images must have 1 or 3 channels, got {self.images.shape[1]}")
        if not np.isfinite(self.images).all():
            bad = int(np.flatnonzero(~np.isfinite(self.images.reshape(n, -1)).all(axis=1))[0])
            raise DataError(f"{src}: images contain non-finite pixels (first at case '{self.case_ids[bad]}')")
        lo, hi = float(self.images.min()), float(self.images.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"{src}: image values must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]")
        for fname, arr in (("labels", self.labels), ("case_ids", self.case_ids), ("split", self.split)):
            if len(arr) != n:
                raise DataError(f"{src}: {n} images but {len(arr)} {fname}")
        k = len(self.class_names)
        if k < 2:
            raise DataError(f"{src}: need at least 2 classes, got class_names={self.class_names}")
        if self.labels.min() < 0 or self.labels.max() >= k:
            raise DataError(f"{src}: labels must lie in 0..{k - 1} (class_names={self.class_names}), "
                            f"found {sorted(set(self.labels.tolist()) - set(range(k)))}")
        if len(set(self.case_ids.tolist())) != n:
            ids, counts = np.unique(self.case_ids.astype(str), return_counts=True)
            raise DataError(f"{src}: case ids must be unique; duplicated: {ids[counts > 1][:5].tolist()}")
        bad_split = sorted(set(self.split.tolist()) - set(SPLITS))
        if bad_split:
            raise DataError(f"{src}: split values must be one of {SPLITS}, found {bad_split}")
        for s in SPLITS:
            in_split = self.labels[self.split == s]
            if len(in_split) == 0:
                raise DataError(f"{src}: split '{s}' has no cases")
            missing = [self.class_names[c] for c in range(k) if not (in_split == c).any()]
            if missing:
                raise DataError(f"{src}: class {missing} has no examples in split '{s}'")
        if self.masks is not None:
            self.masks = np.asarray(self.masks)
            if self.masks.shape != (n, *self.images.shape[2:]):
                raise DataError(f"{src}: masks must have shape {(n, *self.images.shape[2:])}, got {self.masks.shape}")
            self.masks = (self.masks > 0).astype(np.uint8)
        if self.concepts is not None:
            self.concepts = np.asarray(self.concepts, dtype=np.float32)
            if self.concepts.ndim != 2 or self.concepts.shape[0] != n:
                raise DataError(f"{src}: concepts must be [N={n}, K], got {self.concepts.shape}")
            if len(self.concept_names) != self.concepts.shape[1]:
                raise DataError(f"{src}: {self.concepts.shape[1]} concept columns but "
                                f"{len(self.concept_names)} concept_names")
            if not np.isfinite(self.concepts).all():
                raise DataError(f"{src}: concepts contain non-finite values")
        for key, arr in self.meta.items():
            if len(arr) != n:
                raise DataError(f"{src}: meta['{key}'] has {len(arr)} values for {n} cases")
        if not 0 <= self.positive_class < k:
            raise DataError(f"{src}: positive_class={self.positive_class} is not a class index (0..{k - 1})")

    # ------------------------------------------------------------------ views
    @property
    def n_cases(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.images.shape[1])

    @property
    def img_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def indices(self, split: str) -> np.ndarray:
        """Indices of the cases in ``split`` (in data set order)."""
        if split not in SPLITS:
            raise KeyError(f"unknown split '{split}'; expected one of {SPLITS}")
        return np.flatnonzero(self.split == split)

    def subset(self, idx: np.ndarray) -> CaseSet:
        """A new CaseSet holding only the cases at ``idx`` (split labels kept; not re-validated per split)."""
        idx = np.asarray(idx)
        out = object.__new__(CaseSet)
        out.images = self.images[idx]
        out.labels = self.labels[idx]
        out.class_names = list(self.class_names)
        out.case_ids = self.case_ids[idx]
        out.split = self.split[idx]
        out.masks = None if self.masks is None else self.masks[idx]
        out.concepts = None if self.concepts is None else self.concepts[idx]
        out.concept_names = list(self.concept_names)
        out.meta = {k: np.asarray(v)[idx] for k, v in self.meta.items()}
        out.name = self.name
        out.positive_class = self.positive_class
        return out

    def summary(self) -> dict:
        """A JSON-ready description: counts per split and class, shapes, what is present."""
        per_split = {
            s: {name: int(((self.split == s) & (self.labels == c)).sum()) for c, name in enumerate(self.class_names)}
            for s in SPLITS
        }
        return {
            "name": self.name,
            "n_cases": self.n_cases,
            "image_shape": list(self.images.shape[1:]),
            "class_names": list(self.class_names),
            "positive_class": self.class_names[self.positive_class],
            "cases_per_split": per_split,
            "has_masks": self.masks is not None,
            "concept_names": list(self.concept_names),
            "meta_fields": sorted(self.meta),
        }

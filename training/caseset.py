"""The one data contract every source produces and every model reads."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glasszoo.models.errors import DataError

SPLITS = ("train", "val", "test")
_CHECK_BYTES = 64 << 20  # the image checks read the array in slices of about this size


def cache_root() -> Path:
    """glasszoo's on-disk cache: ``$GLASSZOO_CACHE``, else ``$XDG_CACHE_HOME/glasszoo``, else ``~/.cache/glasszoo``."""
    if os.environ.get("GLASSZOO_CACHE"):
        return Path(os.environ["GLASSZOO_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base).expanduser() / "glasszoo"


class NpyWriter:
    """Write an ``.npy`` array of known shape slice by slice (rows in order), without holding it in memory.

    The file appears under ``path`` only when :meth:`close` is called after every row was written (written to a
    temporary name first, then renamed: concurrent writers of the same file cannot leave a torn one). Read it back
    with :func:`open_npy`.
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: np.dtype | str) -> None:
        self.path = Path(path)
        self.shape, self.dtype = tuple(int(x) for x in shape), np.dtype(dtype)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        self._fh = open(self._tmp, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._fh, header)
        self.rows = 0

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or self.rows + len(block) > self.shape[0]:
            raise ValueError(f"block of shape {block.shape} does not fit rows {self.rows}.. of {self.shape}")
        self._fh.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> Path:
        self._fh.close()
        if self.rows != self.shape[0]:
            self._tmp.unlink(missing_ok=True)
            raise ValueError(f"{self.path}: {self.rows} of {self.shape[0]} rows written")
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


def open_npy(path: str | Path) -> np.memmap:
    """A memory-mapped, copy-on-write view of an ``.npy`` file: pages are read from disk when used, and writes
    (if any code makes them) stay in this process's memory, never in the file."""
    return np.load(path, mmap_mode="c")


@dataclass
class CaseSet:
    """One labelled image data set with a fixed split.

    Attributes:
        images: float32 [N, C, H, W] with values in [0, 1]; an array in memory, or a memory map (``np.memmap``, see
            :func:`open_npy`) for data sets larger than memory should hold: every consumer indexes it like an array.
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
        ordinal: the classes are ordered grades (class index = grade): runs add the quadratic-weighted kappa.
        checks: what was checked of the data while loading it (``"duplicates"``: the near-duplicate report of
            :mod:`glasszoo.training.duplicates`); recorded under ``metrics.json``'s ``dataset``.
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
    checks: dict = field(default_factory=dict)
    ordinal: bool = False

    def __post_init__(self) -> None:
        self.images = np.asanyarray(self.images)  # keeps a memory map a memory map
        self.labels = np.asarray(self.labels).astype(np.int64).reshape(-1)
        self.case_ids = np.asarray([str(c) for c in self.case_ids], dtype=object)
        self.split = np.asarray([str(s) for s in self.split], dtype=object)
        self.class_names = [str(c) for c in self.class_names]
        self.concept_names = [str(c) for c in self.concept_names]
        self.validate()

    @property
    def memory_mapped(self) -> bool:
        """Whether the images are a memory map (read from disk on use) rather than an array in memory."""
        return isinstance(self.images, np.memmap)

    # ------------------------------------------------------------------ checks
    def _image_slices(self):
        n = self.images.shape[0]
        step = max(1, _CHECK_BYTES // max(1, self.images[:1].nbytes))
        for start in range(0, n, step):
            yield start, np.asarray(self.images[start:start + step])

    def validate(self) -> None:
        """Raise :class:`DataError` naming the field when the contract does not hold.

        The image checks read the images in slices, so a memory-mapped set is never loaded whole.
        """
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
        lo, hi = np.inf, -np.inf
        for start, block in self._image_slices():
            finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
            if not finite.all():
                bad = start + int(np.flatnonzero(~finite)[0])
                raise DataError(f"{src}: images contain non-finite pixels (first at case '{self.case_ids[bad]}')")
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
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
            self.masks = np.asanyarray(self.masks)
            if self.masks.shape != (n, *self.images.shape[2:]):
                raise DataError(f"{src}: masks must have shape {(n, *self.images.shape[2:])}, got {self.masks.shape}")
            if isinstance(self.masks, np.memmap) and self.masks.dtype == np.uint8:
                # already 0/1 bytes on disk (checked in slices): keep the map instead of loading a copy
                step = max(1, _CHECK_BYTES // max(1, self.masks[:1].nbytes))
                if any(np.asarray(self.masks[i:i + step]).max(initial=0) > 1 for i in range(0, n, step)):
                    self.masks = (self.masks > 0).astype(np.uint8)
            else:
                self.masks = (np.asarray(self.masks) > 0).astype(np.uint8)
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
        out.checks = dict(self.checks)
        out.ordinal = self.ordinal
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
            # multi-class scores are one-vs-rest macro averages: no class is "the positive one"
            **({"positive_class": self.class_names[self.positive_class]} if self.num_classes == 2 else {}),
            "cases_per_split": per_split,
            "has_masks": self.masks is not None,
            "concept_names": list(self.concept_names),
            "meta_fields": sorted(self.meta),
            **({"ordinal": True} if self.ordinal else {}),
            **self.checks,
        }

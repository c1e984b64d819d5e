"""A LightningDataModule over a CaseSet, serving whole batches with batched augmentation.

Batches are dicts: ``image`` [B, C, H, W], ``label`` [B], ``index`` [B] (row in the CaseSet) and, when the data has
them, ``mask`` [B, H, W] and ``concepts`` [B, K]. A dataset indexed by a *list* of rows lets one tensor gather
build each batch, instead of collating B single items, so the loader is not the bottleneck on small images.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from glasszoo.training.caseset import CaseSet
from glasszoo.training.config import AugmentConfig


def augment_batch(image: torch.Tensor, mask: torch.Tensor | None, cfg: AugmentConfig,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random flips, 90-degree turns, affine jitter and intensity jitter, drawn per case.

    Geometric transforms are applied identically to ``mask`` (nearest neighbour). Output stays in [0, 1].
    """
    b = image.shape[0]

    def coin(p: float = 0.5) -> torch.Tensor:
        return torch.rand(b, generator=generator) < p

    m = None if mask is None else mask[:, None].float()
    if cfg.hflip:
        sel = coin()
        image = torch.where(sel[:, None, None, None], image.flip(-1), image)
        if m is not None:
            m = torch.where(sel[:, None, None, None], m.flip(-1), m)
    if cfg.vflip:
        sel = coin()
        image = torch.where(sel[:, None, None, None], image.flip(-2), image)
        if m is not None:
            m = torch.where(sel[:, None, None, None], m.flip(-2), m)
    if cfg.rotate90 and image.shape[-1] == image.shape[-2]:
        k = torch.randint(0, 4, (b,), generator=generator)
        for turns in (1, 2, 3):
            sel = (k == turns)[:, None, None, None]
            image = torch.where(sel, image.rot90(turns, (-2, -1)), image)
            if m is not None:
                m = torch.where(sel, m.rot90(turns, (-2, -1)), m)
    if cfg.rotate > 0 or cfg.translate > 0 or cfg.scale > 0:
        ang = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(cfg.rotate)
        zoom = 1 + (torch.rand(b, generator=generator) * 2 - 1) * cfg.scale
        shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * cfg.translate * 2  # grid units span 2
        cos, sin = torch.cos(ang) / zoom, torch.sin(ang) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        image = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if m is not None:
            m = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if cfg.contrast > 0:
        c = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * cfg.contrast
        mean = image.mean(dim=(1, 2, 3), keepdim=True)
        image = (image - mean) * c + mean
    if cfg.brightness > 0:
        image = image + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * cfg.brightness
    image = image.clamp(0, 1)
    return image, (None if m is None else m[:, 0].round().to(mask.dtype))


class CaseBatches(Dataset):
    """Rows of a CaseSet, indexed by a list of row numbers (one item = one batch)."""

    def __init__(self, cs: CaseSet, rows: np.ndarray, augment: AugmentConfig | None = None) -> None:
        self.rows = np.asarray(rows)
        self.images = torch.from_numpy(np.ascontiguousarray(cs.images[self.rows]))
        self.labels = torch.from_numpy(cs.labels[self.rows])
        self.masks = None if cs.masks is None else torch.from_numpy(np.ascontiguousarray(cs.masks[self.rows]))
        self.concepts = None if cs.concepts is None else torch.from_numpy(cs.concepts[self.rows])
        self.augment = augment

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        image = self.images[idx_t]
        mask = None if self.masks is None else self.masks[idx_t]
        if self.augment is not None:
            image, mask = augment_batch(image, mask, self.augment)
        batch = {"image": image, "label": self.labels[idx_t], "index": torch.from_numpy(self.rows[idx_t.numpy()])}
        if mask is not None:
            batch["mask"] = mask
        if self.concepts is not None:
            batch["concepts"] = self.concepts[idx_t]
        return batch


class CaseSetDataModule(L.LightningDataModule):
    """Train/val/test loaders over one CaseSet and its fixed split.

    Args:
        caseset: the data.
        batch_size: cases per batch.
        augmentation: training-time augmentation (None: none).
        num_workers: loader worker processes (0 = in the main process).
        seed: seeds the shuffling order.
        pin_memory: pin batches for faster host-to-GPU copies (only useful on a GPU).
    """

    def __init__(self, caseset: CaseSet, batch_size: int = 64, augmentation: AugmentConfig | None = None,
                 num_workers: int = 0, seed: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        self.caseset = caseset
        self.batch_size = batch_size
        self.augmentation = augmentation
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory
        self._sets: dict[str, CaseBatches] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._sets:
            return
        for split in ("train", "val", "test"):
            aug = self.augmentation if split == "train" else None
            self._sets[split] = CaseBatches(self.caseset, self.caseset.indices(split), aug)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        ds = self._sets[split]
        if shuffle:
            gen = torch.Generator().manual_seed(self.seed)
            base = RandomSampler(ds, generator=gen)
        else:
            base = SequentialSampler(ds)
        # a lone last training case would make a batch of one, which BatchNorm cannot train on
        drop_last = shuffle and len(ds) % self.batch_size == 1
        sampler = BatchSampler(base, batch_size=self.batch_size, drop_last=drop_last)
        return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def class_weights(self, mode: str = "auto") -> torch.Tensor | None:
        """Inverse-frequency weights ``N / (K * n_k)`` from the training split.

        ``balanced`` always weights; ``auto`` weights only when the largest class is over 1.5x the smallest;
        ``none`` gives None.
        """
        if mode == "none":
            return None
        counts = np.bincount(self.caseset.labels[self.caseset.indices("train")], minlength=self.caseset.num_classes)
        if mode == "auto" and counts.max() <= 1.5 * counts.min():
            return None
        return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)

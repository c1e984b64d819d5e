"""A LightningDataModule over a CaseSet, serving whole batches with batched augmentation.

Batches are dicts: ``image`` [B, C, H, W], ``label`` [B], ``index`` [B] (row in the CaseSet) and, when the data has
them, ``mask`` [B, H, W] and ``concepts`` [B, K]. A dataset indexed by a *list* of rows lets one gather build each
batch, instead of collating B single items, so the loader is not the bottleneck on small images; the gather reads
the CaseSet's own arrays (in memory or memory-mapped), never a copy of a whole split. Shuffling and augmentation are
seeded per epoch and batch, so the batches are the same with 0 or more loader workers.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from glasszoo.training.caseset import CaseSet
from glasszoo.training.settings import AugmentConfig


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


def augments_anything(cfg: AugmentConfig) -> bool:
    """Whether ``cfg`` switches on any transform (an all-off config is skipped, not applied as an identity)."""
    return bool(cfg.hflip or cfg.vflip or cfg.rotate90 or cfg.rotate > 0 or cfg.translate > 0 or cfg.scale > 0
                or cfg.brightness > 0 or cfg.contrast > 0)


def _seed_of(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (numpy's SeedSequence), for per-batch generators."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class SeededBatches(Sampler):
    """Batches of positions ``0..n-1`` for :class:`CaseBatches`: each item is ``(key, positions)``.

    The order of an epoch depends only on ``(seed, epoch)`` (not on how often it was drawn before), and ``key``
    seeds that batch's augmentation, so batches are the same with any number of loader workers. Under distributed
    training each of ``world_size`` ranks takes every ``world_size``-th case of the epoch's order (padded by
    repeating cases so every rank runs the same number of batches). The epoch is set by Lightning through
    :meth:`set_epoch`, and otherwise advances by one per iteration.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = int(n), int(batch_size), bool(shuffle), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _positions(self, epoch: int) -> np.ndarray:
        pos = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        if self.world_size > 1:
            per_rank = -(-self.n // self.world_size)
            pos = np.resize(pos, per_rank * self.world_size)[self.rank::self.world_size]
        return pos

    def _n_batches(self) -> tuple[int, int]:
        """(number of batches, cases served) of one epoch on this rank."""
        m = -(-self.n // self.world_size) if self.world_size > 1 else self.n
        # a lone last training case would make a batch of one, which BatchNorm cannot train on
        if self.shuffle and m % self.batch_size == 1 and m > 1:
            m -= 1
        return -(-m // self.batch_size), m

    def __len__(self) -> int:
        return self._n_batches()[0]

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        _, m = self._n_batches()
        pos = self._positions(epoch)[:m]
        for b, start in enumerate(range(0, m, self.batch_size)):
            yield (epoch, b, self.rank), pos[start:start + self.batch_size]


class CaseBatches(Dataset):
    """The cases ``rows`` of a CaseSet, read a whole batch at a time (one item = one batch).

    Items are ``(key, positions)`` pairs from :class:`SeededBatches` (``positions`` index ``rows``) or a plain list
    of positions. The CaseSet's arrays are not copied: each batch gathers its rows from them, so memory-mapped
    images (large synthetic sets) stay on disk until a batch needs them. Augmentation of a batch draws from a
    generator seeded by ``(seed, key)``, so it does not depend on the worker that builds the batch.
    """

    def __init__(self, cs: CaseSet, rows: np.ndarray, augment: AugmentConfig | None = None, seed: int = 0) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        self.images = cs.images
        self.labels = cs.labels
        self.masks = cs.masks
        self.concepts = cs.concepts
        self.augment = augment if augment is not None and augments_anything(augment) else None
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item) -> dict[str, torch.Tensor]:
        key, pos = item if isinstance(item, tuple) else ((), item)
        rows = self.rows[np.asarray(pos, dtype=np.int64)]
        image = torch.from_numpy(np.asarray(np.take(self.images, rows, axis=0)))
        mask = None if self.masks is None else torch.from_numpy(np.asarray(np.take(self.masks, rows, axis=0)))
        if self.augment is not None:
            gen = torch.Generator().manual_seed(_seed_of(self.seed, 7, *key))
            image, mask = augment_batch(image, mask, self.augment, generator=gen)
        batch = {"image": image, "label": torch.from_numpy(self.labels[rows]), "index": torch.from_numpy(rows)}
        if mask is not None:
            batch["mask"] = mask
        if self.concepts is not None:
            batch["concepts"] = torch.from_numpy(self.concepts[rows])
        return batch

    # a memory-mapped array travels to spawned workers as its file name, not as its contents
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in ("images", "masks"):
            arr = state[name]
            if isinstance(arr, np.memmap) and arr.filename is not None:
                state[name] = ("__memmap__", arr.filename, arr.offset, arr.dtype.str, arr.shape, arr.mode)
        return state

    def __setstate__(self, state: dict) -> None:
        for name in ("images", "masks"):
            v = state[name]
            if isinstance(v, tuple) and v and v[0] == "__memmap__":
                _, fname, offset, dtype, shape, mode = v
                state[name] = np.memmap(fname, dtype=np.dtype(dtype), mode=mode, offset=offset, shape=shape)
        self.__dict__.update(state)


class CaseSetDataModule(L.LightningDataModule):
    """Train/val/test loaders over one CaseSet and its fixed split.

    Args:
        caseset: the data.
        batch_size: cases per batch.
        augmentation: training-time augmentation (None: none).
        num_workers: loader worker processes (0 = in the main process); workers are kept alive across epochs.
        seed: seeds the shuffling order and the augmentation (per epoch and batch).
        pin_memory: pin batches for faster host-to-GPU copies (only useful on a GPU).

    Under distributed training (Lightning's DDP) each rank reads its own share of every epoch; the split into
    shares is done here (the trainer must not replace the sampler: ``use_distributed_sampler=False``).
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
            self._sets[split] = CaseBatches(self.caseset, self.caseset.indices(split), aug, seed=self.seed)

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        ds = self._sets[split]
        rank, world = self._rank()
        sampler = SeededBatches(len(ds), self.batch_size, shuffle, seed=self.seed, rank=rank, world_size=world)
        workers = self.num_workers
        return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=workers, pin_memory=self.pin_memory,
                          persistent_workers=workers > 0)

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

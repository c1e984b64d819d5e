"""Batches, augmentation and class weights."""

from __future__ import annotations

import numpy as np
import torch

from glasszoo.training import CaseSet
from glasszoo.training.datamodule import CaseSetDataModule, augment_batch
from glasszoo.training.settings import AugmentConfig


def caseset(n=40, side=8):
    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 10)
    split = np.array((["train"] * 20 + ["val"] * 5 + ["test"] * 5) + (["train"] * 6 + ["val"] * 2 + ["test"] * 2))
    masks = np.zeros((n, side, side), np.uint8)
    masks[:, 1:3, 5:7] = 1
    return CaseSet(images=rng.random((n, 1, side, side), dtype=np.float32), labels=labels, class_names=["a", "b"],
                   case_ids=[f"c{i}" for i in range(n)], split=split, masks=masks,
                   concepts=rng.integers(0, 2, (n, 2)).astype(np.float32), concept_names=["x", "y"])


def test_batches_cover_each_split_once_and_carry_everything():
    cs = caseset()
    dm = CaseSetDataModule(cs, batch_size=8, augmentation=None, seed=0)
    seen = []
    for batch in dm.train_dataloader():
        assert set(batch) == {"image", "label", "index", "mask", "concepts"}
        assert batch["image"].shape[1:] == (1, 8, 8) and batch["image"].dtype == torch.float32
        np.testing.assert_array_equal(batch["image"].numpy(), cs.images[batch["index"].numpy()])
        np.testing.assert_array_equal(batch["label"].numpy(), cs.labels[batch["index"].numpy()])
        seen += batch["index"].tolist()
    assert sorted(seen) == sorted(cs.indices("train").tolist())
    val = [i for b in dm.val_dataloader() for i in b["index"].tolist()]
    assert val == cs.indices("val").tolist()  # sequential, in data set order


def test_shuffle_is_seeded():
    cs = caseset()
    order = [[i for b in CaseSetDataModule(cs, 4, seed=s).train_dataloader() for i in b["index"].tolist()]
             for s in (1, 1, 2)]
    assert order[0] == order[1] and order[0] != order[2]


def test_no_batch_of_one_in_training():
    cs = caseset()  # 26 training cases
    sizes = [len(b["label"]) for b in CaseSetDataModule(cs, batch_size=5).train_dataloader()]
    assert 1 not in sizes and sum(sizes) == 25


def test_flips_move_image_and_mask_together():
    img = torch.zeros(64, 1, 8, 8)
    img[:, :, 1:3, 5:7] = 1.0
    mask = (img[:, 0] > 0).to(torch.uint8)
    out, m = augment_batch(img, mask, AugmentConfig(hflip=True, vflip=True, rotate90=True))
    assert torch.equal((out[:, 0] > 0.5).to(torch.uint8), m)
    assert (out.sum(dim=(1, 2, 3)) == 4).all()  # pixels are moved, never created or lost
    assert len({tuple(x.flatten().nonzero().flatten().tolist()) for x in out}) > 1  # cases are transformed differently


def test_affine_and_intensity_stay_in_range_and_identity_when_off():
    torch.manual_seed(0)
    img = torch.rand(16, 3, 16, 16)
    same, _ = augment_batch(img, None, AugmentConfig(hflip=False))
    assert torch.equal(same, img)
    out, _ = augment_batch(img, None, AugmentConfig(rotate=15, translate=0.1, scale=0.1, brightness=0.2, contrast=0.2))
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1 and not torch.equal(out, img)


def test_class_weights():
    dm = CaseSetDataModule(caseset())
    w = dm.class_weights("auto")  # 20 vs 6 training cases: imbalanced
    torch.testing.assert_close(w, torch.tensor([26 / (2 * 20), 26 / (2 * 6)]))
    assert dm.class_weights("none") is None

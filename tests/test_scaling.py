"""Large data without holding it in memory: memory-mapped synthetic sets (cache, threshold, identical arrays), batches
read from the map, chunked CaseSet checks, and the config of the scaling benchmark."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from glasszoo.models.errors import ConfigError, DataError
from glasszoo.training import caseset as caseset_module
from glasszoo.training import synthetic
from glasszoo.training.caseset import CaseSet, NpyWriter, open_npy
from glasszoo.training.data import load_caseset
from glasszoo.training.datamodule import CaseSetDataModule
from glasszoo.training.settings import AugmentConfig
from glasszoo.training.synthetic import make_synthetic

ARGS = {"n_cases": 90, "img_size": 24, "shortcut_rate": 0.9, "channels": 3, "seed": 4}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GLASSZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GLASSZOO_MEMMAP_MIN_BYTES", raising=False)
    return tmp_path / "cache"


def assert_same(a: CaseSet, b: CaseSet) -> None:
    assert a.images.shape == b.images.shape and a.images.dtype == b.images.dtype
    assert a.images.tobytes() == b.images.tobytes()
    assert a.masks.dtype == b.masks.dtype and a.masks.tobytes() == b.masks.tobytes()
    for name in ("labels", "concepts", "split", "case_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.meta.keys() == b.meta.keys()
    for key in a.meta:
        np.testing.assert_array_equal(a.meta[key], b.meta[key])


def test_memory_mapped_set_equals_the_in_memory_one(cache):
    ram = make_synthetic(**ARGS, memmap=False)
    mapped = make_synthetic(**ARGS, memmap=True)
    assert not ram.memory_mapped and mapped.memory_mapped
    assert isinstance(mapped.images, np.memmap) and isinstance(mapped.masks, np.memmap)
    assert str(cache / "synthetic") in str(mapped.images.filename)
    assert_same(ram, mapped)


def test_second_call_reads_the_cache(cache, monkeypatch):
    first = make_synthetic(**ARGS, memmap=True)
    files = sorted(p.name for p in (cache / "synthetic").iterdir())
    assert len(files) == 2 and not any(f.endswith(".tmp") for f in files)

    def no_render(*args, **kwargs):
        raise AssertionError("rendered again despite the cache")

    monkeypatch.setattr(synthetic, "_render_chunk", no_render)
    again = make_synthetic(**ARGS, memmap=True)
    assert_same(first, again)
    with pytest.raises(AssertionError, match="rendered again"):  # other arguments: another entry, rendered
        make_synthetic(**{**ARGS, "seed": 5}, memmap=True)


def test_threshold_chooses_the_memory_map(monkeypatch):
    monkeypatch.setattr(synthetic, "MEMMAP_MIN_BYTES", 10_000)
    assert make_synthetic(n_cases=40, img_size=16, seed=0).memory_mapped  # 40 * 16 * 16 * 4 bytes >= 10 kB
    assert not make_synthetic(n_cases=30, img_size=16, seed=0, memmap=False).memory_mapped
    monkeypatch.setattr(synthetic, "MEMMAP_MIN_BYTES", 1 << 30)
    assert not make_synthetic(n_cases=40, img_size=16, seed=0).memory_mapped
    monkeypatch.setenv("GLASSZOO_MEMMAP_MIN_BYTES", "1000")
    assert make_synthetic(n_cases=40, img_size=16, seed=0).memory_mapped


def test_memmap_is_a_data_key():
    cs = load_caseset({"source": "synthetic", "n_cases": 40, "img_size": 16, "memmap": True}, seed=1)
    assert cs.memory_mapped
    with pytest.raises(ConfigError, match="data.memmap"):
        load_caseset({"source": "synthetic", "n_cases": 40, "img_size": 16, "memmap": "yes"})


def test_batches_read_from_the_map_without_copying_it():
    ram = make_synthetic(**ARGS, memmap=False)
    mapped = make_synthetic(**ARGS, memmap=True)
    aug = AugmentConfig(hflip=True, rotate90=True, brightness=0.1)
    dm_ram, dm_map = (CaseSetDataModule(c, batch_size=16, augmentation=aug, seed=2) for c in (ram, mapped))
    dm_map.setup()
    assert dm_map._sets["train"].images is mapped.images  # the data set holds the map, not a copy of a split
    for split in ("train_dataloader", "val_dataloader"):
        a, b = list(getattr(dm_ram, split)()), list(getattr(dm_map, split)())
        assert len(a) == len(b)
        for x, y in zip(a, b):
            for key in x:
                assert torch.equal(x[key], y[key]), (split, key)


def test_mapped_dataset_pickles_as_its_file_name():
    """Spawned loader workers receive the file name of a memory map, not the images."""
    mapped = make_synthetic(**ARGS, memmap=True)
    dm = CaseSetDataModule(mapped, batch_size=8)
    dm.setup()
    ds = dm._sets["val"]
    blob = pickle.dumps(ds)
    assert len(blob) < mapped.images.nbytes / 4
    back = pickle.loads(blob)
    assert isinstance(back.images, np.memmap)
    item = ((0, 0, 0), np.arange(5))
    for key, value in ds[item].items():
        assert torch.equal(value, back[item][key])


def _caseset(images: np.ndarray, masks: np.ndarray | None = None) -> CaseSet:
    n = len(images)
    labels = np.arange(n) % 2
    split = np.array((["train", "train", "val", "val", "test", "test"] * n)[:n])
    return CaseSet(images=images, labels=labels, class_names=["a", "b"], case_ids=[f"c{i}" for i in range(n)],
                   split=split, masks=masks)


def test_checks_read_a_mapped_set_in_slices(tmp_path, monkeypatch):
    monkeypatch.setattr(caseset_module, "_CHECK_BYTES", 2 * 4 * 8 * 8)  # two cases per slice
    arr = np.random.default_rng(0).random((12, 1, 8, 8), dtype=np.float32)
    masks = (arr[:, 0] > 0.5).astype(np.uint8)
    np.save(tmp_path / "ok.npy", arr)
    np.save(tmp_path / "masks.npy", masks)
    cs = _caseset(open_npy(tmp_path / "ok.npy"), open_npy(tmp_path / "masks.npy"))
    assert cs.memory_mapped and isinstance(cs.masks, np.memmap)  # 0/1 masks on disk stay mapped
    bad = arr.copy()
    bad[9, 0, 3, 3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(DataError, match="non-finite pixels \\(first at case 'c9'\\)"):
        _caseset(open_npy(tmp_path / "bad.npy"))
    bad = arr.copy()
    bad[7, 0, 0, 0] = 1.5
    np.save(tmp_path / "high.npy", bad)
    with pytest.raises(DataError, match=r"must lie in \[0, 1\], found \[.*, 1\.5\]"):
        _caseset(open_npy(tmp_path / "high.npy"))


def test_npy_writer_writes_whole_files_only(tmp_path):
    w = NpyWriter(tmp_path / "a.npy", (5, 2), np.float32)
    w.write(np.ones((3, 2)))
    w.write(np.zeros((2, 2)))
    w.close()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.r_[np.ones((3, 2)), np.zeros((2, 2))])
    w = NpyWriter(tmp_path / "b.npy", (5, 2), np.float32)
    w.write(np.ones((3, 2)))
    with pytest.raises(ValueError, match="3 of 5 rows"):
        w.close()
    w = NpyWriter(tmp_path / "c.npy", (2, 2), np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        w.write(np.ones((3, 2)))
    w.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]  # no partial or temporary files


def test_scaling_config_is_a_valid_experiment():
    pytest.importorskip("glasszoo.evaluation.posthoc")  # the evaluation config needs it
    from glasszoo.evaluation.experiment.bench import scaling_config
    from glasszoo.evaluation.experiment.config import parse_config

    cfg = parse_config(scaling_config(1000, 64))
    assert cfg.data["n_cases"] == 1000 and cfg.training.max_epochs == 1 and cfg.evaluation.explain_cases == 0
    assert [m.model for m in cfg.models] == ["blackbox"]

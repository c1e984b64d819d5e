"""CaseSet contract, the seeded split, the medmnist source and the data config."""

from __future__ import annotations

import numpy as np
import pytest

from glasszoo.training import CaseSet, ConfigError, DataError
from glasszoo.training.data import load_caseset
from glasszoo.training.medmnist import load_medmnist
from glasszoo.training.split import stratified_split


def make_npz(path, n=(30, 9, 12), side=8, rgb=False, classes=2, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        shape = (count, side, side, 3) if rgb else (count, side, side)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % classes).reshape(-1, 1).astype(np.uint8)
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def tiny_caseset(**kw):
    n = 12
    base = dict(images=np.zeros((n, 1, 4, 4), np.float32), labels=np.arange(n) % 2, class_names=["a", "b"],
                case_ids=[f"c{i}" for i in range(n)], split=["train"] * 6 + ["val"] * 2 + ["test"] * 4)
    base.update(kw)
    return CaseSet(**base)


# ------------------------------------------------------------------ CaseSet
def test_caseset_views_and_summary():
    cs = tiny_caseset()
    assert cs.n_cases == 12 and cs.num_classes == 2 and cs.in_chans == 1 and cs.img_size == (4, 4)
    np.testing.assert_array_equal(cs.indices("val"), [6, 7])
    s = cs.summary()
    assert s["cases_per_split"] == {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}, "test": {"a": 2, "b": 2}}
    sub = cs.subset(np.array([0, 7]))
    assert list(sub.case_ids) == ["c0", "c7"] and list(sub.split) == ["train", "val"]


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"images": np.full((12, 1, 4, 4), np.nan, np.float32)}, "non-finite pixels .*'c0'"),
        ({"images": np.full((12, 1, 4, 4), 2.0, np.float32)}, r"must lie in \[0, 1\]"),
        ({"images": np.zeros((12, 1, 4, 4), np.float64)}, "must be float32"),
        ({"labels": np.arange(11) % 2}, "12 images but 11 labels"),
        ({"labels": np.full(12, 5)}, r"labels must lie in 0..1"),
        ({"case_ids": ["x"] * 12}, "case ids must be unique"),
        ({"split": ["train"] * 6 + ["val"] * 2 + ["tst"] * 4}, "split values must be one of"),
        ({"labels": np.array([0, 1] * 3 + [0, 0] + [0, 1] * 2)}, r"class \['b'\] has no examples in split 'val'"),
        ({"masks": np.zeros((12, 5, 5))}, "masks must have shape"),
        ({"concepts": np.zeros((12, 2)), "concept_names": ["x"]}, "2 concept columns but 1 concept_names"),
    ],
)
def test_caseset_rejects_bad_input(kw, match):
    with pytest.raises(DataError, match=match):
        tiny_caseset(**kw)


# ------------------------------------------------------------------ split
def test_stratified_split_is_seeded_and_stratified():
    labels = np.array([0] * 100 + [1] * 40)
    a, b = stratified_split(labels, 0.15, 0.2, seed=3), stratified_split(labels, 0.15, 0.2, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, stratified_split(labels, 0.15, 0.2, seed=4))
    for c, n in ((0, 100), (1, 40)):
        assert (a[labels == c] == "test").sum() == round(0.2 * n)
        assert (a[labels == c] == "val").sum() == round(0.15 * n)
    with pytest.raises(DataError, match="only 2 case"):
        stratified_split(np.array([0, 0, 0, 1, 1]))
    with pytest.raises(ConfigError, match="val_fraction"):
        stratified_split(labels, 0.0, 0.2)


# ------------------------------------------------------------------ medmnist
def test_medmnist_keeps_official_splits_and_values(tmp_path):
    arrays = make_npz(tmp_path / "breastmnist.npz")
    cs = load_medmnist(path=str(tmp_path / "breastmnist.npz"))
    assert cs.images.shape == (51, 1, 8, 8) and cs.images.dtype == np.float32
    np.testing.assert_array_equal(cs.images[:30, 0], arrays["train_images"] / np.float32(255))
    np.testing.assert_array_equal(cs.images[39:, 0], arrays["test_images"] / np.float32(255))
    assert list(cs.split[:30]) == ["train"] * 30 and list(cs.split[30:39]) == ["val"] * 9
    np.testing.assert_array_equal(cs.labels[30:39], arrays["val_labels"].ravel())
    assert cs.class_names == ["malignant", "normal_or_benign"]  # known MedMNIST names


def test_medmnist_rgb_multiclass_and_resize(tmp_path):
    arrays = make_npz(tmp_path / "x.npz", rgb=True, classes=3, side=6)
    cs = load_medmnist(path=str(tmp_path / "x.npz"), class_names=["a", "b", "c"])
    assert cs.images.shape == (51, 3, 6, 6)
    np.testing.assert_array_equal(cs.images[0], np.moveaxis(arrays["train_images"][0], -1, 0) / np.float32(255))
    assert cs.num_classes == 3
    big = load_medmnist(path=str(tmp_path / "x.npz"), img_size=12)
    assert big.images.shape == (51, 3, 12, 12) and big.class_names == ["class_0", "class_1", "class_2"]
    assert 0 <= big.images.min() and big.images.max() <= 1


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"val_labels": None}, "missing key 'val_labels'"),
        ({"test_labels": np.zeros((11, 1), np.uint8)}, "'test_images' has 12 images but 'test_labels' has 11"),
        ({"train_images": np.full((30, 8, 8), np.nan, np.float32)}, "non-finite"),
        ({"train_labels": np.zeros((30, 3), np.uint8)}, "multi-label"),
    ],
)
def test_medmnist_bad_files(tmp_path, overrides, match):
    make_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataError, match=match) as info:
        load_medmnist(path=str(tmp_path / "bad.npz"))
    assert "bad.npz" in str(info.value)


def test_medmnist_missing_file_and_offline_download(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="MedMNIST file not found: .*nope.npz"):
        load_medmnist(path=str(tmp_path / "nope.npz"))
    with pytest.raises(DataError, match="download disabled"):
        load_medmnist(name="breastmnist", root=str(tmp_path), download=False)
    # without network the download fails; the message says where to put the file
    import glasszoo.training.medmnist as mm

    def offline(name, root, size):
        raise DataError(f"could not download MedMNIST data set '{name}' (URLError). No network? Put the official "
                        f"file at {root / (name + '.npz')}")

    monkeypatch.setattr(mm, "_download", offline)
    with pytest.raises(DataError, match=f"Put the official file at {tmp_path}/breastmnist.npz"):
        load_medmnist(name="breastmnist", root=str(tmp_path))


def test_medmnist_download_without_package_says_where_to_put_the_file(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_medmnist(name, *args, **kwargs):
        if name == "medmnist":
            raise ImportError("no medmnist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_medmnist)
    with pytest.raises(DataError, match=r"not installed .*Put the official file at .*breastmnist.npz"):
        load_medmnist(name="breastmnist", root=str(tmp_path))


def test_medmnist_named_file_in_root_is_used(tmp_path):
    make_npz(tmp_path / "pneumoniamnist.npz")
    cs = load_medmnist(name="pneumoniamnist", root=str(tmp_path))
    assert cs.class_names == ["normal", "pneumonia"] and cs.n_cases == 51


# ------------------------------------------------------------------ load_caseset
def test_load_caseset_checks_keys(tmp_path):
    make_npz(tmp_path / "a.npz")
    cs = load_caseset({"source": "medmnist", "path": str(tmp_path / "a.npz")})
    assert cs.n_cases == 51
    with pytest.raises(ConfigError, match="data.pth: unknown key for source 'medmnist'"):
        load_caseset({"source": "medmnist", "pth": "x"})
    with pytest.raises(ConfigError, match="data.source must be one of"):
        load_caseset({"source": "dicomdir"})
    with pytest.raises(ConfigError, match="data.source is required"):
        load_caseset({})


@pytest.mark.shared_data
@pytest.mark.parametrize("name,n,counts",
                         [("breastmnist", 780, (546, 78, 156)), ("pneumoniamnist", 5856, (4708, 524, 624))])
def test_real_medmnist_files(shared_data, name, n, counts):
    cs = load_medmnist(path=str(shared_data / "medmnist" / f"{name}.npz"))
    assert cs.n_cases == n
    assert tuple(len(cs.indices(s)) for s in ("train", "val", "test")) == counts
    assert cs.images.shape[1:] == (1, 28, 28)

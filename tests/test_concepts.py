"""Tests of the lesion concepts derived from masks (``glasszoo.training.concepts``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from glasszoo.models.errors import ConfigError, DataError
from glasszoo.training.caseset import CaseSet
from glasszoo.training.concepts import (
    DERIVED_CONCEPTS,
    MEASURES,
    derive_concepts,
    lesion_measures,
)
from glasszoo.training.data import load_caseset
from glasszoo.training.folder import load_folder


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[:size, :size].astype(np.float64)
    return y - (size - 1) / 2, x - (size - 1) / 2


def disc(size: int, radius: float, dy: float = 0.0) -> np.ndarray:
    y, x = grid(size)
    return ((y - dy) ** 2 + x ** 2 <= radius ** 2).astype(np.uint8)


def star(size: int, outer: float, inner: float, points: int = 5) -> np.ndarray:
    """A star: the radius goes linearly from ``outer`` (tips) to ``inner`` (notches) and back."""
    y, x = grid(size)
    phase = (np.arctan2(y, x) * points / (2 * np.pi)) % 1.0
    radius = inner + (outer - inner) * np.abs(2 * phase - 1)
    return (np.hypot(y, x) <= radius).astype(np.uint8)


def flat(size: int, value: float, channels: int = 1) -> np.ndarray:
    return np.full((channels, size, size), value, dtype=np.float32)


def measure(image: np.ndarray, mask: np.ndarray, name: str) -> float:
    return lesion_measures(image, mask)[name]


# ---------------------------------------------------------------------------------------------------- measures
def test_all_measures_present_and_finite() -> None:
    out = lesion_measures(flat(32, 0.5), disc(32, 6))
    assert list(out) == list(MEASURES)
    assert all(np.isfinite(v) for v in out.values())


def test_area_fraction_exact_for_a_rectangle() -> None:
    mask = np.zeros((32, 32), np.uint8)
    mask[3:13, 20:27] = 1
    assert measure(flat(32, 0.5), mask, "area_fraction") == 70 / 1024


@pytest.mark.parametrize("radius", [5, 10, 20, 40])
@pytest.mark.parametrize("dy", [0.0, 0.3, 0.5])
def test_disc_is_compact_and_solid(radius: int, dy: float) -> None:
    """A digitised disc: compactness ~1 at any radius (the Crofton perimeter, no normalisation), solidity < 1 only by
    the staircase border (documented: 0.91-0.96 at 5-10 px, closer to 1 for larger discs)."""
    size = 2 * radius + 12
    out = lesion_measures(flat(size, 0.5), disc(size, radius, dy))
    assert 0.95 <= out["compactness"] <= 1.07
    assert 0.90 <= out["solidity"] <= 1.0
    if radius >= 20:
        assert out["solidity"] >= 0.96


def test_shape_ordering_disc_ellipse_star() -> None:
    size = 64
    y, x = grid(size)
    ellipse = ((y / 10) ** 2 + (x / 25) ** 2 <= 1).astype(np.uint8)
    d = lesion_measures(flat(size, 0.5), disc(size, 20))
    e = lesion_measures(flat(size, 0.5), ellipse)
    s = lesion_measures(flat(size, 0.5), star(size, 28, 10))
    assert d["solidity"] > 0.95 and s["solidity"] < 0.7
    assert e["solidity"] > 0.95  # an ellipse is convex: "not round" but not "irregular"
    assert d["compactness"] > e["compactness"] > s["compactness"]
    assert 0.75 < e["compactness"] < 0.9 and s["compactness"] < 0.5


def test_single_pixel_and_border_lesions_are_finite() -> None:
    """A one-pixel lesion has a proper (non-degenerate) corner hull; a lesion on the image border still works."""
    one = np.zeros((9, 9), np.uint8)
    one[4, 4] = 1
    out = lesion_measures(flat(9, 0.5), one)
    assert out["solidity"] == 1.0 and out["compactness"] == pytest.approx(1.7476, abs=1e-3)
    corner = np.zeros((16, 16), np.uint8)
    corner[:5, :7] = 1
    image = flat(16, 0.8)
    image[0, :5, :7] = 0.3
    out = lesion_measures(image, corner)
    assert out["solidity"] == 1.0 and out["contrast_to_surround"] == pytest.approx(-0.5)
    assert all(np.isfinite(v) for v in out.values())


def test_heterogeneity_uniform_vs_noisy_and_grey_is_the_channel_mean() -> None:
    mask = disc(32, 9)
    uniform = flat(32, 0.4)
    assert measure(uniform, mask, "heterogeneity") == 0.0
    rng = np.random.default_rng(0)
    noisy = np.clip(0.4 + 0.1 * rng.standard_normal((1, 32, 32)), 0, 1).astype(np.float32)
    h = measure(noisy, mask, "heterogeneity")
    assert h == pytest.approx(noisy[0][mask > 0].astype(np.float64).std(), rel=1e-9)
    assert 0.08 < h < 0.12
    rgb = np.stack([np.full((32, 32), v, np.float32) for v in (0.1, 0.5, 0.9)])
    out = lesion_measures(rgb, mask)
    assert out["mean_intensity"] == pytest.approx(0.5) and out["heterogeneity"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("radius", [6, 20])  # ring width 2 px (the minimum) and 10% of a ~40 px diameter
def test_contrast_to_surround_uses_the_ring(radius: int) -> None:
    """Dark lesion (0.2) on bright tissue (0.8) that turns black (0.0) beyond the documented ring width: the contrast
    is exactly -0.6, i.e. only ring pixels enter the surround mean."""
    size = 2 * radius + 24
    mask = disc(size, radius)
    width = max(2.0, 0.1 * 2 * np.sqrt(mask.sum() / np.pi))
    dist = ndimage.distance_transform_edt(mask == 0)
    image = np.where(mask > 0, 0.2, np.where(dist <= width, 0.8, 0.0)).astype(np.float32)[None]
    out = lesion_measures(image, mask)
    assert out["contrast_to_surround"] == pytest.approx(-0.6, abs=1e-6)
    assert out["mean_intensity"] == pytest.approx(0.2, abs=1e-6)
    bright = (1.0 - image).astype(np.float32)
    assert measure(bright, mask, "contrast_to_surround") > 0


def test_margin_sharpness_step_vs_blurred_edge() -> None:
    """A straight sharp step of height h gives h / 2 (Sobel / 8 on both sides of the edge); blurring lowers it."""
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 1
    step = np.where(mask > 0, 0.2, 0.8).astype(np.float32)[None]
    assert measure(step, mask, "margin_sharpness") == pytest.approx(0.3)
    lesion = disc(48, 12)
    sharp = np.where(lesion > 0, 0.2, 0.8).astype(np.float32)[None]
    blurred = ndimage.gaussian_filter(sharp, sigma=(0, 3, 3)).astype(np.float32)
    s, b = measure(sharp, lesion, "margin_sharpness"), measure(blurred, lesion, "margin_sharpness")
    assert s > 2.5 * b and b > 0


def test_bad_masks_raise() -> None:
    with pytest.raises(DataError, match=r"case 'c7': the lesion mask is empty"):
        lesion_measures(flat(8, 0.5), np.zeros((8, 8), np.uint8), case_id="c7")
    with pytest.raises(DataError, match=r"covers the whole image.*inverted"):
        lesion_measures(flat(8, 0.5), np.ones((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"same H, W"):
        lesion_measures(flat(8, 0.5), np.ones((8, 9), np.uint8))


# ---------------------------------------------------------------------------------------------------- the table
def test_concept_table() -> None:
    names = [c.name for c in DERIVED_CONCEPTS]
    assert 5 <= len(names) <= 7 and len(set(names)) == len(names)
    assert names == ["large", "not_round", "irregular_shape", "indistinct_margin", "hypoechoic", "heterogeneous"]
    for c in DERIVED_CONCEPTS:
        assert c.measure in MEASURES and c.direction in ("above", "below") and c.description
    fixed = {c.name: c.fixed_threshold for c in DERIVED_CONCEPTS}
    assert fixed["hypoechoic"] == 0.0 and all(v is None for k, v in fixed.items() if k != "hypoechoic")


# ---------------------------------------------------------------------------------------------------- derive
SIZE = 16


def square_mask(side: int) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[2:2 + side, 3:3 + side] = 1
    return m


def tiny_caseset(train_sides=(2, 3, 4, 5), other_sides=(6, 7, 8, 9), masks: bool = True, **kwargs) -> CaseSet:
    """8 cases: 4 train, 2 val, 2 test; square lesions of the given sides (0 = empty mask), dark on bright."""
    sides = list(train_sides) + list(other_sides)
    m = np.stack([square_mask(s) for s in sides])
    images = np.where(m > 0, 0.25, 0.75).astype(np.float32)[:, None]
    return CaseSet(images=images, labels=[0, 1] * 4, class_names=["benign", "malignant"],
                   case_ids=[f"case{i}" for i in range(8)], split=["train"] * 4 + ["val"] * 2 + ["test"] * 2,
                   masks=m if masks else None, name="tiny", **kwargs)


def test_thresholds_are_training_medians_by_hand() -> None:
    cs = tiny_caseset()
    out, info = derive_concepts(cs)
    assert out.concept_names == [c.name for c in DERIVED_CONCEPTS]
    assert out.concepts.shape == (8, 6) and out.concepts.dtype == np.float32
    assert set(np.unique(out.concepts).tolist()) <= {0.0, 1.0}
    # training areas 4, 9, 16, 25 pixels of 256: median (9 + 16) / 2 / 256
    assert info["large"]["threshold"] == pytest.approx(12.5 / 256)
    assert info["large"] == {"measure": "area_fraction", "threshold": info["large"]["threshold"],
                             "direction": "above", "description": DERIVED_CONCEPTS[0].description}
    k = out.concept_names.index("large")
    assert out.concepts[:, k].tolist() == [0, 0, 1, 1, 1, 1, 1, 1]
    assert info["hypoechoic"]["threshold"] == 0.0 and out.concepts[:, out.concept_names.index("hypoechoic")].all()
    assert not out.concepts[:, out.concept_names.index("heterogeneous")].any()  # uniform lesions: std 0 == median
    for name, rule in info.items():
        if name == "hypoechoic":
            continue
        train_values = [lesion_measures(cs.images[i], cs.masks[i])[rule["measure"]] for i in range(4)]
        assert rule["threshold"] == pytest.approx(float(np.median(train_values)))
    # the input is untouched, the rest of the CaseSet is carried over
    assert cs.concepts is None and cs.concept_names == []
    np.testing.assert_array_equal(out.masks, cs.masks)
    np.testing.assert_array_equal(out.images, cs.images)
    assert out.split.tolist() == cs.split.tolist() and out.case_ids.tolist() == cs.case_ids.tolist()


def test_val_and_test_cases_do_not_move_thresholds() -> None:
    _, a = derive_concepts(tiny_caseset(other_sides=(6, 7, 8, 9)))
    _, b = derive_concepts(tiny_caseset(other_sides=(1, 12, 2, 13)))
    assert a == b
    _, c = derive_concepts(tiny_caseset(train_sides=(2, 3, 4, 9)))
    assert c["large"]["threshold"] == pytest.approx(12.5 / 256)  # the median ignores the largest value
    _, d = derive_concepts(tiny_caseset(train_sides=(2, 3, 6, 9)))
    assert d["large"]["threshold"] == pytest.approx(22.5 / 256)


def test_existing_concepts_are_replaced() -> None:
    cs = tiny_caseset(concepts=np.ones((8, 1)), concept_names=["old"])
    out, _ = derive_concepts(cs)
    assert "old" not in out.concept_names and out.concepts.shape == (8, 6)


def test_empty_mask_policies() -> None:
    cs = tiny_caseset(train_sides=(2, 3, 0, 5), other_sides=(6, 0, 8, 9))
    with pytest.raises(DataError, match=r"'tiny': 2 of 8 case\(s\) have an empty lesion mask \(first: 'case2'\).*"
                                        r"concepts_empty_mask: zero"):
        derive_concepts(cs)
    out, info = derive_concepts(cs, empty_mask="zero")
    assert not out.concepts[[2, 5]].any()
    # thresholds come from the 3 training cases with a lesion (areas 4, 9, 25): median 9
    assert info["large"]["threshold"] == pytest.approx(9 / 256)
    assert out.concepts[:, 0].tolist() == [0, 0, 0, 1, 1, 0, 1, 1]
    with pytest.raises(ConfigError, match=r"data.concepts_empty_mask must be one of \('error', 'zero'\)"):
        derive_concepts(cs, empty_mask="skip")
    no_train = tiny_caseset(train_sides=(0, 0, 0, 0))
    with pytest.raises(DataError, match=r"no training case has a non-empty lesion mask"):
        derive_concepts(no_train, empty_mask="zero")


def test_no_masks_error() -> None:
    with pytest.raises(DataError, match=r"'tiny' has neither concept columns nor lesion masks.*mask column.*"
                                        r"data.concept_columns"):
        derive_concepts(tiny_caseset(masks=False))
    with_concepts = tiny_caseset(masks=False, concepts=np.zeros((8, 1)), concept_names=["age"])
    with pytest.raises(DataError, match=r"no lesion masks to derive concepts from; it has concept columns \['age'\]"):
        derive_concepts(with_concepts)


# ---------------------------------------------------------------------------------------------------- load_caseset
def test_synthetic_derived_concepts_track_the_ground_truth(capsys: pytest.CaptureFixture) -> None:
    """On the synthetic phantoms the derived proxies agree with the planted concepts they are named after."""
    truth = load_caseset({"source": "synthetic", "n_cases": 200, "img_size": 64}, seed=1)
    cs = load_caseset({"source": "synthetic", "n_cases": 200, "img_size": 64, "concepts": "derived"},
                      seed=1)
    np.testing.assert_array_equal(cs.images, truth.images)
    t = {n: truth.concepts[:, k] for k, n in enumerate(truth.concept_names)}
    d = {n: cs.concepts[:, k] for k, n in enumerate(cs.concept_names)}
    assert (d["large"] == t["large"]).mean() >= 0.9
    assert (d["irregular_shape"] == t["irregular_margin"]).mean() >= 0.9
    assert (d["heterogeneous"] == t["heterogeneous"]).mean() >= 0.8
    assert (d["hypoechoic"] == 1 - t["bright"]).mean() >= 0.95
    err = capsys.readouterr().err
    assert err.count("data: derived concept ") == len(DERIVED_CONCEPTS)
    assert "large = area_fraction > " in err and "(training median)" in err
    assert "hypoechoic = contrast_to_surround < 0 (fixed)" in err


def write_png_set(folder: Path, empty: tuple[int, ...] = ()) -> Path:
    rows = []
    for i in range(6):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        if i not in empty:
            mask[3:6 + i, 4:10] = 255
        image = np.where(mask > 0, 60, 200).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(image), str(folder / f"img{i}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(mask), str(folder / f"mask{i}.png"))
        rows.append([f"img{i}.png", f"mask{i}.png", ["a", "b"][i % 2], ["train", "val", "test"][i // 2], i])
    path = folder / "set.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "mask", "label", "split", "score"])
        writer.writerows(rows)
    return path


def test_load_caseset_folder_derived(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_png_set(tmp_path)
    cfg = {"source": "folder", "csv": "set.csv", "img_size": SIZE}
    plain = load_caseset(cfg, base_dir=tmp_path)
    assert plain.concept_names == ["score"]
    cs = load_caseset({**cfg, "concepts": "derived"}, base_dir=tmp_path)
    expected, info = derive_concepts(load_folder(str(tmp_path / "set.csv"), img_size=SIZE))
    assert cs.concept_names == expected.concept_names == [c.name for c in DERIVED_CONCEPTS]
    np.testing.assert_array_equal(cs.concepts, expected.concepts)
    # training lesions: rows 3:6 and 3:7 of 6 columns -> 18 and 24 pixels: median 21
    assert info["large"]["threshold"] == pytest.approx(21 / 256)
    assert f"large = area_fraction > {21 / 256:.4g} (training median)" in capsys.readouterr().err
    assert load_caseset({**cfg, "concepts": "data"}, base_dir=tmp_path).concept_names == ["score"]


def test_load_caseset_empty_mask_policy(tmp_path: Path) -> None:
    write_png_set(tmp_path, empty=(4,))
    cfg = {"source": "folder", "csv": "set.csv", "img_size": SIZE, "concepts": "derived"}
    with pytest.raises(DataError, match=r"1 of 6 case\(s\) have an empty lesion mask \(first: 'img4'\)"):
        load_caseset(cfg, base_dir=tmp_path)
    cs = load_caseset({**cfg, "concepts_empty_mask": "zero"}, base_dir=tmp_path)
    assert not cs.concepts[4].any()


def test_load_caseset_concept_config_errors(tmp_path: Path) -> None:
    cfg = {"source": "synthetic", "n_cases": 30, "img_size": 32}
    with pytest.raises(ConfigError, match=r"data.concepts must be one of \('data', 'derived'\), got 'masks'"):
        load_caseset({**cfg, "concepts": "masks"})
    with pytest.raises(ConfigError, match=r"data.concepts_empty_mask must be one of \('error', 'zero'\), got 'drop'"):
        load_caseset({**cfg, "concepts": "derived", "concepts_empty_mask": "drop"})
    with pytest.raises(ConfigError, match=r"data.concepts_empty_mask only applies with data.concepts: derived"):
        load_caseset({**cfg, "concepts_empty_mask": "zero"})
    with pytest.raises(ConfigError, match=r"data.n_case: unknown key .*'concepts', 'concepts_empty_mask'"):
        load_caseset({**cfg, "n_case": 3})
    write_png_set(tmp_path)
    with pytest.raises(DataError, match=r"neither concept columns nor lesion masks"):
        load_caseset({"source": "folder", "csv": str(tmp_path / "set.csv"), "img_size": SIZE, "mask_column": None,
                      "concept_columns": None, "concepts": "derived"})

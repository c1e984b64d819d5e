"""Tests of the synthetic phantom data set: determinism, the data contract, concept appearance, labels, shortcut."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from scipy import ndimage as ndi
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from glasszoo.models.errors import ConfigError
from glasszoo.training.caseset import CaseSet
from glasszoo.training.data import load_caseset
from glasszoo.training.synthetic import CONCEPT_NAMES, make_synthetic, marker_offset, max_shortcut_size, risk_score

LARGE, IRREGULAR, HETEROGENEOUS, BRIGHT, CALCIFICATIONS = range(5)


@pytest.fixture(scope="module")
def cs() -> CaseSet:
    """A noise-free 64 px data set with a perfect shortcut, shared by the appearance tests."""
    return make_synthetic(n_cases=600, img_size=64, label_noise=0.0, shortcut_rate=1.0, seed=11)


def _mask_stats(cs: CaseSet) -> dict[str, np.ndarray]:
    """Per-case lesion statistics computed from the images and masks only."""
    masks = cs.masks.astype(bool)
    img = cs.images[:, 0]
    inside_mean, ring_mean, inside_std, perim = (np.empty(cs.n_cases) for _ in range(4))
    for i, m in enumerate(masks):
        ring = ndi.binary_dilation(m, iterations=3) & ~m
        inside_mean[i] = img[i][m].mean()
        inside_std[i] = img[i][m].std()
        ring_mean[i] = img[i][ring].mean()
        perim[i] = (m & ~ndi.binary_erosion(m)).sum()
    area = masks.sum(axis=(1, 2)).astype(float)
    return {"area": area, "contrast": inside_mean - ring_mean, "mean": inside_mean, "std": inside_std,
            "compactness": perim ** 2 / area}


@pytest.fixture(scope="module")
def stats(cs: CaseSet) -> dict[str, np.ndarray]:
    return _mask_stats(cs)


# ------------------------------------------------------------------ determinism and contract
def test_same_seed_is_byte_identical_and_other_seed_differs() -> None:
    a = make_synthetic(n_cases=60, img_size=32, shortcut_rate=0.8, seed=5)
    b = make_synthetic(n_cases=60, img_size=32, shortcut_rate=0.8, seed=5)
    c = make_synthetic(n_cases=60, img_size=32, shortcut_rate=0.8, seed=6)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.masks.tobytes() == b.masks.tobytes()
    np.testing.assert_array_equal(a.concepts, b.concepts)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.split, b.split)
    for key in a.meta:
        np.testing.assert_array_equal(a.meta[key], b.meta[key])
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.masks, c.masks)
    assert not (np.array_equal(a.split, c.split) and np.array_equal(a.labels, c.labels))


def test_shapes_dtypes_ranges_and_names() -> None:
    cs = make_synthetic(n_cases=50, img_size=40, seed=2)
    assert cs.images.shape == (50, 1, 40, 40) and cs.images.dtype == np.float32
    assert 0.0 <= cs.images.min() and cs.images.max() <= 1.0
    assert cs.masks.shape == (50, 40, 40) and cs.masks.dtype == np.uint8
    assert set(np.unique(cs.masks)) <= {0, 1}
    assert cs.concepts.shape == (50, 5) and cs.concepts.dtype == np.float32
    assert set(np.unique(cs.concepts)) <= {0.0, 1.0}
    assert cs.concept_names == CONCEPT_NAMES == ["large", "irregular_margin", "heterogeneous", "bright",
                                                 "calcifications"]
    assert cs.class_names == ["benign", "malignant"] and cs.positive_class == 1
    assert cs.labels.dtype == np.int64 and set(cs.labels.tolist()) == {0, 1}
    assert cs.name == "synthetic"
    assert all(re.fullmatch(r"syn-\d{5}", c) for c in cs.case_ids) and cs.case_ids[7] == "syn-00007"
    assert set(cs.meta) == {"radius", "lesion_center_row", "lesion_center_col", "shortcut_marker", "label_clean"}
    assert all(len(v) == 50 for v in cs.meta.values())
    for s in ("train", "val", "test"):
        assert set(cs.labels[cs.indices(s)].tolist()) == {0, 1}


def test_three_channels_replicate_grey() -> None:
    grey = make_synthetic(n_cases=40, img_size=32, seed=4)
    rgb = make_synthetic(n_cases=40, img_size=32, channels=3, seed=4)
    assert rgb.images.shape == (40, 3, 32, 32) and rgb.images.dtype == np.float32
    for ch in range(3):
        np.testing.assert_array_equal(rgb.images[:, ch], grey.images[:, 0])


def test_split_matches_stratified_split_fractions() -> None:
    cs = make_synthetic(n_cases=400, img_size=16, val_fraction=0.1, test_fraction=0.25, seed=3)
    for c in (0, 1):
        n_c = (cs.labels == c).sum()
        assert abs((cs.split[cs.labels == c] == "test").sum() - 0.25 * n_c) <= 1
        assert abs((cs.split[cs.labels == c] == "val").sum() - 0.1 * n_c) <= 1


def test_load_caseset_builds_the_same_data() -> None:
    direct = make_synthetic(n_cases=40, img_size=32, shortcut_rate=0.9, seed=8)
    via_cfg = load_caseset({"source": "synthetic", "n_cases": 40, "img_size": 32, "shortcut_rate": 0.9}, seed=8)
    assert direct.images.tobytes() == via_cfg.images.tobytes()
    np.testing.assert_array_equal(direct.split, via_cfg.split)


def test_generation_is_fast() -> None:
    t0 = time.perf_counter()
    cs = make_synthetic(n_cases=1500, img_size=64, seed=0)
    assert cs.n_cases == 1500
    assert time.perf_counter() - t0 < 10.0  # ~1 s on one core; generous for loaded CI machines


# ------------------------------------------------------------------ lesion geometry and concepts
def test_masks_non_empty_and_contain_the_centre(cs: CaseSet) -> None:
    assert (cs.masks.reshape(cs.n_cases, -1).sum(axis=1) > 0).all()
    rows, cols = cs.meta["lesion_center_row"], cs.meta["lesion_center_col"]
    assert (cs.masks[np.arange(cs.n_cases), rows, cols] == 1).all()


def test_masks_non_empty_at_the_smallest_size() -> None:
    cs = make_synthetic(n_cases=200, img_size=16, seed=1)
    assert (cs.masks.reshape(cs.n_cases, -1).sum(axis=1) > 0).all()


def test_bright_lesions_are_brighter_than_their_surroundings(cs: CaseSet, stats: dict[str, np.ndarray]) -> None:
    bright = cs.concepts[:, BRIGHT] == 1
    assert 0.3 < bright.mean() < 0.7
    assert (stats["contrast"][bright] > 0.1).all()
    assert (stats["contrast"][~bright] < 0.03).all()


def test_large_lesions_have_larger_masks(cs: CaseSet, stats: dict[str, np.ndarray]) -> None:
    large = cs.concepts[:, LARGE] == 1
    assert stats["area"][large].min() > stats["area"][~large].max()
    assert stats["area"][large].mean() > 2.0 * stats["area"][~large].mean()
    assert cs.meta["radius"][large].min() > cs.meta["radius"][~large].max()


def test_irregular_margins_are_less_compact(cs: CaseSet, stats: dict[str, np.ndarray]) -> None:
    irregular = cs.concepts[:, IRREGULAR] == 1
    for size_class in (0, 1):  # compare within a size class: compactness also depends on pixelation
        sel = cs.concepts[:, LARGE] == size_class
        irr, reg = stats["compactness"][sel & irregular], stats["compactness"][sel & ~irregular]
        assert irr.mean() > 1.3 * reg.mean()
        assert np.median(irr) > np.percentile(reg, 95)


def test_heterogeneous_lesions_have_internal_texture(cs: CaseSet, stats: dict[str, np.ndarray]) -> None:
    het = cs.concepts[:, HETEROGENEOUS] == 1
    plain = ~het & (cs.concepts[:, CALCIFICATIONS] == 0)
    assert stats["std"][het].mean() > 3.0 * stats["std"][plain].mean()
    assert np.percentile(stats["std"][het], 10) > np.percentile(stats["std"][plain], 90)


def test_calcifications_are_saturated_dots_inside_the_lesion(cs: CaseSet) -> None:
    calc = cs.concepts[:, CALCIFICATIONS] == 1
    img, masks = cs.images[:, 0], cs.masks.astype(bool)
    n_saturated = np.array([(img[i][masks[i]] >= 0.97).sum() for i in range(cs.n_cases)])
    assert (n_saturated[calc] >= 1).all()
    assert np.median(n_saturated[~calc]) == 0
    assert n_saturated[calc].mean() > 5 * max(n_saturated[~calc].mean(), 0.1)


@pytest.mark.parametrize("img_size", [16, 28, 64])
def test_lesions_never_reach_the_largest_marker(img_size: int) -> None:
    size = max_shortcut_size(img_size)
    assert size >= 1
    cs = make_synthetic(n_cases=300, img_size=img_size, shortcut_rate=1.0, shortcut_size=size, seed=9)
    end = marker_offset(img_size) + size + 1  # one pixel of clearance around the marker
    assert cs.masks[:, :end, :end].sum() == 0
    marked = cs.meta["shortcut_marker"].astype(bool)
    assert (cs.images[marked, 0, end - 1 - size:end - 1, end - 1 - size:end - 1] == 1.0).all()


def test_shortcut_size_only_bounded_when_the_shortcut_is_used() -> None:
    assert max_shortcut_size(64) == 13 and max_shortcut_size(28) == 5
    make_synthetic(n_cases=30, img_size=16, shortcut_size=4)  # no marker drawn: any size >= 1 is accepted
    with pytest.raises(ConfigError, match=r"shortcut_size must be <= 2 for img_size=16"):
        make_synthetic(n_cases=30, img_size=16, shortcut_rate=0.9, shortcut_size=4)


# ------------------------------------------------------------------ labels
def test_labels_follow_the_rule_without_noise(cs: CaseSet) -> None:
    c = cs.concepts
    score = 2 * c[:, IRREGULAR] + c[:, HETEROGENEOUS] + c[:, CALCIFICATIONS] + c[:, LARGE]
    np.testing.assert_array_equal(risk_score(c), score.astype(np.int64))
    np.testing.assert_array_equal(cs.labels, (score >= 3).astype(np.int64))
    np.testing.assert_array_equal(cs.meta["label_clean"], cs.labels)


def test_bright_is_independent_of_the_label(cs: CaseSet) -> None:
    bright = cs.concepts[:, BRIGHT]
    assert abs(bright[cs.labels == 1].mean() - bright[cs.labels == 0].mean()) < 0.15


def test_label_noise_flips_about_the_requested_fraction() -> None:
    n, p = 3000, 0.1
    cs = make_synthetic(n_cases=n, img_size=16, label_noise=p, seed=21)
    clean = cs.meta["label_clean"]
    np.testing.assert_array_equal(clean, (risk_score(cs.concepts) >= 3).astype(np.int64))
    flipped = (cs.labels != clean).mean()
    assert abs(flipped - p) < 4 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("balance", [0.2, 0.5, 0.7])
def test_class_balance_is_hit(balance: float) -> None:
    n = 500
    cs = make_synthetic(n_cases=n, img_size=16, class_balance=balance, label_noise=0.03, seed=4)
    assert cs.meta["label_clean"].sum() == round(n * balance)
    assert abs(cs.labels.mean() - balance) < 0.05


# ------------------------------------------------------------------ planted shortcut
def test_perfect_shortcut_in_train_val_and_random_in_test(cs: CaseSet) -> None:
    marker = cs.meta["shortcut_marker"]
    assert set(np.unique(marker).tolist()) == {0, 1}
    dev = cs.split != "test"
    np.testing.assert_array_equal(marker[dev], cs.labels[dev])
    test = ~dev
    agree = (marker[test] == cs.labels[test]).mean()
    assert abs(agree - 0.5) < 4 * np.sqrt(0.25 / test.sum())


def test_partial_shortcut_rate_is_respected() -> None:
    cs = make_synthetic(n_cases=2000, img_size=16, shortcut_rate=0.8, shortcut_size=1, seed=13)
    dev = cs.split != "test"
    agree = (cs.meta["shortcut_marker"][dev] == cs.labels[dev]).mean()
    assert abs(agree - 0.8) < 4 * np.sqrt(0.8 * 0.2 / dev.sum())


def test_marker_pixels_are_bright_in_the_corner(cs: CaseSet) -> None:
    marker = cs.meta["shortcut_marker"].astype(bool)
    corner = cs.images[:, 0, 2:6, 2:6]  # default shortcut_size=4 at offset img_size // 32 = 2
    assert (corner[marker] == 1.0).all()
    assert corner[~marker].mean(axis=(1, 2)).max() < 0.5


def test_no_marker_without_shortcut_and_images_otherwise_identical() -> None:
    plain = make_synthetic(n_cases=60, img_size=32, seed=7)
    marked = make_synthetic(n_cases=60, img_size=32, shortcut_rate=0.9, seed=7)
    assert (plain.meta["shortcut_marker"] == 0).all()
    assert plain.meta["shortcut_marker"].dtype.kind == "i"
    assert plain.images[:, 0, 1:5, 1:5].mean(axis=(1, 2)).max() < 0.5
    diff = plain.images != marked.images
    assert not diff[:, :, 5:, :].any() and not diff[:, :, :, 5:].any()
    assert diff.any(axis=(1, 2, 3)).sum() == marked.meta["shortcut_marker"].sum()


# ------------------------------------------------------------------ learnability
def test_simple_lesion_statistics_separate_the_classes() -> None:
    cs = make_synthetic(n_cases=400, img_size=64, seed=17)
    st = _mask_stats(cs)
    x = np.column_stack([st["area"], st["compactness"], st["std"], st["mean"]])
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    train, test = cs.split != "test", cs.split == "test"
    clf = LogisticRegression(max_iter=1000).fit(x[train], cs.labels[train])
    auc = roc_auc_score(cs.labels[test], clf.predict_proba(x[test])[:, 1])
    assert auc > 0.8


# ------------------------------------------------------------------ argument validation
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_cases": 5}, "n_cases"),
        ({"n_cases": 100.5}, "n_cases"),
        ({"img_size": 8}, "img_size"),
        ({"class_balance": 0.0}, "class_balance"),
        ({"class_balance": 1.0}, "class_balance"),
        ({"label_noise": 0.5}, "label_noise"),
        ({"label_noise": -0.1}, "label_noise"),
        ({"shortcut_rate": 0.3}, "shortcut_rate"),
        ({"shortcut_rate": 1.2}, "shortcut_rate"),
        ({"shortcut_size": 0}, "shortcut_size"),
        ({"shortcut_size": 14, "shortcut_rate": 0.9}, "shortcut_size"),
        ({"shortcut_size": 2.5}, "shortcut_size"),
        ({"channels": 2}, "channels"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"seed": "a"}, "seed"),
    ],
)
def test_bad_arguments_raise_config_error_naming_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        make_synthetic(**kwargs)


def test_error_message_reports_the_bad_value() -> None:
    with pytest.raises(ConfigError, match=r"n_cases must be an integer >= 30, got 5"):
        make_synthetic(n_cases=5)


def test_unknown_config_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"data\.n_images"):
        load_caseset({"source": "synthetic", "n_images": 40})

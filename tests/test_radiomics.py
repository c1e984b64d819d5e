"""pyradiomics feature tables: known answers, the on-disk cache, failure policies, parallelism, feature meanings."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

import glasszoo.training.radiomics as rad
from glasszoo.evaluation.experiment.config import parse_config
from glasszoo.models.errors import ConfigError, DataError
from glasszoo.training.caseset import CaseSet
from glasszoo.training.features import feature_descriptions, feature_table
from glasszoo.training.settings import FeaturesConfig
from glasszoo.training.synthetic import make_synthetic

PREFIXES = ["original_firstorder_", "original_shape2D_", "original_glcm_", "original_glrlm_", "original_glszm_",
            "original_ngtdm_", "original_gldm_"]


@pytest.fixture(scope="module")
def cs():
    return make_synthetic(n_cases=30, img_size=32, seed=3)


@pytest.fixture(scope="module")
def extracted(cs, tmp_path_factory):
    return rad.extract_radiomics(cs, cache_dir=tmp_path_factory.mktemp("cache"), progress_bar=False)


def counting(monkeypatch):
    calls = []
    real = rad._extract_case

    def wrapper(grey, mask, params_json):
        calls.append(1)
        return real(grey, mask, params_json)

    monkeypatch.setattr(rad, "_extract_case", wrapper)
    return calls


def with_changes(cs: CaseSet, **arrays) -> CaseSet:
    out = copy.copy(cs)
    for k, v in arrays.items():
        setattr(out, k, v)
    return out


# ------------------------------------------------------------------------------------------------ table
def test_table_has_every_class_and_no_nan(cs, extracted):
    X, names, info = extracted
    assert X.dtype == np.float64 and X.shape == (cs.n_cases, len(names)) and np.isfinite(X).all()
    for prefix in PREFIXES:
        assert any(n.startswith(prefix) for n in names), prefix
    assert len(set(names)) == len(names) and not any(n.startswith("diagnostics") for n in names)
    assert info["feature_classes"] == list(rad.DEFAULT_FEATURE_CLASSES) and info["image_types"] == ["Original"]
    assert info["settings"]["binWidth"] == 8.0 and info["settings"]["force2D"] is False
    assert info["region"]["used"] == "lesion mask" and info["n_failed_cases"] == 0
    assert info["cache"]["hit"] is False and info["extraction_seconds"] > 0 and info["cases_per_second"] > 0
    assert info["n_features"] == len(names) <= info["n_features_extracted"]
    json.dumps(info)  # JSON-ready for the run to write
    # no feature constant on the training split survives
    assert np.all(np.ptp(X[cs.indices("train")], axis=0) > 0)


def test_first_order_mean_known_answer(cs, extracted):
    X, names, _ = extracted
    grey = cs.images.mean(axis=1).astype(np.float64) * 255.0
    expected = [grey[i][cs.masks[i] > 0].mean() for i in range(cs.n_cases)]
    np.testing.assert_allclose(X[:, names.index("original_firstorder_Mean")], expected, rtol=1e-5)
    expected_max = [grey[i][cs.masks[i] > 0].max() for i in range(cs.n_cases)]
    np.testing.assert_allclose(X[:, names.index("original_firstorder_Maximum")], expected_max, rtol=1e-5)


def rectangles_caseset(sizes, side=32, seed=0):
    rng = np.random.default_rng(seed)
    n = len(sizes)
    masks = np.zeros((n, side, side), np.uint8)
    for i, (h, w) in enumerate(sizes):
        masks[i, 5:5 + h, 7:7 + w] = 1
    images = rng.random((n, 1, side, side)).astype(np.float32)
    return CaseSet(images=images, labels=np.arange(n) % 2, class_names=["a", "b"],
                   case_ids=[f"rect{i}" for i in range(n)], split=["train"] * 4 + ["val"] * 2 + ["test"] * 2,
                   masks=masks)


def test_shape2d_of_rectangles_known_answer():
    sizes = [(12, 6), (4, 9), (10, 10), (3, 15), (7, 5), (6, 6), (8, 11), (5, 4)]
    cs = rectangles_caseset(sizes)
    X, names, _ = rad.extract_radiomics(cs, feature_classes=["shape2D"], cache=False, progress_bar=False)
    h, w = np.array(sizes, dtype=np.float64).T
    col = {n.split("_")[-1]: X[:, i] for i, n in enumerate(names)}
    np.testing.assert_allclose(col["PixelSurface"], h * w)
    # the marching-squares outline runs through pixel centres' mid-edges: each corner cuts off 1/8 pixel, and the
    # perimeter is the straight parts plus four diagonal half-pixel steps
    np.testing.assert_allclose(col["MeshSurface"], h * w - 0.5)
    np.testing.assert_allclose(col["Perimeter"], 2 * (h - 1) + 2 * (w - 1) + 4 * math.sqrt(0.5))


# ------------------------------------------------------------------------------------------------ cache
def test_cache_hit_skips_extraction_and_misses_on_changes(cs, tmp_path, monkeypatch):
    X1, n1, info1 = rad.extract_radiomics(cs, cache_dir=tmp_path, progress_bar=False)
    assert info1["cache"]["hit"] is False
    files = list(tmp_path.iterdir())
    assert [f.suffix for f in files] == [".npz"]  # no temporary file left behind
    calls = counting(monkeypatch)
    X2, n2, info2 = rad.extract_radiomics(cs, cache_dir=tmp_path, progress_bar=False)
    assert calls == [] and info2["cache"]["hit"] is True and info2["extraction_seconds"] == 0.0
    assert n2 == n1 and np.array_equal(X1, X2) and info2["cache"]["key"] == info1["cache"]["key"]
    # the failure policy is applied after the cache: changing it needs no extraction either
    rad.extract_radiomics(cs, cache_dir=tmp_path, progress_bar=False, on_failure="error")
    assert calls == []
    # a different setting -> miss
    _, _, info3 = rad.extract_radiomics(cs, settings={"binWidth": 16}, cache_dir=tmp_path, progress_bar=False)
    assert info3["cache"]["hit"] is False and len(calls) == cs.n_cases
    # different image bytes (one pixel of one case) -> miss
    images = cs.images.copy()
    images[0, 0, 0, 0] = 0.5 if images[0, 0, 0, 0] != 0.5 else 0.25
    _, _, info4 = rad.extract_radiomics(with_changes(cs, images=images), cache_dir=tmp_path, progress_bar=False)
    assert info4["cache"]["hit"] is False and len(calls) == 2 * cs.n_cases
    assert len({info1["cache"]["key"], info3["cache"]["key"], info4["cache"]["key"]}) == 3
    # cache disabled -> always extracts, writes nothing
    _, _, info5 = rad.extract_radiomics(cs, cache=False, progress_bar=False)
    assert info5["cache"] == {"enabled": False, "hit": False, "key": None, "path": None}
    assert len(list(tmp_path.iterdir())) == 3


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GLASSZOO_CACHE", str(tmp_path))
    assert rad.default_cache_dir() == tmp_path / "radiomics"


def test_unreadable_cache_file_is_a_miss(cs, tmp_path):
    _, _, info = rad.extract_radiomics(cs, cache_dir=tmp_path, progress_bar=False, feature_classes=["firstorder"])
    with open(info["cache"]["path"], "wb") as fh:
        fh.write(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable"):
        _, _, again = rad.extract_radiomics(cs, cache_dir=tmp_path, progress_bar=False,
                                            feature_classes=["firstorder"])
    assert again["cache"]["hit"] is False


# ------------------------------------------------------------------------------------------------ failures
@pytest.fixture(scope="module")
def cs_empty(cs):
    masks = cs.masks.copy()
    train, test = cs.indices("train")[0], cs.indices("test")[0]
    masks[[train, test]] = 0
    return with_changes(cs, masks=masks), [str(cs.case_ids[train]), str(cs.case_ids[test])]


def test_empty_mask_imputed_with_count(cs_empty, tmp_path):
    cse, bad = cs_empty
    with pytest.warns(UserWarning, match=f"case '{bad[0]}': empty region mask"):
        X, names, info = rad.extract_radiomics(cse, cache_dir=tmp_path, progress_bar=False)
    assert np.isfinite(X).all() and set(info["failures"]) == set(bad)
    assert info["imputed"]["n_cases"] == 2 and info["imputed"]["n_values"] == 2 * len(names)  # every returned column
    assert set(info["imputed"]["per_feature"]) == set(names) and set(info["imputed"]["per_feature"].values()) == {2}
    rows = [list(cse.case_ids).index(b) for b in bad]
    train = np.setdiff1d(cse.indices("train"), rows)
    np.testing.assert_allclose(X[rows[0]], np.median(X[train], axis=0))  # the training-split median
    np.testing.assert_allclose(X[rows[1]], X[rows[0]])


def test_empty_mask_error_and_drop_feature_name_the_case(cs_empty, tmp_path):
    cse, bad = cs_empty
    with pytest.raises(DataError, match=f"case '{bad[0]}': empty region mask"):
        rad.extract_radiomics(cse, cache_dir=tmp_path, progress_bar=False, on_failure="error")
    with pytest.raises(DataError, match=f"every feature failed.*case '{bad[0]}'"):
        rad.extract_radiomics(cse, cache_dir=tmp_path, progress_bar=False, on_failure="drop_feature")
    X, _, info = rad.extract_radiomics(cse, cache_dir=tmp_path, progress_bar=False, empty_mask="image")
    assert info["n_failed_cases"] == 0 and info["region"]["n_empty_masks"] == 2 and np.isfinite(X).all()


def test_failure_policy_on_a_nan_feature():
    values = np.array([[1.0, 2.0, 5.0], [3.0, np.nan, 5.0], [5.0, 4.0, 5.0], [7.0, 8.0, 5.0]])
    ids = np.array(["c0", "c1", "c2", "c3"], dtype=object)
    train = np.array([0, 1, 2])
    with pytest.warns(UserWarning, match=r"case 'c1': NaN/infinite value for \['b'\]"):
        X, names, rep = rad.apply_failure_policy(values, ["a", "b", "k"], ["", "", "", ""], ids, train, "impute")
    assert names == ["a", "b"] and X[1, 1] == 3.0  # median of b over the training cases with a value (2, 4)
    assert rep["imputed"]["n_values"] == 1 and rep["dropped_features"]["constant"] == ["k"]
    with pytest.warns(UserWarning):
        X, names, rep = rad.apply_failure_policy(values, ["a", "b", "k"], [""] * 4, ids, train, "drop_feature")
    assert names == ["a"] and rep["dropped_features"]["missing"] == ["b"]
    with pytest.raises(DataError, match="case 'c1'"):
        rad.apply_failure_policy(values, ["a", "b", "k"], [""] * 4, ids, train, "error")


# ------------------------------------------------------------------------------------------------ parallel
def test_two_jobs_give_the_same_table(cs, extracted):
    X1, n1, _ = extracted
    X2, n2, info = rad.extract_radiomics(cs, n_jobs=2, cache=False, progress_bar=False)
    assert n2 == n1 and info["n_jobs"] == 2
    np.testing.assert_array_equal(X2, X1)


# ------------------------------------------------------------------------------------------------ meanings
def test_every_extracted_feature_is_described(extracted):
    _, names, _ = extracted
    for n in names:
        d = rad.describe_feature(n)
        assert rad.GENERIC_MARK not in d and len(d) > 20, n
    assert rad.describe_feature("original_glcm_Contrast").startswith("GLCM contrast: local intensity variation")


def test_every_feature_of_the_enabled_classes_is_described():
    from radiomics import getFeatureClasses

    classes = getFeatureClasses()
    for cls in rad.DEFAULT_FEATURE_CLASSES:
        for feature in classes[cls].getFeatureNames():
            assert rad.GENERIC_MARK not in rad.describe_feature(f"original_{cls}_{feature}"), (cls, feature)
    assert rad.GENERIC_MARK in rad.describe_feature("original_glcm_NotAFeature")
    assert rad.describe_feature("original_glcm_NotAFeature").startswith("GLCM not a feature:")
    assert "wavelet" in rad.describe_feature("wavelet-LH_glcm_Contrast")
    assert "sigma 2.0" in rad.describe_feature("log-sigma-2-0-mm-3D_firstorder_Mean")


def test_filtered_image_types(cs):
    sub = cs  # Wavelet + LoG on two cheap classes
    X, names, info = rad.extract_radiomics(sub, feature_classes=["firstorder", "glcm"],
                                           image_types=["Original", "LoG", "Wavelet"],
                                           settings={"sigma": [1.0]}, cache=False, progress_bar=False)
    kinds = {n.split("_")[0] for n in names}
    assert {"original", "log-sigma-1-0-mm-3D", "wavelet-LH", "wavelet-HL", "wavelet-HH", "wavelet-LL"} <= kinds
    assert np.isfinite(X).all()
    assert all(rad.GENERIC_MARK not in rad.describe_feature(n) for n in names)


# ------------------------------------------------------------------------------------------------ regions
def test_regions_without_masks():
    cs = make_synthetic(n_cases=30, img_size=32, seed=4)
    nomask = with_changes(cs, masks=None)
    X, names, info = rad.extract_radiomics(nomask, region="otsu", feature_classes=["firstorder", "shape2D"],
                                           cache=False, progress_bar=False)
    assert info["region"]["used"] == "Otsu foreground" and any("shape2D" in n for n in names)
    X, names, info = rad.extract_radiomics(nomask, feature_classes=["firstorder", "shape2D"], cache=False,
                                           progress_bar=False)
    assert info["region"]["used"].startswith("whole image")
    assert not any("shape2D" in n for n in names)  # constant for the whole image: dropped
    assert set(info["dropped_features"]["constant"]) >= {"original_shape2D_PixelSurface"}


# ------------------------------------------------------------------------------------------------ config
def test_feature_table_radiomics_kind(cs, tmp_path):
    cfg = FeaturesConfig(kind="radiomics", cache_dir=str(tmp_path), progress_bar=False,
                         feature_classes=["firstorder", "glcm"])
    X, names = feature_table(cs, cfg)
    assert X.shape == (cs.n_cases, len(names)) and all(n.split("_")[1] in ("firstorder", "glcm") for n in names)
    X2, names2, info = feature_table(cs, cfg, return_info=True)
    assert info["cache"]["hit"] is True and names2 == names and np.array_equal(X, X2)
    Xi, ni = feature_table(cs, FeaturesConfig())
    assert Xi.shape == (cs.n_cases, 9) and ni[0] == "mean"
    desc = feature_descriptions(ni + names)
    assert desc["mean"] == "mean intensity in the region" and desc[names[0]].startswith("First-order")


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"features\.feature_classes: unknown feature class 'glcmx'"):
        FeaturesConfig(kind="radiomics", feature_classes=["glcm", "glcmx"])
    with pytest.raises(ConfigError, match="'shape2D'"):
        FeaturesConfig(kind="radiomics", feature_classes=["shape"])
    with pytest.raises(ConfigError, match=r"features\.settings\.binwidth"):
        FeaturesConfig(kind="radiomics", settings={"binwidth": 8})
    with pytest.raises(ConfigError, match=r"features\.settings\.force2D"):
        FeaturesConfig(kind="radiomics", settings={"force2D": True})
    with pytest.raises(ConfigError, match=r"features\.settings.*binWidth"):
        FeaturesConfig(kind="radiomics", settings={"binWidth": -1})
    with pytest.raises(ConfigError, match=r"features\.image_types.*'Fourier'"):
        FeaturesConfig(kind="radiomics", image_types=["Fourier"])
    with pytest.raises(ConfigError, match=r"settings\.sigma"):
        FeaturesConfig(kind="radiomics", image_types=["Original", "LoG"])
    with pytest.raises(ConfigError, match=r"features\.on_failure"):
        FeaturesConfig(kind="radiomics", on_failure="ignore")
    with pytest.raises(ConfigError, match=r"features\.n_jobs"):
        FeaturesConfig(kind="radiomics", n_jobs=0)
    with pytest.raises(ConfigError, match=r"features\.kind"):
        FeaturesConfig(kind="radiomic")
    with pytest.raises(ConfigError, match="glcmx"):
        parse_config({"experiment": "x", "data": {"source": "synthetic"}, "models": ["sparse_logreg"],
                      "features": {"kind": "radiomics", "feature_classes": ["glcmx"]}})
    cfg = parse_config({"experiment": "x", "data": {"source": "synthetic"}, "models": ["point_score"],
                        "features": {"kind": "radiomics", "settings": {"binWidth": 4}, "n_jobs": 2}})
    assert cfg.features.settings == {"binWidth": 4} and cfg.to_dict()["features"]["n_jobs"] == 2

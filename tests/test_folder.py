"""Tests of the ``folder`` data source (CSV manifest + SimpleITK images)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from glasszoo.models.errors import DataError
from glasszoo.training.data import load_caseset
from glasszoo.training.folder import load_folder
from glasszoo.training.split import stratified_split

SIZE = 16


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_image(path: Path, arr: np.ndarray, vector: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=vector), str(path))


def write_dicom(path: Path, arr: np.ndarray) -> None:
    """A single-frame uint16 MONOCHROME2 DICOM (Secondary Capture, explicit VR little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = "test", "OT"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = arr.astype("<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture
def png_set(tmp_path: Path) -> dict:
    """12 PNG cases (grey and RGB), masks, a split column, two concepts; names with spaces and parentheses."""
    rng = np.random.default_rng(0)
    rows, arrays, masks = [], [], []
    splits = ["train", "train", "val", "val", "test", "test"] * 2
    for i in range(12):
        colour = i % 4 == 1
        arr = rng.integers(0, 256, (SIZE, SIZE, 3) if colour else (SIZE, SIZE)).astype(np.uint8)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[2 + i % 5:9, 3:10] = 255
        img_rel, mask_rel = f"imgs/case ({i}).png", f"masks/case ({i})_mask.png"
        write_image(tmp_path / img_rel, arr, vector=colour)
        write_image(tmp_path / mask_rel, mask)
        arrays.append(arr)
        masks.append(mask > 0)
        rows.append([img_rel, mask_rel, ["cat", "dog"][i % 2], splits[i], i % 3, 0.5 * i, f"note {i}"])
    path = write_csv(tmp_path / "pets.csv", ["image", "mask", "label", "split", "score", "size", "note"], rows)
    return {"csv": path, "rows": rows, "arrays": arrays, "masks": masks}


def test_png_round_trip(png_set: dict) -> None:
    cs = load_folder(str(png_set["csv"]), img_size=SIZE)
    assert cs.name == png_set["csv"].parent.name  # named after the folder, not after the manifest file
    assert cs.images.shape == (12, 3, SIZE, SIZE) and cs.images.dtype == np.float32
    for i, arr in enumerate(png_set["arrays"]):
        expected = arr.astype(np.float32) / 255
        expected = np.moveaxis(expected, -1, 0) if arr.ndim == 3 else np.repeat(expected[None], 3, axis=0)
        np.testing.assert_array_equal(cs.images[i], expected)
        np.testing.assert_array_equal(cs.masks[i], png_set["masks"][i].astype(np.uint8))
    rows = png_set["rows"]
    assert cs.class_names == ["cat", "dog"]
    assert cs.labels.tolist() == [["cat", "dog"].index(r[2]) for r in rows]
    # the image path without the folder every image shares and without the file suffix
    assert cs.case_ids.tolist() == [r[0].removeprefix("imgs/").removesuffix(".png") for r in rows]
    assert cs.split.tolist() == [r[3] for r in rows]
    assert cs.concept_names == ["score", "size"]
    np.testing.assert_array_equal(cs.concepts, np.array([[r[4], r[5]] for r in rows], dtype=np.float32))
    assert cs.positive_class == 1


def test_png_options(png_set: dict) -> None:
    grey = load_folder(str(png_set["csv"]), img_size=SIZE, channels=1, concept_columns=["size"],
                       positive_class="cat", class_names=["dog", "cat"], name="g")
    assert grey.images.shape == (12, 1, SIZE, SIZE) and grey.name == "g"
    rgb = png_set["arrays"][1].astype(np.float32) / 255
    lum = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(grey.images[1, 0], lum, atol=1e-6)
    np.testing.assert_array_equal(grey.images[0, 0], png_set["arrays"][0] / np.float32(255))
    assert grey.class_names == ["dog", "cat"] and grey.positive_class == 1 and grey.labels[0] == 1
    assert grey.concept_names == ["size"]
    bare = load_folder(str(png_set["csv"]), img_size=SIZE, mask_column=None, concept_columns=None)
    assert bare.masks is None and bare.concepts is None and bare.concept_names == []
    mm = load_folder(str(png_set["csv"]), img_size=SIZE, intensity="minmax")
    assert mm.images.reshape(12, -1).min(axis=1).max() == 0.0
    assert mm.images.reshape(12, -1).max(axis=1).min() == 1.0


def test_integer_labels_empty_mask_and_ids(tmp_path: Path) -> None:
    rows = []
    for i in range(9):
        arr = np.full((8, 8), 10 * i, np.uint8)
        write_image(tmp_path / f"{i}.png", arr)
        if i % 3:
            write_image(tmp_path / f"{i}_m.png", np.eye(8, dtype=np.uint8))
        rows.append([str(tmp_path / f"{i}.png"), f"{i}_m.png" if i % 3 else "", i % 3, f"p{i}",
                     ["train", "val", "test"][i // 3]])
    path = write_csv(tmp_path / "ints.csv", ["image", "mask", "label", "pid", "split"], rows)
    cs = load_folder(str(path), img_size=8, id_column="pid")
    assert cs.class_names == ["0", "1", "2"] and cs.labels.tolist() == [i % 3 for i in range(9)]
    assert cs.case_ids.tolist() == [f"p{i}" for i in range(9)]
    assert cs.images.shape == (9, 1, 8, 8) and cs.concepts is None
    assert cs.masks[0].sum() == 0 and cs.masks[1].sum() == 8
    named = load_folder(str(path), img_size=8, class_names=["a", "b", "c"], positive_class="c")
    assert named.class_names == ["a", "b", "c"] and named.positive_class == 2
    assert named.case_ids[0] == "0"  # an absolute path inside the CSV folder becomes relative, without suffix


def test_dicom_and_nifti(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays, rows = [], []
    for i in range(6):
        arr = rng.integers(0, 65536, (SIZE, SIZE)).astype(np.uint16)
        arr[0, 0] = 65535
        write_dicom(tmp_path / f"scan {i}.dcm", arr)
        arrays.append(arr)
        rows.append([f"scan {i}.dcm", ["a", "b"][i % 2], ["train", "train", "val", "val", "test", "test"][i]])
    path = write_csv(tmp_path / "dicom.csv", ["image", "label", "split"], rows)
    cs = load_folder(str(path), img_size=SIZE)
    assert cs.images.shape == (6, 1, SIZE, SIZE) and cs.masks is None
    for i, arr in enumerate(arrays):
        np.testing.assert_allclose(cs.images[i, 0], arr / 65535.0, atol=1e-6)

    vol = np.stack([np.full((SIZE, SIZE), 20 * z, np.uint8) for z in range(7)])
    vmask = np.zeros_like(vol)
    vmask[2, 4:8, 4:8] = 1
    write_image(tmp_path / "vol.nii.gz", vol)
    write_image(tmp_path / "vol_mask.nii.gz", vmask)
    splits = ["train", "train", "val", "val", "test", "test"]
    rows = [["vol.nii.gz", "vol_mask.nii.gz", ["a", "b"][i % 2], s, f"c{i}"] for i, s in enumerate(splits)]
    path = write_csv(tmp_path / "nifti.csv", ["image", "mask", "label", "split", "id"], rows)
    cs = load_folder(str(path), img_size=SIZE, slice_index=2, id_column="id")
    np.testing.assert_allclose(cs.images[:, 0], 40 / 255, atol=1e-7)
    assert cs.masks[0].sum() == 16
    middle = load_folder(str(path), img_size=SIZE, id_column="id")
    np.testing.assert_allclose(middle.images[:, 0], 60 / 255, atol=1e-7)
    with pytest.raises(DataError, match=r"slice_index=9 is out of range .*vol\.nii\.gz.* 7 slices"):
        load_folder(str(path), img_size=SIZE, slice_index=9, id_column="id")


def test_stratified_split_when_no_split_column(tmp_path: Path) -> None:
    rows, labels = [], []
    for i in range(40):
        write_image(tmp_path / f"{i}.png", np.full((4, 4), i, np.uint8))
        label = "pos" if i % 4 == 0 else "neg"
        rows.append([f"{i}.png", label])
        labels.append(label == "pos")
    path = write_csv(tmp_path / "s.csv", ["image", "label"], rows)
    a = load_folder(str(path), img_size=4, seed=3)
    b = load_folder(str(path), img_size=4, seed=3)
    c = load_folder(str(path), img_size=4, seed=4)
    assert a.split.tolist() == b.split.tolist() and a.split.tolist() != c.split.tolist()
    assert a.split.tolist() == stratified_split(np.asarray(labels, dtype=int), 0.15, 0.2, seed=3).tolist()
    for cls, n in ((0, 30), (1, 10)):
        in_cls = a.split[a.labels == cls]
        assert (in_cls == "test").sum() == round(0.2 * n) and (in_cls == "val").sum() == round(0.15 * n)
    via_config = load_caseset({"source": "folder", "csv": "s.csv", "img_size": 4}, seed=3, base_dir=tmp_path)
    assert via_config.split.tolist() == a.split.tolist()


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_resize_shapes(tmp_path: Path, resize: str) -> None:
    img = np.full((40, 60), 255, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 20:40] = 1
    write_image(tmp_path / "wide.png", img)
    write_image(tmp_path / "wide_m.png", mask)
    rows = [["wide.png", "wide_m.png", lab, s] for s in ("train", "val", "test") for lab in ("x", "y")]
    path = write_csv(tmp_path / "r.csv", ["image", "mask", "label", "split", "id"],
                     [r + [str(i)] for i, r in enumerate(rows)])
    cs = load_folder(str(path), img_size=32, resize=resize, id_column="id")
    assert cs.images.shape == (6, 1, 32, 32) and cs.masks.shape == (6, 32, 32)
    assert 0.0 <= cs.images.min() and cs.images.max() <= 1.0
    assert set(np.unique(cs.masks).tolist()) == {0, 1}
    im = cs.images[0, 0]
    if resize == "stretch":
        np.testing.assert_allclose(im, 1.0, atol=1e-6)
        assert cs.masks[0].sum() == pytest.approx(32 * 32 / 6, rel=0.15)
    else:  # 40x60 padded to 60x60 (10 zero rows top and bottom), then 32x32: rows ~0..5 and ~27..31 are zero
        assert im[:4].max() == 0.0 and im[-4:].max() == 0.0
        np.testing.assert_allclose(im[7:25], 1.0, atol=1e-6)
        assert cs.masks[0].sum() == pytest.approx((32 / 3) ** 2, rel=0.2)
        assert cs.masks[0][:, :10].sum() == 0 and cs.masks[0][:, 22:].sum() == 0


# ---------------------------------------------------------------------------------------------------- bad inputs
@pytest.fixture
def small(tmp_path: Path) -> dict:
    """Six valid 8x8 PNG cases with masks and a split column; tests edit the rows to break one thing."""
    rows = []
    for i in range(6):
        write_image(tmp_path / f"img{i}.png", np.full((8, 8), 30 * i, np.uint8))
        write_image(tmp_path / f"m{i}.png", np.eye(8, dtype=np.uint8))
        rows.append([f"img{i}.png", f"m{i}.png", ["a", "b"][i % 2], ["train", "val", "test"][i // 2]])
    return {"dir": tmp_path, "header": ["image", "mask", "label", "split"], "rows": rows}


def _load(small: dict, **kwargs):
    path = write_csv(small["dir"] / "bad.csv", small["header"], small["rows"])
    return load_folder(str(path), img_size=8, **kwargs)


def test_valid_small_fixture(small: dict) -> None:
    assert _load(small).n_cases == 6


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CSV manifest not found: .*nope\.csv"):
        load_folder(str(tmp_path / "nope.csv"))


def test_missing_column(small: dict) -> None:
    with pytest.raises(DataError, match=r"column 'diagnosis' \(data.label_column\) not found .*columns present: "
                                         r"\['image', 'mask', 'label', 'split'\]"):
        _load(small, label_column="diagnosis")
    with pytest.raises(DataError, match=r"column 'seg' \(data.mask_column\) not found"):
        _load(small, mask_column="seg")
    with pytest.raises(DataError, match=r"concept column 'age' .* not found"):
        _load(small, concept_columns=["age"])


def test_missing_image_file(small: dict) -> None:
    small["rows"][3][0] = "gone (1).png"
    with pytest.raises(DataError, match=r"bad\.csv row 5: image file not found: .*gone \(1\)\.png"):
        _load(small)


def test_unreadable_image(small: dict) -> None:
    (small["dir"] / "x.png").write_text("this is not an image")
    small["rows"][0][0] = "x.png"
    with pytest.raises(DataError, match=r"row 2: cannot read image file .*x\.png"):
        _load(small)


@pytest.mark.parametrize("fname", ["nan.nii.gz", "nan.nii", "nan.mha"])
def test_non_finite_pixels(small: dict, fname: str) -> None:
    arr = np.full((8, 8), 0.5, np.float32)
    arr[3, 3] = np.nan
    write_image(small["dir"] / fname, arr)  # ITK's NIfTI reader turns NaN into 0: the loader checks the raw voxels
    small["rows"][1][0] = fname
    with pytest.raises(DataError, match=rf"row 3: image file .*{fname}\b contains non-finite pixels"):
        _load(small)


def test_float_out_of_range_suggests_minmax(small: dict) -> None:
    write_image(small["dir"] / "hu.nii.gz", np.linspace(-1000, 1000, 64, dtype=np.float32).reshape(8, 8))
    small["rows"][1][0] = "hu.nii.gz"
    with pytest.raises(DataError, match=r"hu\.nii\.gz has float pixels .*use intensity='minmax'"):
        _load(small)
    cs = _load(small, intensity="minmax")
    assert cs.images[1].min() == 0.0 and cs.images[1].max() == 1.0


def test_mask_wrong_shape(small: dict) -> None:
    write_image(small["dir"] / "big_mask.png", np.zeros((9, 8), np.uint8))
    small["rows"][2][1] = "big_mask.png"
    with pytest.raises(DataError, match=r"row 4: mask .*big_mask\.png has shape \(9, 8\) but image .*img2\.png has "
                                        r"shape \(8, 8\)"):
        _load(small)


def test_unknown_label(small: dict) -> None:
    small["rows"][4][2] = "c"
    with pytest.raises(DataError, match=r"row 6: label 'c' is not one of class_names \['a', 'b'\]"):
        _load(small, class_names=["a", "b"])


def test_bad_split_value(small: dict) -> None:
    small["rows"][0][3] = "training"
    with pytest.raises(DataError, match=r"row 2: split value 'training' in column 'split'"):
        _load(small)


def test_bad_concept_value(small: dict) -> None:
    small["header"].append("age")
    for i, row in enumerate(small["rows"]):
        row.append("n/a" if i == 2 else str(40 + i))
    with pytest.raises(DataError, match=r"row 4, column 'age': concept value 'n/a' is missing"):
        _load(small)
    small["rows"][2][-1] = "old"
    with pytest.raises(DataError, match=r"row 4, column 'age': concept value 'old' is not a number"):
        _load(small, concept_columns=["age"])
    assert _load(small).concepts is None  # "auto" skips the non-numeric column


@pytest.mark.parametrize("value,problem", [("", "is missing"), ("NaN", "is missing"), ("abc", "is not a number"),
                                           ("inf", "is not a number")])
@pytest.mark.parametrize("concept_columns", ["auto", ["age"]])
def test_concept_value_errors_name_file_row_column(small: dict, value: str, problem: str, concept_columns) -> None:
    small["header"].append("age")
    for i, row in enumerate(small["rows"]):
        row.append(value if i == 4 else str(40 + i))
    if concept_columns == "auto" and problem == "is not a number":
        assert _load(small).concepts is None  # "auto" only picks columns whose values are all numbers
        return
    with pytest.raises(DataError, match=rf"^bad\.csv row 6, column 'age': concept value '{value}' {problem}$"):
        _load(small, concept_columns=concept_columns)


@pytest.mark.parametrize("column,role", [
    ("image", r"image column \(data\.image_column\)"), ("label", r"label column \(data\.label_column\)"),
    ("mask", r"mask column \(data\.mask_column\)"), ("split", r"split column \(data\.split_column\)"),
    ("pid", r"id column \(data\.id_column\)")])
def test_concept_column_with_another_role(small: dict, column: str, role: str) -> None:
    small["header"] += ["pid", "age"]
    for i, row in enumerate(small["rows"]):
        row += [str(i), str(40 + i)]
    assert _load(small, id_column="pid").concept_names == ["age"]  # "auto" never picks a column with a role
    with pytest.raises(DataError, match=rf"concept column '{column}' \(data\.concept_columns\) is also the {role} "
                                        rf"in .*bad\.csv; a column can have only one role"):
        _load(small, id_column="pid", concept_columns=["age", column])


def test_concept_column_listed_twice(small: dict) -> None:
    small["header"] += ["age", "size"]
    for row in small["rows"]:
        row += ["40", "2"]
    assert _load(small, concept_columns=["age", "size"]).concept_names == ["age", "size"]
    with pytest.raises(DataError, match=r"concept column 'age' is listed twice in data.concept_columns "
                                        r"\['age', 'size', 'age'\]"):
        _load(small, concept_columns=["age", "size", "age"])


def test_duplicated_header_columns(small: dict) -> None:
    small["header"] += ["note", "age", "note", "age"]
    for i, row in enumerate(small["rows"]):
        row += [f"n{i}", "40", "x", "41"]
    # unused duplicates are harmless
    assert _load(small, concept_columns=None).concepts is None
    assert _load(small, concept_columns=[]).concepts is None
    # a used duplicate is ambiguous: explicit concept, "auto" concept, or any other role
    with pytest.raises(DataError, match=r"concept column 'age' \(data.concept_columns\) appears 2 times in the "
                                        r"header of .*bad\.csv \(columns 6, 8\), so it is ambiguous"):
        _load(small, concept_columns=["age"])
    with pytest.raises(DataError, match=r"numeric column 'age' .*concept_columns: auto.* appears 2 times .*"
                                        r"\(columns 6, 8\)"):
        _load(small)
    with pytest.raises(DataError, match=r"column 'note' \(data.id_column\) appears 2 times .*\(columns 5, 7\)"):
        _load(small, concept_columns=None, id_column="note")
    small["header"][4] = "label"
    with pytest.raises(DataError, match=r"column 'label' \(data.label_column\) appears 2 times .*"
                                        r"\(columns 3, 5\)"):
        _load(small, concept_columns=None)


def test_class_missing_from_a_split(small: dict) -> None:
    small["rows"][5][2] = "a"  # the only 'b' in test becomes 'a'
    with pytest.raises(DataError, match=r"class \['b'\] has no examples in split 'test'"):
        _load(small)


# ---------------------------------------------------------------------------------------------------- real data
@pytest.mark.shared_data
def test_busi(shared_data: Path) -> None:
    path = shared_data / "busi" / "busi.csv"
    with open(path, newline="") as fh:
        labels = [row["label"] for row in csv.DictReader(fh)]
    cs = load_folder(str(path), img_size=64)
    assert cs.n_cases == 780 == len(labels)
    assert cs.class_names == ["benign", "malignant", "normal"]
    assert np.bincount(cs.labels).tolist() == [437, 210, 133]
    assert cs.images.shape == (780, 3, 64, 64)  # 16 RGB images make "auto" choose 3 channels
    assert 0.0 <= cs.images.min() and cs.images.max() <= 1.0 and cs.images.std() > 0.05
    assert cs.masks.shape == (780, 64, 64)
    lesion = cs.masks.reshape(780, -1).sum(axis=1)
    assert (lesion[cs.labels == 2] == 0).all() and (lesion[cs.labels != 2] > 0).all()
    assert cs.concepts is None and cs.positive_class == 1
    assert cs.case_ids[0] == "benign/benign (1)"


@pytest.mark.shared_data
def test_ph2(shared_data: Path) -> None:
    cs = load_folder(str(shared_data / "ph2" / "ph2.csv"), img_size=64, positive_class="melanoma")
    assert cs.n_cases == 200
    assert cs.class_names == ["atypical_nevus", "common_nevus", "melanoma"] and cs.positive_class == 2
    assert np.bincount(cs.labels).tolist() == [80, 80, 40]
    assert cs.images.shape == (200, 3, 64, 64)
    assert 0.0 <= cs.images.min() and cs.images.max() <= 1.0 and cs.images.std() > 0.05
    assert cs.masks.shape == (200, 64, 64) and (cs.masks.reshape(200, -1).sum(axis=1) > 0).all()
    assert cs.concept_names == [
        "asymmetry", "atypical_pigment_network", "dots_globules_present", "atypical_dots_globules", "streaks",
        "regression_areas", "blue_whitish_veil", "colour_white", "colour_red", "colour_light_brown",
        "colour_dark_brown", "colour_blue_gray", "colour_black",
    ]
    assert cs.concepts.shape == (200, 13)
    assert set(np.unique(cs.concepts[:, 0]).tolist()) <= {0.0, 1.0, 2.0}
    assert set(np.unique(cs.concepts[:, 1:]).tolist()) <= {0.0, 1.0}
    for s in ("train", "val", "test"):
        assert (np.bincount(cs.labels[cs.split == s], minlength=3) > 0).all()

"""Real data as users have it (issue 18): pretrained weights from a local file, near-duplicates and grouped splits,
radiomics inside predicted masks, MedMNIST+ files, and the surprises of a first folder of one's own images."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from sklearn.metrics import cohen_kappa_score

from glasszoo.evaluation.experiment.cli import main
from glasszoo.evaluation.experiment.config import parse_config
from glasszoo.evaluation.experiment.runner import run_experiment
from glasszoo.evaluation.metrics import kappa_ci, quadratic_weighted_kappa
from glasszoo.models import ConfigError, DataError, create_model, resolve_pretrained
from glasszoo.models._backbones import InputPrep
from glasszoo.training.data import load_caseset
from glasszoo.training.duplicates import (
    duplicate_report,
    fingerprints,
    group_ids,
    near_duplicate_groups,
)
from glasszoo.training.folder import default_case_ids, load_folder
from glasszoo.training.medmnist import load_medmnist
from glasszoo.training.split import grouped_stratified_split, stratified_split
from glasszoo.training.synthetic import make_synthetic

SIDE = 32


# ------------------------------------------------------------------------------------------------ pretrained
@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A ResNet-10-T state dict with random values (not timm's init), saved as .pth and .safetensors."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(1)
    src = timm.create_model("resnet10t", pretrained=False).state_dict()
    sd = {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in src.items()}
    root = tmp_path_factory.mktemp("weights")
    torch.save(sd, root / "w.pth")
    save_file(sd, str(root / "w.safetensors"))
    return root / "w.pth", root / "w.safetensors", sd


@pytest.mark.parametrize("fmt", [0, 1], ids=["pth", "safetensors"])
def test_pretrained_file_loads_into_every_family(weights, fmt) -> None:
    path, sd = weights[fmt], weights[2]
    common = {"num_classes": 2, "in_chans": 3, "img_size": 64, "pretrained": str(path)}
    bb = create_model("blackbox", backbone="resnet10t", stem="standard", **common)
    pp = create_model("protopnet", backbone="resnet10t", stem="standard", **common)
    cbm = create_model("cbm", backbone="resnet10t", stem="standard", concept_names=["a", "b"], **common)
    pip = create_model("pipnet", backbone="resnet10t", stem="standard", **common)
    unet = create_model("attention_unet", encoder="resnet10t", depth=3, **common)
    for net, key in ((bb.net, "layer1.0.conv1.weight"), (bb.net, "conv1.0.weight"),
                     (pp.features, "layer2.0.conv2.weight"), (cbm.net, "layer3.0.bn1.running_var"),
                     (pip.features, "layer1.0.conv1.weight"),
                     (unet.encoder.net, "layer1.0.conv2.weight")):
        assert torch.equal(dict(net.state_dict())[key], sd[key]), key
    assert bb.net.fc.weight.shape == (2, 512)  # the file's 1000-class head is dropped for a 2-class one
    assert not torch.equal(create_model("blackbox", backbone="resnet10t", stem="standard", num_classes=2, in_chans=3,
                                        img_size=64).net.conv1[0].weight, sd["conv1.0.weight"])


def test_pretrained_grey_input_sums_the_rgb_filters(weights) -> None:
    path, _, sd = weights
    grey = create_model("blackbox", num_classes=2, in_chans=1, img_size=64, backbone="resnet10t", stem="standard",
                        pretrained=str(path))
    torch.testing.assert_close(grey.net.conv1[0].weight, sd["conv1.0.weight"].sum(dim=1, keepdim=True))


def test_pretrained_bad_files_are_one_line_config_errors(tmp_path, weights) -> None:
    with pytest.raises(ConfigError, match="not found"):
        resolve_pretrained(str(tmp_path / "missing.pth"), "resnet10t")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a weights file"):
        resolve_pretrained(str(tmp_path / "w.txt"), "resnet10t")
    with pytest.raises(ConfigError, match="does not fit timm backbone 'resnet18'") as err:
        create_model("blackbox", num_classes=2, in_chans=3, img_size=64, backbone="resnet18",
                     pretrained=str(weights[0]))
    assert "\n" not in str(err.value)


def test_pretrained_true_offline_fails_before_training_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cfg = tmp_path / "p.yaml"
    cfg.write_text(json.dumps({
        "experiment": "p", "output_dir": str(tmp_path / "runs"),
        "data": {"source": "synthetic", "n_cases": 60, "img_size": 32},
        "models": [{"name": "blackbox", "params": {"backbone": "resnet10t", "pretrained": True}}]}))
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "models[blackbox].params.pretrained: true needs timm's weights for 'resnet10t'" in err
    assert "timm/resnet10t" in err and "set pretrained: PATH" in err
    assert not (tmp_path / "runs" / "p" / "models").exists()  # nothing trained


def test_input_prep_normalises_and_resizes_without_changing_checkpoints() -> None:
    prep = InputPrep(3, "imagenet", 64)
    x = torch.full((1, 3, 32, 32), 0.5)
    y = prep(x)
    assert y.shape == (1, 3, 64, 64)
    torch.testing.assert_close(y[0, :, 0, 0], torch.tensor([(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224,
                                                            (0.5 - 0.406) / 0.225]))
    grey = InputPrep(1, "imagenet")(torch.full((1, 1, 4, 4), 0.449))
    assert torch.allclose(grey, torch.zeros_like(grey), atol=1e-6)  # grey: the channel means of mean and sd
    plain = create_model("blackbox", num_classes=2, in_chans=1, img_size=32, backbone="resnet10t")
    prepped = create_model("blackbox", num_classes=2, in_chans=1, img_size=32, backbone="resnet10t",
                           normalize="imagenet", input_size=64)
    assert list(plain.state_dict()) == list(prepped.state_dict())
    prepped.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 32, 32)
    plain.eval()
    with torch.no_grad():
        expected = plain.net.forward_head(plain.net.forward_features(
            (torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False) - 0.449)
            / ((0.229 + 0.224 + 0.225) / 3)))
        torch.testing.assert_close(prepped.eval()(x), expected.float(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ duplicates
def _noise_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, SIDE, SIDE)).astype(np.float32)


def test_near_duplicates_found_and_unrelated_images_not() -> None:
    imgs = _noise_images(12)
    imgs[5] = imgs[2]  # an exact copy
    imgs[9] = np.clip(imgs[2] * 0.8 + 0.1, 0, 1)  # the same image re-windowed
    imgs[7] = np.clip(imgs[3] + 0.05 * np.random.default_rng(1).standard_normal(imgs[3].shape), 0, 1)  # re-saved
    groups = near_duplicate_groups(imgs)
    assert [g.tolist() for g in groups] == [[2, 5, 9], [3, 7]]
    assert near_duplicate_groups(_noise_images(40, seed=3)) == []
    f = fingerprints(np.zeros((2, 1, SIDE, SIDE), np.float32))
    assert not f.any()  # constant images are never duplicates
    norms = np.linalg.norm(fingerprints(imgs), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_phantoms_have_no_near_duplicates() -> None:
    cs = make_synthetic(n_cases=400, img_size=48)
    assert near_duplicate_groups(cs.images) == []


def test_group_ids_join_duplicates_and_a_patient_column() -> None:
    ids = group_ids(6, [np.array([0, 3])], extra=np.array(["a", "b", "c", "b", "c", "d"]))
    assert ids.tolist() == [0, 0, 2, 0, 2, 5]  # 0-3 copies; 1 and 3 one patient; 2 and 4 another


def test_grouped_split_keeps_groups_together_and_reduces_to_the_plain_split() -> None:
    labels = np.repeat([0, 1, 2], [40, 30, 20])
    np.testing.assert_array_equal(grouped_stratified_split(labels, np.arange(90), 0.15, 0.2, 3),
                                  stratified_split(labels, 0.15, 0.2, 3))
    groups = np.arange(90) // 3  # triplets
    split = grouped_stratified_split(labels, groups, 0.15, 0.2, 0)
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1
    for c in range(3):
        counts = {s: int(((split == s) & (labels == c)).sum()) for s in ("train", "val", "test")}
        n = int((labels == c).sum())
        assert abs(counts["test"] - 0.2 * n) <= 3 and abs(counts["val"] - 0.15 * n) <= 3 and counts["train"] > 0


def _write_folder(tmp_path: Path, n: int = 18, classes: tuple[str, ...] = ("a", "b", "c"), copies: bool = True,
                  patients: bool = False) -> Path:
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    rows = []
    base = rng.integers(0, 256, (n, SIDE, SIDE)).astype(np.uint8)
    if copies:
        base[3] = base[0]  # a copy under the same label (a)
        base[5] = base[4]  # and one under another label (b and c)
    (tmp_path / "study" / "images").mkdir(parents=True)
    for i in range(n):
        sitk.WriteImage(sitk.GetImageFromArray(base[i]), str(tmp_path / "study" / "images" / f"case_{i:04d}.dcm.png"))
        rows.append([f"images/case_{i:04d}.dcm.png", classes[i % len(classes)], f"p{i // 2}" if patients else ""])
    path = tmp_path / "study" / "labels.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "patient"])
        w.writerows(rows)
    return path


def test_folder_grouped_split_and_the_report(tmp_path) -> None:
    path = _write_folder(tmp_path, n=30)
    cs = load_folder(str(path), img_size=SIDE, group_duplicates=True, val_fraction=0.2, test_fraction=0.2)
    assert cs.split[0] == cs.split[3] and cs.split[4] == cs.split[5]
    rep = cs.checks["duplicates"]
    assert rep["n_groups"] == 2 and rep["n_groups_across_splits"] == 0 and rep["grouped_split"]
    assert rep["n_groups_across_labels"] == 1
    assert rep["groups_across_labels"][0]["case_ids"] == ["case_0004", "case_0005"]
    assert rep["groups_across_labels"][0]["labels"] == ["b", "c"]
    with pytest.raises(ConfigError, match="own split column"):
        rows = list(csv.reader(open(path)))
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(rows[0] + ["split"])
            w.writerows(r + [["train", "val", "test"][i % 3]] for i, r in enumerate(rows[1:]))
        load_folder(str(path), img_size=SIDE, group_duplicates=True)


def test_group_column_keeps_a_patients_images_together(tmp_path) -> None:
    path = _write_folder(tmp_path, n=36, copies=False, patients=True)
    cs = load_folder(str(path), img_size=SIDE, group_column="patient")
    for p in range(18):
        assert cs.split[2 * p] == cs.split[2 * p + 1]


def test_duplicate_report_counts_by_hand() -> None:
    cs = make_synthetic(n_cases=60, img_size=16)
    test, train = cs.indices("test"), cs.indices("train")
    groups = [np.array(sorted([test[0], train[0], train[1]])), np.array(sorted([train[2], train[3]]))]
    rep = duplicate_report(cs, groups, 0.6, grouped=False)
    assert rep["n_groups"] == 2 and rep["n_cases_in_groups"] == 5 and rep["largest_group"] == 3
    assert rep["n_groups_across_splits"] == 1 and rep["test_cases_with_train_duplicate"] == 1
    expected_cross = sum(len(set(cs.labels[g])) > 1 for g in groups)
    assert rep["n_groups_across_labels"] == expected_cross


def test_every_run_records_the_check_and_the_report_warns(tmp_path) -> None:
    cs = load_caseset({"source": "synthetic", "n_cases": 200, "img_size": 48})
    assert cs.checks["duplicates"]["n_groups"] == 0 and cs.checks["duplicates"]["threshold"] == 0.6
    off = load_caseset({"source": "synthetic", "n_cases": 80, "img_size": 24, "check_duplicates": False})
    assert "duplicates" not in off.checks
    with pytest.raises(ConfigError, match="duplicate_threshold"):
        load_caseset({"source": "synthetic", "n_cases": 80, "duplicate_threshold": 2})


# ------------------------------------------------------------------------------------------------ the CLI
def test_glasszoo_data_prints_the_groups_and_survives_a_closed_pipe(tmp_path) -> None:
    path = _write_folder(tmp_path, n=30)
    cfg = tmp_path / "d.yaml"
    cfg.write_text(json.dumps({"experiment": "d", "data": {"source": "folder", "csv": str(path), "img_size": SIDE},
                               "models": ["sparse_logreg"]}))
    out = subprocess.run([sys.executable, "-m", "glasszoo.evaluation.experiment.cli", "data", str(cfg)],
                         capture_output=True, text=True, check=True).stdout
    assert "2 groups holding 4 cases" in out and "groups whose labels disagree: 1" in out
    assert "across labels: case_0004 (b, " in out
    assert '"name": "study"' in out and '"positive_class"' not in out  # 3 classes: no positive class
    piped = subprocess.run(f"{sys.executable} -m glasszoo.evaluation.experiment.cli data {cfg} | head -1",
                           shell=True, capture_output=True, text=True)
    assert piped.stdout.strip() == "{" and "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr


def test_default_case_ids_are_short_and_unique(tmp_path) -> None:
    assert default_case_ids(["images/case_0006.dcm", "images/case_0007.dcm"], tmp_path) == ["case_0006", "case_0007"]
    assert default_case_ids(["a/x.png", "b/x.png"], tmp_path) == ["a/x", "b/x"]
    assert default_case_ids(["x.png", "x.dcm"], tmp_path) == ["x.png", "x.dcm"]  # the suffix is what differs
    assert default_case_ids(["scan.nii.gz", "case 1.5"], tmp_path) == ["scan", "case 1.5"]


# ------------------------------------------------------------------------------------------------ ordinal
def test_quadratic_weighted_kappa_known_answers() -> None:
    y = np.array([0, 1, 2, 3, 4, 4, 2, 1])
    p = np.array([0, 2, 2, 3, 3, 4, 0, 1])
    assert quadratic_weighted_kappa(y, p, 5) == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"))
    assert quadratic_weighted_kappa(y, y, 5) == 1.0
    # two grades, one of each, both swapped: observed disagreement 2 * 1, expected 0.5 * 2 * 1 -> kappa = 1 - 2 = -1
    assert quadratic_weighted_kappa(np.array([0, 1]), np.array([1, 0]), 2) == pytest.approx(-1.0)
    proba = np.eye(5)[p]
    ci = kappa_ci(y, proba, n_boot=200)
    assert ci["value"] == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"))
    assert ci["ci"][0] <= ci["value"] <= ci["ci"][1]


def test_ordinal_option_checks_the_classes() -> None:
    with pytest.raises(ConfigError, match="at least 3 ordered grades"):
        load_caseset({"source": "synthetic", "n_cases": 60, "ordinal": True})
    with pytest.raises(ConfigError, match="data.ordinal must be true or false"):
        load_caseset({"source": "synthetic", "n_cases": 60, "ordinal": "yes"})


def test_folder_run_without_surprises(tmp_path, capsys) -> None:
    """A 3-grade folder run of a glass-box model with no features block: it says which table it reads, reports
    the kappa of the ordered grades, no positive class, case figures named after short ids, a 3-panel ROC."""
    path = _write_folder(tmp_path, n=45, copies=False)
    cfg = parse_config({
        "experiment": "grades", "output_dir": str(tmp_path / "runs"),
        "data": {"source": "folder", "csv": str(path), "img_size": SIDE, "ordinal": True},
        "evaluation": {"bootstrap": 50, "explain_cases": 4, "case_figures_per_class": 1},
        "models": ["sparse_logreg"]}, "grades")
    run_dir = run_experiment(cfg)
    err = capsys.readouterr().err
    assert ("reads: built-in intensity table (first-order statistics) over the whole image (the data has no "
            "masks)") in err
    m = json.loads((run_dir / "metrics.json").read_text())
    assert "positive_class" not in m["dataset"] and m["dataset"]["name"] == "study" and m["dataset"]["ordinal"]
    kap = m["models"]["sparse_logreg"]["task"]["quadratic_weighted_kappa"]
    assert -1.0 <= kap["ci"][0] <= kap["value"] <= kap["ci"][1] <= 1.0
    assert m["models"]["sparse_logreg"]["reads"]["ground_truth_masks_at_test"] is False
    names = sorted(p.name for p in (run_dir / "figures" / "cases" / "sparse_logreg").glob("*.png"))
    assert names and all(n.startswith("case_") and ".dcm" not in n for n in names)
    from PIL import Image

    w, h = Image.open(run_dir / "figures" / "roc.png").size
    assert w > 2.5 * h  # three panels side by side, one per grade against the rest
    html = (run_dir / "report.html").read_text()
    assert "quadratic-weighted kappa" in html and "<h3>ROC</h3><figure>" in html


def test_prototype_schedule_mismatch_is_one_config_line() -> None:
    from glasszoo.models.protopnet import ProtoPNetSchedule

    model = create_model("protopnet", num_classes=2, in_chans=1, img_size=32, backbone="resnet10t",
                         warmup_epochs=1, joint_epochs=1, last_layer_epochs=1)

    class _Trainer:
        max_epochs = 7

    with pytest.raises(ConfigError) as err:
        ProtoPNetSchedule(model, None).on_fit_start(_Trainer(), None)
    assert "\n" not in str(err.value) and "max_epochs: 3" in str(err.value)


# ------------------------------------------------------------------------------------------------ predicted masks
def test_glass_box_on_predicted_masks_end_to_end(tmp_path) -> None:
    cfg = parse_config({
        "experiment": "pred", "output_dir": str(tmp_path),
        "data": {"source": "synthetic", "n_cases": 160, "img_size": 32},
        "training": {"max_epochs": 2, "batch_size": 32, "progress_bar": False},
        "evaluation": {"bootstrap": 50, "explain_cases": 4, "case_figures_per_class": 1, "report_misclassified": 0,
                       "posthoc": {"methods": []}, "quality": {"enabled": False}, "prototype_parts": {"cases": 0}},
        "models": [{"name": "logreg_gt", "model": "sparse_logreg"},
                   {"name": "logreg_pred", "model": "sparse_logreg", "features": {"region": "predicted"}},
                   {"name": "attention_unet", "params": {"depth": 2, "base_width": 4}}],
    }, "pred-test")
    assert cfg.features_for(cfg.models[1]).segmenter == "attention_unet"
    run_dir = run_experiment(cfg)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert list(m["models"]) == ["attention_unet", "logreg_gt", "logreg_pred"]  # the segmenter trained first
    gt, pred = m["models"]["logreg_gt"]["reads"], m["models"]["logreg_pred"]["reads"]
    assert gt["ground_truth_masks_at_test"] and not pred["ground_truth_masks_at_test"]
    assert pred["segmenter"] == "attention_unet" and pred["table_info"]["masks"] == "predicted by attention_unet"
    # the predicted-mask table really is another table: computed from the U-Net's masks, not the data's
    from glasszoo.evaluation.experiment.saved import open_run

    run = open_run(run_dir)
    a_gt, a_pred = run.adapter("logreg_gt"), run.adapter("logreg_pred")
    unet_masks = run.load_model("attention_unet").predict_masks(run.caseset.images)
    assert not np.array_equal(unet_masks, run.caseset.masks)
    assert not np.allclose(a_gt.table[0], a_pred.table[0])
    from glasszoo.training.features import intensity_features

    cs = copy.copy(run.caseset)
    cs.masks = unet_masks
    np.testing.assert_allclose(a_pred.table[0], intensity_features(cs, "mask")[0])
    html = (run_dir / "report.html").read_text()
    assert html.count("ground-truth masks at test time") == 1 and "logreg_gt read the expert" in html


def test_predicted_region_needs_a_segmenter() -> None:
    raw = {"experiment": "x", "data": {"source": "synthetic"}, "features": {"region": "predicted"},
           "models": ["sparse_logreg", "blackbox"]}
    with pytest.raises(ConfigError, match="needs a model of the config that segments"):
        parse_config(raw, "x.yaml")
    raw["features"] = {"region": "predicted", "segmenter": "blackbox"}
    with pytest.raises(ConfigError, match="'blackbox' is not a model of this config that segments"):
        parse_config(raw, "x.yaml")
    raw = {"experiment": "x", "data": {"source": "synthetic"},
           "models": [{"name": "blackbox", "features": {"region": "predicted"}}]}
    with pytest.raises(ConfigError, match="only models reading a feature table"):
        parse_config(raw, "x.yaml")


# ------------------------------------------------------------------------------------------------ MedMNIST+
def test_medmnist_plus_files_by_name_and_size(tmp_path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for s, n in (("train", 6), ("val", 2), ("test", 4)):
        arrays[f"{s}_images"] = rng.integers(0, 256, (n, 64, 64)).astype(np.uint8)
        arrays[f"{s}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    np.savez(tmp_path / "breastmnist_64.npz", **arrays)
    cs = load_medmnist(name="breastmnist", root=str(tmp_path), size=64, download=False)
    assert cs.images.shape == (12, 1, 64, 64) and cs.class_names == ["malignant", "normal_or_benign"]
    np.testing.assert_array_equal(cs.images[0, 0], arrays["train_images"][0] / np.float32(255))
    same = load_medmnist(name="breastmnist", root=str(tmp_path), img_size=64, download=False)  # size from img_size
    np.testing.assert_array_equal(same.images, cs.images)
    small = load_medmnist(name="breastmnist", root=str(tmp_path), size=64, img_size=32, download=False)
    assert small.images.shape == (12, 1, 32, 32)
    with pytest.raises(DataError, match="breastmnist_128.npz"):
        load_medmnist(name="breastmnist", root=str(tmp_path), size=128, download=False)
    with pytest.raises(DataError, match="must be one of"):
        load_medmnist(name="breastmnist", root=str(tmp_path), size=100, download=False)
    with pytest.raises(DataError, match="with data.path give the file"):
        load_medmnist(path=str(tmp_path / "breastmnist_64.npz"), size=64)

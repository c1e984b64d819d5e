"""Reopening a finished run, explaining its cases and new images later, the per-case figures, the push benchmark."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from glasszoo.evaluation.case_figures import activation_box
from glasszoo.evaluation.experiment.bench import bench_push, format_section, write_markdown
from glasszoo.evaluation.experiment.cli import main
from glasszoo.evaluation.experiment.config import parse_config
from glasszoo.evaluation.experiment.runner import run_experiment
from glasszoo.evaluation.experiment.saved import open_run
from glasszoo.models import ProtoPNet, PrototypeEvidence
from glasszoo.models.errors import DataError
from glasszoo.training.rundir import safe_filename

SIDE = 32


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("explain")
    cfg = parse_config({
        "experiment": "explain", "seed": 0, "output_dir": str(tmp),
        "data": {"source": "synthetic", "n_cases": 120, "img_size": SIDE},
        "training": {"max_epochs": 1, "batch_size": 32, "progress_bar": False},
        "evaluation": {"bootstrap": 50, "explain_cases": 12, "case_figures_per_class": 2, "report_misclassified": 0,
                       "posthoc": {"methods": []}, "quality": {"enabled": False}},
        "models": [
            {"name": "blackbox", "params": {"backbone": "resnet18", "stem": "standard"}},
            {"name": "protopnet", "params": {"stem": "standard", "feature_stage": 2, "prototypes_per_class": 2,
                                             "prototype_dim": 16, "warmup_epochs": 1, "joint_epochs": 1,
                                             "last_layer_epochs": 1},
             "training": {"max_epochs": 3}},
            {"name": "cbm", "params": {"stem": "standard", "mode": "independent"}},
        ],
    }, "explain-test")
    return run_experiment(cfg)


def write_png(path: Path, arr: np.ndarray) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=arr.ndim == 3), str(path))
    return path


def test_run_writes_case_figures_for_each_class(run_dir):
    splits = pd.read_csv(run_dir / "splits.csv").set_index("case_id")
    info = json.loads((run_dir / "run.json").read_text())
    assert Path(info["cwd"]).is_dir() and info["glasszoo_version"]
    for model in ("protopnet", "blackbox", "cbm"):
        figs = sorted((run_dir / "figures" / "cases" / model).glob("*.png"))
        assert len(figs) == 4  # 2 per class, the same cases for every model
        labels = splits.loc[[f.stem for f in figs], "label"]
        assert sorted(labels.tolist()) == [0, 0, 1, 1]
        assert (splits.loc[[f.stem for f in figs], "split"] == "test").all()


def test_reloaded_model_reproduces_the_run_without_retraining(run_dir):
    run = open_run(run_dir)
    assert run.model_names == ["blackbox", "protopnet", "cbm"]
    model = run.load_model("protopnet")
    assert isinstance(model, ProtoPNet) and model.pushed
    cs = run.caseset
    pred = pd.read_csv(run_dir / "models" / "protopnet" / "predictions.csv")
    rows = [run.case_row(c) for c in pred["case_id"]]
    proba = model.predict_proba(cs.images[rows])
    np.testing.assert_allclose(proba[:, 1], pred[f"p_{cs.class_names[1]}"], atol=1e-5)
    # every prototype's source is a training case of the prototype's class
    train = set(cs.case_ids[cs.indices("train")])
    for j, cid in enumerate(model.source_case_ids):
        assert cid in train and cs.labels[run.case_row(cid)] == int(model.prototype_class[j])


def test_cli_explains_a_case_with_its_nearest_prototypes(run_dir, capsys, tmp_path):
    run = open_run(run_dir)
    case = str(pd.read_csv(run_dir / "models" / "protopnet" / "predictions.csv")["case_id"][0])
    assert main(["explain", str(run_dir), "--model", "protopnet", "--case", case, "--top-k", "2",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    fig = tmp_path / f"{safe_filename(case)}.png"
    assert fig.is_file() and fig.stat().st_size > 10_000
    # the printed evidence is the model's: same prototypes, sources and points
    model = run.load_model("protopnet")
    ev = model.explain(run.caseset.images[[run.case_row(case)]], top_k=2)[0]
    assert isinstance(ev, PrototypeEvidence)
    printed = re.findall(r"prototype (\d+) \(\w+\): similarity ([\d.]+), ([+-][\d.]+) points; "
                         r"looks like training case (\S+)", out)
    assert len(printed) == 2
    for (j, sim, pts, src), m in zip(printed, ev.matches[0]):
        assert int(j) == m.prototype and src == m.source_case_id
        assert float(sim) == pytest.approx(m.similarity, abs=0.006)
        assert float(pts) == pytest.approx(m.contribution, abs=0.006)


def test_cli_explains_image_files_and_rejects_bad_input(run_dir, capsys, tmp_path):
    run = open_run(run_dir)
    row = run.case_row(str(pd.read_csv(run_dir / "splits.csv")["case_id"][0]))
    img8 = np.round(run.caseset.images[row, 0] * 255).astype(np.uint8)
    good = write_png(tmp_path / "good.png", img8)
    big = write_png(tmp_path / "big.png", np.zeros((SIDE + 8, SIDE + 8), np.uint8))
    grey_rgb = write_png(tmp_path / "grey_rgb.png", np.repeat(img8[..., None], 3, axis=2))  # a grey scan as RGB
    colour = np.repeat(img8[..., None], 3, axis=2)
    colour[..., 0] = 255 - colour[..., 0]
    rgb = write_png(tmp_path / "rgb.png", colour)
    out = tmp_path / "figs"
    assert main(["explain", str(run_dir), "--model", "protopnet", "--image", str(good), "--out", str(out)]) == 0
    assert (out / "good.png").is_file()
    # the file's prediction is the in-memory case's (up to 8-bit quantisation)
    p_file = float(re.search(r"p = ([\d.]+)", capsys.readouterr().out).group(1))
    proba = run.load_model("protopnet").predict_proba(run.caseset.images[[row]])[0]
    assert p_file == pytest.approx(proba.max(), abs=0.02)

    def err(*args):
        assert main(["explain", str(run_dir), *args, "--out", str(out)]) == 2
        return capsys.readouterr().err

    assert "case id 'no-such-case' is not in the data" in err("--model", "protopnet", "--case", "no-such-case")
    e = err("--model", "protopnet", "--image", str(big))
    assert f"is {SIDE + 8}x{SIDE + 8} pixels but the models of this run take {SIDE}x{SIDE}" in e and "--resize" in e
    e = err("--model", "protopnet", "--image", str(rgb))
    assert "is colour (3 different channels) but the models of this run take grey (1 channel)" in e
    assert "--to-grey" in e
    # a grey scan saved as RGB (three identical channels) is the grey image: same prediction, no option needed
    assert main(["explain", str(run_dir), "--model", "protopnet", "--image", str(grey_rgb), "--out", str(out)]) == 0
    assert float(re.search(r"p = ([\d.]+)", capsys.readouterr().out).group(1)) == p_file
    # with --to-grey the colour image is read as its luminance
    assert main(["explain", str(run_dir), "--model", "protopnet", "--image", str(rgb), "--to-grey",
                 "--out", str(out)]) == 0
    lum = run.read_image(rgb, to_grey=True)
    expect = (0.299 * colour[..., 0] + 0.587 * colour[..., 1] + 0.114 * colour[..., 2]) / 255
    np.testing.assert_allclose(lum[0], expect, atol=1e-5)
    capsys.readouterr()
    assert "image file not found" in err("--model", "protopnet", "--image", str(tmp_path / "missing.png"))
    assert "no finished model named 'proto'" in err("--model", "proto", "--case", "x")
    assert "several models; choose one with --model (blackbox, protopnet, cbm)" in err("--case", "x")
    assert "nothing to explain" in err("--model", "protopnet")
    # with --resize the large image is accepted; the black box explains with its heatmap
    assert main(["explain", str(run_dir), "--model", "blackbox", "--image", str(big), "--resize",
                 "--out", str(out)]) == 0
    assert "heatmap 'gradcam'" in capsys.readouterr().out and (out / "big.png").is_file()


def test_changed_data_is_detected(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    splits = pd.read_csv(copy / "splits.csv")
    splits.loc[0, "split"] = "test" if splits.loc[0, "split"] != "test" else "train"
    splits.to_csv(copy / "splits.csv", index=False)
    with pytest.raises(DataError, match="has changed since the run"):
        _ = open_run(copy).caseset
    with pytest.raises(DataError, match="not found: RUN_DIR must be a directory written by 'glasszoo run'"):
        open_run(tmp_path)


def test_a_run_with_relative_data_paths_reopens_from_another_directory(tmp_path, monkeypatch, capsys,
                                                                       standin_models):
    from test_runner import learnable_npz

    (tmp_path / "proj").mkdir()
    learnable_npz(tmp_path / "proj" / "tiny.npz")
    monkeypatch.chdir(tmp_path / "proj")
    cfg = parse_config({"experiment": "rel", "output_dir": "runs", "data": {"source": "medmnist", "path": "tiny.npz"},
                        "evaluation": {"bootstrap": 20, "explain_cases": 0}, "models": ["tiny_logreg"]}, "rel")
    run_dir = run_experiment(cfg).resolve()
    monkeypatch.chdir(tmp_path)
    run = open_run(run_dir)
    assert run.caseset.n_cases == 120
    model = run.load_model("tiny_logreg")
    assert model.predict_proba(np.zeros((1, len(model.feature_names_)))).shape == (1, 2)
    # a tabular model explains a case of the run through its adapter (the case's feature row) ...
    case = str(run.caseset.case_ids[0])
    assert main(["explain", str(run_dir), "--model", "tiny_logreg", "--case", case, "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert f"{case}: predicted" in out and "  feature " in out
    assert (tmp_path / "x" / f"{safe_filename(case)}.png").is_file()
    # ... but not a new image file, which has no feature row
    png = tmp_path / "new.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.uint8)), str(png))
    assert main(["explain", str(run_dir), "--model", "tiny_logreg", "--image", str(png)]) == 2
    assert "'tiny_logreg' reads a feature table" in capsys.readouterr().err


def test_activation_box_encloses_the_top_percentile():
    act = np.zeros((10, 10), np.float32)
    act[2:4, 5:8] = 1.0  # 6 of 100 pixels >= the 95th percentile
    assert activation_box(act) == (2, 5, 4, 8)
    act[9, 0] = 2.0
    assert activation_box(act, percentile=99.5) == (9, 0, 10, 1)


def test_bench_push_counts_the_training_images_and_writes_markdown():
    sec = bench_push(n_cases=100, img_size=32, batch_size=32, repeats=1)
    n_train = sec.rows[0].images
    assert [r.images for r in sec.rows] == [n_train] * 4 and 55 <= n_train <= 75
    assert sec.rows[0].ratio == 1.0
    for r in sec.rows[1:]:
        assert r.ratio == pytest.approx(r.seconds / sec.rows[0].seconds)
    md = write_markdown([sec], "glasszoo bench --only push")
    assert "| push: projection pass only |" in md and "glasszoo bench --only push" in md
    assert format_section(sec, "glasszoo bench --only push") in md


def test_cli_explains_a_case_with_its_concepts(run_dir, capsys, tmp_path):
    run = open_run(run_dir)
    cs = run.caseset
    case = str(cs.case_ids[cs.indices("test")[0]])
    assert main(["explain", str(run_dir), "--model", "cbm", "--case", case, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / f"{safe_filename(case)}.png").is_file()
    printed = re.findall(r"concept (\w+): ([\d.]+) \(true ([\d.]+)\), ([+-][\d.]+) points", out)
    assert [p[0] for p in printed] == cs.concept_names
    true = cs.concepts[run.case_row(case)]
    assert [float(p[2]) for p in printed] == pytest.approx(true.tolist())
    # the printed points add up to the explained logit minus the bias
    model = run.load_model("cbm")
    with torch.no_grad():
        logits = model(torch.as_tensor(cs.images[[run.case_row(case)]]))[0]
    k = int(logits.argmax())
    total = sum(float(p[3]) for p in printed) + float(model.label_head.bias[k])
    assert total == pytest.approx(float(logits[k]), abs=0.03)


def test_bench_radiomics_rows_and_cache_hit():
    from glasszoo.evaluation.experiment.bench import bench_radiomics

    sec = bench_radiomics(n_cases=40, img_size=32, repeats=1)
    assert [r.operation for r in sec.rows] == ["extraction, 1 worker", "extraction, 2 workers",
                                               "second run (cache hit)"]
    assert all(r.images == 40 for r in sec.rows) and sec.rows[0].ratio == 1.0
    for r in sec.rows:
        assert r.ratio == pytest.approx(r.seconds / sec.rows[0].seconds)
    assert "cached re-run" in sec.summary  # (cache hits themselves are tested by counting calls in test_radiomics)


def test_prototype_patches_are_shown_in_their_surroundings_and_border_patches_are_named():
    from glasszoo.evaluation.case_figures import context_box, touches_border

    assert context_box((20, 20, 24, 24), (48, 48)) == (18, 18, 26, 26)  # 4 px: at least 8 px around its centre
    assert context_box((0, 0, 4, 4), (48, 48)) == (0, 0, 8, 8)  # kept inside the image
    assert context_box((44, 40, 48, 48), (48, 48)) == (40, 36, 48, 48)  # 8 px wide: 12 px with its margin
    assert context_box((8, 8, 24, 24), (48, 48)) == (4, 4, 28, 28)  # 16 px grown 1.5x about its centre
    assert context_box((0, 0, 40, 40), (48, 48)) == (0, 0, 48, 48)  # never larger than the image
    assert touches_border((0, 10, 4, 14), (48, 48)) and touches_border((10, 44, 14, 48), (48, 48))
    assert not touches_border((1, 1, 47, 47), (48, 48))

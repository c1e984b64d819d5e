"""Attention models inside `glasszoo run`: segmentation metrics, per-case figures, the early check for masks."""

from __future__ import annotations

import json

import pytest

from glasszoo.evaluation.experiment.config import parse_config
from glasszoo.evaluation.experiment.runner import run_experiment
from glasszoo.models.errors import DataError


def test_run_writes_segmentation_metrics_and_case_figures(tmp_path):
    cfg = parse_config({
        "experiment": "att", "seed": 0, "output_dir": str(tmp_path),
        "data": {"source": "synthetic", "n_cases": 120, "img_size": 32},
        "training": {"max_epochs": 1, "batch_size": 32, "progress_bar": False},
        "evaluation": {"bootstrap": 50, "explain_cases": 8, "case_figures_per_class": 1, "report_misclassified": 0},
        "models": [{"name": "attention_unet", "params": {"depth": 2, "base_width": 4}},
                   {"name": "attention_classifier", "params": {"depth": 2, "base_width": 4}}],
    }, "att-test")
    run_dir = run_experiment(cfg)
    m = json.loads((run_dir / "metrics.json").read_text())
    seg = m["models"]["attention_unet"]["segmentation"]
    assert seg["n_cases"] == m["dataset"]["cases_per_split"]["test"]["benign"] + \
        m["dataset"]["cases_per_split"]["test"]["malignant"]
    for key in ("dice", "iou"):
        lo, hi = seg[key]["ci"]
        assert 0.0 <= lo <= seg[key]["value"] <= hi <= 1.0
    assert "segmentation" not in m["models"]["attention_classifier"]  # no segmentation head (seg_weight 0)
    for name in ("attention_unet", "attention_classifier"):
        att = m["models"][name]["explanation"]["attention"]
        assert att["kind"] == "heatmap" and 0.0 <= att["pointing_game"]["value"] <= 1.0
        assert len(list((run_dir / "figures" / "cases" / name).glob("*.png"))) == 2


def test_segmentation_model_needs_masks_before_training(tmp_path):
    from test_runner import learnable_npz

    learnable_npz(tmp_path / "tiny.npz")
    raw = {"experiment": "nomask", "output_dir": str(tmp_path / "runs"),
           "data": {"source": "medmnist", "path": str(tmp_path / "tiny.npz")},
           "training": {"max_epochs": 1, "batch_size": 16, "progress_bar": False},
           "evaluation": {"bootstrap": 20, "explain_cases": 4},
           "models": [{"name": "attention_classifier", "params": {"depth": 2, "base_width": 4}},
                      {"name": "attention_unet", "params": {"depth": 2, "base_width": 4}}]}
    with pytest.raises(DataError, match=r"model 'attention_unet' \(attention_unet\) needs lesion masks in the "
                                        r"training split, which data set 'tiny' does not have.*Nothing was trained"):
        run_experiment(parse_config(raw, "nomask"))
    assert not (tmp_path / "runs" / "nomask").exists()  # refused before the first model trained
    # the classifier alone (no segmentation head) trains on data without masks; with one it is refused too
    raw["models"] = raw["models"][:1]
    m = json.loads((run_experiment(parse_config(raw, "nomask")) / "metrics.json").read_text())
    assert list(m["models"]) == ["attention_classifier"]
    raw["models"][0]["params"]["seg_weight"] = 0.5
    with pytest.raises(DataError, match="'attention_classifier' .* needs lesion masks"):
        run_experiment(parse_config(raw, "nomask"))

"""The shipped configs run end to end (scaled down); the full quickstart acceptance is a slow test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from glasszoo.evaluation.experiment.config import load_config
from glasszoo.evaluation.experiment.runner import run_experiment
from glasszoo.models import list_models

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["training.progress_bar=false", "evaluation.bootstrap=100", "evaluation.explain_cases=8"]


def test_quickstart_config_runs_scaled_down(tmp_path):
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      [*QUICK, "data.n_cases=120", "data.img_size=32", "training.max_epochs=1",
                       f"output_dir={tmp_path}", f"features.cache_dir={tmp_path / 'cache'}",
                       "features.progress_bar=false"])
    run_dir = run_experiment(cfg)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["dataset"]["name"] == "synthetic" and m["dataset"]["has_masks"]
    assert m["dataset"]["concept_names"] == ["large", "irregular_margin", "heterogeneous", "bright",
                                             "calcifications"]
    # every registered model is in the quickstart and produced the contract's blocks
    assert sorted(m["models"]) == list_models()  # no test leaves a stand-in in the registry (conftest checks)
    for name, block in m["models"].items():
        assert 0.0 <= block["task"]["auc"]["value"] <= 1.0, name
        if block["input"] == "features":
            assert block["explanation"]["feature_attribution"]["n_cases"] == 8 and block["complexity"], name
            continue
        heatmaps = [b for b in block["explanation"].values() if isinstance(b, dict) and b.get("kind") == "heatmap"]
        assert heatmaps, f"{name} gave no heatmap"
        # synthetic data has masks, so every model's heatmap is scored for localisation (relevance mass is
        # undefined, NaN, when every map of a barely trained model is zero: no positive relevance at all)
        for hm in heatmaps:
            assert 0.0 <= hm["pointing_game"]["value"] <= 1.0, name
            mass = hm["mass_in_mask"]["value"]
            assert math.isnan(mass) or 0.0 <= mass <= 1.0, name
    # the black box got every post-hoc method, each scored and costed
    from glasszoo.evaluation.posthoc import DEFAULT_METHODS

    bb = m["models"]["blackbox"]["explanation"]
    assert set(DEFAULT_METHODS) <= set(bb)
    for method in DEFAULT_METHODS:
        assert bb[method]["source"] == "post-hoc" and bb[method]["passes_per_image"]["forward"] >= 1
        assert "deletion_auc" in bb[method] and "randomisation" in bb[method], method
        # ROAD, the efficient and smooth randomisation tests, and (all but occlusion) the agreement with occlusion
        for key in ("road_morf", "road_lerf", "randomisation_complexity_rise", "randomisation_smooth_similarity"):
            assert key in bb[method], (method, key)
        assert ("occlusion_rank_correlation" in bb[method]) == (method != "occlusion"), method
        rho = bb[method].get("occlusion_rank_correlation", {"value": 0.0})["value"]
        assert math.isnan(rho) or -1.0 <= rho <= 1.0
    assert bb["occlusion"]["passes_per_image"] and bb["shapley_sampling"]["passes_per_image"]["backward"] == 0
    # every glass-box model and the concept bottleneck saved a counterfactual beside each of its case figures
    searched = [n for n, b in m["models"].items() if b["input"] == "features" or b["family"] == "concept"]
    assert "cbm" in searched and "ebm" in searched
    for name in searched:
        figs = sorted((run_dir / "figures" / "cases" / name).glob("*.png"))
        assert figs, name
        for fig in figs:
            data = json.loads(fig.with_suffix(".counterfactual.json").read_text())
            assert data["kind"] == "counterfactual" and data["text"].startswith("predicted "), name
            assert data["space"] == ("concepts" if name == "cbm" else "features")
    assert "What would change the decision" in (run_dir / "report.html").read_text()
    assert (run_dir / "figures" / "comparison.png").exists()
    # the report of the run opens in a real browser: no errors, the results table and the Pareto figure are there
    from browser import open_report

    seen = open_report(run_dir / "report.html", tmp_path / "report.png")
    assert seen["severe"] == []
    assert [r[0].split("\n")[0] for r in seen["rows"]] == list(m["models"])
    assert seen["pareto_displayed"] and seen["pareto_width"] > 0 and min(seen["image_widths"]) > 0
    img = plt.imread(str(tmp_path / "report.png"))
    assert img.shape[0] > 100 and float(img[..., :3].std()) > 0.01  # not a blank page


@pytest.mark.shared_data
@pytest.mark.parametrize("config", ["ph2", "busi"])
def test_real_folder_configs_train(shared_data, tmp_path, config):
    cfg = load_config(ROOT / "configs" / f"{config}.yaml",
                      [*QUICK, "data.img_size=32", "training.max_epochs=1", f"output_dir={tmp_path}",
                       f"data.csv={shared_data / config / (config + '.csv')}",
                       "evaluation.posthoc.methods=[gradcam, integrated_gradients]"])
    for spec in cfg.models:  # the EBM at interpret's full defaults takes minutes: this test checks the config runs
        if spec.model == "ebm":
            spec.params.update(outer_bags=1, interactions=0, max_rounds=200, n_jobs=1)
    cfg.evaluation.surrogates.models = {"tree": {"model": "decision_tree", "params": {"max_depth": 2}}}
    run_dir = run_experiment(cfg)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["dataset"]["n_cases"] == {"ph2": 200, "busi": 780}[config]
    assert len(m["dataset"]["class_names"]) == 3
    assert "pointing_game" in m["models"]["blackbox"]["explanation"]["gradcam"]


@pytest.mark.slow
def test_quickstart_acceptance(tmp_path):
    """The full quickstart: black-box test AUC >= 0.90 (the foundation issue's acceptance)."""
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", ["training.progress_bar=false", f"output_dir={tmp_path}"])
    m = json.loads((run_experiment(cfg) / "metrics.json").read_text())
    assert m["models"]["blackbox"]["task"]["auc"]["value"] >= 0.90

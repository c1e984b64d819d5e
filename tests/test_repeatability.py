"""Repeatability across seeds and reproducibility across models of the maps (Arun et al. 2021)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from standins import standin_config

from glasszoo.evaluation.experiment.config import parse_config
from glasszoo.evaluation.experiment.seeds import run_seeds
from glasszoo.evaluation.quality import spearman_per_case
from glasszoo.evaluation.repeatability import agreement


def test_identical_maps_agree_fully_and_cases_are_matched_by_id():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 6, 6)).astype(np.float32)
    ids = ["a", "b", "c", "d"]
    shuffled = [2, 0, 3, 1]
    out = agreement([(maps, ids), (maps[shuffled], [ids[i] for i in shuffled])], n_boot=50)
    assert out["n_cases"] == 4 and out["n_versions"] == 2
    assert out["spearman"]["value"] == pytest.approx(1.0) and out["ssim"]["value"] == pytest.approx(1.0)


def test_agreement_is_the_mean_over_pairs_on_the_common_cases():
    rng = np.random.default_rng(1)
    a, b, c = (rng.random((3, 5, 5)) for _ in range(3))
    out = agreement([(a, ["x", "y", "z"]), (b[:2], ["x", "y"]), (c, ["x", "y", "z"])], n_boot=50)
    assert out["n_cases"] == 2  # only x and y are in every version
    pairs = [spearman_per_case(np.abs(p[:2]), np.abs(q[:2])) for p, q in ((a, b), (a, c), (b, c))]
    assert out["spearman"]["value"] == pytest.approx(np.mean(np.mean(pairs, axis=0)))
    # a sign flip does not count as a different map (absolute values), a reordering of the pixels does
    flipped = agreement([(a, ["x", "y", "z"]), (-a, ["x", "y", "z"])], n_boot=20)
    assert flipped["spearman"]["value"] == pytest.approx(1.0)
    none = agreement([(a, ["x"]), (b, ["q"])], n_boot=20)
    assert none["n_cases"] == 0 and np.isnan(none["spearman"]["value"])


def test_seeds_vary_only_the_training_and_measure_map_repeatability(tmp_path, standin_models):
    raw = standin_config(models=["tiny_net", "tiny_cam"])
    raw["output_dir"] = str(tmp_path / "runs")
    raw["evaluation"]["posthoc"]["models"] = ["all"]  # both models get the post-hoc maps
    cfg = parse_config(raw, "standin")
    run_dir = run_seeds(cfg, 2, out=tmp_path / "run")
    s = json.loads((run_dir / "seeds.json").read_text())
    assert s["vary"] == "training"
    # the same synthetic phantoms, split and explained cases in both seeds' runs
    other = run_dir / "seeds" / "seed-1"
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "splits.csv"), pd.read_csv(other / "splits.csv"))
    with np.load(run_dir / "models" / "tiny_net" / "heatmap_gradcam.npz") as z0, \
            np.load(other / "models" / "tiny_net" / "heatmap_gradcam.npz") as z1:
        assert list(z0["case_ids"]) == list(z1["case_ids"]) and len(z0["case_ids"]) == 8
    rep = s["repeatability"]
    assert set(rep) == {"tiny_net", "tiny_cam"}
    assert {"gradcam", "saliency"} <= set(rep["tiny_net"])
    for methods in rep.values():
        for b in methods.values():
            assert b["n_cases"] == 8 and b["n_versions"] == 2
            assert -1.0 <= b["spearman"]["value"] <= 1.0
    html = (run_dir / "report.html").read_text()
    assert 'id="repeatability-table"' in html and "only the training changed" in html
    # the post-hoc maps of the two models of one run are compared too (reproducibility across models)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert {(tuple(r["models"]), r["method"]) for r in m["reproducibility"]} == {
        (("tiny_net", "tiny_cam"), "gradcam"), (("tiny_net", "tiny_cam"), "saliency")}
    assert 'id="reproducibility-table"' in html


def test_seeds_that_vary_everything_make_their_own_data(tmp_path, standin_models):
    raw = standin_config(models=["tiny_logreg"])
    raw["output_dir"] = str(tmp_path / "runs")
    run_dir = run_seeds(parse_config(raw, "standin"), 2, out=tmp_path / "run", vary="all")
    s = json.loads((run_dir / "seeds.json").read_text())
    assert s["vary"] == "all" and "repeatability" not in s
    a = pd.read_csv(run_dir / "splits.csv")
    b = pd.read_csv(run_dir / "seeds" / "seed-1" / "splits.csv")
    assert not a["split"].equals(b["split"]) or not a["label"].equals(b["label"])

"""Subgroup audit: known answers on hand-made predictions, the synthetic scanner, the folder column, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from glasszoo.evaluation.experiment.config import load_config
from glasszoo.evaluation.experiment.runner import run_experiment
from glasszoo.evaluation.metrics import bootstrap_ci, relevance_mass_in_mask
from glasszoo.evaluation.subgroups import relevance_shift, subgroup_audit, subgroup_gaps
from glasszoo.models.errors import DataError
from glasszoo.training.folder import load_folder
from glasszoo.training.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[1]


def _cases(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    groups = np.where(rng.random(n) < 0.5, "A", "B")
    return rng, y, groups


def _proba(p1: np.ndarray) -> np.ndarray:
    return np.stack([1 - p1, p1], axis=1)


def test_a_model_that_calls_subgroup_b_positive_is_flagged():
    rng, y, groups = _cases()
    # a good score plus a shortcut: everything from B is called positive, nothing from A
    score = np.clip(0.5 * y + 0.25 + 0.1 * rng.normal(size=len(y)), 0.01, 0.99)
    p1 = np.where(groups == "B", np.maximum(score, 0.6), np.minimum(score, 0.4))
    out = subgroup_gaps(y, _proba(p1), groups, n_boot=300)
    gaps = {g["metric"]: g for g in out["gaps"]}
    assert [(g["group"], g["against"]) for g in out["gaps"]] == [("A", "B")] * 3  # two subgroups: compared once
    assert gaps["sensitivity"]["value"] == pytest.approx(-1.0) and gaps["sensitivity"]["flagged"]
    assert gaps["specificity"]["value"] == pytest.approx(1.0) and gaps["specificity"]["flagged"]
    assert out["flagged"]
    # per subgroup: the very values of bootstrap_ci on that subgroup's cases (same stratified resampling)
    a = groups == "A"
    ref = bootstrap_ci(y[a], _proba(p1)[a], n_boot=10)
    assert out["groups"]["A"]["sensitivity"]["value"] == ref["sensitivity"]["value"] == 0.0
    assert out["groups"]["A"]["n"] == int(a.sum()) and out["groups"]["A"]["n_positive"] == int(y[a].sum())
    assert gaps["auc"]["level"] == pytest.approx(1 - 0.05 / 3)  # Bonferroni over the 3 metrics


def test_a_model_blind_to_the_subgroup_is_not_flagged():
    rng, y, groups = _cases(seed=1)
    p1 = np.clip(0.5 * y + 0.25 + 0.2 * rng.normal(size=len(y)), 0.01, 0.99)  # no use of the subgroup
    out = subgroup_gaps(y, _proba(p1), groups, n_boot=500, seed=3)
    assert not out["flagged"]
    for g in out["gaps"]:
        assert g["ci"][0] <= 0 <= g["ci"][1]
        ga, gb = out["groups"]["A"][g["metric"]]["value"], out["groups"]["B"][g["metric"]]["value"]
        assert g["value"] == pytest.approx(ga - gb)


def test_three_subgroups_each_against_the_rest():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    groups = np.array(["x", "y", "z"])[np.arange(300) % 3]
    out = subgroup_gaps(y, _proba(np.full(300, 0.7)), groups, n_boot=50)
    assert [(g["group"], g["against"]) for g in out["gaps"][::3]] == [("x", "rest"), ("y", "rest"), ("z", "rest")]
    assert out["gaps"][0]["level"] == pytest.approx(1 - 0.05 / 9)


def test_relevance_shift_is_the_difference_of_the_mass_in_the_lesion():
    masks = np.zeros((4, 4, 4), dtype=np.uint8)
    masks[:, :2, :2] = 1
    maps = np.zeros((4, 4, 4), dtype=np.float32)
    maps[:2, :2, :2] = 1.0  # group A: all relevance in the lesion
    maps[2:, :2, :2], maps[2:, 2:, 2:] = 1.0, 1.0  # group B: half of it
    groups = np.array(["A", "A", "B", "B"])
    out = relevance_shift(maps, masks, groups, n_boot=100)
    assert out["groups"]["A"]["value"] == 1.0 and out["groups"]["B"]["value"] == 0.5
    assert out["gaps"][0]["value"] == pytest.approx(0.5) and out["gaps"][0]["ci"] == [0.5, 0.5]
    np.testing.assert_allclose(relevance_mass_in_mask(maps, masks), [1, 1, 0.5, 0.5])


def test_audit_block_lists_flagged_gaps():
    rng, y, groups = _cases()
    p_short = _proba(np.where(groups == "B", 0.9, 0.1))
    p_fair = _proba(np.clip(0.5 * y + 0.25, 0.01, 0.99))
    out = subgroup_audit(y, groups, {"short": p_short, "fair": p_fair}, {}, None, n_boot=200, attribute="scanner")
    assert out["attribute"] == "scanner" and sum(out["groups"].values()) == len(y)
    assert {tuple(f[:2]) for f in out["flagged"]} == {("short", "sensitivity"), ("short", "specificity")}
    assert not out["models"]["fair"]["flagged"]


def test_synthetic_scanner_correlates_with_the_label_only_when_asked():
    confounded = make_synthetic(600, 32, scanner_rate=0.9)
    fair = make_synthetic(600, 32, scanner_rate=0.5)
    for cs, lo, hi in ((confounded, 0.8, 1.0), (fair, 0.35, 0.65)):
        b = cs.meta["subgroup"] == "scanner B"
        share = cs.labels[b].mean()
        assert lo <= share <= hi
    plain = make_synthetic(600, 32)
    assert "subgroup" not in plain.meta
    b = fair.meta["subgroup"] == "scanner B"
    np.testing.assert_array_equal(plain.images[~b], fair.images[~b])  # scanner A's images are the plain ones
    np.testing.assert_allclose(fair.images[b], 0.8 * plain.images[b] + 0.2, atol=1e-6)


def test_folder_reads_a_subgroup_column(tmp_path):
    rows = ["image,label,site,score"]
    for i in range(12):
        sitk.WriteImage(sitk.GetImageFromArray((np.full((8, 8), i * 10)).astype(np.uint8)), str(tmp_path / f"{i}.png"))
        rows.append(f"{i}.png,{'a' if i % 2 else 'b'},{'north' if i < 6 else ''},{i}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    cs = load_folder(str(tmp_path / "m.csv"), subgroup="site", img_size=8)
    assert list(cs.meta["subgroup"]) == ["north"] * 6 + ["missing"] * 6
    assert cs.concept_names == ["score"]  # the subgroup column is not taken as a concept
    with pytest.raises(DataError, match=r"column 'ward' \(data.subgroup\) not found"):
        load_folder(str(tmp_path / "m.csv"), subgroup="ward", img_size=8)


def _run(tmp_path, rate: float):
    cfg = load_config(ROOT / "configs" / "synthetic_scanner.yaml",
                      [f"data.scanner_rate={rate}", f"output_dir={tmp_path}", "training.progress_bar=false",
                       f"features.cache_dir={tmp_path / 'cache'}", "features.progress_bar=false",
                       "evaluation.bootstrap=500"])
    run_dir = run_experiment(cfg)
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_scanner_confounder_is_flagged_and_shown_and_absent_without_it(tmp_path):
    run_dir, m = _run(tmp_path / "on", 0.9)
    flagged = {(f[0], f[1]) for f in m["subgroups"]["flagged"]}
    assert ("blackbox", "sensitivity") in flagged or ("blackbox", "specificity") in flagged
    html = (run_dir / "report.html").read_text()
    assert "Subgroup audit by scanner" in html and 'class="warning">Flagged: blackbox' in html
    _, m_off = _run(tmp_path / "off", 0.5)
    assert not [f for f in m_off["subgroups"]["flagged"] if f[0] == "blackbox"]
    for gap in m_off["subgroups"]["models"]["blackbox"]["gaps"]:
        assert gap["ci"][0] <= 0 <= gap["ci"][1]

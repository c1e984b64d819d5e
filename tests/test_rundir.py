"""The run directory's layout: one owner of every file name (RunDir, ModelDir)."""

from __future__ import annotations

from pathlib import Path

from glasszoo.training.rundir import RunDir, safe_filename


def test_every_file_name_of_a_run():
    run = RunDir("/r")
    assert [run.config, run.run_info, run.splits, run.metrics, run.tradeoff, run.report, run.audit, run.seeds] == [
        Path("/r") / n for n in ("config.yaml", "run.json", "splits.csv", "metrics.json", "tradeoff.csv",
                                 "report.html", "audit.json", "seeds.json")]
    m = run.model("cbm")
    assert (m.checkpoint, m.pickle, m.predictions, m.heatmap("gradcam")) == (
        Path("/r/models/cbm/checkpoint.ckpt"), Path("/r/models/cbm/model.pkl"), Path("/r/models/cbm/predictions.csv"),
        Path("/r/models/cbm/heatmap_gradcam.npz"))
    assert run.roc_figure == Path("/r/figures/roc.png") and run.comparison_figure == Path("/r/figures/comparison.png")
    assert run.randomisation_figure("bb") == Path("/r/figures/bb_randomisation.png")
    assert run.intervention_figure("cbm") == Path("/r/figures/cbm_intervention.png")
    assert run.method_figure("bb", "lime") == Path("/r/figures/bb_lime.png")
    assert run.case_figure("bb", "patient 1/a.png") == Path("/r/figures/cases/bb/patient_1_a.png.png")
    assert run.case_heatmaps("x") == Path("/r/figures/cases/heatmaps/x.png")
    assert run.seed_run(3).metrics == Path("/r/seeds/seed-3/metrics.json")
    assert run.explanations("bb") == Path("/r/explanations/bb")


def test_safe_filename():
    assert safe_filename("patient 01/img.png") == "patient_01_img.png"
    assert safe_filename("..") == "case" and safe_filename("a-b_c.d") == "a-b_c.d"

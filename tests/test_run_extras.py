"""`--resume`, `--seeds`, the shortcut audit, per-method trade-off rows and the case pages' inputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from standins import TinyLogReg
from test_runner import learnable_npz

from glasszoo.evaluation.experiment.audit import _marker_mass, marker_box, marker_presence, run_audit, stamp_marker
from glasszoo.evaluation.experiment.config import parse_config
from glasszoo.evaluation.experiment.runner import _misclassified_rows, run_experiment
from glasszoo.evaluation.experiment.seeds import summarise_seeds
from glasszoo.evaluation.posthoc import expected_passes
from glasszoo.evaluation.results import tradeoff_rows
from glasszoo.models.errors import ConfigError
from glasszoo.training import adapters

pytestmark = pytest.mark.usefixtures("standin_models")


def _cfg(tmp_path, models=("tiny_net", "tiny_logreg"), **evaluation):
    learnable_npz(tmp_path / "tiny.npz")
    return parse_config({
        "experiment": "extras", "output_dir": str(tmp_path / "runs"),
        "data": {"source": "medmnist", "path": str(tmp_path / "tiny.npz")},
        "training": {"max_epochs": 2, "batch_size": 16, "patience": 0, "progress_bar": False},
        "evaluation": {"bootstrap": 50, "explain_cases": 8, "figure_cases": 2, "case_figures_per_class": 1,
                       "posthoc": {"models": ["stand-in-black-box"], "methods": ["gradcam", "saliency"]},
                       "quality": {"cases": 4, "steps": 2, "faithfulness_subsets": 4, "randomisation_cases": 2,
                                   "sensitivity_samples": 1}, **evaluation},
        "models": list(models),
    })


def test_resume_does_not_retrain_finished_models(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    calls = []
    real_fit = adapters.ImageAdapter.fit

    def counting_fit(self, model, mdir, tcfg, seed, name):
        calls.append(name)
        return real_fit(self, model, mdir, tcfg, seed, name)

    monkeypatch.setattr(adapters.ImageAdapter, "fit", counting_fit)
    # an interruption after the image model: the tabular model's fit is interrupted

    def broken_fit(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(TinyLogReg, "fit", broken_fit)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, out=tmp_path / "run")
    done = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(done["models"]) == ["tiny_net"] and calls == ["tiny_net"]
    monkeypatch.undo()
    monkeypatch.setattr(adapters.ImageAdapter, "fit", counting_fit)
    run_dir = run_experiment(cfg, out=tmp_path / "run", resume=True)
    assert calls == ["tiny_net"]  # not trained again
    m = json.loads((run_dir / "metrics.json").read_text())
    assert list(m["models"]) == ["tiny_net", "tiny_logreg"]
    assert m["models"]["tiny_net"] == done["models"]["tiny_net"]  # the finished block is kept as it was
    assert (run_dir / "report.html").exists() and (run_dir / "figures" / "comparison.png").exists()
    assert not list(run_dir.glob(".*.tmp"))
    # resuming with another configuration is refused, naming what differs
    other = _cfg(tmp_path, models=("tiny_logreg",))
    with pytest.raises(ConfigError, match="another configuration.*models"):
        run_experiment(other, out=tmp_path / "run", resume=True)


def test_tradeoff_has_one_row_per_model_and_method(tmp_path):
    run_dir = run_experiment(_cfg(tmp_path), out=tmp_path / "run")
    m = json.loads((run_dir / "metrics.json").read_text())
    trade = pd.read_csv(run_dir / "tradeoff.csv")
    pairs = list(zip(trade["model"], trade["explanation"]))
    assert ("tiny_net", "gradcam") in pairs and ("tiny_net", "saliency") in pairs
    assert ("tiny_logreg", "feature_attribution") in pairs
    assert trade.groupby("model")["primary"].sum().to_dict() == {"tiny_net": 1, "tiny_logreg": 1}
    sal = trade[trade["explanation"] == "saliency"].iloc[0]
    block = m["models"]["tiny_net"]["explanation"]["saliency"]
    assert sal["explanation_source"] == "post-hoc" and block["n_cases"] == 8
    assert sal["insertion_auc"] == pytest.approx(block["insertion_auc"]["value"])
    # saliency: the prediction's forward pass, then one forward and one backward pass for the gradient (counted by
    # the PassCounter, not timed)
    assert block["passes_per_image"] == {"forward": 2.0, "backward": 1.0} == expected_passes("saliency")
    assert len(tradeoff_rows(m)) == len(trade)
    # the case pages' inputs: every model's figure for the sampled cases, and every heatmap side by side
    cases = {p.name for p in (run_dir / "figures" / "cases" / "heatmaps").glob("*.png")}
    assert cases and cases <= {p.name for p in (run_dir / "figures" / "cases" / "tiny_net").glob("*.png")}
    assert cases <= {p.name for p in (run_dir / "figures" / "cases" / "tiny_logreg").glob("*.png")}


def test_configured_gradcam_parameters_are_used(tmp_path):
    """Grad-CAM with explicit parameters (the first convolution instead of the last): the one `gradcam` block is
    post-hoc, with its parameters and its counted passes, and its maps are captum's on that layer."""
    from glasszoo.evaluation.experiment.saved import open_run
    from glasszoo.evaluation.posthoc import explain_posthoc

    cfg = _cfg(tmp_path, models=("tiny_net",), posthoc={"models": ["stand-in-black-box"], "methods": ["gradcam"],
                                                        "params": {"gradcam": {"layer": "features.0"}}})
    run_dir = run_experiment(cfg, out=tmp_path / "run")
    explanation = json.loads((run_dir / "metrics.json").read_text())["models"]["tiny_net"]["explanation"]
    block = explanation["gradcam"]
    assert list(explanation) == ["gradcam"]
    assert block["source"] == "post-hoc" and block["params"] == {"layer": "features.0"}
    assert block["passes_per_image"] == {"forward": 2.0, "backward": 1.0} == expected_passes("gradcam")
    saved = np.load(run_dir / "models" / "tiny_net" / "heatmap_gradcam.npz", allow_pickle=True)
    run = open_run(run_dir)
    model = run.load_model("tiny_net")
    assert model.explain(np.zeros((1, 1, 16, 16), np.float32)) == []  # nothing of its own
    where = {c: i for i, c in enumerate(run.caseset.case_ids)}
    x = run.caseset.images[[where[c] for c in saved["case_ids"]]]
    ref = explain_posthoc(model, x, "gradcam", params={"layer": "features.0"})
    last = explain_posthoc(model, x, "gradcam")
    assert np.abs(ref.maps - last.maps).max() > 1e-3 * ref.maps.max()  # not the last layer's map
    np.testing.assert_allclose(saved["maps"].astype(np.float32), ref.maps, rtol=2e-3, atol=2e-3 * ref.maps.max())


def test_misclassified_rows_most_often_wrong_first():
    class CS:
        labels = np.array([0, 1, 0, 1, 0, 1])

        def indices(self, split):
            return np.array([1, 2, 3, 5])

    p_right = np.eye(2)[CS.labels[[1, 2, 3, 5]]]
    a = p_right.copy()
    a[[1, 3]] = a[[1, 3], ::-1]  # rows 2 and 5 wrong
    b = p_right.copy()
    b[[3]] = b[[3], ::-1]  # row 5 wrong again
    assert _misclassified_rows(CS(), {"a": a, "b": b}, 1).tolist() == [5]
    assert _misclassified_rows(CS(), {"a": a, "b": b}, 5).tolist() == [2, 5]
    assert _misclassified_rows(CS(), {"a": p_right}, 5).tolist() == []


def test_summarise_seeds_by_hand():
    def metrics(auc, ins):
        task = {k: {"value": auc, "ci": [auc, auc]} for k in
                ("auc", "accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity")}
        return {"models": {"m": {"task": task, "explanation": {
            "ig": {"kind": "heatmap", "insertion_auc": {"value": ins, "ci": [0, 1]}},
            "concepts": {"mean_concept_accuracy": 0.9}}}}}

    s = summarise_seeds({0: metrics(0.8, 0.5), 1: metrics(0.9, 0.7), 2: metrics(1.0, 0.6)})
    assert s["seeds"] == [0, 1, 2]
    assert s["models"]["m"]["auc"]["mean"] == pytest.approx(0.9)
    assert s["models"]["m"]["auc"]["sd"] == pytest.approx(0.1)  # sample sd of 0.8, 0.9, 1.0
    assert s["models"]["m"]["ig.insertion_auc"]["values"] == [0.5, 0.7, 0.6]
    assert s["models"]["m"]["ig.insertion_auc"]["sd"] == pytest.approx(0.1)


def test_marker_helpers_known_answers():
    assert marker_box((48, 48), 4) == (1, 1, 5, 5)
    assert marker_box((64, 64), 5) == (2, 2, 7, 7)
    imgs = np.zeros((3, 1, 8, 8), np.float32)
    out = stamp_marker(imgs, np.array([True, False, True]), (1, 1, 3, 3))
    assert out[0, 0].sum() == 4 and out[1].sum() == 0 and out[2, 0, 1:3, 1:3].min() == 1.0
    assert imgs.sum() == 0  # a copy
    labels = np.array([0, 1] * 500)
    split = np.array(["train"] * 600 + ["test"] * 400)
    corr, dec = marker_presence(labels, split, 1, 1.0, seed=0)
    assert np.array_equal(corr, labels == 1)  # rate 1: the marker is the label
    assert np.array_equal(dec[:600], corr[:600])
    test_dec = dec[600:]
    assert abs(test_dec.mean() - 0.5) < 0.08
    # independent of the label in test: about half of each class carries it
    assert abs(test_dec[labels[600:] == 1].mean() - test_dec[labels[600:] == 0].mean()) < 0.15
    maps = np.zeros((2, 8, 8))
    maps[0, 1:3, 1:3] = 1.0  # all relevance on the marker
    maps[1] = 1.0  # uniform: the grown box's share of the area
    mass = _marker_mass(maps, (1, 1, 3, 3))
    assert mass[0] == pytest.approx(1.0)
    assert mass[1] == pytest.approx(16 / 64)  # rows/cols 0..3 (grown by one pixel)


def test_audit_verdict_needs_both_accuracy_and_auc_to_hold():
    """A model that calls every case benign on both test sets has no accuracy drop, but its AUC falls from 0.99 to
    0.76 without the marker: it relied on the marker and must not be called resistant."""
    from glasszoo.evaluation.experiment.audit import _resisted

    def block(acc_drop, auc_corr, auc_dec):
        return {"accuracy_drop": {"value": acc_drop}, "auc_drop": {"value": auc_corr - auc_dec}}

    assert not _resisted(block(0.009, 0.988, 0.761), 0.02)  # the quickstart's attention classifier in one run
    assert not _resisted(block(0.40, 0.99, 0.70), 0.02)
    assert _resisted(block(0.0, 0.984, 0.984), 0.02)  # a glass-box model: nothing changes
    assert _resisted(block(0.01, 0.98, 0.97), 0.02)
    assert _resisted(block(0.0, float("nan"), float("nan")), 0.02)  # one-class test set: no AUC, no drop


def test_audit_run_writes_the_audit(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir = run_audit(cfg, out=tmp_path / "audit", rate=1.0, size=3)
    a = json.loads((run_dir / "audit.json").read_text())
    assert a["marker"]["size"] == 3 and a["marker"]["rate"] == 1.0
    assert set(a["models"]) == {"tiny_net", "tiny_logreg"}
    for name, b in a["models"].items():
        drop = b["accuracy_correlated"]["value"] - b["accuracy_decorrelated"]["value"]
        assert b["accuracy_drop"]["value"] == pytest.approx(drop)
        auc_drop = b["auc_correlated"]["value"] - b["auc_decorrelated"]["value"]
        assert b["auc_drop"]["value"] == pytest.approx(auc_drop)
        assert (name in a["resisted"]) == (b["accuracy_drop"]["value"] < 0.02 and auc_drop < 0.02)
    assert "gradcam" in a["models"]["tiny_net"]["explanations"]
    for b in a["models"]["tiny_net"]["explanations"].values():
        assert 0.0 <= b["marker_mass"]["value"] <= 1.0
    assert (run_dir / "figures" / "audit.png").exists()
    assert 'id="audit"' in (run_dir / "report.html").read_text()
    with pytest.raises(ConfigError, match="rate"):
        run_audit(cfg, out=tmp_path / "bad", rate=0.4)


def test_seeds_cli_and_report_command(tmp_path, capsys):
    from glasszoo.evaluation.experiment.cli import main

    learnable_npz(tmp_path / "tiny.npz")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({
        "experiment": "seeds", "output_dir": str(tmp_path / "runs"),
        "data": {"source": "medmnist", "path": str(tmp_path / "tiny.npz")},
        "evaluation": {"bootstrap": 50, "explain_cases": 4}, "models": ["tiny_logreg"]}))  # JSON is YAML
    assert main(["run", str(cfg), "--seeds", "2", "--out", str(tmp_path / "run")]) == 0
    s = json.loads((tmp_path / "run" / "seeds.json").read_text())
    assert s["seeds"] == [0, 1]
    one = json.loads((tmp_path / "run" / "metrics.json").read_text())["models"]["tiny_logreg"]["task"]["auc"]
    two = json.loads((tmp_path / "run" / "seeds" / "seed-1" / "metrics.json").read_text())
    values = [one["value"], two["models"]["tiny_logreg"]["task"]["auc"]["value"]]
    assert s["models"]["tiny_logreg"]["auc"]["values"] == values
    assert s["models"]["tiny_logreg"]["auc"]["mean"] == pytest.approx(np.mean(values))
    assert 'id="seeds"' in (tmp_path / "run" / "report.html").read_text()
    (tmp_path / "run" / "report.html").unlink()
    assert main(["report", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report.html").exists()
    assert main(["report", str(tmp_path)]) == 2
    assert "metrics.json not found" in capsys.readouterr().err
    assert main(["run", str(cfg), "--seeds", "0"]) == 2

"""`glasszoo run` end to end on tiny data: the results contract, determinism, the tabular path, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from standins import TinyLogReg, standin_config

from glasszoo.evaluation.experiment.cli import main
from glasszoo.evaluation.experiment.config import parse_config
from glasszoo.evaluation.experiment.runner import failures, run_experiment
from glasszoo.evaluation.posthoc import DEFAULT_METHODS
from glasszoo.models import DataError
from glasszoo.training.rundir import RunDir
from glasszoo.training.storage import load_tabular

TASK_KEYS = ["auc", "accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity"]


def learnable_npz(path, side=16, seed=0):
    """Class 1 has a bright 4x4 square at a random place; class 0 has none."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 64), ("val", 24), ("test", 32)):
        labels = np.arange(n) % 2
        imgs = rng.integers(0, 90, (n, side, side)).astype(np.uint8)
        for i in np.flatnonzero(labels):
            r, c = rng.integers(0, side - 4, 2)
            imgs[i, r:r + 4, c:c + 4] = 250
        arrays[f"{split}_images"] = imgs
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)


def tiny_config(tmp_path, models=("tiny_net",), seed=0, methods=None):
    """A tiny run of stand-in models on the bright-square data; ``methods``: the post-hoc methods (default: all but
    LRP, whose rules need a ResNet or an ``nn.Sequential``; tests/test_posthoc.py tests it on those)."""
    learnable_npz(tmp_path / "tiny.npz")
    all_but_lrp = [m for m in DEFAULT_METHODS if m != "lrp"]
    posthoc = {"models": ["stand-in-black-box"], "methods": list(methods or all_but_lrp)}
    return parse_config({
        "experiment": "tiny", "seed": seed, "output_dir": str(tmp_path / "runs"),
        "data": {"source": "medmnist", "path": str(tmp_path / "tiny.npz")},
        "training": {"max_epochs": 3, "batch_size": 16, "patience": 0, "progress_bar": False},
        "evaluation": {"bootstrap": 200, "explain_cases": 8, "figure_cases": 4, "posthoc": posthoc,
                       "quality": {"steps": 4, "faithfulness_subsets": 8, "randomisation_stages": 2,
                                   "sensitivity_samples": 1}},
        "models": list(models),
    })


@pytest.fixture
def tiny_run(tmp_path, standin_models):
    cfg = tiny_config(tmp_path, models=("tiny_net", "tiny_cam", "tiny_logreg"))
    return run_experiment(cfg), cfg


def test_run_writes_the_results_contract(tiny_run):
    run_dir, cfg = tiny_run
    for f in ("config.yaml", "splits.csv", "metrics.json", "tradeoff.csv", "figures/roc.png",
              "figures/tiny_net_gradcam.png", "models/tiny_net/checkpoint.ckpt", "models/tiny_net/predictions.csv",
              "models/tiny_net/logs/metrics.csv", "models/tiny_logreg/predictions.csv",
              "models/tiny_logreg/model.skops", "figures/tiny_cam_cam.png", "models/tiny_cam/heatmap_cam.npz",
              "report.html"):
        assert (run_dir / f).exists(), f
    m = json.loads((run_dir / "metrics.json").read_text())
    assert set(m) == {"dataset", "models"}
    assert m["dataset"]["n_cases"] == 120 and m["dataset"]["source"] == "medmnist"
    for name in ("tiny_net", "tiny_cam", "tiny_logreg"):
        block = m["models"][name]
        assert {"family", "task", "explanation", "cost"} <= set(block)
        assert list(block["task"]) == TASK_KEYS
        for key in TASK_KEYS:
            v, (lo, hi) = block["task"][key]["value"], block["task"][key]["ci"]
            assert 0 <= lo <= v <= hi <= 1
        assert block["cost"]["train_seconds"] > 0 and block["cost"]["params"] > 0
    bb, cam, lr = (m["models"][n] for n in ("tiny_net", "tiny_cam", "tiny_logreg"))
    assert bb["family"] == "stand-in-black-box" and bb["input"] == "image" and lr["input"] == "features"
    # the model with no explanation of its own has post-hoc maps only; the self-explaining one its own map only
    assert {b["source"] for b in bb["explanation"].values()} == {"post-hoc"}
    assert bb["explanation"]["gradcam"]["kind"] == "heatmap"
    assert set(cam["explanation"]) == {"cam"} and cam["explanation"]["cam"]["source"] == "intrinsic"
    assert lr["explanation"]["feature_attribution"]["n_cases"] == 8
    stored = load_tabular(run_dir / "models" / "tiny_logreg" / "model.skops", TinyLogReg)  # the hook's block
    assert lr["complexity"] == stored.complexity_() and 1 <= lr["complexity"]["n_nonzero"] <= 9
    assert m["dataset"]["features"]["kind"] == "intensity"
    # predictions.csv agrees with metrics.json
    pred = pd.read_csv(run_dir / "models" / "tiny_net" / "predictions.csv")
    assert len(pred) == 32
    acc = float((pred["pred"] == pred["label"]).mean())
    assert acc == pytest.approx(bb["task"]["accuracy"]["value"])
    # splits.csv holds the official split
    splits = pd.read_csv(run_dir / "splits.csv")
    assert splits["split"].value_counts().to_dict() == {"train": 64, "test": 32, "val": 24}
    trade = pd.read_csv(run_dir / "tradeoff.csv")
    primary = trade[trade["primary"]].reset_index(drop=True)
    assert list(primary["model"]) == ["tiny_net", "tiny_cam", "tiny_logreg"]
    assert primary.loc[0, "auc"] == pytest.approx(bb["task"]["auc"]["value"])
    # one row per (model, explanation method): every post-hoc method of the model explained post hoc
    methods = set(trade.loc[trade["model"] == "tiny_net", "explanation"])
    assert methods == set(bb["explanation"]) == set(DEFAULT_METHODS) - {"lrp"}
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["training"]["max_epochs"] == 3 and resolved["models"][0]["model"] == "tiny_net"
    # the randomisation figures the run wrote appear in their own report section, not under "Other figures"
    run = RunDir(run_dir)
    assert run.randomisation_figure("tiny_net").is_file()
    html = run.report.read_text()
    section = html[html.index('id="randomisation-figures"'):]
    assert "tiny_net: model-parameter randomisation check" in section.split("</section>")[0]
    assert "Other figures" not in html


def test_tabular_path_learns_the_bright_square(tiny_run):
    run_dir, _ = tiny_run
    m = json.loads((run_dir / "metrics.json").read_text())
    # the p90 / max-like intensity features separate the classes almost perfectly
    assert m["models"]["tiny_logreg"]["task"]["auc"]["value"] > 0.9


def _without_times(metrics: dict) -> dict:
    return {k: {kk: vv for kk, vv in b.items() if kk != "ms_per_image"}
            for k, b in metrics["models"]["tiny_net"]["explanation"].items()}


def test_same_seed_same_splits_and_metrics(tmp_path, standin_models):
    runs = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        cfg = tiny_config(tmp_path / str(i), models=("tiny_net",), seed=5, methods=("smoothgrad", "kernel_shap"))
        runs.append(run_experiment(cfg))
    a, b = (json.loads((r / "metrics.json").read_text()) for r in runs)
    assert a["models"]["tiny_net"]["task"] == b["models"]["tiny_net"]["task"]
    # the seeded post-hoc methods and every quality score repeat exactly
    assert json.dumps(_without_times(a), sort_keys=True) == json.dumps(_without_times(b), sort_keys=True)
    assert a["models"]["tiny_net"]["training"] == b["models"]["tiny_net"]["training"]
    pa, pb = (pd.read_csv(r / "models" / "tiny_net" / "predictions.csv") for r in runs)
    pd.testing.assert_frame_equal(pa, pb)
    assert (runs[0] / "splits.csv").read_text() == (runs[1] / "splits.csv").read_text()


def test_existing_run_is_not_overwritten(tmp_path, standin_models):
    cfg = tiny_config(tmp_path, models=("tiny_logreg",))
    first = run_experiment(cfg)
    before = (first / "metrics.json").read_bytes()
    second = run_experiment(cfg)
    assert second != first and second.name == "tiny-2"
    assert (first / "metrics.json").read_bytes() == before


def test_the_command_returns_mains_code_and_freezes_what_is_left_for_the_exit(capsys):
    """``entry`` (the ``glasszoo`` script) is ``main`` plus a ``gc.freeze``: the same exit code and output, and
    the objects alive then are out of the interpreter's last collection."""
    import gc

    from glasszoo.evaluation.experiment.cli import entry, main

    assert main([]) == 0 and gc.get_freeze_count() == 0  # main alone frees as usual
    help_text = capsys.readouterr().out
    try:
        assert entry([]) == 0
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    assert capsys.readouterr().out == help_text and "usage: glasszoo" in help_text


def test_cli_run_and_errors(tmp_path, capsys, standin_models):
    learnable_npz(tmp_path / "tiny.npz")
    cfg = {"experiment": "cli", "output_dir": str(tmp_path / "runs"),
           "data": {"source": "medmnist", "path": str(tmp_path / "tiny.npz")},
           "evaluation": {"bootstrap": 100, "explain_cases": 4}, "models": ["tiny_logreg"]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr()
    assert "tiny_logreg" in out.out and "auc" in out.out
    assert (tmp_path / "runs" / "cli" / "metrics.json").exists()
    # an unknown model keyword: exit code 2 and one clear line naming it
    assert main(["run", str(path), "--set", "models.0={name: tiny_logreg, params: {C: 1, typo: 2}}"]) == 2
    assert "unknown keyword(s) ['typo']" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["models"]) == 0
    assert "blackbox" in capsys.readouterr().out
    assert main(["show", str(tmp_path / "runs" / "cli"), "--markdown"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| model | auc |") and table[2].startswith("| tiny_logreg | ")
    assert main(["show", str(tmp_path / "runs" / "cli"), "--explanations"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert "| model | method | source | cases | pointing game |" in "\n".join(shown)
    assert shown[-1].startswith("|---|")  # a tabular model alone: no heatmap rows
    assert main(["show", str(tmp_path)]) == 2
    assert "metrics.json not found" in capsys.readouterr().err


def test_a_model_that_cannot_take_the_data_is_refused_before_anything_trains(tmp_path, standin_models, monkeypatch):
    """The config's LAST model needs lesion masks (and the data has none): refused before the first model trains,
    with every such model named, and nothing written."""
    import glasszoo.training.adapters as adapters

    fitted = []
    monkeypatch.setattr(adapters.ImageAdapter, "fit", lambda self, *a, **k: fitted.append(a) or 1 / 0)
    raw = standin_config(models=["tiny_net", "tiny_cam", {"name": "last", "model": "tiny_needs_masks"}])
    raw["data"] = {"source": "medmnist", "path": str(tmp_path / "tiny.npz")}
    learnable_npz(tmp_path / "tiny.npz")
    with pytest.raises(DataError, match=r"model 'last' \(tiny_needs_masks\) needs lesion masks in the training "
                                         r"split.*Nothing was trained"):
        run_experiment(parse_config(raw, "masks.yaml"), out=tmp_path / "run")
    assert fitted == [] and not (tmp_path / "run").exists()


def test_a_model_that_fails_in_fit_fails_alone(tmp_path, standin_models, capsys):
    """A model that raises while it trains: the others' results, metrics.json and the report are written, the error
    is named in both, and ``glasszoo run`` exits 1."""
    raw = standin_config(models=["tiny_net", "tiny_failing", "tiny_logreg"])
    raw["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "fails.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "model 'tiny_failing' failed: RuntimeError: planted failure in training" in err
    run = RunDir(tmp_path / "runs" / "standin")
    m = json.loads(run.metrics.read_text())
    assert list(m["models"]) == ["tiny_net", "tiny_logreg"]
    assert m["failed"]["tiny_failing"]["error"] == "RuntimeError: planted failure in training"
    assert "extra_losses" in m["failed"]["tiny_failing"]["traceback"]
    assert failures(run.path)["tiny_failing"]["registry_name"] == "tiny_failing"
    for name in ("tiny_net", "tiny_logreg"):
        assert run.model(name).predictions.is_file()
    html = run.report.read_text()
    assert 'id="failed-models"' in html and "planted failure in training" in html
    assert "tiny_net" in html and run.tradeoff.is_file()


def test_every_declared_requirement_is_checked_before_training(tmp_path):
    """The issue's two cases: a 5-class (here 3-class) data set under a config ending in the point score, and a CBM
    on data without concepts; both are named at once, before anything trains."""
    from glasszoo.evaluation.experiment.runner import check_config_data
    from glasszoo.training.data import load_caseset

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 30), ("val", 12), ("test", 12)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 8, 8)).astype(np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(-1, 1).astype(np.uint8)
    np.savez(tmp_path / "three.npz", **arrays)
    raw = {"experiment": "three", "data": {"source": "medmnist", "path": str(tmp_path / "three.npz")},
           "models": ["sparse_logreg", {"name": "cbm", "params": {"backbone": "resnet18"}}, "point_score"]}
    cfg = parse_config(raw, "three.yaml")
    with pytest.raises(DataError) as err:
        check_config_data(cfg, load_caseset(cfg.data))
    msg = str(err.value)
    assert msg.startswith("three.yaml: ") and "sparse_logreg" not in msg
    assert "model 'cbm' (cbm) needs a concept matrix" in msg
    assert "model 'point_score' (point_score) needs exactly two classes" in msg


def test_a_run_whose_every_model_fails_still_writes_its_report(tmp_path, standin_models, capsys):
    raw = standin_config(models=["tiny_failing"])
    raw["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == 1
    run = RunDir(tmp_path / "runs" / "standin")
    assert json.loads(run.metrics.read_text())["models"] == {}
    html = run.report.read_text()
    assert 'id="failed-models"' in html and "planted failure in training" in html


@pytest.mark.parametrize("workers", [1, 2])
def test_a_case_figure_that_cannot_be_drawn_keeps_the_models_results(tmp_path, standin_models, monkeypatch, workers):
    """One after another, and with workers (the figures are then drawn in forked processes)."""
    import glasszoo.evaluation.experiment.runner as runner

    real = runner.explain_case

    def broken(model, case, *args, **kwargs):
        if type(model).__name__ == "TinyCAM":
            raise ValueError("planted figure failure")
        return real(model, case, *args, **kwargs)

    monkeypatch.setattr(runner, "explain_case", broken)
    raw = {**standin_config(models=["tiny_net", "tiny_cam"]), "workers": workers}
    run = RunDir(run_experiment(parse_config(raw), out=tmp_path / "run"))
    m = json.loads(run.metrics.read_text())
    assert list(m["models"]) == ["tiny_net", "tiny_cam"]  # its results are kept
    assert m["failed"]["tiny_cam"]["stage"] == "case figures"
    assert "planted figure failure" in m["failed"]["tiny_cam"]["error"]
    assert list(run.case_dir("tiny_net").glob("*.png")) and run.report.is_file()


def test_explanations_markdown_by_hand():
    """One row per heatmap (other explanation kinds skipped), two decimals with CIs, the randomisation pass share,
    the cost, and '–' where no pass was counted."""
    from glasszoo.evaluation.results import format_explanations_markdown

    def ci(v, lo, hi):
        return {"value": v, "ci": [lo, hi]}

    metrics = {"models": {
        "bb": {"explanation": {"gradcam": {
            "kind": "heatmap", "source": "post-hoc", "n_cases": 32, "ms_per_image": 5.83,
            "passes_per_image": {"forward": 2, "backward": 0}, "pointing_game": ci(0.03125, 0.0, 0.09375),
            "randomisation_similarity": ci(0.3, 0.0, 0.734), "randomisation": {"passed_fraction": 2 / 3}}}},
        "proto": {"explanation": {
            "prototype_evidence": {"kind": "prototype_evidence"},
            "prototype_activation": {"kind": "heatmap", "source": "intrinsic", "n_cases": 32, "ms_per_image": 22.1,
                                     "passes_per_image": None, "mass_in_mask": ci(0.236, 0.2, 0.274)}}},
        "tree": {"explanation": {}},
    }}
    lines = format_explanations_markdown(metrics).splitlines()
    assert len(lines) == 2 + 2
    bb = lines[2].split(" | ")
    assert bb[:5] == ["| bb", "gradcam", "post-hoc", "32", "0.03 [0.00, 0.09]"]
    assert "0.30 [0.00, 0.73] (67%)" in bb and bb[-2:] == ["5.8", "2+0 |"]
    proto = lines[3].split(" | ")
    assert proto[1] == "prototype_activation" and proto[4] == "" and proto[5] == "0.24 [0.20, 0.27]"
    assert proto[-1] == "– |"

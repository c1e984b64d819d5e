"""`glasszoo run` end to end on tiny data: the results contract, determinism, the tabular path, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from glasszoo.evaluation.experiment.cli import main
from glasszoo.evaluation.experiment.config import parse_config
from glasszoo.evaluation.experiment.runner import run_experiment
from glasszoo.models import FeatureAttribution, TabularModel, register_model

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


class LogReg(TabularModel):
    """Test-only tabular model: plain logistic regression on the feature table."""

    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, X, y, X_val=None, y_val=None, feature_names=None):
        self.mu_, self.sd_ = X.mean(0), X.std(0) + 1e-9
        self.clf_ = LogisticRegression(C=self.C).fit((X - self.mu_) / self.sd_, y)
        self.feature_names_ = list(feature_names)
        self.n_params_ = int(self.clf_.coef_.size + 1)
        return self

    def predict_proba(self, X):
        return self.clf_.predict_proba((X - self.mu_) / self.sd_)

    def explain(self, X, target=None, case_ids=None):
        z = (X - self.mu_) / self.sd_
        return FeatureAttribution(self.feature_names_, X, z * self.clf_.coef_[0], np.ones(len(X), int),
                                  float(self.clf_.intercept_[0]), case_ids)


register_model("test_logreg", family="test-linear", input_kind="features", explanations=("feature_attribution",),
               paper="test only")(LogReg)


def tiny_config(tmp_path, models=("blackbox",), seed=0, methods=None):
    """A tiny run; ``methods``: the post-hoc methods (default: all of them)."""
    learnable_npz(tmp_path / "tiny.npz")
    posthoc = {} if methods is None else {"methods": list(methods)}
    return parse_config({
        "experiment": "tiny", "seed": seed, "output_dir": str(tmp_path / "runs"),
        "data": {"source": "medmnist", "path": str(tmp_path / "tiny.npz")},
        "training": {"max_epochs": 3, "batch_size": 16, "patience": 0, "progress_bar": False},
        "evaluation": {"bootstrap": 200, "explain_cases": 8, "figure_cases": 4, "posthoc": posthoc,
                       "quality": {"steps": 4, "faithfulness_subsets": 8, "randomisation_stages": 2,
                                   "sensitivity_samples": 1}},
        "models": [{"name": "blackbox", "params": {"backbone": "resnet18", "stem": "standard"}}
                   if m == "blackbox" else m for m in models],
    })


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = tiny_config(tmp, models=("blackbox", "test_logreg"))
    return run_experiment(cfg), cfg


def test_run_writes_the_results_contract(tiny_run):
    run_dir, cfg = tiny_run
    for f in ("config.yaml", "splits.csv", "metrics.json", "tradeoff.csv", "figures/roc.png",
              "figures/blackbox_gradcam.png", "models/blackbox/checkpoint.ckpt", "models/blackbox/predictions.csv",
              "models/blackbox/logs/metrics.csv", "models/test_logreg/predictions.csv"):
        assert (run_dir / f).exists(), f
    m = json.loads((run_dir / "metrics.json").read_text())
    assert set(m) == {"dataset", "models"}
    assert m["dataset"]["n_cases"] == 120 and m["dataset"]["source"] == "medmnist"
    for name in ("blackbox", "test_logreg"):
        block = m["models"][name]
        assert {"family", "task", "explanation", "cost"} <= set(block)
        assert list(block["task"]) == TASK_KEYS
        for key in TASK_KEYS:
            v, (lo, hi) = block["task"][key]["value"], block["task"][key]["ci"]
            assert 0 <= lo <= v <= hi <= 1
        assert block["cost"]["train_seconds"] > 0 and block["cost"]["params"] > 0
    assert m["models"]["blackbox"]["family"] == "black-box"
    assert m["models"]["blackbox"]["explanation"]["gradcam"]["kind"] == "heatmap"
    assert m["models"]["test_logreg"]["explanation"]["feature_attribution"]["n_cases"] == 8
    # predictions.csv agrees with metrics.json
    pred = pd.read_csv(run_dir / "models" / "blackbox" / "predictions.csv")
    assert len(pred) == 32
    acc = float((pred["pred"] == pred["label"]).mean())
    assert acc == pytest.approx(m["models"]["blackbox"]["task"]["accuracy"]["value"])
    # splits.csv holds the official split
    splits = pd.read_csv(run_dir / "splits.csv")
    assert splits["split"].value_counts().to_dict() == {"train": 64, "test": 32, "val": 24}
    trade = pd.read_csv(run_dir / "tradeoff.csv")
    primary = trade[trade["primary"]].reset_index(drop=True)
    assert list(primary["model"]) == ["blackbox", "test_logreg"]
    assert primary.loc[0, "auc"] == pytest.approx(m["models"]["blackbox"]["task"]["auc"]["value"])
    # one row per (model, explanation method): the black box's own Grad-CAM and every post-hoc method
    blackbox_methods = set(trade.loc[trade["model"] == "blackbox", "explanation"])
    assert blackbox_methods == set(m["models"]["blackbox"]["explanation"]) >= {"gradcam", "integrated_gradients"}
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["training"]["max_epochs"] == 3 and resolved["models"][0]["model"] == "blackbox"


def test_tabular_path_learns_the_bright_square(tiny_run):
    run_dir, _ = tiny_run
    m = json.loads((run_dir / "metrics.json").read_text())
    # the p90 / max-like intensity features separate the classes almost perfectly
    assert m["models"]["test_logreg"]["task"]["auc"]["value"] > 0.9


def _without_times(metrics: dict) -> dict:
    return {k: {kk: vv for kk, vv in b.items() if kk != "ms_per_image"}
            for k, b in metrics["models"]["blackbox"]["explanation"].items()}


def test_same_seed_same_splits_and_metrics(tmp_path):
    runs = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        cfg = tiny_config(tmp_path / str(i), models=("blackbox",), seed=5, methods=("smoothgrad", "kernel_shap"))
        runs.append(run_experiment(cfg))
    a, b = (json.loads((r / "metrics.json").read_text()) for r in runs)
    assert a["models"]["blackbox"]["task"] == b["models"]["blackbox"]["task"]
    # the seeded post-hoc methods and every quality score repeat exactly
    assert json.dumps(_without_times(a), sort_keys=True) == json.dumps(_without_times(b), sort_keys=True)
    assert a["models"]["blackbox"]["training"] == b["models"]["blackbox"]["training"]
    pa, pb = (pd.read_csv(r / "models" / "blackbox" / "predictions.csv") for r in runs)
    pd.testing.assert_frame_equal(pa, pb)
    assert (runs[0] / "splits.csv").read_text() == (runs[1] / "splits.csv").read_text()


def test_existing_run_is_not_overwritten(tmp_path):
    cfg = tiny_config(tmp_path, models=("test_logreg",))
    first = run_experiment(cfg)
    before = (first / "metrics.json").read_bytes()
    second = run_experiment(cfg)
    assert second != first and second.name == "tiny-2"
    assert (first / "metrics.json").read_bytes() == before


def test_cli_run_and_errors(tmp_path, capsys):
    learnable_npz(tmp_path / "tiny.npz")
    cfg = {"experiment": "cli", "output_dir": str(tmp_path / "runs"),
           "data": {"source": "medmnist", "path": str(tmp_path / "tiny.npz")},
           "evaluation": {"bootstrap": 100, "explain_cases": 4}, "models": ["test_logreg"]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr()
    assert "test_logreg" in out.out and "auc" in out.out
    assert (tmp_path / "runs" / "cli" / "metrics.json").exists()
    # an unknown model keyword: exit code 2 and one clear line naming it
    assert main(["run", str(path), "--set", "models.0={name: test_logreg, params: {C: 1, typo: 2}}"]) == 2
    assert "unknown keyword(s) ['typo']" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["models"]) == 0
    assert "blackbox" in capsys.readouterr().out
    assert main(["show", str(tmp_path / "runs" / "cli"), "--markdown"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| model | auc |") and table[2].startswith("| test_logreg | ")
    assert main(["show", str(tmp_path)]) == 2
    assert "metrics.json not found" in capsys.readouterr().err

"""``workers`` > 1: the image models train side by side in forked processes of one torch thread each.

The results must be those of the same run trained one model after another on one thread (same floating-point
order), listed in the same order; a model that fails or whose process dies fails alone.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from standins import standin_config

from glasszoo.evaluation.experiment.config import parse_config
from glasszoo.evaluation.experiment.runner import failures, run_experiment
from glasszoo.models import ConfigError
from glasszoo.training.rundir import RunDir

MODELS = ["tiny_net", "tiny_cam", "tiny_logreg"]


def _timeless(value):
    """``value`` without the entries that time the run (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items()
                if "seconds" not in k and "ms_per" not in k and k not in ("cost", "reads")}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _run(tmp_path, name, workers, models=MODELS):
    # the surrogates of tiny_net: with workers they are fitted as soon as it is collected, while tiny_cam may train
    raw = standin_config(models=models, surrogates={"of": ["tiny_net"], "models": {
        "tree": {"model": "decision_tree", "params": {"max_depth": 2}}}})
    raw["workers"] = workers
    return run_experiment(parse_config(raw, f"{name}.yaml"), out=tmp_path / name)


def test_side_by_side_gives_the_results_of_one_model_after_another_on_one_thread(tmp_path, standin_models):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = RunDir(_run(tmp_path, "sequential", workers=1))
    finally:
        torch.set_num_threads(threads)
    two = RunDir(_run(tmp_path, "parallel", workers=2))
    m1, m2 = (json.loads(r.metrics.read_text()) for r in (one, two))
    assert "failed" not in m2
    assert list(m2["models"]) == list(m1["models"]) == MODELS  # run order, though the workers finish in any order
    for name in MODELS:
        p1, p2 = (pd.read_csv(r.model(name).predictions) for r in (one, two))
        pd.testing.assert_frame_equal(p1, p2)
        assert _timeless(m2["models"][name]) == _timeless(m1["models"][name])
    for name, key in (("tiny_net", "gradcam"), ("tiny_net", "saliency"), ("tiny_cam", "cam")):
        with np.load(one.model(name).heatmap(key)) as a, np.load(two.model(name).heatmap(key)) as b:
            np.testing.assert_array_equal(a["maps"], b["maps"])
    # the stored models the run's process read back drew the same case pages as the models in memory
    pages = sorted(p.relative_to(one.path) for p in one.path.rglob("*.png") if "cases" in p.parts)
    assert pages and pages == sorted(p.relative_to(two.path) for p in two.path.rglob("*.png") if "cases" in p.parts)
    assert list(m1["surrogates"]) == ["tiny_net"] and "tree" in m1["surrogates"]["tiny_net"]["surrogates"]
    assert _timeless(m2["surrogates"]) == _timeless(m1["surrogates"])
    assert two.report.is_file()
    # the trained models ran on one thread each: the run's own process keeps its threads
    assert torch.get_num_threads() == threads


def test_a_model_that_fails_in_a_worker_fails_alone(tmp_path, standin_models, capsys):
    run = RunDir(_run(tmp_path, "fails", workers=2, models=["tiny_net", "tiny_failing", "tiny_logreg"]))
    m = json.loads(run.metrics.read_text())
    assert list(m["models"]) == ["tiny_net", "tiny_logreg"]
    assert m["failed"]["tiny_failing"]["error"] == "RuntimeError: planted failure in training"
    assert "extra_losses" in m["failed"]["tiny_failing"]["traceback"]  # the worker's traceback, not the pool's
    assert "tiny_failing: FAILED: RuntimeError: planted failure in training" in capsys.readouterr().err
    assert 'id="failed-models"' in run.report.read_text()


def test_a_worker_process_that_dies_costs_only_the_models_of_the_pool(tmp_path, standin_models, monkeypatch):
    """A worker killed mid-training (here it exits; out of memory in life) breaks the pool: the image models not yet
    collected are recorded as failed, naming the dead process; the tabular model and the report are still written."""
    import glasszoo.evaluation.experiment.runner as runner

    real = runner._train_and_evaluate

    def dies(spec, *args, **kwargs):
        if spec.name == "tiny_cam":
            os._exit(3)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(runner, "_train_and_evaluate", dies)  # the forked workers inherit it
    run = RunDir(_run(tmp_path, "dies", workers=2))
    m = json.loads(run.metrics.read_text())
    assert "tiny_logreg" in m["models"] and "tiny_cam" not in m["models"]
    assert "BrokenProcessPool" in failures(run.path)["tiny_cam"]["error"]
    assert run.report.is_file()


def test_the_workers_setting_is_checked_and_kept_out_of_configs_that_leave_it_at_one(tmp_path):
    raw = {"experiment": "q", "data": {"source": "synthetic", "n_cases": 40}, "models": ["sparse_logreg"]}
    for bad in (0, -1, 1.5, True, "two"):
        with pytest.raises(ConfigError, match=r"q.yaml: workers"):
            parse_config({**raw, "workers": bad}, "q.yaml")
    assert "workers" not in parse_config(raw).to_dict()  # configs written before the setting: byte-identical
    assert parse_config({**raw, "workers": 2}).to_dict()["workers"] == 2


def test_the_figures_are_drawn_in_forked_processes_and_a_dead_ones_again_here(tmp_path):
    """``_draw``: with workers > 1 each job runs in a forked process (its file names another pid); a job that raises
    comes back as its failure record; a job whose process dies is drawn again in this process."""
    from glasszoo.evaluation.experiment.runner import _draw

    me = os.getpid()

    def writes(name: str):
        return lambda: (tmp_path / name).write_text(str(os.getpid()))

    def raises() -> None:
        raise RuntimeError("no figure")

    failures = _draw({"": writes("run"), "a": writes("a"), "b": raises}, workers=2)
    assert list(failures) == ["b"] and failures["b"]["error"] == "RuntimeError: no figure"
    assert "raises" in failures["b"]["traceback"]
    assert {int((tmp_path / n).read_text()) for n in ("run", "a")}.isdisjoint({me})

    def dies_aside() -> None:
        if os.getpid() != me:
            os._exit(3)
        writes("c")()

    assert _draw({"": writes("run"), "c": dies_aside}, workers=2) == {}
    assert int((tmp_path / "c").read_text()) == me

    failures = _draw({"": writes("one"), "b": raises}, workers=1)  # one after another, here
    assert int((tmp_path / "one").read_text()) == me and list(failures) == ["b"]

"""Config parsing: every bad key or value is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from glasszoo.evaluation.experiment.config import apply_overrides, load_config, parse_config
from glasszoo.models.errors import ConfigError

BASE = {"experiment": "t", "data": {"source": "synthetic"}, "models": ["blackbox"]}


def test_defaults_and_overrides_merge():
    cfg = parse_config({**BASE, "training": {"max_epochs": 3, "lr": "1e-3"},
                        "models": [{"name": "bb", "model": "blackbox", "params": {"stem": "small"},
                                    "training": {"batch_size": 8, "augmentation": {"vflip": True}}}]})
    assert cfg.training.lr == pytest.approx(1e-3)  # YAML's "1e-3" string is accepted as a number
    tc = cfg.training_for(cfg.models[0])
    assert (tc.max_epochs, tc.batch_size, tc.augmentation.vflip, tc.augmentation.hflip) == (3, 8, True, True)
    assert cfg.models[0].model == "blackbox" and cfg.models[0].params == {"stem": "small"}


@pytest.mark.parametrize(
    "raw,match",
    [
        ({**BASE, "trainig": {}}, r"trainig: unknown key"),
        ({**BASE, "training": {"max_epoch": 2}}, r"training.max_epoch: unknown key"),
        ({**BASE, "training": {"augmentation": {"flip": True}}}, r"training.augmentation.flip: unknown key"),
        ({**BASE, "training": {"max_epochs": "ten"}}, r"training.max_epochs: expected an integer, got 'ten'"),
        ({**BASE, "training": {"optimizer": "lbfgs"}}, r"training.optimizer: must be one of"),
        ({**BASE, "models": ["no_such_model"]}, r"models\[0\] \(no_such_model\): unknown model 'no_such_model'"),
        ({**BASE, "models": [{"name": "blackbox", "params": {"depth": 3}}]}, r"unknown keyword\(s\) \['depth'\]"),
        ({**BASE, "models": [{"name": "blackbox", "params": {"num_classes": 3}}]}, r"set from the data"),
        ({**BASE, "models": [{"name": "blackbox", "training": {"lr": -1}}]}, r"models\[blackbox\].training.lr"),
        ({**BASE, "models": ["blackbox", "blackbox"]}, r"duplicate model name 'blackbox'"),
        ({**BASE, "models": []}, r"models: expected a non-empty list"),
        ({"experiment": "t", "models": ["blackbox"]}, r"missing required key 'data'"),
        ({**BASE, "experiment": "a/b"}, r"experiment: must be a non-empty name"),
    ],
)
def test_bad_configs_name_the_key(raw, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_config(raw, "cfg.yaml")
    assert str(info.value).startswith("cfg.yaml: ")


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(empty)


def test_overrides():
    raw = apply_overrides(BASE, ["training.max_epochs=2", "data.n_cases=100", "models.0=blackbox", "seed=7"])
    assert raw["training"]["max_epochs"] == 2 and raw["data"]["n_cases"] == 100 and raw["seed"] == 7
    assert BASE["data"] == {"source": "synthetic"}  # the input is not modified
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(BASE, ["training.max_epochs"])


@pytest.mark.parametrize("path", sorted(str(p.relative_to(Path(__file__).resolve().parents[1]))
                                         for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(path):
    from glasszoo.models import check_kwargs

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / path)
    assert cfg.models and cfg.experiment
    for spec in cfg.models:  # every model name and keyword of every shipped config exists
        check_kwargs(spec.model, spec.params)


@pytest.mark.parametrize("evaluation, match", [
    ({"posthoc": {"methods": ["gradcam", "shapley"]}}, r"evaluation.posthoc.methods\[1\]: unknown method 'shapley'"),
    ({"posthoc": {"params": {"lime": {"n_sample": 10}}}}, r"posthoc.params.lime.n_sample: unknown parameter"),
    ({"posthoc": {"params": {"nope": {}}}}, r"evaluation.posthoc.params.nope: unknown method"),
    ({"posthoc": {"max_cases": {"lime": 0}}}, r"evaluation.posthoc.max_cases.lime: expected an integer >= 1"),
    ({"posthoc": {"models": ["bbox"]}}, r"evaluation.posthoc.models\[0\]: 'bbox' is neither a model"),
    ({"posthoc": {"methods": "gradcam"}}, r"evaluation.posthoc.methods: expected a list"),
    ({"quality": {"baseline": "grey"}}, r"evaluation.quality.baseline: must be 'zero', 'mean' or 'blur'"),
    ({"quality": {"steps": 0}}, r"evaluation.quality.steps: must be >= 1"),
    ({"quality": {"stepz": 3}}, r"evaluation.quality.stepz: unknown key"),
])
def test_bad_explanation_settings_name_the_key(evaluation, match):
    raw = {"experiment": "x", "data": {"source": "synthetic"}, "models": ["blackbox"], "evaluation": evaluation}
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_explanation_settings_parse():
    cfg = parse_config({"experiment": "x", "data": {"source": "synthetic"}, "models": ["blackbox"],
                        "evaluation": {"posthoc": {"methods": ["lime"], "params": {"lime": {"n_samples": 10}}},
                                       "quality": {"steps": 3}}})
    assert cfg.evaluation.posthoc.methods == ["lime"] and cfg.evaluation.posthoc.models == ["black-box"]
    assert cfg.evaluation.posthoc.params == {"lime": {"n_samples": 10}} and cfg.evaluation.quality.steps == 3
    assert cfg.evaluation.quality.baseline == "zero"

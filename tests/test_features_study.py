"""glasszoo features-study: radiomics settings scored on the validation split only."""

from __future__ import annotations

import numpy as np
import pytest

from glasszoo.evaluation.experiment.cli import main
from glasszoo.evaluation.experiment.config import parse_config
from glasszoo.evaluation.experiment.features_study import (
    format_study_markdown,
    parse_bin_rule,
    parse_image_types,
    run_features_study,
)
from glasszoo.models.errors import ConfigError
from glasszoo.training.synthetic import make_synthetic


def test_bin_rules_and_image_types_parse_or_name_the_fault():
    assert parse_bin_rule("binWidth=8") == {"binWidth": 8.0}
    assert parse_bin_rule("binCount=32") == {"binCount": 32}
    for bad, message in (("bins=3", "binWidth=W or binCount=N"), ("binCount=x", "needs a number"),
                         ("binCount=2.5", "positive integer"), ("binWidth=0", "positive number")):
        with pytest.raises(ConfigError, match=message):
            parse_bin_rule(bad)
    assert parse_image_types("Original+LoG") == ["Original", "LoG"]
    with pytest.raises(ConfigError, match="empty set"):
        parse_image_types("+")


def _cfg(tmp_path, **features):
    return parse_config({"experiment": "study", "data": {"source": "synthetic", "n_cases": 200, "img_size": 32},
                         "features": {"kind": "radiomics", "cache_dir": str(tmp_path), "progress_bar": False,
                                      **features},
                         "models": [{"name": "sparse_logreg", "params": {"n_Cs": 8, "max_features": 5}}]})


def test_study_scores_every_cell_on_the_validation_split_and_never_reads_the_test_split(tmp_path):
    cfg = _cfg(tmp_path)
    cs = make_synthetic(n_cases=200, img_size=32)
    # the test split's labels are flipped: a study that scored (or fitted) on them would see an AUC below 0.5
    test = cs.indices("test")
    cs.labels[test] = 1 - cs.labels[test]
    study = run_features_study(cfg, bin_rules=["binWidth=16", "binCount=16"], image_types=["Original"],
                               scorers=["sparse_logreg"], n_boot=50, caseset=cs, progress=False)
    assert [r["bins"] for r in study["rows"]] == ["binWidth 16", "binCount 16"]
    assert study["n_val"] == len(cs.indices("val")) and study["n_train"] == len(cs.indices("train"))
    for r in study["rows"]:
        s = r["scores"]["sparse_logreg"]
        assert 0.0 <= s["ci"][0] <= s["val_auc"] <= s["ci"][1] <= 1.0
        assert r["n_features"] > 20
    # fitted on the training split, scored on the validation split: the phantoms' signal is found (on the flipped
    # test labels it would score below 0.5)
    assert study["rows"][0]["scores"]["sparse_logreg"]["val_auc"] > 0.8
    best = study["best"]["sparse_logreg"]
    assert best["val_auc"] == max(r["scores"]["sparse_logreg"]["val_auc"] for r in study["rows"])
    text = format_study_markdown(study)
    assert text.count("\n| ") == 4 and "**" in text and "best for sparse_logreg" in text


def test_study_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ConfigError, match="features.kind"):
        run_features_study(parse_config({"experiment": "s", "data": {"source": "synthetic", "n_cases": 40},
                                         "models": ["sparse_logreg"]}), progress=False)
    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError, match="is an image model"):
        run_features_study(cfg, scorers=["blackbox"], progress=False)


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"experiment": "study", "seed": 0,
                                    "data": {"source": "synthetic", "n_cases": 60, "img_size": 32},
                                    "features": {"kind": "radiomics", "cache_dir": str(tmp_path / "cache")},
                                    "models": [{"name": "decision_tree", "params": {"max_depth": 2}}]}))
    out = tmp_path / "study.json"
    assert main(["features-study", str(path), "--bins", "binCount=8", "--image-types", "Original",
                 "--models", "decision_tree", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| binCount 8 | Original |" in printed
    import json

    saved = json.loads(out.read_text())
    assert saved["rows"][0]["scores"]["decision_tree"]["val_auc"] == pytest.approx(
        float(printed.split("**")[1].split(" ")[0]), abs=5e-4)
    assert main(["features-study", str(path), "--sigma", "a,b"]) == 2
    assert np.isfinite(saved["best"]["decision_tree"]["val_auc"])

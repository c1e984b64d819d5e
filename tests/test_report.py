"""The HTML report: paired tests, Pareto fronts, summary sentences, the self-contained HTML and a real browser."""

from __future__ import annotations

import base64
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from glasszoo.evaluation import report, stats  # noqa: E402
from glasszoo.models.errors import DataError  # noqa: E402
from glasszoo.training.rundir import RunDir, safe_filename  # noqa: E402

CLASSES = ["benign", "malignant"]
N_TEST = 40
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------------------------
# A hand-made run directory
# --------------------------------------------------------------------------------------------------------------------


def _ci(value: float, half: float = 0.03) -> dict:
    return {"value": value, "ci": [value - half, value + half]}


def _task(auc: float, acc: float) -> dict:
    return {"auc": _ci(auc), "accuracy": _ci(acc), "balanced_accuracy": _ci(acc), "f1": _ci(acc - 0.01),
            "sensitivity": _ci(acc + 0.01), "specificity": _ci(acc - 0.02)}


def _heatmap(source: str, ins: float, dele: float, faith: float, pg: float | None, mass: float | None,
             passed: bool) -> dict:
    block = {"kind": "heatmap", "source": source, "n_cases": 16, "ms_per_image": 2.5,
             "passes_per_image": {"forward": 1.0, "backward": 1.0}, "insertion_auc": _ci(ins, 0.05),
             "deletion_auc": _ci(dele, 0.04), "faithfulness_correlation": _ci(faith, 0.1),
             "sparseness": _ci(0.4, 0.02), "randomisation_similarity": _ci(0.2, 0.05),
             "randomisation": {"passed": passed, "passed_fraction": 0.9 if passed else 0.1}}
    if pg is not None:
        block["pointing_game"] = _ci(pg, 0.1)
    if mass is not None:
        block["mass_in_mask"] = _ci(mass, 0.05)
    return block


def make_metrics(masks: bool = True) -> dict:
    """Three models (black box, prototype network, tabular tree) with hand-chosen scores.

    Pareto fronts (AUC maximised): insertion -> blackbox/integrated_gradients; deletion (minimised) -> blackbox/gradcam
    and protonet/prototype_activation; faithfulness -> blackbox/integrated_gradients; pointing game -> blackbox/gradcam
    and protonet/prototype_activation; mass in mask -> blackbox/integrated_gradients and protonet/prototype_activation.
    """
    pg = (0.5, 0.4, 0.8) if masks else (None, None, None)
    mass = (0.3, 0.35, 0.6) if masks else (None, None, None)
    return {
        "dataset": {"name": "synthetic", "n_cases": 200, "class_names": CLASSES, "positive_class": "malignant",
                    "image_shape": [1, 32, 32], "has_masks": masks, "source": "synthetic",
                    "cases_per_split": {"train": {"benign": 60, "malignant": 60},
                                        "val": {"benign": 20, "malignant": 20},
                                        "test": {"benign": 20, "malignant": 20}},
                    "features": {"kind": "intensity", "n_features": 12, "seconds": 0.5}},
        "models": {
            "blackbox": {
                "family": "black-box", "registry_name": "blackbox", "input": "image", "task": _task(0.93, 0.85),
                "explanation": {
                    "gradcam": _heatmap("post-hoc", 0.60, 0.20, 0.30, pg[0], mass[0], True),
                    "integrated_gradients": _heatmap("post-hoc", 0.70, 0.25, 0.40, pg[1], mass[1], False),
                },
                "cost": {"train_seconds": 100.0, "params": 11_171_266, "inference_ms_per_image": 1.0},
            },
            "protonet": {
                "family": "prototype", "registry_name": "protopnet", "input": "image", "task": _task(0.90, 0.82),
                "explanation": {
                    "prototype_evidence": {"kind": "prototype_evidence", "source": "intrinsic", "n_cases": 16,
                                           "ms_per_image": 1.5},
                    "prototype_activation": _heatmap("intrinsic", 0.65, 0.15, 0.20, pg[2], mass[2], True),
                    "prototype_quality": {"n_prototypes": 20, "class_purity": 0.76, "pushed": True},
                },
                "cost": {"train_seconds": 50.0, "params": 2_781_256, "inference_ms_per_image": 0.7},
            },
            "tree": {
                "family": "tree", "registry_name": "decision_tree", "input": "features", "task": _task(0.85, 0.78),
                "explanation": {"feature_attribution": {"kind": "feature_attribution", "source": "intrinsic",
                                                        "n_cases": 16, "ms_per_image": 0.01}},
                "cost": {"train_seconds": 0.5, "params": 11, "inference_ms_per_image": 0.01},
                "complexity": {"depth": 3, "n_leaves": 6, "n_splits": 5, "n_features_used": 4, "n_params": 11},
            },
        },
    }


def _case_ids(n: int) -> list[str]:
    return [f"patient {i:02d}/img.png" for i in range(n)]  # folder-style ids: safe_filename matters


def make_predictions(n: int = N_TEST, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and per-model positive-class probabilities (deterministic)."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    probs = {}
    for name, signal in (("blackbox", 0.45), ("protonet", 0.35), ("tree", 0.25)):
        probs[name] = np.clip(0.5 + signal * (2 * y - 1) + rng.normal(0, 0.25, n), 0.01, 0.99)
    probs["blackbox"][:3] = [0.2, 0.9, 0.3]  # the three cases with figures: all right for the black box,
    probs["protonet"][:3] = [0.1, 0.8, 0.4]
    probs["tree"][:3] = [0.3, 0.4, 0.2]  # ... case 1 (malignant) wrong for the tree
    return y, probs


def _tiny_png(path: Path, colour: str = "tab:blue") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1.0, 0.8), dpi=30)
    ax.plot([0, 1], [0, 1], color=colour)
    fig.savefig(path)
    plt.close(fig)


def write_run(run_dir: Path, metrics: dict | None = None, extras: bool = True) -> Path:
    """A run directory by hand (every file name from ``RunDir``, as the runner's, so the two cannot drift):
    metrics.json, predictions, run.json; with ``extras`` figures, case figures, audit and seeds."""
    metrics = metrics or make_metrics()
    run_dir.mkdir(parents=True, exist_ok=True)
    rd = RunDir(run_dir)
    rd.metrics.write_text(json.dumps(metrics, indent=1))
    rd.config.write_text("experiment: fake-run\nseed: 0\n")
    rd.run_info.write_text(json.dumps({"glasszoo_version": "9.9.9", "started": "2024-01-01T00:00:00"}))
    y, probs = make_predictions()
    ids = _case_ids(len(y))
    for name in metrics["models"]:
        p1 = probs[name]
        df = pd.DataFrame({"case_id": ids, "label": y, "pred": (p1 >= 0.5).astype(int), "p_benign": 1 - p1,
                           "p_malignant": p1})
        rd.model(name).path.mkdir(parents=True, exist_ok=True)
        df.to_csv(rd.model(name).predictions, index=False)
    if not extras:
        return run_dir
    for path in (rd.roc_figure, rd.comparison_figure, rd.randomisation_figure("blackbox"),
                 rd.method_figure("blackbox", "gradcam"), rd.audit_figure, rd.intervention_figure("protonet")):
        _tiny_png(path)
    for case in (ids[0], ids[1], ids[2]):
        for model in ("blackbox", "protonet"):
            _tiny_png(rd.case_figure(model, case), "tab:red")
        _tiny_png(rd.case_heatmaps(case), "tab:green")
    audit = {"marker": {"kind": "square", "size": 4, "rate": 0.9},
             "models": {"blackbox": {"accuracy_correlated": _ci(0.95), "accuracy_decorrelated": _ci(0.6),
                                     "accuracy_drop": _ci(0.35), "auc_correlated": _ci(0.97),
                                     "auc_decorrelated": _ci(0.65),
                                     "explanations": {"gradcam": {"marker_mass": _ci(0.4),
                                                                  "marker_mass_ratio": _ci(8.0)}}}},
             "revealed": [["blackbox", "gradcam"]], "resisted": [], "summary": ["blackbox learnt the <marker>."]}
    (run_dir / "audit.json").write_text(json.dumps(audit))
    seeds = {"seeds": [0, 1, 2], "models": {"blackbox": {"auc": {"mean": 0.921, "sd": 0.012,
                                                                 "values": [0.93, 0.92, 0.913]}}}}
    (run_dir / "seeds.json").write_text(json.dumps(seeds))
    return run_dir


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run")


# --------------------------------------------------------------------------------------------------------------------
# HTML parsing helpers
# --------------------------------------------------------------------------------------------------------------------


class _Tables(HTMLParser):
    """Collects the text of every cell of every table with an id, and all img attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.imgs: list[dict] = []
        self._stack: list[str | None] = []
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table":
            self._stack.append(a.get("id"))
            if a.get("id"):
                self.tables[a["id"]] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._stack and self._stack[-1]:
            self.tables[self._stack[-1]].append([])
        elif tag in ("td", "th") and self._in_body:
            self._cell = []
        elif tag == "img":
            self.imgs.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._stack.pop()
        elif tag == "tbody":
            self._in_body = False
        elif tag in ("td", "th") and self._cell is not None:
            if self._stack and self._stack[-1] and self.tables[self._stack[-1]]:
                self.tables[self._stack[-1]][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> _Tables:
    p = _Tables()
    p.feed(text)
    return p


# --------------------------------------------------------------------------------------------------------------------
# Formatting and model choice
# --------------------------------------------------------------------------------------------------------------------


def test_format_ci_and_nan() -> None:
    assert report.format_ci(0.9123, [0.8712, 0.9481]) == "0.912 [0.871, 0.948]"
    assert report.format_ci(math.nan, [0.1, 0.2]) == "\u2013"
    assert report.format_ci(0.5, [math.nan, math.nan]) == "0.500"
    assert report.format_ci(None, None) == "\u2013"


def test_default_reference() -> None:
    metrics = make_metrics()
    assert report.default_reference(metrics) == "blackbox"  # the one explained post hoc only
    metrics["models"] = {k: metrics["models"][k] for k in ("tree", "protonet", "blackbox")}
    assert report.default_reference(metrics) == "blackbox"  # wherever it stands: no family name is needed
    for block in metrics["models"]["blackbox"]["explanation"].values():
        block["source"] = "intrinsic"
    assert report.default_reference(metrics) == "protonet"  # no black box: the first image model
    for m in metrics["models"].values():
        m["input"] = "features"
    assert report.default_reference(metrics) == "tree"  # first model


def test_complexity_summary() -> None:
    models = make_metrics()["models"]
    assert report.complexity_summary(models["tree"]) == "4 features, 6 leaves, depth 3"
    assert report.complexity_summary(models["blackbox"]) == "11.2M parameters"
    assert report.complexity_summary({"complexity": {"n_nonzero": 18, "n_features": 40}}) == "18 of 40 features"
    assert report.complexity_summary({"complexity": {"n_terms": 12, "n_interactions": 2}}) == \
        "12 terms (2 interactions)"


# --------------------------------------------------------------------------------------------------------------------
# Paired tests
# --------------------------------------------------------------------------------------------------------------------


def test_paired_tests_equal_direct_calls(run_dir: Path) -> None:
    y, probs = make_predictions()
    rows = report.paired_tests(run_dir, "blackbox")
    assert [r["model"] for r in rows] == ["protonet", "tree"]
    ref_correct = (probs["blackbox"] >= 0.5).astype(int) == y
    delong_p, mcnemar_p = [], []
    for r in rows:
        d = stats.delong_test(y, probs[r["model"]], probs["blackbox"])
        mc = stats.mcnemar_test((probs[r["model"]] >= 0.5).astype(int) == y, ref_correct)
        assert r["reference"] == "blackbox" and r["n_cases"] == N_TEST
        assert r["auc"] == pytest.approx(d["auc_a"]) and r["auc_reference"] == pytest.approx(d["auc_b"])
        assert r["delta_auc"] == pytest.approx(d["diff"])
        assert r["delta_auc_ci"] == pytest.approx(d["ci"])
        assert r["delong_p"] == pytest.approx(d["p_value"])
        assert (r["mcnemar_b"], r["mcnemar_c"]) == (mc["b"], mc["c"])
        assert r["mcnemar_p"] == pytest.approx(mc["p_value"])
        assert r["delta_accuracy"] == pytest.approx(mc["diff_accuracy"])
        delong_p.append(d["p_value"])
        mcnemar_p.append(mc["p_value"])
    # Holm across the two compared models, separately per test
    np.testing.assert_allclose([r["delong_p_holm"] for r in rows], stats.holm(np.array(delong_p)))
    np.testing.assert_allclose([r["mcnemar_p_holm"] for r in rows], stats.holm(np.array(mcnemar_p)))
    lo = min(delong_p)
    assert min(r["delong_p_holm"] for r in rows) == pytest.approx(min(1.0, 2 * lo))


def test_paired_tests_align_rows_by_case_id(run_dir: Path) -> None:
    before = report.paired_tests(run_dir, "blackbox")
    path = run_dir / "models" / "tree" / "predictions.csv"
    df = pd.read_csv(path, dtype={"case_id": str})
    df.iloc[::-1].to_csv(path, index=False)  # same cases, reversed order
    after = report.paired_tests(run_dir, "blackbox")
    for a, b in zip(before, after):
        assert a["delong_p"] == pytest.approx(b["delong_p"]) and a["mcnemar_b"] == b["mcnemar_b"]


def test_paired_tests_mismatched_case_ids_name_the_file(run_dir: Path) -> None:
    path = run_dir / "models" / "protonet" / "predictions.csv"
    df = pd.read_csv(path, dtype={"case_id": str})
    df.loc[3, "case_id"] = "somebody else"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"protonet.predictions\.csv.*case ids differ"):
        report.paired_tests(run_dir, "blackbox")
    with pytest.raises(DataError, match="not in the run"):
        report.paired_tests(run_dir, "nope")


def test_paired_tests_multiclass(tmp_path: Path) -> None:
    classes = ["a", "b", "c"]
    metrics = make_metrics(masks=False)
    metrics["dataset"]["class_names"] = classes
    del metrics["dataset"]["positive_class"]
    run = tmp_path / "mc"
    (run).mkdir()
    (run / "metrics.json").write_text(json.dumps(metrics))
    rng = np.random.default_rng(1)
    y = np.arange(30) % 3
    probas = {}
    for i, name in enumerate(metrics["models"]):
        logits = rng.normal(0, 1, (30, 3)) + (2.0 - 0.5 * i) * np.eye(3)[y]
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        probas[name] = p
        df = pd.DataFrame({"case_id": [f"c{j}" for j in range(30)], "label": y, "pred": p.argmax(1)})
        for k, c in enumerate(classes):
            df[f"p_{c}"] = p[:, k]
        (run / "models" / name).mkdir(parents=True)
        df.to_csv(run / "models" / name / "predictions.csv", index=False)
    rows = report.paired_tests(run, "blackbox")
    for r in rows:
        d = stats.delong_test_multiclass(y, probas[r["model"]], probas["blackbox"])
        assert r["delta_auc"] == pytest.approx(d["diff"]) and r["delong_p"] == pytest.approx(d["p_value"])
    html_text = report.write_report(run).read_text()  # multi-class calibration (top label), no figures at all
    assert 'id="calibration"' in html_text and "top-label" in html_text
    assert 'id="cases"' not in html_text and 'id="audit"' not in html_text and 'id="seeds"' not in html_text


# --------------------------------------------------------------------------------------------------------------------
# Pareto and summary
# --------------------------------------------------------------------------------------------------------------------


def _fronts(panels: list[dict]) -> dict[str, set[tuple[str, str]]]:
    return {p["score"]: {(q["model"], q["method"]) for q in p["points"] if q["pareto"]} for p in panels}


def test_pareto_rows_mark_the_known_fronts() -> None:
    panels = report.pareto_rows(make_metrics())
    assert [p["score"] for p in panels] == ["insertion_auc", "deletion_auc", "faithfulness_correlation",
                                            "pointing_game", "mass_in_mask"]
    assert _fronts(panels) == {
        "insertion_auc": {("blackbox", "integrated_gradients")},
        "deletion_auc": {("blackbox", "gradcam"), ("protonet", "prototype_activation")},
        "faithfulness_correlation": {("blackbox", "integrated_gradients")},
        "pointing_game": {("blackbox", "gradcam"), ("protonet", "prototype_activation")},
        "mass_in_mask": {("blackbox", "integrated_gradients"), ("protonet", "prototype_activation")},
    }
    deletion = panels[1]
    assert deletion["higher_is_better"] is False and panels[0]["higher_is_better"] is True
    # three pairs have scores; the method without scores (prototype_evidence) and the tree are not points
    assert len(deletion["points"]) == 3
    gc = next(q for q in deletion["points"] if q["method"] == "gradcam")
    assert gc["x"] == pytest.approx(0.20) and gc["x_ci"] == pytest.approx([0.16, 0.24])
    assert gc["y"] == pytest.approx(0.93) and gc["y_ci"] == pytest.approx([0.90, 0.96])


def test_pareto_rows_without_masks_have_no_localisation_panels() -> None:
    panels = report.pareto_rows(make_metrics(masks=False))
    assert [p["score"] for p in panels] == ["insertion_auc", "deletion_auc", "faithfulness_correlation"]


def test_summary_sentences() -> None:
    metrics = make_metrics()
    tests = [{"model": "protonet", "reference": "blackbox", "delta_auc": -0.03, "delong_p_holm": 0.4},
             {"model": "tree", "reference": "blackbox", "delta_auc": -0.08, "delong_p_holm": 0.001}]
    s = report.summary_sentences(metrics, tests)
    text = " ".join(s)
    assert "the reference blackbox (black-box, image) reaches a test AUC of 0.930 [0.900, 0.960]" in text
    assert "protonet (prototype, image) is within 0.030 AUC of the black box (0.900 vs 0.930; Holm-adjusted" in text
    assert "tree (tree, features) is 0.080 AUC below the black box" in text
    assert "using 4 features, 6 leaves, depth 3" in text
    assert "by insertion AUC is blackbox / integrated_gradients (0.700 [0.650, 0.750])" in text
    assert "by deletion AUC (lower is better) is protonet / prototype_activation" in text
    assert "from 0.01 ms/image (tree / feature_attribution) to 2.5 ms/image" in text
    assert "by pointing game is protonet / prototype_activation" in text
    assert "2 of 3 explanations pass" in text and "failing: blackbox / integrated_gradients" in text
    tests[0]["delta_auc"] = 0.012
    assert any("protonet (prototype, image) is 0.012 AUC above" in x for x in report.summary_sentences(metrics, tests))


# --------------------------------------------------------------------------------------------------------------------
# The HTML file
# --------------------------------------------------------------------------------------------------------------------


def test_write_report_contents(run_dir: Path) -> None:
    path = report.write_report(run_dir)
    assert path == run_dir / "report.html"
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    text = path.read_text(encoding="utf-8")
    doc = _parse(text)

    results = doc.tables["results"]
    assert [r[0] for r in results] == ["blackboxblack-box · image", "protonetprototype · image", "treetree · features"]
    assert [r[1] for r in results] == ["0.930 [0.900, 0.960]", "0.900 [0.870, 0.930]", "0.850 [0.820, 0.880]"]
    assert results[2][8] == "4 features, 6 leaves, depth 3"
    assert results[0][10].startswith("gradcam")  # the primary explanation

    paired = doc.tables["paired-tests"]
    tests = report.paired_tests(run_dir, "blackbox")
    assert [r[0] for r in paired] == ["protonet", "tree"]
    assert paired[0][3] == report.format_ci(tests[0]["delta_auc"], tests[0]["delta_auc_ci"])
    assert "Holm" in text
    assert [r[0] for r in doc.tables["calibration"]] == ["blackbox", "protonet", "tree"]
    expl = doc.tables["explanations"]
    assert [(r[0], r[1]) for r in expl] == [("blackbox", "gradcam"), ("blackbox", "integrated_gradients"),
                                            ("protonet", "prototype_evidence"), ("protonet", "prototype_activation"),
                                            ("tree", "feature_attribution")]
    assert "fail" in expl[1] and "pass" in expl[0]

    assert re.search(r'<img id="pareto" alt="[^"]*" src="data:image/png;base64,', text)
    assert "Pareto-optimal blackbox / integrated_gradients</li>" in text
    assert '<ul id="summary"><li>On synthetic' in text
    # case pages: misclassified-first order, every model's prediction, the case's figures
    assert '<section id="cases">' in text
    for case in _case_ids(3):
        assert f'<section class="case" id="case-{safe_filename(case)}">' in text
    assert 'id="audit"' in text and "blackbox learnt the &lt;marker&gt;." in text  # escaped
    assert doc.tables["audit-models"][0][3] == "0.350 [0.320, 0.380]"
    assert doc.tables["seeds-table"][0][2] == "0.921 ± 0.012"
    assert "glasszoo 9.9.9" in text and "fake-run" in text

    # self-contained: every image is an embedded PNG, no external URL anywhere in src/href, no script
    assert len(doc.imgs) >= 10
    for img in doc.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == PNG_MAGIC
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, flags=re.I)
    assert "http://" not in text and "https://" not in text and "<script" not in text.lower()


def test_select_cases_misclassified_first(run_dir: Path) -> None:
    metrics = report.load_metrics(run_dir)
    ids, preds = report.load_predictions(run_dir, metrics)
    first3 = _case_ids(3)
    # only the first three cases have figures; case 1 is misclassified by the tree, so it comes first
    assert report.select_cases(run_dir, ids, preds) == [first3[1], first3[0], first3[2]]
    assert report.select_cases(run_dir, ids, preds, max_cases=2) == [first3[1], first3[0]]
    assert report.select_cases(run_dir, ids, preds, max_misclassified=0) == [first3[0], first3[2]]
    html_text = report.write_report(run_dir, max_cases=2).read_text()
    assert html_text.index(f'id="case-{safe_filename(first3[1])}"') < html_text.index(
        f'id="case-{safe_filename(first3[0])}"')
    assert f'id="case-{safe_filename(first3[2])}"' not in html_text
    assert "(misclassified)" in html_text


def test_minimal_run_skips_optional_parts(tmp_path: Path) -> None:
    run = write_run(tmp_path / "bare", make_metrics(masks=False), extras=False)
    text = report.write_report(run).read_text()
    for absent in ('id="cases"', 'id="audit"', 'id="seeds"', "pointing game"):
        assert absent not in text
    assert 'id="pareto"' in text and 'id="results"' in text


def test_failed_write_keeps_the_old_report(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from glasszoo.training import atomic

    path = run_dir / "report.html"
    path.write_text("OLD REPORT")

    def half_then_fail(fh, text: str, chunk: int = 1 << 20) -> None:
        fh.write(text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(atomic, "_write_chunks", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        report.write_report(run_dir)
    assert path.read_text() == "OLD REPORT"
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []

    monkeypatch.undo()

    def no_replace(src, dst) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(atomic.os, "replace", no_replace)
    with pytest.raises(OSError, match="rename failed"):
        report.write_report(run_dir)
    assert path.read_text() == "OLD REPORT"
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []


# --------------------------------------------------------------------------------------------------------------------
# A real browser
# --------------------------------------------------------------------------------------------------------------------

def test_report_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    """Open report.html in headless Chromium: no console errors, one results row per model, every image loaded."""
    from browser import open_report

    path = report.write_report(run_dir)
    shot = tmp_path / "report.png"
    seen = open_report(path, shot)
    assert seen["severe"] == []
    assert len(seen["rows"]) == 3
    assert seen["rows"][0][1] == "0.930 [0.900, 0.960]"
    assert seen["pareto_displayed"] and seen["pareto_width"] > 0
    assert len(seen["image_widths"]) >= 10 and min(seen["image_widths"]) > 0
    assert seen["summary_displayed"] and seen["screenshot"]
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC
    img = plt.imread(str(shot))
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > 0.01  # not a blank page

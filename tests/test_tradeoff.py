"""The headline trade-off chart: AUC against reading load, the label placer, the report section and a real browser."""

from __future__ import annotations

import io
import itertools
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from test_report import _parse, make_metrics, write_run  # noqa: E402

from glasszoo.evaluation import report, tradeoff  # noqa: E402
from glasszoo.evaluation.results import tradeoff_rows, write_tradeoff  # noqa: E402
from glasszoo.models.errors import DataError  # noqa: E402
from glasszoo.training.rundir import RunDir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _model(auc: float, family: str = "linear", load: tuple[float, str] | None = None, half: float = 0.03,
           kind: str = "features") -> dict:
    block = {"family": family, "registry_name": family, "input": kind,
             "task": {"auc": {"value": auc, "ci": [auc - half, min(auc + half, 1.0)]},
                      "accuracy": {"value": auc - 0.1, "ci": [auc - 0.13, auc - 0.07]}},
             "cost": {"train_seconds": 1.0, "params": 100}}
    if load is not None:
        block["reading_load"] = {"count": float(load[0]), "unit": load[1],
                                 "definition": f"the {load[1]} of the model a reader reads for one case."}
    return block


def _intersect(a: dict, b: dict) -> bool:
    """Whether two boxes share a region of positive area."""
    return a["x0"] < b["x1"] and b["x0"] < a["x1"] and a["y0"] < b["y1"] and b["y0"] < a["y1"]


def crowded_metrics() -> dict:
    """16 models in a small region: five share one count and AUC, three more share another, four bands lie within
    0.003 AUC of each other (and of the points), and the rest crowd round them."""
    models = {}
    for i in range(5):
        models[f"same_{i}"] = _model(0.900, "linear", (6, "terms"))
    for i in range(3):
        models[f"twin_{i}"] = _model(0.901, "tree", (7, "conditions"))
    for i, auc in enumerate((0.900, 0.901, 0.902, 0.903)):
        models[f"band_{i}"] = _model(auc, "black-box", None, kind="image")
    models["near_a"] = _model(0.899, "score", (5, "items"))
    models["near_b"] = _model(0.902, "prototype", (8, "prototypes"), kind="image")
    models["near_c"] = _model(0.898, "concept", (6.5, "concepts"), kind="image")
    models["a_model_with_a_long_name"] = _model(0.904, "additive", (9, "terms"))
    return {"dataset": {"name": "crowd", "class_names": ["a", "b"]}, "models": models}


# --------------------------------------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------------------------------------


def test_tradeoff_points_number_by_auc_and_mark_the_front() -> None:
    """Front by hand (fewer items and higher AUC win): F (1, .70), A and its tie G (3, .80), B (10, .85). C (10, .83)
    and D (30, .84) are dominated by B; E has the highest AUC but no count, so it is never on the front."""
    metrics = {"dataset": {}, "models": {
        "A": _model(0.80, load=(3, "terms")), "B": _model(0.85, load=(10, "terms")),
        "C": _model(0.83, load=(10, "conditions")), "D": _model(0.84, load=(30, "items")),
        "E": _model(0.95, "black-box"), "F": _model(0.70, load=(1, "items")), "G": _model(0.80, load=(3, "terms"))}}
    points = tradeoff.tradeoff_points(metrics)
    assert [p["model"] for p in points] == ["E", "B", "D", "C", "A", "G", "F"]  # by AUC; the A-G tie in file order
    assert [p["number"] for p in points] == list(range(1, 8))
    assert {p["model"] for p in points if p["pareto"]} == {"A", "B", "F", "G"}
    e = points[0]
    assert e["count"] is None and e["unit"] is None and e["definition"] is None and e["pareto"] is False
    b = points[1]
    assert b["auc"] == pytest.approx(0.85) and b["ci"] == pytest.approx([0.82, 0.88])
    assert (b["count"], b["unit"], b["family"]) == (10.0, "terms", "linear")
    assert tradeoff.load_text(points[-1]) == "1 item" and tradeoff.load_text(b) == "10 terms"
    assert tradeoff.load_text(e) == tradeoff.MAP_ONLY and tradeoff.load_text(e, recorded=False) == "not recorded"
    assert tradeoff.format_count(4.333) == "4.3" and tradeoff.format_count(105.4) == "105"


def test_malformed_reading_load_names_the_model() -> None:
    metrics = {"dataset": {}, "models": {"ok": _model(0.8, load=(3, "terms")), "bad": _model(0.7)}}
    metrics["models"]["bad"]["reading_load"] = {"count": -2, "unit": "terms", "definition": "x"}
    with pytest.raises(DataError, match="model 'bad': reading_load"):
        tradeoff.tradeoff_points(metrics)


def test_tradeoff_csv_carries_the_reading_load(tmp_path: Path) -> None:
    metrics = {"dataset": {}, "models": {"tree": _model(0.8, "tree", (3, "conditions")), "bb": _model(0.9)}}
    rows = {r["model"]: r for r in tradeoff_rows(metrics)}
    assert (rows["tree"]["reading_load"], rows["tree"]["reading_load_unit"]) == (3.0, "conditions")
    assert rows["bb"]["reading_load"] is None
    df = write_tradeoff(metrics, tmp_path / "tradeoff.csv")
    back = pd.read_csv(tmp_path / "tradeoff.csv")
    assert back.loc[back["model"] == "tree", "reading_load"].item() == 3.0 and math.isnan(back["reading_load"][1])
    assert list(df.columns) == list(back.columns)


# --------------------------------------------------------------------------------------------------------------------
# The placer
# --------------------------------------------------------------------------------------------------------------------


def test_place_labels_known_positions() -> None:
    """By hand: first ring at clearance + gap = 7 px; the first label goes right (centre 7 + 10/2 = 12 px to the
    right); the second cannot go right, up-right or down-right (within 3 px of the first), so it goes up: centre
    7 + 6/2 = 10 px above the anchor."""
    boxes = tradeoff.place_labels(np.array([[50.0, 50.0], [50.0, 50.0]]), np.array([[10.0, 6.0], [10.0, 6.0]]),
                                  (0, 0, 100, 100), clearance=np.array([4.0, 4.0]), gap=3.0, step=3.0)
    np.testing.assert_allclose(boxes, [[57, 47, 67, 53], [45, 57, 55, 63]])


def test_place_labels_keeps_clear_of_markers_and_falls_back_to_covering_them() -> None:
    # an obstacle right of the anchor: the label goes to the next free direction
    box = tradeoff.place_labels(np.array([[50.0, 50.0]]), np.array([[10.0, 6.0]]), (0, 0, 100, 100),
                                obstacles=np.array([[55.0, 40.0, 90.0, 60.0]]), gap=3.0)[0]
    assert not (box[0] < 93 and 52 < box[2] and box[1] < 63 and 37 < box[3])
    # the obstacle fills the bounds: the label covers it (never another label)
    boxes = tradeoff.place_labels(np.array([[20.0, 10.0], [20.0, 10.0]]), np.array([[8.0, 6.0], [8.0, 6.0]]),
                                  (0, 0, 40, 20), obstacles=np.array([[0.0, 0.0, 40.0, 20.0]]), gap=2.0)
    a, b = ({"x0": r[0], "y0": r[1], "x1": r[2], "y1": r[3]} for r in boxes)
    assert not _intersect(a, b)
    with pytest.raises(tradeoff.LabelPlacementError):
        tradeoff.place_labels(np.array([[5.0, 5.0]] * 3), np.array([[8.0, 8.0]] * 3), (0, 0, 12, 12), gap=1.0)


def test_place_labels_random_crowds_never_overlap() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        n = 30
        anchors = rng.normal(200, 15, (n, 2))
        sizes = rng.uniform([8, 10], [40, 14], (n, 2))
        obstacles = np.concatenate([anchors - 5, anchors + 5], axis=1)
        boxes = tradeoff.place_labels(anchors, sizes, (0, 0, 400, 300), obstacles, np.full(n, 5.0), gap=2.0)
        np.testing.assert_allclose(boxes[:, 2:] - boxes[:, :2], sizes)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 400).all() and (boxes[:, 3] <= 300).all()
        for i, j in itertools.combinations(range(n), 2):
            a, b = boxes[i], boxes[j]
            assert not (a[0] < b[2] + 2 and b[0] < a[2] + 2 and a[1] < b[3] + 2 and b[1] < a[3] + 2), (i, j)
        # with room to spare, no label covers a marker either
        assert not any(a[0] < o[2] and o[0] < a[2] and a[1] < o[3] and o[1] < a[3]
                       for a in boxes for o in obstacles)


# --------------------------------------------------------------------------------------------------------------------
# The chart
# --------------------------------------------------------------------------------------------------------------------


def test_crowded_chart_labels_never_intersect(tmp_path: Path) -> None:
    metrics = crowded_metrics()
    png, boxes = tradeoff.plot_tradeoff(metrics)
    assert png[:8] == PNG_MAGIC
    (tmp_path / "crowded.png").write_bytes(png)
    img = mpimg.imread(io.BytesIO(png))
    height, width = img.shape[:2]
    assert width >= 900 and height >= 500

    points = {p["model"]: p for p in tradeoff.tradeoff_points(metrics)}
    assert sorted(b["model"] for b in boxes) == sorted(metrics["models"])  # every model, once
    for b in boxes:
        assert b["text"] == str(points[b["model"]]["number"])
        assert 0 <= b["x0"] < b["x1"] <= width and 0 <= b["y0"] < b["y1"] <= height
    for a, b in itertools.combinations(boxes, 2):
        assert not _intersect(a, b), (a, b)
    # the boxes are where the labels are drawn (PNG pixels, origin top left): each box's left edge is the label's
    # coloured frame, not the white of the figure
    for b in boxes:
        row = int(round((b["y0"] + b["y1"]) / 2))
        strip = img[row, int(math.floor(b["x0"])):int(math.ceil(b["x0"])) + 2, :3]
        assert strip.min() < 0.85, b


def test_old_run_without_reading_load_draws_bands_and_says_so(tmp_path: Path) -> None:
    metrics = make_metrics()  # a run written before models reported a reading load
    assert not any("reading_load" in m for m in metrics["models"].values())
    points = tradeoff.tradeoff_points(metrics)
    assert all(p["count"] is None and not p["pareto"] for p in points)
    _, boxes = tradeoff.plot_tradeoff(metrics)
    assert sorted(b["model"] for b in boxes) == sorted(metrics["models"])

    run = write_run(tmp_path / "old", metrics, extras=False)
    text = report.write_report(run).read_text(encoding="utf-8")
    assert 'id="tradeoff-no-load"' in text and "records no reading load" in text
    assert text.index('id="summary-section"') < text.index('id="tradeoff-section"') < text.index(
        'id="results-section"')
    legend = _parse(text).tables["tradeoff-legend"]
    assert [r[1] for r in legend] == ["blackboxblack-box · image", "protonetprototype · image", "treetree · features"]
    assert [r[3] for r in legend] == ["not recorded"] * 3
    assert 'id="tradeoff-front"' not in text
    assert 'id="pareto"' in text  # the explanation-quality panels stay


# --------------------------------------------------------------------------------------------------------------------
# A run like the quickstart's, in the report and in a real browser
# --------------------------------------------------------------------------------------------------------------------

# (family, input, reading load or None) by registry name, for the hand-made run
ZOO = {"blackbox": ("black-box", "image", None), "protopnet": ("prototype", "image", (10, "prototypes")),
       "pipnet": ("prototype", "image", (4.3, "prototypes")), "cbm": ("concept", "image", (6, "concepts")),
       "attention_unet": ("attention", "image", None), "attention_classifier": ("attention", "image", None),
       "sparse_logreg": ("linear", "features", (6, "terms")), "decision_tree": ("tree", "features", (3, "conditions")),
       "ebm": ("additive", "features", (105, "terms")), "point_score": ("score", "features", (3, "items")),
       "fasterrisk": ("score", "features", (5, "items")), "figs": ("tree", "features", (7, "conditions")),
       "rulefit": ("rules", "features", (24, "conditions"))}


def quickstart_models() -> list[tuple[str, str]]:
    """(name, registry name) of every model of configs/quickstart.yaml, then the rule and risk-score models of ZOO
    that it does not hold yet."""
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    out = [(e["name"], e.get("model") or e["name"]) if isinstance(e, dict) else (e, e) for e in cfg["models"]]
    return out + [(n, n) for n in ZOO if n not in {r for _, r in out}]


def write_zoo_run(run_dir: Path) -> tuple[Path, dict]:
    """A run directory by hand (file names from ``RunDir``) with the models of :func:`quickstart_models`."""
    rng = np.random.default_rng(0)
    models = {}
    for i, (name, registry) in enumerate(quickstart_models()):
        family, kind, load = ZOO.get(registry, ("other", "features", (5, "items")))
        auc = round(0.86 + 0.11 * rng.random(), 3)
        models[name] = {**_model(auc, family, load, half=0.02 + 0.01 * (i % 3), kind=kind), "registry_name": registry}
    metrics = {"dataset": {"name": "synthetic", "n_cases": 80, "class_names": ["benign", "malignant"],
                           "positive_class": "malignant", "source": "synthetic"}, "models": models}
    run_dir.mkdir(parents=True)
    rd = RunDir(run_dir)
    rd.metrics.write_text(json.dumps(metrics))
    rd.config.write_text("experiment: quickstart\nseed: 0\n")
    y = np.tile([0, 1], 20)
    for name in models:
        p1 = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.25, len(y)), 0.01, 0.99)
        rd.model(name).path.mkdir(parents=True)
        pd.DataFrame({"case_id": [f"c{j:02d}" for j in range(len(y))], "label": y, "pred": (p1 >= 0.5).astype(int),
                      "p_benign": 1 - p1, "p_malignant": p1}).to_csv(rd.model(name).predictions, index=False)
    return run_dir, metrics


def test_report_section_lists_every_model_front_and_definitions(tmp_path: Path) -> None:
    run, metrics = write_zoo_run(tmp_path / "zoo")
    text = report.write_report(run).read_text(encoding="utf-8")
    doc = _parse(text)
    assert any(img.get("id") == "tradeoff" and img["src"].startswith("data:image/png;base64,") for img in doc.imgs)
    points = tradeoff.tradeoff_points(metrics)
    legend = doc.tables["tradeoff-legend"]
    assert [r[0] for r in legend] == [str(p["number"]) for p in points]
    assert [r[1].startswith(p["model"]) for r, p in zip(legend, points)] == [True] * len(points)
    assert [r[3] for r in legend] == [tradeoff.load_text(p) for p in points]
    assert legend[[p["model"] for p in points].index("blackbox")][3] == "cannot be followed (map only)"
    front = [p for p in points if p["pareto"]]
    assert front and all(f"{p['model']} ({tradeoff.load_text(p)}" in text for p in front)
    # one line per unit (all models of a unit share the definition here), models in number order, as a sentence
    for unit in ("prototypes", "terms", "conditions", "items", "concepts"):
        names = ", ".join(p["model"] for p in points if p["unit"] == unit)
        assert (f"<li><strong>{unit}</strong> ({names}): The {unit} of the model a reader reads for one case.</li>"
                in text), unit
    assert "not how easy each item is to understand" in text and 'id="tradeoff-no-load"' not in text


def test_tradeoff_chart_in_headless_chromium(tmp_path: Path) -> None:
    """The quickstart-like report in headless Chromium: the chart loads, sits above the results, and its legend
    lists every model of the run's metrics; screenshots of the page and of the chart land in tmp_path."""
    from browser import chrome

    run, metrics = write_zoo_run(tmp_path / "zoo")
    path = report.write_report(run)
    with chrome() as driver:
        from selenium.webdriver.common.by import By

        driver.get(path.resolve().as_uri())
        img = driver.find_element(By.ID, "tradeoff")
        seen = driver.execute_script(
            "const img = arguments[0];"
            "const rows = Array.from(document.querySelectorAll('#tradeoff-legend tbody tr'));"
            "const after = document.getElementById('tradeoff-section').compareDocumentPosition("
            "  document.getElementById('results-section')) & Node.DOCUMENT_POSITION_FOLLOWING;"
            "return {complete: img.complete, natural: img.naturalWidth, shown: img.getBoundingClientRect().width,"
            "  names: rows.map(r => r.cells[1].firstChild.textContent.trim()), results_after: after > 0};", img)
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert img.screenshot(str(tmp_path / "tradeoff.png"))
        assert driver.save_screenshot(str(tmp_path / "report.png"))
    assert severe == []
    assert seen["complete"] and seen["natural"] > 0 and seen["shown"] > 0
    assert sorted(seen["names"]) == sorted(metrics["models"]) and len(seen["names"]) == len(metrics["models"])
    assert seen["results_after"]
    shot = mpimg.imread(str(tmp_path / "tradeoff.png"))
    assert shot.shape[0] > 200 and shot.shape[1] > 400
    assert float(shot[..., :3].std()) > 0.05  # the chart, not a blank element

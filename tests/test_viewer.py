"""The clinician viewer (``glasszoo serve``), readers' flags, ``glasszoo edit``, and opening runs without running code.

One small run (a black box, ProtoPNet, a concept bottleneck, an attention-gated classifier and a sparse logistic
regression on intensity features, one epoch each) is shared by the module; each test that changes a run works on a
copy of it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from glasszoo.evaluation.experiment.cli import main
from glasszoo.evaluation.experiment.config import parse_config
from glasszoo.evaluation.experiment.edit import add_flag, edit_run, parse_drops, read_annotations
from glasszoo.evaluation.experiment.runner import run_experiment
from glasszoo.evaluation.experiment.saved import open_run
from glasszoo.evaluation.experiment.viewer import Viewer, ViewerServer, make_app
from glasszoo.models import DataError, create_model
from glasszoo.models._linear import fit_sparse_linear
from glasszoo.training.storage import load_tabular, save_tabular
from glasszoo.training.train import load_checkpoint, save_checkpoint

SIDE = 32

TestClient = pytest.importorskip("fastapi.testclient", reason="fastapi's test client needs httpx").TestClient


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("viewer")
    cfg = parse_config({
        "experiment": "viewer", "seed": 0, "output_dir": str(tmp),
        "data": {"source": "synthetic", "n_cases": 120, "img_size": SIDE},
        "training": {"max_epochs": 1, "batch_size": 32, "progress_bar": False},
        "features": {"kind": "intensity"},
        "evaluation": {"bootstrap": 50, "explain_cases": 12, "case_figures_per_class": 1, "report_misclassified": 0,
                       "posthoc": {"methods": ["gradcam"]}, "quality": {"enabled": False}},
        "models": [
            {"name": "blackbox", "params": {"backbone": "resnet18", "stem": "standard"}},
            {"name": "protopnet", "params": {"stem": "standard", "feature_stage": 2, "prototypes_per_class": 2,
                                             "prototype_dim": 16, "warmup_epochs": 1, "joint_epochs": 1,
                                             "last_layer_epochs": 1}},
            {"name": "cbm", "params": {"stem": "standard", "mode": "independent"}},
            {"name": "attention_classifier", "params": {"depth": 2, "base_width": 4}},
            {"name": "sparse_logreg", "params": {"n_Cs": 4}},
        ],
    }, "viewer-test")
    return run_experiment(cfg)


@pytest.fixture(scope="module")
def viewer(run_dir) -> Viewer:
    return Viewer(run_dir)


@pytest.fixture(scope="module")
def client(viewer):
    return TestClient(make_app(viewer))


def png_bytes(arr: np.ndarray, tmp: Path) -> bytes:
    path = tmp / "img.png"
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=arr.ndim == 3), str(path))
    return path.read_bytes()


def snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in run_dir.rglob("*") if p.is_file()}


def test_case_list_matches_the_saved_predictions(client, run_dir):
    data = client.get("/api/run").json()
    test_ids = pd.read_csv(run_dir / "splits.csv").query("split == 'test'")["case_id"].tolist()
    assert [c["case_id"] for c in data["cases"]] == test_ids
    saved = pd.read_csv(run_dir / "models" / "protopnet" / "predictions.csv")
    wrong = set(saved.loc[saved["pred"] != saved["label"], "case_id"])
    assert {c["case_id"] for c in data["cases"] if "protopnet" in c["wrong"]} == wrong
    assert {m["name"] for m in data["models"]} == {"blackbox", "protopnet", "cbm", "attention_classifier",
                                                    "sparse_logreg"}


def test_case_page_shows_every_model_and_the_points_add_up(client, viewer):
    cid = viewer.cs.case_ids[viewer.cs.indices("test")[0]]
    data = client.get(f"/api/case/{cid}").json()
    views = {m["name"]: m for m in data["models"]}
    assert set(views) == set(viewer.names) and data["label"] == int(viewer.cs.labels[viewer.run.case_row(cid)])
    proto = views["protopnet"]["prototypes"]
    # 4 prototypes, top 5 asked: every prototype is listed, so the points sum to the predicted class's logit
    assert len(proto["top"]) == 4
    pred = views["protopnet"]["pred"]
    assert sum(r["points"] for r in proto["top"]) == pytest.approx(proto["class_points"][pred], abs=1e-4)
    for r in proto["top"]:
        assert r["points"] == pytest.approx(r["similarity"] * r["weight"], abs=1e-5)
        assert r["map"].startswith("data:image/png;base64,") and r["source"].startswith("data:image/png")
    # nearest training cases: sorted by distance, training cases only, not the case itself
    near = views["protopnet"]["neighbours"]
    train_ids = set(viewer.cs.case_ids[viewer.cs.indices("train")].astype(str))
    assert [n["case_id"] in train_ids for n in near] == [True] * 5
    d = [n["distance"] for n in near]
    assert d == sorted(d)
    assert {c["name"] for c in views["cbm"]["concepts"]} == set(viewer.cs.concept_names)
    assert views["attention_classifier"]["attention"] and views["blackbox"]["heatmaps"]
    assert any("post hoc" in h["title"] for h in views["blackbox"]["heatmaps"])
    assert views["sparse_logreg"]["features"]["top"] and "towards" in views["sparse_logreg"]["features"]["top"][0][
        "text"] or "against" in views["sparse_logreg"]["features"]["top"][0]["text"]
    # the probabilities are the models' own
    row = viewer.run.case_row(cid)
    expect = viewer.models["cbm"].predict_proba(viewer.cs.images[[row]])[0]
    np.testing.assert_allclose(views["cbm"]["proba"], expect, atol=1e-6)


def test_setting_a_concept_re_predicts_on_the_server(client, viewer):
    cid = str(viewer.cs.case_ids[viewer.cs.indices("test")[1]])
    cbm = viewer.models["cbm"]
    name = viewer.cs.concept_names[0]
    outs = {}
    for v in (0, 1):
        r = client.post("/api/concepts", json={"ref": cid, "model": "cbm", "values": {name: v}})
        assert r.status_code == 200
        outs[v] = r.json()["proba"]
    row = viewer.run.case_row(cid)
    x = viewer.cs.images[[row]]
    act = cbm.predict_concepts(x)
    given = np.zeros_like(act)
    given[0, 0] = 1.0
    fix = np.zeros(act.shape[1], bool)
    fix[0] = True
    expect = torch.softmax(torch.as_tensor(cbm.intervene(act, given, fix)), 1).numpy()[0]
    np.testing.assert_allclose(outs[1], expect, atol=1e-6)
    assert not np.allclose(outs[0], outs[1])  # the concept's weight is not zero: present and absent differ
    bad = client.post("/api/concepts", json={"ref": cid, "model": "cbm", "values": {"no-such": 1}})
    assert bad.status_code == 400 and "unknown concept" in bad.json()["error"]
    assert client.post("/api/concepts", json={"ref": cid, "model": "protopnet", "values": {}}).status_code == 400
    assert client.post("/api/concepts", content=b"{not json").status_code == 400


@pytest.mark.parametrize("path", [
    "/static/..%2F..%2Fconfig.yaml", "/static/%2e%2e%2fmetrics.json", "/static/%252e%252e%252fconfig.yaml",
    "/api/case/..%2F..%2Fmetrics.json", "/api/case/../../metrics.json", "/api/case/%2Fetc%2Fpasswd",
    "/static/viewer.js%00.yaml", "/api/case/upload:..%2F..%2Fconfig.yaml",
])
def test_no_request_path_reaches_the_file_system(client, run_dir, path):
    r = client.get(path)
    assert r.status_code == 404
    assert "experiment:" not in r.text and '"models"' not in r.text and "root:" not in r.text


def test_raw_dot_dot_paths_are_refused(viewer, run_dir):
    import http.client

    with ViewerServer(viewer) as srv:
        for path in ("/static/../../config.yaml", "/static/../metrics.json", "/api/case/../../../etc/passwd"):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            conn.request("GET", path)  # sent as is, not normalised by a client
            resp = conn.getresponse()
            body = resp.read().decode("utf-8", "replace")
            conn.close()
            assert resp.status == 404, path
            assert "experiment:" not in body and "root:" not in body


def test_unknown_case_and_model_get_a_clear_404(client):
    r = client.get("/api/case/no-such-case")
    assert r.status_code == 404 and "case id 'no-such-case' is not in this run" in r.json()["error"]
    r = client.get("/api/case/upload:feedbeef")
    assert r.status_code == 404 and "upload the image again" in r.json()["error"]
    r = client.post("/api/flags", json={"model": "nope", "prototype": 0})
    assert r.status_code == 404 and "no model named 'nope'" in r.json()["error"]


def test_uploads_are_explained_or_refused_with_a_message(client, viewer, tmp_path):
    row = viewer.run.case_row(str(viewer.cs.case_ids[viewer.cs.indices("test")[0]]))
    img8 = np.round(viewer.cs.images[row, 0] * 255).astype(np.uint8)
    r = client.post("/api/upload?filename=scan.png", content=png_bytes(img8, tmp_path))
    assert r.status_code == 200, r.text
    views = {m["name"]: m for m in r.json()["models"]}
    expect = viewer.models["protopnet"].predict_proba(viewer.cs.images[[row]])[0]
    np.testing.assert_allclose(views["protopnet"]["proba"], expect, atol=0.02)  # 8-bit quantisation
    assert "feature table" in views["sparse_logreg"]["note"] and "proba" not in views["sparse_logreg"]
    ref = r.json()["ref"]
    assert client.post("/api/concepts", json={"ref": ref, "model": "cbm",
                                              "values": {viewer.cs.concept_names[0]: 1}}).status_code == 200
    # a grey scan saved as RGB: accepted; real colour: refused unless converted
    grey_rgb = png_bytes(np.repeat(img8[..., None], 3, axis=2), tmp_path)
    assert client.post("/api/upload?filename=g.png", content=grey_rgb).status_code == 200
    colour = np.repeat(img8[..., None], 3, axis=2)
    colour[..., 1] = 255 - colour[..., 1]
    r = client.post("/api/upload?filename=c.png", content=png_bytes(colour, tmp_path))
    assert r.status_code == 400 and "c.png" in r.json()["error"] and "--to-grey" in r.json()["error"]
    assert client.post("/api/upload?filename=c.png&to_grey=1", content=png_bytes(colour, tmp_path)).status_code == 200
    big = png_bytes(np.zeros((SIDE * 2, SIDE * 2), np.uint8), tmp_path)
    r = client.post("/api/upload?filename=big.png&resize=0", content=big)
    assert r.status_code == 400 and f"{SIDE * 2}x{SIDE * 2} pixels" in r.json()["error"]
    assert client.post("/api/upload?filename=big.png", content=big).status_code == 200  # resized as the run's data
    # malformed and oversized uploads: 4xx with a message, never a traceback
    r = client.post("/api/upload?filename=x.png", content=b"this is not an image at all")
    assert r.status_code == 415 and "not a PNG, JPEG or DICOM" in r.json()["error"]
    r = client.post("/api/upload?filename=x.png", content=b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    assert r.status_code == 400 and "x.png" in r.json()["error"] and "Traceback" not in r.text
    assert client.post("/api/upload", content=b"").status_code == 400
    small = Viewer.__new__(Viewer)
    small.__dict__.update(viewer.__dict__)
    small.max_upload_bytes = 1000
    r = TestClient(make_app(small)).post("/api/upload?filename=big.png", content=b"\x89PNG\r\n\x1a\n" + b"0" * 5000)
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_dicom_upload_is_read_like_the_run_images(client, viewer, tmp_path):
    row = viewer.run.case_row(str(viewer.cs.case_ids[viewer.cs.indices("test")[0]]))
    img = sitk.GetImageFromArray(np.round(viewer.cs.images[row, 0] * 255).astype(np.uint8))
    path = tmp_path / "scan.dcm"
    sitk.WriteImage(img, str(path))
    r = client.post("/api/upload?filename=scan.dcm", content=path.read_bytes())
    assert r.status_code == 200, r.text
    assert {m["name"] for m in r.json()["models"] if "proba" in m} == {"blackbox", "protopnet", "cbm",
                                                                        "attention_classifier"}


def test_flags_go_to_the_annotations_file_only(tmp_path, run_dir):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = snapshot(copy)
    c = TestClient(make_app(Viewer(copy)))
    cid = str(pd.read_csv(copy / "splits.csv").query("split == 'test'")["case_id"].iloc[0])
    for path in ("/api/run", f"/api/case/{cid}", "/api/flags"):
        assert c.get(path).status_code == 200
    r = c.post("/api/flags", json={"model": "protopnet", "prototype": 2, "case_id": cid, "reason": "off the lesion"})
    assert r.status_code == 200
    assert c.post("/api/flags", json={"model": "protopnet", "prototype": 99}).status_code == 400
    assert c.post("/api/flags", json={"model": "protopnet", "prototype": "x"}).status_code == 400
    assert c.post("/api/flags", json={"model": "cbm", "prototype": 0}).status_code == 400  # no prototypes
    after = snapshot(copy)
    assert set(after) - set(before) == {"annotations.json"}
    assert {k: v for k, v in after.items() if k != "annotations.json"} == before
    flags = read_annotations(copy)["flags"]
    assert [(f["model"], f["prototype"], f["case_id"], f["reason"]) for f in flags] == [
        ("protopnet", 2, cid, "off the lesion")]
    r = c.post("/api/flags", json={"model": "protopnet", "prototype": 2, "flagged": False})
    assert r.json()["flags"] == []


def test_a_pickled_model_is_refused_without_trust_run_and_nothing_runs(tmp_path, run_dir, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    marker = tmp_path / "pwned"
    mdir = copy / "models" / "sparse_logreg"
    (mdir / "model.skops").unlink()

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (mdir / "model.pkl").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match="--trust-run") as exc:
        Viewer(copy)
    assert "model.pkl" in str(exc.value)
    cid = str(pd.read_csv(copy / "splits.csv")["case_id"].iloc[0])
    assert main(["explain", str(copy), "--model", "sparse_logreg", "--case", cid]) == 2
    assert "--trust-run" in capsys.readouterr().err
    assert main(["serve", str(copy), "--port", "0"]) == 2
    assert "--trust-run" in capsys.readouterr().err
    assert not marker.exists()
    # with the flag, the user has said they trust the run: the pickle is opened (and here runs its code)
    with pytest.raises(Exception):  # noqa: B017  (what os.system returns is not a model)
        open_run(copy, trust_run=True).load_model("sparse_logreg").predict_proba(np.zeros((1, 3)))
    assert marker.exists()


def test_a_skops_file_with_foreign_types_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(80, 4)), rng.integers(0, 2, 80)
    tree = create_model("decision_tree", max_depth=2).fit(X, y)
    logreg = create_model("sparse_logreg", n_Cs=3).fit(X, y)
    path = tmp_path / "model.skops"
    save_tabular(logreg, path)
    back = load_tabular(path, type(logreg))
    np.testing.assert_allclose(back.predict_proba(X), logreg.predict_proba(X))
    save_tabular(tree, path)  # a file that holds a tree where the config says logistic regression
    with pytest.raises(DataError, match="refused.*ShallowTree"):
        load_tabular(path, type(logreg))
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable skops file"):
        load_tabular(path, type(logreg))
    path.unlink()
    with pytest.raises(DataError, match="not found"):
        load_tabular(path, type(logreg))


def test_nonnegative_sparse_fit_and_switched_off_columns():
    rng = np.random.default_rng(1)
    c = torch.as_tensor(rng.random((200, 5)), dtype=torch.float32)
    y = torch.as_tensor((c[:, 0] - c[:, 1] > 0).numpy().astype(np.int64))
    w, _ = fit_sparse_linear(c, y, 2, l1=1e-3, fit_bias=False, nonneg=True)
    assert (w >= 0).all()
    w_free, _ = fit_sparse_linear(c, y, 2, l1=1e-3, fit_bias=False)
    assert (w_free < 0).any()  # the constraint is active on this problem
    c[:, 3] = 0
    w, _ = fit_sparse_linear(c, y, 2, l1=1e-3, fit_bias=False)
    assert (w[:, 3] == 0).all()  # a column that is zero everywhere gets no weight from a zero start


def test_edit_switches_prototypes_off_refits_and_measures(tmp_path, run_dir, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    run = open_run(copy)
    original = run.load_model("protopnet")
    w0 = original.last_layer.weight.detach().clone()
    add_flag(run, "protopnet", 1, reason="test")
    assert parse_drops("annotations", copy) == {"protopnet": [1]}
    assert parse_drops("protopnet:1,3;pipnet:2", copy) == {"protopnet": [1, 3], "pipnet": [2]}
    metrics_before = (copy / "metrics.json").read_bytes()
    assert main(["edit", str(copy), "--drop-prototypes", "annotations", "--out", str(tmp_path / "ed")]) == 0
    printed = capsys.readouterr().out
    assert "protopnet-edited: prototypes [1] off; AUC" in printed
    assert (copy / "metrics.json").read_bytes() == metrics_before  # the original run is only read
    new = open_run(tmp_path / "ed")
    assert new.model_names == ["protopnet", "protopnet-edited"]
    edited = new.load_model("protopnet-edited")
    assert edited.disabled_prototypes() == [1]
    assert (edited.last_layer.weight[:, 1] == 0).all()
    assert not torch.equal(edited.last_layer.weight, w0)
    torch.testing.assert_close(new.load_model("protopnet").last_layer.weight, w0)
    e = json.loads((tmp_path / "ed" / "metrics.json").read_text())["edit"]["models"]["protopnet-edited"]
    m = json.loads((tmp_path / "ed" / "metrics.json").read_text())["models"]
    assert e["auc"] == pytest.approx(m["protopnet-edited"]["task"]["auc"]["value"])
    assert e["auc_original"] == pytest.approx(m["protopnet"]["task"]["auc"]["value"])
    assert e["delta_auc"] == pytest.approx(e["auc"] - e["auc_original"])
    assert e["delta_auc_ci"][0] <= e["delta_auc"] <= e["delta_auc_ci"][1]
    pg = e["pointing_game"]["prototype_activation"]
    assert pg["delta"]["value"] == pytest.approx(pg["edited"] - pg["original"])
    # the switched-off prototype never appears in an explanation
    ev = edited.explain(new.caseset.images[new.caseset.indices("test")[:8]], top_k=4)[0]
    assert all(mm.prototype != 1 for case in ev.matches for mm in case) and all(len(c) == 3 for c in ev.matches)
    html = (tmp_path / "ed" / "report.html").read_text()
    assert "Edit: prototypes switched off" in html and "protopnet-edited" in html
    # a model without prototypes cannot be edited; an unknown prototype is named
    with pytest.raises(DataError, match="cannot be edited"):
        edit_run(copy, {"cbm": [0]}, out=tmp_path / "x")
    with pytest.raises(DataError, match="prototype 9 does not exist"):
        edit_run(copy, {"protopnet": [9]}, out=tmp_path / "y")


def test_switched_off_prototypes_survive_a_checkpoint(tmp_path, run_dir):
    run = open_run(run_dir)
    m = run.load_model("protopnet")
    info = m.disable_prototypes([0], run.caseset)
    assert info["disabled"] == [0] and (m.last_layer.weight[:, 0] == 0).all()
    save_checkpoint(m, tmp_path / "c.ckpt")
    back = load_checkpoint(run.adapter("protopnet").build("protopnet", run.spec("protopnet").params),
                           tmp_path / "c.ckpt")
    assert back.disabled_prototypes() == [0]
    torch.testing.assert_close(back.last_layer.weight, m.last_layer.weight)


def test_browser_end_to_end(tmp_path, run_dir):
    from browser import chrome
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    viewer = Viewer(copy)
    row = viewer.run.case_row(str(viewer.cs.case_ids[viewer.cs.indices("test")[0]]))
    upload = tmp_path / "upload.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.round(viewer.cs.images[row, 0] * 255).astype(np.uint8)), str(upload))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with ViewerServer(viewer) as srv, chrome("1400,2000") as d:
        wait = WebDriverWait(d, 60)
        d.get(srv.url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#case-list li"))
        d.save_screenshot(str(shots / "1-list.png"))
        d.find_elements(By.CSS_SELECTOR, "#case-list li")[0].click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".proto-row"))
        assert len(d.find_elements(By.CSS_SELECTOR, ".pred-row")) == 5
        assert len(d.find_elements(By.CSS_SELECTOR, ".model-card[data-model=protopnet] .proto-row")) == 4
        selects = d.find_elements(By.CSS_SELECTOR, ".model-card[data-model=cbm] select.concept-select")
        assert len(selects) == len(viewer.cs.concept_names)
        out = d.find_element(By.CSS_SELECTOR, ".concept-proba[data-model=cbm]")
        first = out.text
        Select(selects[0]).select_by_value("1")
        wait.until(lambda d: "→" in out.text)
        after_present = out.text
        Select(selects[0]).select_by_value("0")
        wait.until(lambda d: out.text != after_present)
        assert first != out.text and "→" in out.text
        d.save_screenshot(str(shots / "2-case.png"))
        d.find_element(By.CSS_SELECTOR, ".model-card[data-model=protopnet] .flag-btn").click()
        wait.until(lambda d: "protopnet: prototype" in d.find_element(By.ID, "flag-list").get_attribute("textContent"))
        d.find_element(By.ID, "upload-input").send_keys(str(upload))
        d.find_element(By.ID, "upload-button").click()
        wait.until(lambda d: "explained by every model" in d.find_element(By.ID, "upload-message").get_attribute(
            "textContent"))
        wait.until(lambda d: d.find_element(By.ID, "case-title").text == "upload.png")
        assert len(d.find_elements(By.CSS_SELECTOR, ".pred-row")) == 4  # the image models
        d.save_screenshot(str(shots / "3-upload.png"))
        severe = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
    assert read_annotations(copy)["flags"][0]["model"] == "protopnet"
    assert all((shots / f).stat().st_size > 10_000 for f in ("1-list.png", "2-case.png", "3-upload.png"))

"""``glasszoo serve RUN_DIR``: a local case viewer for clinicians, on a finished run.

A reader picks a test case (or drops in an image) and sees every model's prediction and its reasons side by side:
the nearest prototype cases of each prototype model (the case's map beside the source training image with its patch
boxed, similarity x weight = points, the class totals), the nearest training cases in the prototype-similarity space,
the concepts with a control to set each and see the concept model predict again (on the server), the attention maps
with the predicted and true lesion outlines, the post-hoc maps of a black box and the top contributions of the
tabular models in plain language. A reader may flag a prototype as wrong; flags go to ``annotations.json`` beside the
run (:mod:`glasszoo.evaluation.experiment.edit`), and the edit button runs ``glasszoo edit`` on them into a new run
directory beside this one.

What the server may touch: it reads the run (models opened without running code from the folder: checkpoints with
``weights_only``, tabular models through skops' type check), serves three fixed page files, and writes only the
run's ``annotations.json`` (and, on the edit button, a new sibling run). Nothing in a request is used as a path:
cases are looked up by id in the run's ``splits.csv``, uploads are kept in memory and read from a private temporary
file. Uploads are capped (``max_upload_mb``); bad input is a 4xx with a message, never a traceback.
"""

# no ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations (``Request``, imported
# inside make_app) as objects, not strings
import base64
import io
import json
import socket
import sys
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glasszoo.evaluation.case_figures import Case, case_explanations
from glasszoo.evaluation.experiment.edit import add_flag, edit_run, flagged_prototypes, read_annotations
from glasszoo.evaluation.experiment.runner import case_of, read_predictions
from glasszoo.evaluation.experiment.saved import SavedRun, open_run
from glasszoo.evaluation.posthoc import explain_posthoc
from glasszoo.models import ConceptEvidence, DataError, FeatureAttribution, Heatmap, PrototypeEvidence, model_info
from glasszoo.training.features import feature_descriptions

STATIC = Path(__file__).with_name("viewer_static")
PAGE_FILES = {"viewer.js": "text/javascript", "viewer.css": "text/css"}  # the only files served besides the page
LIVE_POSTHOC = ("gradcam", "integrated_gradients", "smoothgrad")  # cheap enough to compute on a click
MAGIC = {b"\x89PNG\r\n\x1a\n": ".png", b"\xff\xd8\xff": ".jpg"}
MAX_UPLOADS = 16  # uploads kept in memory for the concept controls (oldest dropped)
DISPLAY = 192  # pixels of the longer side of the images the page shows


class ViewerError(Exception):
    """A request the viewer refuses: ``status`` (4xx) and a message for the reader."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------------- pictures
def _ramp(t: np.ndarray) -> np.ndarray:
    """A black-red-yellow-white ramp [H, W, 3] for values in [0, 1] (monotone in brightness)."""
    t = np.clip(t, 0.0, 1.0)[..., None]
    return np.clip(np.concatenate([3 * t, 3 * t - 1, 3 * t - 2], axis=-1), 0.0, 1.0)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """The inner boundary of a binary mask [H, W] (pixels of the mask with a 4-neighbour outside it)."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask.astype(bool) & ~inner


def render(image: np.ndarray, heat: np.ndarray | None = None, box: tuple[int, int, int, int] | None = None,
           outline: np.ndarray | None = None, predicted: np.ndarray | None = None) -> str:
    """A PNG data URI of ``image`` [C, H, W] in [0, 1], upscaled by pixel repetition, with an optional heatmap blended
    over it (normalised to its own range), a yellow box (row0, col0, row1, col1), the true lesion outline in green
    and a predicted outline in cyan."""
    from PIL import Image  # heavy: Pillow (with matplotlib)

    img = np.asarray(image, dtype=np.float32)
    rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
    rgb = np.moveaxis(rgb, 0, -1)
    h, w = rgb.shape[:2]
    if heat is not None:
        hm = np.asarray(heat, dtype=np.float32)
        lo, hi = float(np.nanmin(hm)), float(np.nanmax(hm))
        t = (hm - lo) / (hi - lo) if hi > lo else np.zeros_like(hm)
        rgb = 0.45 * rgb + 0.55 * _ramp(t)
    s = max(1, DISPLAY // max(h, w))
    big = np.repeat(np.repeat(rgb, s, axis=0), s, axis=1)
    for mask, colour in ((outline, (0.1, 0.9, 0.2)), (predicted, (0.1, 0.8, 1.0))):
        if mask is not None and np.asarray(mask).any():
            up = np.repeat(np.repeat(np.asarray(mask) > 0, s, axis=0), s, axis=1)
            big[_boundary(up)] = colour
    if box is not None and box[2] > box[0] and box[3] > box[1]:
        r0, c0, r1, c1 = (int(v) * s for v in box)
        r1, c1 = min(r1, big.shape[0]) - 1, min(c1, big.shape[1]) - 1
        for rr in (slice(r0, r0 + 2), slice(r1 - 1, r1 + 1)):
            big[rr, c0:c1 + 1] = (1.0, 0.9, 0.0)
        for cc in (slice(c0, c0 + 2), slice(c1 - 1, c1 + 1)):
            big[r0:r1 + 1, cc] = (1.0, 0.9, 0.0)
    buf = io.BytesIO()
    Image.fromarray((np.clip(big, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------------- the viewer
@dataclass
class _Input:
    """What is explained: a case of the run or an uploaded image."""

    case: Case
    ref: str  # the case id, or "upload:<id>"
    row: int | None = None  # the case's row in the data (None for an upload)


class Viewer:
    """Everything the page asks, answered from one opened run (no web framework here: :func:`make_app` wraps it).

    Args:
        run_dir: the run directory.
        trust_run: open tabular models stored as pickles (older runs); see ``glasszoo.training.storage``.
        max_upload_mb: the largest upload accepted.
    """

    def __init__(self, run_dir: str | Path, trust_run: bool = False, max_upload_mb: float = 20.0) -> None:
        self.run: SavedRun = open_run(run_dir, trust_run=trust_run)
        self.run_dir = Path(run_dir)
        self.cs = self.run.caseset
        self.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
        self.names = self.run.model_names
        self.models = {n: self.run.load_model(n) for n in self.names}  # refuses a pickled model before serving
        self.adapters = {n: self.run.adapter(n) for n in self.names}
        self.class_names = list(self.cs.class_names)
        self._row = {str(c): i for i, c in enumerate(self.cs.case_ids)}
        self._test = set(self.cs.indices("test").tolist())
        self._uploads: OrderedDict[str, Case] = OrderedDict()
        self._neighbours: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()  # torch models and the annotations file: one request at a time
        self._descriptions: dict[str, str] | None = None

    # ------------------------------------------------------------------ the case list
    def summary(self) -> dict:
        """The run, its models and the test cases with every model's prediction (the case list), read from each
        model's ``predictions.csv`` (the run's own test predictions; nothing is recomputed)."""
        test = self.cs.indices("test")
        probas = {n: read_predictions(self.cs, self.run.dir.model(n).predictions) for n in self.names}
        labels = self.cs.labels[test]
        cases = []
        for i, r in enumerate(test):
            preds = {n: int(p[i].argmax()) for n, p in probas.items()}
            cases.append({"case_id": str(self.cs.case_ids[r]), "label": int(labels[i]),
                          "wrong": sorted(n for n, k in preds.items() if k != labels[i]),
                          "disagree": len(set(preds.values())) > 1,
                          "p": {n: round(float(p[i, self.cs.positive_class]), 3) for n, p in probas.items()}})
        models = []
        for n in self.names:
            info = model_info(self.run.spec(n).model)
            auc = self.run.metrics["models"][n].get("task", {}).get("auc", {}).get("value")
            models.append({"name": n, "family": info.family, "input": info.input_kind, "test_auc": auc})
        return {"run": self.run_dir.name, "dataset": self.cs.name, "class_names": self.class_names,
                "positive_class": int(self.cs.positive_class), "models": models, "cases": cases,
                "concept_names": list(self.cs.concept_names), "image_size": list(self.cs.img_size),
                "channels": int(self.cs.in_chans), "max_upload_mb": self.max_upload_bytes / 2 ** 20,
                "flags": read_annotations(self.run_dir)["flags"]}

    # ------------------------------------------------------------------ inputs
    def _input(self, ref: str) -> _Input:
        if ref.startswith("upload:"):
            case = self._uploads.get(ref[len("upload:"):])
            if case is None:
                raise ViewerError(404, f"upload '{ref}' is not (or no longer) on the server; upload the image again")
            return _Input(case=case, ref=ref)
        row = self._row.get(ref)
        if row is None:
            raise ViewerError(404, f"case id '{ref}' is not in this run (see its splits.csv)")
        cs = self.cs
        case = Case(x=cs.images[[row]], image=cs.images[row], case_id=ref, label=int(cs.labels[row]),
                    mask=None if cs.masks is None else cs.masks[row],
                    true_concepts=None if cs.concepts is None else cs.concepts[row])
        return _Input(case=case, ref=ref, row=row)

    # ------------------------------------------------------------------ one case
    def case(self, ref: str) -> dict:
        """Every model's prediction and reasons for the case ``ref`` (a case id or ``upload:<id>``)."""
        inp = self._input(ref)
        c = inp.case
        with self._lock:
            out = [self._model_view(n, inp) for n in self.names]
        return {"ref": inp.ref, "case_id": c.case_id, "label": c.label,
                "split": None if inp.row is None else str(self.cs.split[inp.row]),
                "image": render(c.image, outline=c.mask), "models": out}

    def _model_view(self, name: str, inp: _Input) -> dict:
        model, adapter = self.models[name], self.adapters[name]
        info = model_info(self.run.spec(name).model)
        view: dict[str, Any] = {"name": name, "family": info.family, "input": info.input_kind}
        c = inp.case
        if adapter.torch_model:
            x = c.x
        elif inp.row is not None:
            x = case_of(self.cs, adapter, inp.row).x
        else:
            view["note"] = ("reads the run's feature table (radiomics inside the lesion mask, with the training "
                            "split's imputation), which a new image without a mask does not have; pick a case of "
                            "the run to see its reasons")
            return view
        proba = model.predict_proba(x)[0]
        view["proba"] = [float(p) for p in proba]
        view["pred"] = int(proba.argmax())
        exps = case_explanations(model, Case(x=x, image=c.image, case_id=c.case_id, label=c.label, mask=c.mask,
                                             true_concepts=c.true_concepts), top_k=5)
        heatmaps = []
        for e in exps:
            if isinstance(e, PrototypeEvidence):
                view["prototypes"] = self._prototypes(name, e, c)
                view["neighbours"] = self._nearest(name, x, inp.row)
            elif isinstance(e, ConceptEvidence):
                view["concepts"] = self._concepts(e)
            elif isinstance(e, FeatureAttribution):
                view["features"] = self._features(e, proba)
            elif isinstance(e, Heatmap):
                title = e.method if info.intrinsic else f"{e.method} (post hoc)"
                heatmaps.append({"title": title, "png": render(c.image, e.maps[0], outline=c.mask)})
        if adapter.torch_model and not info.intrinsic:
            have = {h["title"].split(" ")[0] for h in heatmaps}
            heatmaps.extend(self._posthoc(name, x, c, inp.row, have))
        gates = self._gates(model, x, c.image.shape[-2:]) if adapter.torch_model else []
        if gates:
            pred_mask = model.predict_masks(x)[0] if model.segments else None
            view["attention"] = [{"title": f"gate {k + 1}", "png": render(c.image, g, outline=c.mask,
                                                                          predicted=pred_mask)}
                                 for k, g in enumerate(gates)]
            if pred_mask is not None:
                view["segmentation"] = render(c.image, outline=c.mask, predicted=pred_mask)
        view["heatmaps"] = heatmaps
        return view

    @staticmethod
    def _gates(model: Any, x: np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
        """Each attention gate's map of the one image ``x``, upsampled to the image [H, W]."""
        model.eval()
        with torch.no_grad():
            gates = model.attention_maps(torch.as_tensor(x, dtype=torch.float32))
        out = []
        for g in gates:
            g = g.detach().float()
            while g.dim() < 4:
                g = g.unsqueeze(1)
            up = torch.nn.functional.interpolate(g[:, :1], size=tuple(size), mode="bilinear", align_corners=False)
            out.append(up[0, 0].cpu().numpy())
        return out

    def _source_image(self, case_id: str) -> np.ndarray | None:
        r = self._row.get(str(case_id))
        return None if r is None else self.cs.images[r]

    def _prototypes(self, name: str, e: PrototypeEvidence, c: Case) -> dict:
        flags = set(flagged_prototypes(read_annotations(self.run_dir)).get(name, []))
        model = self.models[name]
        rows = []
        for m in e.matches[0]:
            src = self._source_image(m.source_case_id) if m.source_case_id else None
            r = self._row.get(str(m.source_case_id))
            weight = m.contribution / m.similarity if abs(m.similarity) > 1e-12 else 0.0
            rows.append({"prototype": m.prototype, "class": m.prototype_class, "similarity": m.similarity,
                         "weight": weight, "points": m.contribution, "source_case_id": m.source_case_id,
                         "source_label": None if r is None else int(self.cs.labels[r]),
                         "map": render(c.image, m.activation_map, outline=c.mask),
                         "source": None if src is None else render(
                             src, box=m.source_box, outline=None if self.cs.masks is None else self.cs.masks[r]),
                         "flagged": m.prototype in flags})
        with torch.no_grad():
            logits = model(torch.as_tensor(c.x, dtype=torch.float32)).float()[0].tolist()
        return {"top": rows, "class_points": logits, "disabled": model.disabled_prototypes()}

    def _nearest(self, name: str, x: np.ndarray, row: int | None, k: int = 5) -> list[dict]:
        """The ``k`` training cases nearest to ``x`` by the Euclidean distance of their prototype similarity vectors
        (each prototype's largest activation over the image; relevant, switched-on prototypes only)."""
        model = self.models[name]
        if name not in self._neighbours:
            train = self.cs.indices("train")
            vecs = self._similarity_vectors(model, self.cs.images[train])
            self._neighbours[name] = (train, vecs, self.cs.labels[train])
        train, vecs, labels = self._neighbours[name]
        q = self._similarity_vectors(model, x)[0]
        d = np.sqrt(((vecs - q) ** 2).sum(1))
        if row is not None:
            d = np.where(train == row, np.inf, d)
        out = []
        for i in np.argsort(d, kind="stable")[:k]:
            r = int(train[i])
            out.append({"case_id": str(self.cs.case_ids[r]), "label": int(labels[i]), "distance": float(d[i]),
                        "png": render(self.cs.images[r], outline=None if self.cs.masks is None else self.cs.masks[r])})
        return out

    @staticmethod
    def _similarity_vectors(model: Any, images: np.ndarray, batch: int = 128) -> np.ndarray:
        keep = model.relevant_prototypes()
        out = []
        model.eval()
        with torch.no_grad():
            for i in range(0, len(images), batch):
                maps = model.prototype_activation_maps(torch.as_tensor(images[i:i + batch], dtype=torch.float32))
                out.append(maps.amax(dim=(2, 3)).float().cpu().numpy())
        v = np.concatenate(out)
        mask = np.ones(v.shape[1], bool) if keep is None else keep.cpu().numpy().astype(bool)
        mask[model.disabled_prototypes()] = False
        return v[:, mask]

    def _concepts(self, e: ConceptEvidence) -> list[dict]:
        return [{"name": n, "predicted": float(e.predicted[0, k]),
                 "true": None if e.true is None else float(e.true[0, k]),
                 "contribution": float(e.contribution[0, k]),
                 "binary": bool(0.0 <= e.predicted[0, k] <= 1.0 and (e.true is None or e.true[0, k] in (0.0, 1.0)))}
                for k, n in enumerate(e.concept_names)]

    def _features(self, e: FeatureAttribution, proba: np.ndarray, k: int = 6) -> dict:
        if self._descriptions is None:
            self._descriptions = feature_descriptions(list(e.feature_names))
        target = self.class_names[int(e.target[0])]
        order = np.argsort(-np.abs(e.contribution[0]), kind="stable")[:k]
        lines = []
        for j in order:
            n = e.feature_names[j]
            v = float(e.values[0, j])
            c = float(e.contribution[0, j])
            what = self._descriptions.get(n) or n
            value = "" if np.isnan(v) else f" = {v:.3g}"
            lines.append({"feature": n, "value": None if np.isnan(v) else v, "contribution": c,
                          "text": f"{what}{value}: {c:+.2f} {'towards' if c >= 0 else 'against'} {target}"})
        icpt = np.asarray(e.intercept, dtype=np.float64).reshape(-1)
        return {"target": target, "top": lines, "intercept": float(icpt[0]) if icpt.size else 0.0}

    def _posthoc(self, name: str, x: np.ndarray, c: Case, row: int | None, have: set[str]) -> list[dict]:
        ev = self.run.config.evaluation
        out = []
        for method in LIVE_POSTHOC:
            if method in have:
                continue
            hm = explain_posthoc(self.models[name], x, method, params=ev.posthoc.params.get(method),
                                 seed=self.run.config.seed)
            out.append({"title": f"{method} (post hoc)", "png": render(c.image, hm.maps[0], outline=c.mask)})
        if row is not None:  # the run's stored maps of the other methods, for the cases it explained
            for path in sorted(self.run.dir.model(name).path.glob("heatmap_*.npz")):
                method = path.stem[len("heatmap_"):]
                if method in LIVE_POSTHOC or method in have:
                    continue
                with np.load(path, allow_pickle=False) as z:
                    ids = z["case_ids"].astype(str)
                    hit = np.flatnonzero(ids == c.case_id)
                    if len(hit):
                        out.append({"title": f"{method} (post hoc, from the run)",
                                    "png": render(c.image, z["maps"][hit[0]].astype(np.float32), outline=c.mask)})
        return out

    # ------------------------------------------------------------------ what a reader does
    def set_concepts(self, ref: str, model: str, values: dict) -> dict:
        """The concept model ``model``'s probabilities for ``ref`` with the concepts in ``values`` set."""
        if model not in self.models:
            raise ViewerError(404, f"no model named '{model}' in this run")
        if not isinstance(values, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in values.values()):
            raise ViewerError(400, "values must map concept names to numbers (1 present, 0 absent)")
        inp = self._input(ref)
        with self._lock:
            m = self.models[model]
            try:
                after = m.set_concepts(inp.case.x, {str(k): float(v) for k, v in values.items()})
            except ValueError as exc:
                raise ViewerError(400, str(exc)) from None
            if after is None:
                raise ViewerError(400, f"model '{model}' has no concepts to set")
            before = m.predict_proba(inp.case.x)[0]
        return {"model": model, "values": values, "proba_before": [float(p) for p in before],
                "proba": [float(p) for p in after[0]], "pred": int(after[0].argmax())}

    def upload(self, data: bytes, filename: str = "upload", to_grey: bool = False, resize: bool = True) -> dict:
        """Read an uploaded PNG, JPEG or DICOM file exactly as the run's images (intensity scaling, channels and
        size by :meth:`SavedRun.read_image`), keep it in memory and explain it with every model."""
        if len(data) > self.max_upload_bytes:
            raise ViewerError(413, f"the file is {len(data) / 2 ** 20:.1f} MB; the limit is "
                                   f"{self.max_upload_bytes / 2 ** 20:.0f} MB")
        suffix = next((s for magic, s in MAGIC.items() if data.startswith(magic)), None)
        if suffix is None and len(data) > 132 and data[128:132] == b"DICM":
            suffix = ".dcm"
        if suffix is None:
            raise ViewerError(415, f"{filename}: not a PNG, JPEG or DICOM file")
        shown = Path(str(filename)).name[:100] or "upload"
        with tempfile.TemporaryDirectory(prefix="glasszoo-upload-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            try:
                image = self.run.read_image(path, resize=resize, to_grey=to_grey, name=shown)
            except DataError as exc:
                raise ViewerError(400, str(exc)) from None
        uid = uuid.uuid4().hex[:12]
        with self._lock:
            self._uploads[uid] = Case(x=image[None], image=image, case_id=shown)
            while len(self._uploads) > MAX_UPLOADS:
                self._uploads.popitem(last=False)
        return self.case(f"upload:{uid}")

    def flag(self, model: str, prototype: Any, case_id: str | None = None, reason: str = "",
             flagged: bool = True) -> dict:
        if model not in self.models:
            raise ViewerError(404, f"no model named '{model}' in this run")
        if case_id is not None and (not isinstance(case_id, str) or case_id not in self._row):
            case_id = None  # an upload or an unknown id: the flag is kept without a case
        with self._lock:
            try:
                return add_flag(self.run, model, prototype, reason=str(reason or ""), case_id=case_id,
                                flagged=bool(flagged))
            except DataError as exc:
                raise ViewerError(400, str(exc)) from None

    def edit(self) -> dict:
        """Run ``glasszoo edit`` on the run's flags into a new run beside it; the AUC and pointing-game changes."""
        drops = flagged_prototypes(read_annotations(self.run_dir))
        if not drops:
            raise ViewerError(400, "no prototype is flagged")
        with self._lock:
            try:
                path = edit_run(self.run_dir, drops, trust_run=self.run.trust_run,
                                log=lambda m: print(m, file=sys.stderr))
            except DataError as exc:
                raise ViewerError(400, str(exc)) from None
        edit = json.loads((path / "metrics.json").read_text())["edit"]
        return {"run_dir": str(path), "report": str(path / "report.html"), "models": edit["models"]}


# ---------------------------------------------------------------------------------------------------- the web app
def make_app(viewer: Viewer):
    """The FastAPI app serving ``viewer``: the page, its two static files and the JSON API."""
    from fastapi import FastAPI, Request  # heavy: FastAPI (pydantic, starlette)
    from fastapi.responses import HTMLResponse, JSONResponse, Response  # heavy: as above

    app = FastAPI(title="glasszoo viewer", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ViewerError)
    async def _refused(request: Request, exc: ViewerError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # a message, never a traceback
        return JSONResponse({"error": f"the server could not answer this request ({type(exc).__name__})"},
                            status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in PAGE_FILES:  # a fixed set of names: nothing of the request becomes a path
            raise ViewerError(404, f"no page file named '{name}'")
        return Response((STATIC / name).read_bytes(), media_type=PAGE_FILES[name])

    @app.get("/api/run")
    def run_summary() -> dict:
        return viewer.summary()

    @app.get("/api/case/{ref:path}")
    def case(ref: str) -> dict:
        return viewer.case(ref)

    async def _json(request: Request) -> dict:
        body = await _read_capped(request, 1 << 20)
        try:
            data = json.loads(body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ViewerError(400, "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ViewerError(400, "the request body must be a JSON object")
        return data

    async def _read_capped(request: Request, limit: int) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ViewerError(413, f"the upload is {int(length) / 2 ** 20:.1f} MB; the limit is "
                                   f"{limit / 2 ** 20:.0f} MB")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ViewerError(413, f"the upload is over the limit of {limit / 2 ** 20:.0f} MB")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/api/concepts")
    async def concepts(request: Request) -> dict:
        data = await _json(request)
        return viewer.set_concepts(str(data.get("ref", "")), str(data.get("model", "")), data.get("values", {}))

    @app.post("/api/upload")
    async def upload(request: Request) -> dict:
        body = await _read_capped(request, viewer.max_upload_bytes)
        if not body:
            raise ViewerError(400, "the upload is empty")
        q = request.query_params
        return viewer.upload(body, q.get("filename", "upload"), to_grey=q.get("to_grey") == "1",
                             resize=q.get("resize", "1") == "1")

    @app.get("/api/flags")
    def flags() -> dict:
        return read_annotations(viewer.run_dir)

    @app.post("/api/flags")
    async def flag(request: Request) -> dict:
        data = await _json(request)
        return viewer.flag(str(data.get("model", "")), data.get("prototype"), data.get("case_id"),
                           data.get("reason", ""), data.get("flagged", True))

    @app.post("/api/edit")
    def edit() -> dict:
        return viewer.edit()

    return app


class ViewerServer:
    """The viewer's web server on ``host:port`` (port 0: a free one) in a background thread; a context manager.

    ``url`` is the page's address once :meth:`start` returns."""

    def __init__(self, viewer: Viewer, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn  # heavy: the ASGI server

        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise DataError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host if ':' not in host else '[' + host + ']'}:{self.port}/"
        config = uvicorn.Config(make_app(viewer), log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    def start(self) -> "ViewerServer":
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            self.thread.join(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)
        self.sock.close()

    def __enter__(self) -> "ViewerServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, trust_run: bool = False,
          max_upload_mb: float = 20.0) -> None:
    """Open ``run_dir`` and serve its viewer until interrupted (``glasszoo serve``)."""
    print(f"glasszoo: opening {run_dir} ...", file=sys.stderr, flush=True)
    viewer = Viewer(run_dir, trust_run=trust_run, max_upload_mb=max_upload_mb)
    server = ViewerServer(viewer, host, port).start()
    print(f"glasszoo: the viewer of {run_dir} is at {server.url} (Ctrl+C to stop)", flush=True)
    try:
        while server.thread is not None and server.thread.is_alive():
            server.thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()

"""``glasszoo bench``: what the zoo's operations cost, measured in one command and written to docs/performance.md.

Absolute times on a shared machine are noisy; ratios measured back to back in one process are not (much). Each
section is a function registered in :data:`SECTIONS` under a short name (``glasszoo bench --only NAME``) that returns
a :class:`BenchSection`: its settings, a table and a one-line summary.

* ``training``: images/s of the zoo's training pipeline (``train_image_model``: Lightning, the data module, the
  shared LightningModule) against a bare PyTorch loop on the same model, batch size and data, as a ratio.
* ``push``: a prototype network's push (ProtoPNet, the ``push`` workload) against a forward pass over the same
  training images.
* ``radiomics``: pyradiomics extraction cases/s with 1 and 2 workers, and a cache hit.
* ``scaling``: wall time and peak memory of ``glasszoo run`` (one black box, one epoch) at growing data sizes.
* ``quickstart``: wall time and peak memory of ``glasszoo run configs/quickstart.yaml`` end to end.

Sections that time operations in-process use the median (push, radiomics) or the fastest (training: interference
from other processes only ever adds time) of ``repeats`` runs after a warm-up. Sections that run ``glasszoo run``
start it as a child process and record its wall time and memory (:func:`run_measured`).

A new section is a function returning a :class:`BenchSection` whose keyword arguments are among the command-line
options it wants (``n_cases``, ``img_size``, ``img_sizes``, ``sizes``, ``epochs``, ``repeats``, ``device``), added
with :func:`register_section` (the place for the explanation-cost section is marked below); ``glasszoo bench``
then runs it, prints it and merges it into docs/performance.md.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import yaml

from glasszoo.evaluation.experiment.config import load_config
from glasszoo.evaluation.explain_eval import selected_for_posthoc
from glasszoo.evaluation.posthoc import DEFAULT_METHODS, PassCounter, explain_posthoc
from glasszoo.evaluation.report import default_reference
from glasszoo.models import ConfigError, GlasszooError, create_model, model_info
from glasszoo.models.base import as_tensor
from glasszoo.training.adapters import Adapters
from glasszoo.training.allocator import keep_freed_memory
from glasszoo.training.radiomics import extract_radiomics
from glasszoo.training.rundir import RunDir
from glasszoo.training.settings import AugmentConfig, TrainingConfig
from glasszoo.training.synthetic import _memmap_min_bytes, make_synthetic
from glasszoo.training.train import build_image_model, train_image_model

DEFAULT_CONFIG = Path("configs") / "quickstart.yaml"  # relative to the current directory, like `glasszoo run`
WORKLOADS: dict = yaml.safe_load((Path(__file__).with_name("bench_workloads.yaml")).read_text(encoding="utf-8"))
"""The models the training, push and scaling sections time (``bench_workloads.yaml``, shipped with the package)."""


def _workload(section: str) -> tuple[str, dict]:
    w = WORKLOADS[section]
    return str(w["model"]), dict(w.get("params") or {})


def _describe_workload(section: str) -> str:
    name, params = _workload(section)
    return f"{name} ({', '.join(f'{k} {v}' for k, v in params.items())})"


def _config_path(config: str | Path | None, section: str) -> Path:
    path = Path(config) if config else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"bench {section}: experiment config {path} not found; run the bench from the folder that "
                          f"holds configs/, or pass --config PATH")
    return path


@dataclass
class BenchRow:
    """One timed operation."""

    operation: str
    images: int
    seconds: float
    reference: str = ""
    ratio: float = float("nan")  # seconds / seconds of the reference operation
    note: str = ""

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class BenchSection:
    """A table of timed operations plus the settings they ran with.

    ``rows`` render as the standard table (operation, images, seconds, images/s, ratio to the reference); a section
    whose figures are not per-image timings gives ``columns`` and ``table`` (rows of cells) instead. ``data`` holds
    the raw figures (for tests and JSON).
    """

    name: str
    title: str
    settings: dict
    rows: list[BenchRow] = field(default_factory=list)
    summary: str = ""
    columns: list[str] = field(default_factory=list)
    table: list[list[str]] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def median_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one untimed warm-up run."""
    fn()
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(statistics.median(times))


def resolve_device(device: str = "cpu") -> str:
    """``cpu``, ``cuda`` or ``auto`` (cuda when available) -> ``cpu`` / ``cuda``."""
    if device not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"--device: must be cpu, cuda or auto, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA GPU on this machine")
    return device


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def forward_pass(model: torch.nn.Module, images: np.ndarray, batch_size: int) -> None:
    """A plain no-grad eval-mode forward pass of ``model`` over ``images`` in batches (the reference cost)."""
    model.eval()
    for i in range(0, len(images), batch_size):
        model(as_tensor(images[i:i + batch_size], model.device))


PUSH_TARGET = 2.0  # a push as trained may cost at most this many forward passes over the same images


def bench_push(n_cases: int = 2000, img_size: int = 48, batch_size: int = 256, repeats: int = 3,
               seed: int = 0, device: str = "cpu") -> BenchSection:
    """ProtoPNet's push against a forward pass of the same network over the same training images.

    The network is the ``push`` workload of ``bench_workloads.yaml`` (the quickstart's ProtoPNet on ResNet-18 stage 3,
    10 prototypes of 16 dimensions per class) on
    synthetic phantoms; its weights do not change the cost. Rows: the forward pass (reference), the push pass alone
    (running minima; ``recalibrate_bn=False``), the full push as trained (BatchNorm re-estimation on the
    training split first, then the pass, then recording each prototype's source map), and the last-layer fit that
    follows it.
    """
    torch.manual_seed(seed)
    cs = make_synthetic(n_cases=n_cases, img_size=img_size, seed=seed)
    train = cs.indices("train")
    images = cs.images[train]
    name, params = _workload("push")
    model = create_model(name, num_classes=cs.num_classes, in_chans=cs.in_chans, img_size=cs.img_size,
                         **params, push_batch_size=batch_size).to(resolve_device(device))
    n = len(train)
    fwd = median_seconds(lambda: forward_pass(model, images, batch_size), repeats)
    with contextlib.redirect_stderr(io.StringIO()):  # the push reports each pass on stderr; keep the table clean
        model.recalibrate_bn = False
        bare = median_seconds(lambda: model.push(cs), repeats)
        model.recalibrate_bn = True
        full = median_seconds(lambda: model.push(cs), repeats)
    fit = median_seconds(lambda: model.fit_last_layer(cs), repeats)
    rows = [
        BenchRow("forward pass (eval, no grad)", n, fwd, "forward pass", 1.0),
        BenchRow("push: projection pass only", n, bare, "forward pass", bare / fwd,
                 "running minima per prototype; memory independent of N"),
        BenchRow("push as trained (BN re-estimation + pass + source maps)", n, full, "forward pass", full / fwd,
                 "what each scheduled push costs"),
        BenchRow("last-layer fit after the push (scores pass + FISTA)", n, fit, "forward pass", fit / fwd,
                 "fit_last_layer"),
    ]
    summary = (f"Push over {n} training images: {bare / fwd:.2f}x a forward pass (projection alone), "
               f"{full / fwd:.2f}x with the BatchNorm re-estimation it runs first (target <= {PUSH_TARGET:.0f}x: "
               f"{'met' if full / fwd <= PUSH_TARGET else 'NOT met'}).")
    settings = {"data": f"synthetic, {n} training images, {img_size} px", "batch_size": batch_size,
                "model": _describe_workload("push"), "repeats": repeats,
                "device": resolve_device(device)}
    return BenchSection("push", "Prototype push", settings, rows, summary)


def bench_radiomics(n_cases: int = 2000, img_size: int = 48, repeats: int = 3, seed: int = 0,
                    max_cases: int = 600) -> BenchSection:
    """pyradiomics extraction (the 7 default 2-D feature classes inside the lesion mask) with 1 and 2 workers, and
    the cost of a second run served from the on-disk cache. Uses at most ``max_cases`` synthetic cases."""
    n = min(n_cases, max_cases)
    cs = make_synthetic(n_cases=n, img_size=img_size, seed=seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in (1, 2):
            sec = median_seconds(lambda j=jobs: extract_radiomics(cs, n_jobs=j, cache=False, progress_bar=False),
                                 repeats)
            rows.append(BenchRow(f"extraction, {jobs} worker{'s' if jobs > 1 else ''}", n, sec, "1 worker"))
        extract_radiomics(cs, n_jobs=1, cache=True, cache_dir=tmp, progress_bar=False)  # fill the cache
        hit = median_seconds(lambda: extract_radiomics(cs, n_jobs=1, cache=True, cache_dir=tmp,
                                                       progress_bar=False), repeats)
        rows.append(BenchRow("second run (cache hit)", n, hit, "1 worker"))
    for r in rows:
        r.ratio = r.seconds / rows[0].seconds
    rows[0].note = f"{rows[0].images_per_second:.0f} cases/s per core"
    rows[1].note = f"{rows[1].images_per_second / 2:.0f} cases/s per core (joblib start-up included)"
    settings = {"data": f"synthetic, {n} cases, {img_size} px, lesion masks", "feature classes": "7 (2-D)",
                "repeats": repeats}
    summary = (f"Extraction: {rows[0].images_per_second:.0f} cases/s with 1 worker, "
               f"{rows[1].images_per_second:.0f} with 2; a cached re-run takes {hit:.2f} s "
               f"({100 * hit / rows[0].seconds:.1f}% of an extraction).")
    return BenchSection("radiomics", "Radiomics extraction", settings, rows, summary)


# ---------------------------------------------------------------------------------------------- training
class TrainTimer(L.Callback):
    """Lightning callback timing the training batches and the validation passes of a fit.

    Training time of an epoch runs from ``on_train_epoch_start`` to the end of its last training batch (data
    loading, forward, backward, optimiser step, logging, progress bar: everything the pipeline does per batch);
    validation from ``on_validation_start`` to ``on_validation_end`` (before the checkpoint is written).
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.train_seconds = self.val_seconds = 0.0
        self.train_images = self.val_images = 0
        self._epoch_start: float | None = None
        self._last_batch_end = self._val_start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _sync(self.device)
        self._epoch_start = self._last_batch_end = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _sync(self.device)
        self._last_batch_end = time.perf_counter()
        self.train_images += len(batch["label"])

    def on_validation_start(self, trainer, pl_module) -> None:
        self._close_epoch()
        self._val_start = time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.val_images += len(batch["label"])

    def on_validation_end(self, trainer, pl_module) -> None:
        _sync(self.device)
        self.val_seconds += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close_epoch()

    def _close_epoch(self) -> None:
        if self._epoch_start is not None:
            self.train_seconds += self._last_batch_end - self._epoch_start
            self._epoch_start = None


@contextlib.contextmanager
def _restored_torch_state():
    """Undo what a Lightning fit changes globally (deterministic algorithms, cuBLAS workspace), so that the bare loop
    after it runs with PyTorch's defaults, as a hand-written script would."""
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def bare_training_loop(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                       epochs: int, lr: float, weight_decay: float, device: str = "cpu", seed: int = 0,
                       precision: str = "32-true", max_batches: int | None = None) -> tuple[int, float]:
    """What one would write by hand: shuffle, slice a batch from in-memory tensors, copy it to the device, forward,
    cross-entropy (times the model's ``task_loss_weight``, plus its ``extra_losses``), backward, AdamW step.

    No validation, no logging, no checkpoints. Returns (images trained on, seconds).
    """
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    pin = device == "cuda"
    if pin:
        images, labels = images.pin_memory(), labels.pin_memory()
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16 if precision == "bf16-mixed" else torch.float16,
                              enabled=precision != "32-true")
    n, seen, batches = len(images), 0, 0
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        if max_batches is not None and batches >= max_batches:
            break
        order = torch.randperm(n, generator=gen)
        m = n - 1 if n % batch_size == 1 else n  # no batch of one (BatchNorm), as the pipeline
        for i in range(0, m, batch_size):
            idx = order[i:min(i + batch_size, m)]
            x = images[idx].to(device, non_blocking=pin)
            y = labels[idx].to(device, non_blocking=pin)
            with autocast:
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y) * model.task_loss_weight
            extras = model.extra_losses({"image": x, "label": y}, logits)
            if extras:
                loss = loss + sum(extras.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
            batches += 1
            if max_batches is not None and batches >= max_batches:
                break
    _sync(device)
    return seen, time.perf_counter() - start


def bench_training(img_size: int = 28, n_cases: int = 2000, batch_size: int = 64, epochs: int = 1,
                   model: str | None = None, params: dict | None = None, repeats: int = 3, device: str = "cpu",
                   precision: str = "32-true", seed: int = 0, **training: object) -> dict:
    """Training images/s of the zoo's pipeline against a bare PyTorch loop, in one process, on the same data.

    Both train the same model (``model`` with ``params``, built from the same seed, fresh weights each run) on the
    same in-memory synthetic training split with the same batch size, AdamW settings and no augmentation (the
    pipeline with every augmentation switched off, the bare loop with none). The pipeline is the real
    ``train_image_model`` as ``glasszoo run`` calls it (progress bar, CSV logs, deterministic algorithms, validation
    and best-checkpoint selection every epoch); its training throughput counts only the training batches (timed by a
    callback), its validation passes and the whole fit are reported separately. The two alternate
    (bare, pipeline, pipeline, bare, ...) ``repeats`` times each after a short warm-up; throughputs are the fastest
    run of each.

    ``training`` overrides further keys of the pipeline's TrainingConfig (e.g. ``deterministic=False`` to measure
    what deterministic algorithms cost).

    Returns a dict of the figures (``bare_ips``, ``pipeline_ips``, ``ratio`` = pipeline / bare, the per-repeat
    ratios, ``val_ips``, ``fit_ips`` and the counts).
    """
    device = resolve_device(device)
    if model is None:
        model, default_params = _workload("training")
        params = default_params if params is None else dict(params)
    params = dict(params or {})
    cs = make_synthetic(n_cases=n_cases, img_size=img_size, seed=seed, memmap=False)
    train = cs.indices("train")
    images = torch.from_numpy(np.ascontiguousarray(cs.images[train]))
    labels = torch.from_numpy(cs.labels[train])
    torch.manual_seed(seed)
    init = copy.deepcopy(build_image_model(model, params, cs).state_dict())

    def fresh():
        m = build_image_model(model, params, cs)
        m.load_state_dict(init)
        return m

    off = AugmentConfig(hflip=False, vflip=False, rotate90=False)
    tcfg = TrainingConfig(max_epochs=epochs, batch_size=batch_size, patience=0, augmentation=off,
                          accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision,
                          class_weighting="none", **training)

    def run_bare() -> float:
        seen, sec = bare_training_loop(fresh(), images, labels, batch_size, epochs, tcfg.lr, tcfg.weight_decay,
                                       device, seed, precision)
        return seen / sec

    def run_pipeline() -> tuple[float, float, float]:
        timer = TrainTimer(device)
        with tempfile.TemporaryDirectory() as tmp, _restored_torch_state(), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            res = train_image_model(fresh(), cs, tcfg, tmp, seed=seed, name=model, callbacks=[timer])
        return (timer.train_images / timer.train_seconds, timer.val_images / max(timer.val_seconds, 1e-9),
                timer.train_images / res.train_seconds)

    bare_training_loop(fresh(), images, labels, batch_size, 1, tcfg.lr, tcfg.weight_decay, device, seed, precision,
                       max_batches=3)  # warm-up: kernels, allocator
    bare, pipe = [], []
    for r in range(max(1, repeats)):
        if r % 2 == 0:
            bare.append(run_bare())
            pipe.append(run_pipeline())
        else:
            pipe.append(run_pipeline())
            bare.append(run_bare())
    bare_ips = max(bare)
    best = max(pipe, key=lambda p: p[0])
    return {"img_size": img_size, "n_train": len(train), "n_val": len(cs.indices("val")), "epochs": epochs,
            "batch_size": batch_size, "model": model, "params": params, "device": device, "precision": precision,
            "bare_ips": bare_ips, "pipeline_ips": best[0], "ratio": best[0] / bare_ips,
            "repeat_ratios": [p[0] / b for p, b in zip(pipe, bare)], "val_ips": max(p[1] for p in pipe),
            "fit_ips": max(p[2] for p in pipe)}


TRAINING_TARGET = 0.90  # the pipeline must keep at least this share of the bare loop's throughput


def section_training(img_sizes: tuple[int, ...] = (28, 64), n_cases: int = 2000, batch_size: int = 64,
                     epochs: int = 1, repeats: int = 5, device: str = "cpu", seed: int = 0) -> BenchSection:
    """:func:`bench_training` of the ``training`` workload (``bench_workloads.yaml``: the black box, ResNet-18, stem
    chosen by image size) at each of ``img_sizes``.

    Five repeats by default (the other sections: three): on a shared 2-core machine single runs of either loop vary
    by +-20% (per-repeat ratios 0.67-1.03 in a three-repeat run whose best-of ratio was 0.89, against 0.98-1.04
    with five), and the fastest of five is a steadier estimate of what each loop costs.
    """
    figs = [bench_training(s, n_cases, batch_size, epochs, repeats=repeats, device=device, seed=seed)
            for s in img_sizes]
    columns = ["image size", "operation", "images", "images/s", "pipeline / bare loop", "note"]
    table = []
    for f in figs:
        n = f["n_train"] * f["epochs"]
        per = ", ".join(f"{r:.2f}" for r in f["repeat_ratios"])
        table += [
            [f"{f['img_size']} px", "bare PyTorch loop (reference)", f"{n}", f"{f['bare_ips']:.1f}", "1.00",
             "hand-written loop, no validation"],
            [f"{f['img_size']} px", "zoo pipeline: training batches", f"{n}", f"{f['pipeline_ips']:.1f}",
             f"**{f['ratio']:.2f}**", f"per repeat: {per}"],
            [f"{f['img_size']} px", "zoo pipeline: validation pass (not in the ratio)",
             f"{f['n_val'] * f['epochs']}", f"{f['val_ips']:.1f}", "", "eval mode, no gradients, AUC"],
            [f"{f['img_size']} px", "zoo pipeline: whole fit", f"{n}", f"{f['fit_ips']:.1f}",
             f"{f['fit_ips'] / f['bare_ips']:.2f}", "training + validation + checkpoint + set-up"],
        ]
    ok = all(f["ratio"] >= TRAINING_TARGET for f in figs)
    summary = ("Training throughput of the pipeline / the bare loop: "
               + ", ".join(f"{f['ratio']:.2f} at {f['img_size']} px" for f in figs)
               + f" (target >= {TRAINING_TARGET:.2f}: {'met' if ok else 'NOT met'}).")
    f0 = figs[0]
    settings = {"model": f"{f0['model']} {f0['params']} (stem auto: small up to 32 px, standard above)",
                "data": f"synthetic, {n_cases} cases ({f0['n_train']} training, {f0['n_val']} validation), in memory",
                "batch size": batch_size, "epochs per run": epochs, "augmentation": "off in both",
                "optimiser": "AdamW, same lr and weight decay", "device": f0["device"],
                "precision": f0["precision"], "repeats": f"{repeats} each, alternating, fastest run"}
    notes = ["The pipeline is `train_image_model` exactly as `glasszoo run` calls it (Lightning Trainer, "
             "`CaseSetDataModule` batches, `ClassifierModule`, progress bar, CSV logger, deterministic algorithms); "
             "its training throughput counts the training batches only (data loading, forward, backward, optimiser "
             "step, logging). The bare loop runs with PyTorch's defaults (no deterministic algorithms)."]
    return BenchSection("training", "Training throughput: pipeline vs bare PyTorch loop", settings, summary=summary,
                        columns=columns, table=table, data={"sizes": figs}, notes=notes)


class EpochTimer(TrainTimer):
    """:class:`TrainTimer` that also notes the running training and validation seconds at each epoch's start
    (``marks``), so a warm-up epoch can be left out."""

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(device)
        self.marks: list[tuple[float, float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.marks.append((self.train_seconds, self.val_seconds))
        super().on_train_epoch_start(trainer, pl_module)


def section_epochs(img_sizes: tuple[int, ...] = (28, 64, 128), n_cases: int = 1000, batch_size: int = 64,
                   epochs: int = 2, device: str = "cpu", seed: int = 0) -> BenchSection:
    """Seconds per training epoch of the ``epochs`` workload's models (``bench_workloads.yaml``) at each image size:
    one ``train_image_model`` fit of ``epochs`` epochs (the first one warms up and is not counted) on synthetic
    phantoms with masks, timed by :class:`TrainTimer`; the figures scale linearly with the number of training
    images, so a user can plan a data set's run (e.g. BUSI's 546 training images) on this machine or a GPU."""
    models = dict(WORKLOADS["epochs"]["models"])
    rows, data = [], []
    for size in img_sizes:
        cs = make_synthetic(n_cases=n_cases, img_size=size, seed=seed, memmap=False)
        n_train = len(cs.indices("train"))
        for model, params in models.items():
            tcfg = TrainingConfig(max_epochs=epochs, batch_size=batch_size, patience=0,
                                  augmentation=AugmentConfig(hflip=False, vflip=False, rotate90=False),
                                  accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                                  class_weighting="none")
            torch.manual_seed(seed)
            net = build_image_model(model, dict(params or {}), cs)
            timer = EpochTimer(device)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp, _restored_torch_state(), \
                    contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                train_image_model(net, cs, tcfg, tmp, seed=seed, name=model, callbacks=[timer])
            wall = time.perf_counter() - t0
            first_train, first_val = timer.marks[1] if len(timer.marks) > 1 else (0.0, 0.0)
            counted = max(1, epochs - 1)
            train_s = (timer.train_seconds - first_train) / counted
            val_s = (timer.val_seconds - first_val) / counted
            per_1000 = 1000.0 * train_s / n_train
            data.append({"img_size": size, "model": model, "n_train": n_train, "train_seconds_per_epoch": train_s,
                         "val_seconds_per_epoch": val_s, "train_seconds_per_1000_images": per_1000,
                         "fit_wall_seconds": wall})
            rows.append([f"{size} px", model, str(n_train), f"{train_s:.2f}", f"{val_s:.2f}", f"**{per_1000:.2f}**"])
    by = {(d["model"], d["img_size"]): d["train_seconds_per_1000_images"] for d in data}
    ratios = [f"{m} x{by[(m, img_sizes[-1])] / by[(m, img_sizes[0])]:.1f}" for m in models
              if (m, img_sizes[0]) in by and (m, img_sizes[-1]) in by and by[(m, img_sizes[0])] > 0]
    summary = (f"One training epoch over 1,000 images costs {', '.join(ratios)} as much at {img_sizes[-1]} px as at "
               f"{img_sizes[0]} px on this machine ({device}).")
    settings = {"models": ", ".join(f"{m} {p}" for m, p in models.items()),
                "data": f"synthetic phantoms, {n_cases} cases, in memory", "batch size": batch_size,
                "epochs per fit": f"{epochs} (the first, warm-up, not counted)", "augmentation": "off",
                "device": device}
    notes = ["Training seconds cover the training batches of an epoch (data loading, forward, backward, optimiser "
             "step, logging); validation is the pass over the validation split. A run of E epochs on N training "
             "images costs about E x N / 1000 x the last column, plus validation and explanations."]
    return BenchSection("epochs", "Cost per training epoch by image size", settings, summary=summary,
                        columns=["image size", "model", "training images", "training s/epoch",
                                 "validation s/epoch", "training s per 1,000 images"],
                        table=rows, data={"sizes": data}, notes=notes)


# ---------------------------------------------------------------------------------------------- explanations
INTRINSIC_TARGET = 1.5  # forward-pass equivalents an intrinsic explanation may cost


def section_explain(n_cases: int = 128, img_size: int = 48, repeats: int = 3, device: str = "cpu",
                    seed: int = 0, config: str | Path | None = None) -> BenchSection:
    """Inference and explanation cost of every image model of the quickstart, and of each post-hoc method on the
    black box, in ms per image and forward/backward passes per image, as ratios to one forward pass of the same
    model on the same images. Weights are untrained (they do not change the cost); the architectures and explainer
    settings are the quickstart's."""
    cfg = load_config(_config_path(config, "explain"))
    cs = make_synthetic(n_cases=max(n_cases * 4, 200), img_size=img_size, seed=seed)
    x = cs.images[cs.indices("test")[:n_cases]]
    dev = resolve_device(device)
    columns = ["model", "explanation", "source", "ms / image", "x forward pass", "passes / image (fwd + bwd)"]
    table, data = [], []

    def add(model_name: str, what: str, source: str, fwd_s: float, s: float, counter: PassCounter, n: int) -> None:
        passes = counter.per_image(n)
        ratio = s / fwd_s
        counted = f"{passes['forward']:g} + {passes['backward']:g}" if passes["forward"] else "– (inside explain)"
        table.append([model_name, what, source, f"{1000 * s / n:.2f}", f"**{ratio:.2f}**", counted])
        data.append({"model": model_name, "explanation": what, "source": source, "ms_per_image": 1000 * s / n,
                     "ratio": ratio, "passes": passes})

    intrinsic_ok = True
    adapters = Adapters(cs, cfg.features)
    for spec in cfg.models:
        info = model_info(spec.model)
        if not adapters.for_info(info).torch_model:  # the section counts forward passes: torch models only
            continue
        torch.manual_seed(seed)
        model = build_image_model(spec.model, spec.params, cs).to(dev).eval()
        fwd = median_seconds(lambda m=model: m.predict_proba(x), repeats)
        table.append([spec.name, "(forward pass: predict_proba)", "", f"{1000 * fwd / len(x):.2f}", "1.00", "1 + 0"])
        with PassCounter(model) as c:
            ex = median_seconds(lambda m=model: m.explain(x), repeats)
        reps = repeats + 1  # median_seconds runs once untimed first
        c.forward_images //= reps
        c.backward_images //= reps
        if info.intrinsic:
            add(spec.name, "explain() (its own explanation)", "intrinsic", fwd, ex, c, len(x))
            if ex / fwd > INTRINSIC_TARGET:
                intrinsic_ok = False
        if selected_for_posthoc(cfg.evaluation.posthoc.models, spec.name, info.family):
            ph = cfg.evaluation.posthoc
            for method in DEFAULT_METHODS:
                n = min(ph.max_cases.get(method, len(x)), len(x))
                with PassCounter(model) as c:
                    t = time.perf_counter()
                    explain_posthoc(model, x[:n], method, params=ph.params.get(method), seed=seed)
                    sec = time.perf_counter() - t
                fwd_n = fwd * n / len(x)
                add(spec.name, method, "post-hoc", fwd_n, sec, c, n)
    intr = [d for d in data if d["source"] == "intrinsic"]
    summary = ("Intrinsic explanations cost " + ", ".join(f"{d['model']} {d['ratio']:.2f}x" for d in intr)
               + f" a forward pass (target <= {INTRINSIC_TARGET}x: {'met' if intrinsic_ok else 'NOT met'}); "
               "post-hoc methods on the black box cost what their sample counts say (passes per image).")
    settings = {"data": f"synthetic, {len(x)} test images, {img_size} px", "models": "the quickstart's image models "
                "(untrained weights; cost does not depend on them)", "post-hoc settings": "the quickstart's",
                "repeats": repeats, "device": dev}
    notes = ["Passes are counted by `PassCounter` (images through `forward` and through backward), not inferred "
             "from time; the ratio is wall time over the model's own batched forward pass (predict_proba) on the "
             "same images; '–' means the model's explain() computes without calling forward() (no pass to count). "
             "The prototype network's explain() includes the nearest-prototype search and the upsampled "
             "activation maps; the concept bottleneck's includes the Grad-CAM of its top concept, which for a "
             "backbone ending in average pooling and a linear layer is that concept's class activation map and is "
             "read off the same forward pass (`models/_backbones.py: cam_forward`). A model with no explanation of "
             "its own (the black box) has no explain() row: its maps are the post-hoc rows."]
    return BenchSection("explain", "Explanation cost per method", settings, summary=summary, columns=columns,
                        table=table, data={"rows": data}, notes=notes)


# ---------------------------------------------------------------------------------------------- child runs
@dataclass
class RunStats:
    """Wall time and memory of one child process (``glasszoo run ...``)."""

    command: list[str]
    returncode: int
    wall_seconds: float
    max_rss_mb: float  # wait4's peak resident set: at least the forking process's own peak (see run_measured)
    peak_rss_mb: float = float("nan")  # exact peak resident set of the main process since its exec (VmHWM)
    peak_anon_mb: float = float("nan")  # sampled peak anonymous (heap) memory of the main process
    peak_file_mb: float = float("nan")  # sampled peak file-backed resident pages of the main process (memory maps)
    peak_tree_mb: float = float("nan")  # sampled peak resident set summed over the process and its children
    output_tail: str = ""


def _parse_status(path: str | Path) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem in MB from a /proc status file (empty when unavailable)."""
    out = {}
    try:
        with open(path) as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = float(rest.split()[0]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return out


def _proc_status(pid: int) -> dict[str, float]:
    """:func:`_parse_status` of a live process (``/proc/PID/status``)."""
    return _parse_status(f"/proc/{pid}/status")


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from the parent ids in /proc/*/stat)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
                parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        frontier += kids
    return found


def run_measured(cmd: list[str], env: dict | None = None, cwd: str | Path | None = None,
                 poll_seconds: float = 0.2) -> RunStats:
    """Run ``cmd`` to completion and measure it: wall time; the exact peak resident set of the child since its
    ``exec`` (``VmHWM``; a command made by :func:`_glasszoo_command` writes its own at exit, other commands get the
    last value sampled); and, sampled every ``poll_seconds`` from /proc, the peak anonymous and file-backed memory
    of the child and the peak RSS summed over its process tree (loader workers, radiomics workers).

    ``wait4``'s ``ru_maxrss`` is kept too, but it is not the child's own peak: Linux folds the peak of the memory
    a process had before ``exec`` into it, and a child forked (or vforked) from this process had this process's
    memory, so it never reads below the benchmark's own size. Output is captured; its last lines are kept."""
    out_file = tempfile.TemporaryFile(mode="w+b")
    fd, status_path = tempfile.mkstemp(prefix="glasszoo-peak-", suffix=".txt")
    os.close(fd)
    os.unlink(status_path)
    env = dict(os.environ if env is None else env, **{_STATUS_FILE_ENV: status_path})
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out_file, stderr=subprocess.STDOUT)
    peaks = {"anon": 0.0, "file": 0.0, "tree": 0.0, "hwm": 0.0}
    sampled = threading.Event()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            st = _proc_status(proc.pid)
            if st:
                sampled.set()
                peaks["anon"] = max(peaks["anon"], st.get("RssAnon", 0.0))
                peaks["file"] = max(peaks["file"], st.get("RssFile", 0.0) + st.get("RssShmem", 0.0))
                peaks["hwm"] = max(peaks["hwm"], st.get("VmHWM", 0.0))
                tree = st.get("VmRSS", 0.0) + sum(_proc_status(c).get("VmRSS", 0.0) for c in _descendants(proc.pid))
                peaks["tree"] = max(peaks["tree"], tree)
            stop.wait(poll_seconds)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        stop.set()
        thread.join()
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out_file.seek(0)
    tail = out_file.read().decode("utf-8", "replace")[-4000:]
    out_file.close()
    nan = float("nan")
    own_peak = _parse_status(status_path).get("VmHWM", peaks["hwm"] if sampled.is_set() else nan)
    with contextlib.suppress(OSError):
        os.unlink(status_path)
    return RunStats(command=list(cmd), returncode=proc.returncode, wall_seconds=wall,
                    max_rss_mb=usage.ru_maxrss / 1024.0,  # kilobytes on Linux
                    peak_rss_mb=own_peak,
                    peak_anon_mb=peaks["anon"] if sampled.is_set() else nan,
                    peak_file_mb=peaks["file"] if sampled.is_set() else nan,
                    peak_tree_mb=peaks["tree"] if sampled.is_set() else nan, output_tail=tail)


_STATUS_FILE_ENV = "GLASSZOO_BENCH_STATUS_FILE"

# a measured `glasszoo ...` child: the CLI as the command runs it, then the process's own /proc status (with its
# exact VmHWM) to a file
_MEASURED_CLI = f"""
import os, sys
from glasszoo.evaluation.experiment.cli import entry
try:
    code = entry(sys.argv[1:])
finally:
    path = os.environ.get({_STATUS_FILE_ENV!r})
    if path and os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as src, open(path, "w") as dst:
            dst.write(src.read())
sys.exit(code)
"""


def _glasszoo_command(*args: str) -> list[str]:
    """``glasszoo ARGS`` in a child Python that reports its own exact peak memory to :func:`run_measured`."""
    return [sys.executable, "-c", _MEASURED_CLI, *args]


def _child_env(cache_dir: str | Path) -> dict:
    """The environment of a measured run: a fresh, empty cache (nothing is served from earlier runs)."""
    env = dict(os.environ)
    env["GLASSZOO_CACHE"] = str(cache_dir)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _failed(stats: RunStats, what: str) -> Exception:
    return GlasszooError(f"bench: {what} failed (exit {stats.returncode}): {' '.join(stats.command)}\n"
                        f"{stats.output_tail}")


def _accelerator(device: str) -> str:
    return "gpu" if resolve_device(device) == "cuda" else "cpu"


def scaling_config(n_cases: int, img_size: int = 64) -> dict:
    """The config of one scaling run: synthetic data (memory-mapped above the size threshold), the black box only,
    one epoch, no explanations or case figures, a small bootstrap: what grows with N is the data path."""
    return {
        "experiment": f"scaling-{n_cases}",
        "seed": 0,
        "data": {"source": "synthetic", "n_cases": int(n_cases), "img_size": int(img_size)},
        "training": {"max_epochs": 1, "batch_size": 64, "patience": 0, "progress_bar": False},
        "evaluation": {"bootstrap": 100, "explain_cases": 0, "case_figures_per_class": 0,
                       "report_misclassified": 0},
        "models": [{"name": "model", "model": _workload("scaling")[0], "params": _workload("scaling")[1]}],
    }


def section_scaling(sizes: tuple[int, ...] = (1000, 4000, 16000), img_size: int = 64,
                    device: str = "cpu") -> BenchSection:
    """``glasszoo run`` of :func:`scaling_config` at each data size N, one child process each (cold cache)."""
    accel = _accelerator(device)
    runs = []
    with tempfile.TemporaryDirectory(prefix="glasszoo-scaling-") as tmp:
        for n in sizes:
            cfg_path = Path(tmp) / f"scaling-{n}.yaml"
            cfg_path.write_text(yaml.safe_dump(scaling_config(n, img_size), sort_keys=False))
            out = Path(tmp) / f"run-{n}"
            cmd = _glasszoo_command("run", str(cfg_path), "--out", str(out), "--overwrite",
                                    "--set", f"training.accelerator={accel}")
            print(f"bench: scaling: glasszoo run at N = {n} ...", file=sys.stderr, flush=True)
            stats = run_measured(cmd, env=_child_env(Path(tmp) / f"cache-{n}"))
            if stats.returncode != 0:
                raise _failed(stats, f"glasszoo run at N = {n}")
            train_s = float("nan")
            with contextlib.suppress(OSError, KeyError, ValueError):
                metrics = json.loads(RunDir(out).metrics.read_text())
                train_s = float(next(iter(metrics["models"].values()))["cost"]["train_seconds"])
            image_mb = n * img_size * img_size * 4 / 2 ** 20
            runs.append({"n": n, "wall": stats.wall_seconds, "train_seconds": train_s, "max_rss_mb": stats.max_rss_mb,
                         "peak_rss_mb": stats.peak_rss_mb, "peak_anon_mb": stats.peak_anon_mb,
                         "peak_file_mb": stats.peak_file_mb,
                         "image_mb": image_mb, "memmap": n * img_size * img_size * 4 >= _memmap_min_bytes()})
    base = runs[0]
    columns = ["N", "images (MB)", "data in", "wall (s)", "training (s)", "wall per 1k cases (s)", "time vs N",
               "peak RSS (MB)", "peak heap (MB)", "peak file-backed (MB)", "RSS vs N"]
    table = []
    for r in runs:
        grow_n = r["n"] / base["n"]
        table.append([f"{r['n']}", f"{r['image_mb']:.0f}", "memory map" if r["memmap"] else "memory",
                      f"{r['wall']:.1f}", f"{r['train_seconds']:.1f}", f"{1000 * r['wall'] / r['n']:.2f}",
                      f"{r['wall'] / base['wall']:.2f}x for {grow_n:.0f}x",
                      f"{r['peak_rss_mb']:.0f}", f"{r['peak_anon_mb']:.0f}", f"{r['peak_file_mb']:.0f}",
                      f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x for {grow_n:.0f}x"])
    last = runs[-1]
    k = last["n"] / base["n"]
    rss0, rss1 = base["peak_rss_mb"], last["peak_rss_mb"]
    summary = (f"From N = {base['n']} to {last['n']} ({k:.0f}x the cases): wall time x{last['wall'] / base['wall']:.2f}"
               f" ({'no worse than linear' if last['wall'] / base['wall'] <= k * 1.1 else 'WORSE than linear'}), "
               f"training time x{last['train_seconds'] / base['train_seconds']:.2f}, peak RSS "
               f"x{rss1 / rss0:.2f} ({rss0:.0f} -> {rss1:.0f} MB; peak heap {base['peak_anon_mb']:.0f} -> "
               f"{last['peak_anon_mb']:.0f} MB).")
    settings = {"config": f"synthetic {img_size} px, {_describe_workload('scaling')}, 1 epoch, batch 64, "
                          f"bootstrap 100, no explanations",
                "process": "one `glasszoo run` child per N, empty cache (synthetic images rendered in the run)",
                "memory map threshold": f"{_memmap_min_bytes() / 2 ** 20:.0f} MB of images", "device": accel}
    notes = ["Peak RSS is the run's own high-water mark (`VmHWM` of /proc, exact, written by the child as it "
             "exits; `wait4`'s figure is not used, because Linux folds into it the memory the child had before "
             "`exec`, i.e. the benchmark's own). Heap (anonymous memory) and file-backed pages (shared libraries "
             "and memory-mapped data) of the main process are sampled from /proc every 0.2 s. Pages of a "
             "memory-mapped data set count in RSS once read, but they are file-backed: the kernel drops them under "
             "memory pressure instead of failing, so the heap is what a run really needs; it must not grow with N."]
    return BenchSection("scaling", "Scaling with the data size", settings, summary=summary, columns=columns,
                        table=table, data={"runs": runs}, notes=notes)


def section_quickstart(device: str = "cpu", config: str | Path | None = None) -> BenchSection:
    """``glasszoo run CONFIG`` (default ``configs/quickstart.yaml``) end to end in a child process (cold cache)."""
    cfg = _config_path(config, "quickstart")
    label = str(cfg)
    accel = _accelerator(device)
    with tempfile.TemporaryDirectory(prefix="glasszoo-quickstart-") as tmp:
        cmd = _glasszoo_command("run", str(cfg), "--out", str(Path(tmp) / "run"), "--overwrite",
                                "--set", f"training.accelerator={accel}")
        print(f"bench: quickstart: glasszoo run {label} ...", file=sys.stderr, flush=True)
        stats = run_measured(cmd, env=_child_env(Path(tmp) / "cache"))
        if stats.returncode != 0:
            raise _failed(stats, f"glasszoo run {label}")
        aucs: dict[str, float] = {}
        reference = ""
        with contextlib.suppress(OSError, KeyError, ValueError, TypeError, GlasszooError):
            metrics = json.loads(RunDir(Path(tmp) / "run").metrics.read_text())
            aucs = {name: float(block["task"]["auc"]["value"]) for name, block in metrics["models"].items()}
            reference = default_reference(metrics)
    columns = ["run", "models", "wall (s)", "peak RSS (MB)", "peak RSS of all its processes (MB)", "peak heap (MB)",
               "reference model", "its test AUC"]
    ref_auc = aucs.get(reference, float("nan"))
    table = [[f"glasszoo run {label}", f"{len(aucs)}", f"{stats.wall_seconds:.1f}", f"{stats.peak_rss_mb:.0f}",
              f"{stats.peak_tree_mb:.0f}", f"{stats.peak_anon_mb:.0f}", reference or "–", f"{ref_auc:.3f}"]]
    summary = (f"`glasszoo run {label}` runs end to end in {stats.wall_seconds / 60:.1f} min with a peak RSS of "
               f"{stats.peak_rss_mb:.0f} MB ({stats.peak_tree_mb:.0f} MB over all its processes, sampled); the "
               f"reference model ({reference or 'none'}, the report's: the first one explained post hoc only) reaches "
               f"a test AUC of {ref_auc:.3f} (the run's own check that the pipeline still learns).")
    settings = {"config": label, "process": "one child process, empty cache (radiomics features extracted in the "
                "run)", "device": accel}
    return BenchSection("quickstart", "Quickstart end to end", settings, summary=summary, columns=columns,
                        table=table, data={"wall_seconds": stats.wall_seconds, "peak_rss_mb": stats.peak_rss_mb,
                                           "peak_tree_mb": stats.peak_tree_mb, "peak_anon_mb": stats.peak_anon_mb,
                                           "test_auc": aucs, "reference": reference})


# ---------------------------------------------------------------------------------------------- CPU training
def cpu_steps_child(threads: int, steps: int, img_size: int, batch_size: int, seed: int = 0) -> None:
    """In a child process (``GLASSZOO_MALLOC_TUNING`` set by the parent): ``steps`` training steps of the ``cpu``
    workload on ``threads`` torch threads after 3 warm-up steps; prints one JSON line (seconds, page faults)."""
    applied = keep_freed_memory()
    torch.set_num_threads(threads)
    name, params = _workload("cpu")
    torch.manual_seed(seed)
    net = create_model(name, num_classes=2, in_chans=1, img_size=img_size, **params).train()
    net.to(memory_format=torch.channels_last)  # as the quickstart trains
    x = torch.rand(batch_size, 1, img_size, img_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch_size,))
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    seconds, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "faults": r1.ru_minflt - r0.ru_minflt, "sys": r1.ru_stime - r0.ru_stime,
                      "applied": applied}))


def _cpu_children(n: int, threads: int, tuning: bool, steps: int, img_size: int, batch_size: int
                  ) -> tuple[float, list[dict]]:
    """``n`` children of :func:`cpu_steps_child` started together; (wall seconds of the slowest, their lines)."""
    code = (f"from glasszoo.evaluation.experiment.bench import cpu_steps_child; "
            f"cpu_steps_child({threads}, {steps}, {img_size}, {batch_size})")
    env = {**os.environ, "GLASSZOO_MALLOC_TUNING": "1" if tuning else "0", "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(n)]
    outs = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise GlasszooError(f"bench: cpu: the timing child failed ({p.returncode}): {err.strip()[-500:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return max(o["seconds"] for o in outs), outs


def section_cpu(img_size: int = 48, batch_size: int = 64, steps: int = 20, repeats: int = 3) -> BenchSection:
    """Training steps of the quickstart's black box on the CPU, each setting in fresh child processes: glibc's
    allocator as it comes against :func:`glasszoo.training.allocator.keep_freed_memory`, on 1 and 2 threads; and
    two single-threaded processes side by side (what ``workers: 2`` does) against one process on 2 threads.
    Fastest of ``repeats`` runs per setting, the settings alternating."""
    cores = os.cpu_count() or 1
    settings_list = [("1 process, 1 thread", 1, 1, False), ("1 process, 1 thread", 1, 1, True),
                     (f"1 process, {cores} threads", 1, cores, False), (f"1 process, {cores} threads", 1, cores, True),
                     (f"{cores} processes side by side, 1 thread each", cores, 1, True)]
    best: dict[int, tuple[float, list[dict]]] = {}
    for _ in range(repeats):
        for i, (_label, n, threads, tuning) in enumerate(settings_list):
            wall, outs = _cpu_children(n, threads, tuning, steps, img_size, batch_size)
            if i not in best or wall < best[i][0]:
                best[i] = (wall, outs)
    rows, data = [], []
    for i, (label, n, threads, tuning) in enumerate(settings_list):
        wall, outs = best[i]
        images = n * steps * batch_size
        faults = sum(o["faults"] for o in outs) / (n * steps)
        data.append({"setting": label, "processes": n, "threads": threads, "keep_freed_memory": tuning,
                     "wall_seconds": wall, "images_per_second": images / wall, "faults_per_step": faults,
                     "sys_seconds": sum(o["sys"] for o in outs)})
        rows.append([label, "kept for reuse" if tuning else "glibc's default", f"{images}", f"{wall:.2f}",
                     f"{images / wall:.1f}", f"{faults:.0f}"])
    ips = [d["images_per_second"] for d in data]
    f2, f3 = data[2]["faults_per_step"], data[3]["faults_per_step"]
    summary = (f"Keeping freed memory: x{ips[1] / ips[0]:.2f} the training throughput on 1 thread, "
               f"x{ips[3] / ips[2]:.2f} on {cores} (page faults per step {f2:.0f} -> {f3:.0f}); {cores} "
               f"single-threaded processes side by side: x{ips[4] / ips[3]:.2f} one process on {cores} threads "
               f"(both with the setting).")
    name, params = _workload("cpu")
    settings = {"model": f"{name} {params} (the quickstart's black box), channels-last",
                "data": f"random {img_size} px images in memory", "batch size": batch_size,
                "steps": f"{steps} per process after 3 warm-up steps", "repeats": f"{repeats}, fastest, alternating",
                "process": "fresh child processes per setting"}
    notes = ["A training step is forward, cross-entropy, backward and an Adam step, with no data loading or "
             "logging. `glasszoo run` keeps freed memory (training/allocator.py; `GLASSZOO_MALLOC_TUNING=0` turns "
             "it off); `workers: 2` in a config trains its image models side by side as in the last row."]
    return BenchSection("cpu", "CPU training: the allocator and side-by-side processes", settings, summary=summary,
                        columns=["processes", "allocator", "images", "wall (s)", "images/s", "page faults / step"],
                        table=rows, data={"settings": data}, notes=notes)


# ---------------------------------------------------------------------------------------------- registry
@dataclass
class SectionSpec:
    """A benchmark section: ``fn(**options)`` returns a :class:`BenchSection`; it receives only the options its
    signature names (``n_cases``, ``img_size``, ``repeats``, ``device``, ``img_sizes``, ``sizes``, ...)."""

    fn: Callable[..., BenchSection]
    title: str
    in_default: bool = True  # part of ``glasszoo bench`` without --only


SECTIONS: dict[str, SectionSpec] = {}


def register_section(name: str, fn: Callable[..., BenchSection], title: str, in_default: bool = True) -> None:
    """Add (or replace) a section; the order of registration is the order of the report."""
    SECTIONS[name] = SectionSpec(fn, title, in_default)


register_section("training", section_training, "Training throughput: pipeline vs bare PyTorch loop")
register_section("explain", section_explain, "Explanation cost per method")
register_section("push", bench_push, "Prototype push")
register_section("radiomics", bench_radiomics, "Radiomics extraction")
register_section("scaling", section_scaling, "Scaling with the data size")
register_section("quickstart", section_quickstart, "Quickstart end to end")
register_section("epochs", section_epochs, "Cost per training epoch by image size", in_default=False)
register_section("cpu", section_cpu, "CPU training: the allocator and side-by-side processes")


def run_section(name: str, **options) -> BenchSection:
    """Run section ``name`` with the ``options`` its function accepts (None values: the section's default)."""
    spec = SECTIONS[name]
    accepted = inspect.signature(spec.fn).parameters
    return spec.fn(**{k: v for k, v in options.items() if v is not None and k in accepted})


# ---------------------------------------------------------------------------------------------- report
def machine_description() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    ram_gb = float("nan")
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    ram_gb = int(line.split()[1]) / 2 ** 20
                    break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram_gb, "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def _cell(v: object) -> str:
    return str(v).replace("|", "\\|")


def format_section(sec: BenchSection, command: str = "") -> str:
    """A section as Markdown: settings, the table, the summary line, notes."""
    lines = [f"## {sec.title}", "", f"<!-- bench-section: {sec.name} -->"]
    if command:
        m = machine_description()
        # the CPU of each section: --only refreshes part of the report, perhaps on another machine than the rest's
        lines += ["", f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores) with `{command}`."]
    lines += ["", "Settings: " + "; ".join(f"{k} {v}" for k, v in sec.settings.items()) + ".", ""]
    if sec.columns:
        lines += ["| " + " | ".join(sec.columns) + " |", "|" + "|".join("---" for _ in sec.columns) + "|"]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in sec.table]
    else:
        lines += ["| operation | images | seconds | images/s | x reference | note |", "|---|---:|---:|---:|---:|---|"]
        for r in sec.rows:
            lines.append(f"| {r.operation} | {r.images} | {r.seconds:.3f} | {r.images_per_second:.0f} | "
                         f"{r.ratio:.2f} ({r.reference}) | {r.note} |")
    if sec.summary:
        lines += ["", sec.summary]
    for note in sec.notes:
        lines += ["", note]
    return "\n".join(lines)


FULL_COMMAND = "glasszoo bench --out docs/performance.md"


def _split_sections(text: str) -> dict[str, str]:
    """The ``## `` sections of an earlier report, keyed by their section name (from the marker comment, or by
    title for reports written before the markers)."""
    by_title = {spec.title: name for name, spec in SECTIONS.items()}
    out: dict[str, str] = {}
    for chunk in re.split(r"(?m)^(?=## )", text):
        if not chunk.startswith("## "):
            continue
        title = chunk.splitlines()[0][3:].strip()
        marker = re.search(r"<!-- bench-section: (\S+) -->", chunk)
        name = marker.group(1) if marker else by_title.get(title, title)
        out[name] = chunk.rstrip() + "\n"
    return out


def write_markdown(sections: list[BenchSection], command: str, previous: str | None = None) -> str:
    """The whole ``docs/performance.md`` text: a header with the machine, then one block per section.

    Sections of ``previous`` (the file as it was) that were not run this time are kept as they were, each with its
    own "Measured ... with ..." line, so ``--only`` refreshes part of the report without losing the rest.
    """
    m = machine_description()
    head = ["# Performance", "",
            "Written by the benchmark command; do not edit by hand. Regenerate everything with:", "", "```",
            FULL_COMMAND, "```", "",
            f"Machine of the last run: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
            f"{m['ram_gb']:.0f} GiB RAM, GPU {m['gpu']}, torch {m['torch']}, Python {m['python']}; last run "
            f"{m['date']} (`{command}`). In-process timings are medians (push, radiomics) or the fastest "
            "(training) of repeated runs after a warm-up; ratios compare operations timed back to back in one "
            "process; `glasszoo run` figures come from child processes. Each section names the CPU it was measured "
            "on: compare figures of different sections only when it is the same.", ""]
    blocks = {name: text for name, text in _split_sections(previous or "").items()}
    for sec in sections:
        blocks[sec.name] = format_section(sec, command) + "\n"
    order = [n for n in SECTIONS if n in blocks] + [n for n in blocks if n not in SECTIONS]
    return "\n".join(head + [blocks[n] for n in order])


def bench_command(argv: list[str]) -> str:
    """The command line as typed (for the report)."""
    return "glasszoo bench" + ("" if not argv else " " + " ".join(argv))

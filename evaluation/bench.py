"""``glasszoo bench``: what the zoo's operations cost, measured in one process as ratios to a plain forward pass.

Absolute times on a shared machine are noisy; ratios measured back to back in one process are not (much). Every
section times its operations as the median of ``repeats`` runs after one warm-up run, and reports images per
second and the ratio to the reference operation of the section. ``write_markdown`` turns the results into
``docs/performance.md`` together with a description of the machine.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from glasszoo.models import create_model
from glasszoo.models.base import as_tensor


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
    """A table of timed operations plus the settings they ran with."""

    name: str
    title: str
    settings: dict
    rows: list[BenchRow] = field(default_factory=list)
    summary: str = ""


def median_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one untimed warm-up run."""
    fn()
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(statistics.median(times))


@torch.no_grad()
def forward_pass(model: torch.nn.Module, images: np.ndarray, batch_size: int) -> None:
    """A plain no-grad eval-mode forward pass of ``model`` over ``images`` in batches (the reference cost)."""
    model.eval()
    for i in range(0, len(images), batch_size):
        model(as_tensor(images[i:i + batch_size], model.device))


def bench_push(n_cases: int = 2000, img_size: int = 48, batch_size: int = 256, repeats: int = 3,
               seed: int = 0) -> BenchSection:
    """ProtoPNet's push against a forward pass of the same network over the same training images.

    The network is the quickstart's ProtoPNet (ResNet-18 stage 3, 10 prototypes of 16 dimensions per class) on
    synthetic phantoms; its weights do not change the cost. Rows: the forward pass (reference), the push pass alone
    (running minima; ``recalibrate_bn=False``), the full push as trained (BatchNorm re-estimation on the
    training split first, then the pass, then recording each prototype's source map), and the last-layer fit that
    follows it.
    """
    from glasszoo.training.synthetic import make_synthetic

    torch.manual_seed(seed)
    cs = make_synthetic(n_cases=n_cases, img_size=img_size, seed=seed)
    train = cs.indices("train")
    images = cs.images[train]
    model = create_model("protopnet", num_classes=cs.num_classes, in_chans=cs.in_chans, img_size=cs.img_size,
                         backbone="resnet18", stem="standard", feature_stage=3, prototypes_per_class=10,
                         prototype_dim=16, push_batch_size=batch_size)
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
               f"{full / fwd:.2f}x with the BatchNorm re-estimation it runs first.")
    settings = {"data": f"synthetic, {n} training images, {img_size} px", "batch_size": batch_size,
                "model": "protopnet (resnet18, stage 3, 2 x 10 prototypes, dim 16)", "repeats": repeats}
    return BenchSection("push", "ProtoPNet push", settings, rows, summary)


def bench_radiomics(n_cases: int = 2000, img_size: int = 48, repeats: int = 1, seed: int = 0,
                    max_cases: int = 600) -> BenchSection:
    """pyradiomics extraction (the 7 default 2-D feature classes inside the lesion mask) with 1 and 2 workers, and
    the cost of a second run served from the on-disk cache. Uses at most ``max_cases`` synthetic cases."""
    import tempfile

    from glasszoo.training.radiomics import extract_radiomics
    from glasszoo.training.synthetic import make_synthetic

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


SECTIONS: dict[str, Callable[..., BenchSection]] = {"push": bench_push, "radiomics": bench_radiomics}


def machine_description() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def format_section(sec: BenchSection) -> str:
    """A section as Markdown: settings, the table, the summary line."""
    lines = [f"## {sec.title}", "", "Settings: " + "; ".join(f"{k} {v}" for k, v in sec.settings.items()) + ".", "",
             "| operation | images | seconds | images/s | x reference | note |", "|---|---:|---:|---:|---:|---|"]
    for r in sec.rows:
        lines.append(f"| {r.operation} | {r.images} | {r.seconds:.3f} | {r.images_per_second:.0f} | "
                     f"{r.ratio:.2f} ({r.reference}) | {r.note} |")
    if sec.summary:
        lines += ["", sec.summary]
    return "\n".join(lines)


def write_markdown(sections: list[BenchSection], command: str) -> str:
    """The whole ``docs/performance.md`` text."""
    m = machine_description()
    head = ["# Performance", "",
            "Written by the benchmark command; do not edit by hand. Regenerate with:", "", "```", command, "```", "",
            f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), device {m['device']}, "
            f"torch {m['torch']}, Python {m['python']}; measured {m['date']}. Times are medians of repeated runs "
            f"after a warm-up; ratios compare operations timed back to back in one process.", ""]
    return "\n".join(head + [format_section(s) + "\n" for s in sections])

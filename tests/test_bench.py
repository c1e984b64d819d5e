"""``glasszoo bench``: the training comparison, child-process measurements, the section registry, the report and the
command line. Timings are never compared: only counts, structure and errors."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

from glasszoo.evaluation.experiment import bench
from glasszoo.evaluation.experiment.bench import BenchRow, BenchSection, run_measured, write_markdown
from glasszoo.evaluation.experiment.cli import main

TINY = {"backbone": "resnet18", "stem": "standard"}


def test_bench_training_compares_pipeline_and_bare_loop():
    f = bench.bench_training(img_size=16, n_cases=60, batch_size=16, epochs=1, params=TINY, repeats=1,
                             device="cpu")
    assert f["n_train"] == 39 and f["n_val"] == 9 and f["device"] == "cpu"
    for key in ("bare_ips", "pipeline_ips", "val_ips", "fit_ips", "ratio"):
        assert math.isfinite(f[key]) and f[key] > 0, key
    assert f["ratio"] == pytest.approx(f["pipeline_ips"] / f["bare_ips"])
    assert len(f["repeat_ratios"]) == 1


def test_bare_loop_counts_images_and_respects_max_batches():
    import torch

    from glasszoo.training.synthetic import make_synthetic
    from glasszoo.training.train import build_image_model

    cs = make_synthetic(n_cases=40, img_size=16, seed=0, memmap=False)
    model = build_image_model("blackbox", TINY, cs)
    images = torch.from_numpy(cs.images[:33])
    labels = torch.from_numpy(cs.labels[:33])
    seen, seconds = bench.bare_training_loop(model, images, labels, 8, 2, 1e-3, 1e-4)
    assert seen == 2 * 32 and seconds > 0  # 33 % 8 == 1: the lone last case is left out, as in the pipeline
    seen, _ = bench.bare_training_loop(model, images, labels, 8, 5, 1e-3, 1e-4, max_batches=3)
    assert seen == 24


def test_training_section_table(monkeypatch):
    def fake(img_size, n_cases, batch_size, epochs, repeats, device, seed):
        return {"img_size": img_size, "n_train": 130, "n_val": 30, "epochs": epochs, "batch_size": batch_size,
                "model": "blackbox", "params": {}, "device": "cpu", "precision": "32-true", "bare_ips": 100.0,
                "pipeline_ips": 95.0, "ratio": 0.95, "repeat_ratios": [0.95, 0.97], "val_ips": 300.0,
                "fit_ips": 80.0}

    monkeypatch.setattr(bench, "bench_training", fake)
    sec = bench.run_section("training", n_cases=200, img_sizes=(28, 64), repeats=2, device="cpu", sizes=(1, 2))
    assert sec.name == "training" and len(sec.table) == 8 and all(len(r) == len(sec.columns) for r in sec.table)
    assert "0.95 at 28 px, 0.95 at 64 px" in sec.summary and "met" in sec.summary
    text = bench.format_section(sec)
    assert text.count("\n| 28 px |") == 4 and "**0.95**" in text


def test_run_section_passes_only_accepted_options(monkeypatch):
    got = {}

    def section(n_cases: int = 5, device: str = "cpu") -> BenchSection:
        got.update(n_cases=n_cases, device=device)
        return BenchSection("fake", "Fake", {})

    monkeypatch.setitem(bench.SECTIONS, "fake", bench.SectionSpec(section, "Fake", in_default=False))
    bench.run_section("fake", n_cases=None, device="cpu", img_size=48, sizes=(1,))
    assert got == {"n_cases": 5, "device": "cpu"}  # None: the section's default; unknown options are not passed


def test_run_measured_reports_memory_and_failures():
    code = "import numpy as np, time; a = np.ones(40 * 2**20 // 8); time.sleep(0.5); print('done', a.sum())"
    stats = run_measured([sys.executable, "-c", code], poll_seconds=0.05)
    assert stats.returncode == 0 and "done" in stats.output_tail
    assert stats.max_rss_mb >= 40 and stats.wall_seconds > 0
    assert stats.peak_anon_mb >= 30 or math.isnan(stats.peak_anon_mb)  # sampled (Linux /proc)
    failed = run_measured([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    assert failed.returncode == 3 and "boom" in failed.output_tail


def test_measured_cli_reports_its_own_peak_not_the_benchmarks(tmp_path):
    """A `glasszoo` child reports its own high-water mark: 400 MB held by this (forking) process are in wait4's
    figure but not in the child's peak. The child writes its /proc status to the file the benchmark names, and that
    file's VmHWM is the peak reported."""
    import subprocess

    from glasszoo.evaluation.experiment.bench import _STATUS_FILE_ENV, _glasszoo_command, _parse_status

    status = tmp_path / "status"
    subprocess.run(_glasszoo_command("--version"), check=True, capture_output=True,
                   env={**os.environ, _STATUS_FILE_ENV: str(status)})
    assert 5 <= _parse_status(status)["VmHWM"] < 400  # the child's own status, written at exit

    held = np.ones(400 * 2**20 // 8)
    stats = run_measured(_glasszoo_command("--version"))
    assert stats.returncode == 0 and held.sum() > 0
    assert stats.max_rss_mb >= 400  # wait4: the forking process's memory folded in
    assert 5 <= stats.peak_rss_mb < 400 and stats.peak_rss_mb < stats.max_rss_mb - 200


def test_report_keeps_sections_not_run(monkeypatch):
    old = ("# Performance\n\nold header\n\n## Prototype push\n\nSettings: x.\n\n| a |\n|---|\n| 1 |\n\n"
           "## Radiomics extraction\n\nSettings: y.\n\nold radiomics figures\n")
    sec = BenchSection("training", "Training throughput: pipeline vs bare PyTorch loop", {"model": "m"},
                       summary="ratio 0.97", columns=["a", "b"], table=[["1", "2|3"]])
    text = write_markdown([sec], "glasszoo bench --only training", previous=old)
    assert text.startswith("# Performance") and text.count("# Performance") == 1 and "old header" not in text
    order = [text.index(t) for t in ("## Training throughput", "## Prototype push", "## Radiomics extraction")]
    assert order == sorted(order)  # registry order
    assert "old radiomics figures" in text and "| 1 | 2\\|3 |" in text
    assert "<!-- bench-section: training -->" in text and "glasszoo bench --only training" in text
    m = bench.machine_description()
    assert m["cores"] >= 1 and m["cpu"] and f"{m['ram_gb']:.0f} GiB RAM" in text
    # the section run now names its CPU (the kept ones keep whatever line they had)
    assert f"on {m['cpu']} ({m['cores']} cores) with `glasszoo bench --only training`" in text
    # a second partial run replaces its own section only
    sec2 = BenchSection("push", "Prototype push", {"data": "d"},
                        rows=[BenchRow("forward pass", 10, 1.0, "forward pass", 1.0)])
    text2 = write_markdown([sec2], "glasszoo bench --only push", previous=text)
    assert "ratio 0.97" in text2 and "Settings: x." not in text2 and "old radiomics figures" in text2
    assert text2.count("## Prototype push") == 1


def test_cli_runs_a_section_and_writes_the_report(monkeypatch, tmp_path, capsys):
    got = {}

    def section(n_cases: int = 5, img_sizes: tuple = (28,), sizes: tuple = (1000,), device: str = "cpu"):
        got.update(n_cases=n_cases, img_sizes=img_sizes, sizes=sizes, device=device)
        return BenchSection("fake", "Fake section", {"n": n_cases}, summary="fake summary")

    monkeypatch.setitem(bench.SECTIONS, "fake", bench.SectionSpec(section, "Fake section", in_default=False))
    out = tmp_path / "perf.md"
    code = main(["bench", "--only", "fake", "--n-cases", "7", "--train-sizes", "28,64", "--scaling-sizes",
                 "100,400", "--device", "cpu", "--out", str(out)])
    assert code == 0
    assert got == {"n_cases": 7, "img_sizes": (28, 64), "sizes": (100, 400), "device": "cpu"}
    assert "fake summary" in capsys.readouterr().out
    assert "## Fake section" in out.read_text() and "fake summary" in out.read_text()
    code = main(["bench", "--only", "fake", "--img-size", "40", "--out", "-"])
    assert code == 0 and got["img_sizes"] == (40,)


@pytest.mark.parametrize("args, match", [
    (["--only", "nope"], "unknown benchmark section 'nope'"),
    (["--only", "training", "--scaling-sizes", "1,x"], "--scaling-sizes: expected comma-separated"),
    (["--only", "training", "--train-sizes", "0"], "--train-sizes: expected comma-separated positive"),
    (["--only", "training", "--device", "tpu"], "--device: must be cpu, cuda or auto"),
    (["--only", "training", "--repeats", "0"], "--repeats: must be >= 1"),
])
def test_cli_errors(args, match, capsys):
    assert main(["bench", *args, "--out", "-"]) == 2
    assert match in capsys.readouterr().err


def test_default_sections_and_registry():
    assert list(bench.SECTIONS)[:6] == ["training", "explain", "push", "radiomics", "scaling", "quickstart"]
    assert all(bench.SECTIONS[n].in_default for n in ("training", "explain", "push", "radiomics", "scaling",
                                                       "quickstart"))
    assert np.isclose(bench.TRAINING_TARGET, 0.90)
    assert not bench.SECTIONS["epochs"].in_default  # minutes at 128 px: only with --only epochs


def test_epochs_section_times_each_model_at_each_size():
    sec = bench.section_epochs(img_sizes=(16, 32), n_cases=60, batch_size=16, epochs=2)
    assert [(r[0], r[1]) for r in sec.table] == [("16 px", "blackbox"), ("16 px", "attention_classifier"),
                                                 ("32 px", "blackbox"), ("32 px", "attention_classifier")]
    for d in sec.data["sizes"]:
        assert d["train_seconds_per_epoch"] > 0 and d["val_seconds_per_epoch"] > 0
        assert d["train_seconds_per_1000_images"] == pytest.approx(1000 * d["train_seconds_per_epoch"] / d["n_train"])
        assert d["fit_wall_seconds"] > 2 * d["train_seconds_per_epoch"] * 0.5
    assert sec.summary.startswith("One training epoch over 1,000 images costs blackbox x")


def test_bench_runs_from_an_installed_package(tmp_path, monkeypatch):
    """No repository-root assumption: the workloads ship with the package (bench_workloads.yaml, registered models
    only), and the config-reading sections look in the current folder or take --config, failing clearly."""
    from glasszoo.models import ConfigError, list_models

    assert not hasattr(bench, "REPO_ROOT")
    assert set(bench.WORKLOADS) == {"training", "push", "scaling", "epochs", "cpu"}
    assert all(m in list_models() for w in bench.WORKLOADS.values()
               for m in ([w["model"]] if "model" in w else list(w["models"])))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"configs/quickstart.yaml not found; run the bench from the folder that "
                                          r"holds configs/, or pass --config PATH"):
        bench.section_quickstart()
    with pytest.raises(ConfigError, match="bench explain: experiment config nope.yaml not found"):
        bench.section_explain(config="nope.yaml")

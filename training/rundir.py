"""The one owner of a run directory's layout: every file name a run writes or reads is spelled here.

The runner, saved runs, the audit, multi-seed runs, the report, ``glasszoo explain`` and the adapters all go
through :class:`RunDir` and :class:`ModelDir`, so a file cannot be written under one name and looked for under
another::

    <run>/config.yaml  run.json  splits.csv  metrics.json  tradeoff.csv  report.html  [audit.json  seeds.json]
    <run>/models/<name>/checkpoint.ckpt | model.pkl   logs/   predictions.csv   heatmap_<method>.npz
    <run>/figures/roc.png  comparison.png  audit.png  <model>_<method>.png  <model>_randomisation.png
                  <model>_intervention.png  cases/<model>/<case>.png  cases/heatmaps/<case>.png
    <run>/explanations/<model>/<case>.png          (glasszoo explain)
    <run>/seeds/seed-<s>/                          (a whole run per extra seed)
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def package_version() -> str:
    """The installed glasszoo version (``"unknown"`` when run from a source tree that is not installed)."""
    try:
        return version("glasszoo")
    except PackageNotFoundError:
        return "unknown"


def safe_filename(case_id: str) -> str:
    """A file name for a case id (ids of folder sources are relative paths with '/' and spaces)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(case_id)).strip("._") or "case"


@dataclass(frozen=True)
class ModelDir:
    """``<run>/models/<name>/``: one model's weights, logs, predictions and saved heatmaps."""

    path: Path

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.ckpt"

    @property
    def pickle(self) -> Path:
        """Where runs before skops storage kept a tabular model (a pickle: only opened with ``trust_run``)."""
        return self.path / "model.pkl"

    @property
    def skops(self) -> Path:
        """A tabular model, stored with ``skops.io`` (opening it cannot run code: types are checked first)."""
        return self.path / "model.skops"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.csv"

    @property
    def logs(self) -> Path:
        """Lightning's CSV logs (``metrics.csv`` inside)."""
        return self.path / "logs"

    def heatmap(self, method: str) -> Path:
        return self.path / f"heatmap_{method}.npz"


@dataclass(frozen=True)
class RunDir:
    """A run directory and the names of everything in it."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    # ------------------------------------------------------------------ files at the top
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def run_info(self) -> Path:
        return self.path / "run.json"

    @property
    def splits(self) -> Path:
        return self.path / "splits.csv"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def tradeoff(self) -> Path:
        return self.path / "tradeoff.csv"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def audit(self) -> Path:
        return self.path / "audit.json"

    @property
    def seeds(self) -> Path:
        return self.path / "seeds.json"

    def seed_run(self, seed: int) -> RunDir:
        return RunDir(self.path / "seeds" / f"seed-{seed}")

    # ------------------------------------------------------------------ models
    def model(self, name: str) -> ModelDir:
        return ModelDir(self.path / "models" / name)

    @property
    def annotations(self) -> Path:
        """What readers said of the run in the viewer (flagged prototypes); the only file the viewer writes."""
        return self.path / "annotations.json"

    def explanations(self, model: str) -> Path:
        return self.path / "explanations" / model

    # ------------------------------------------------------------------ figures
    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def roc_figure(self) -> Path:
        return self.figures / "roc.png"

    @property
    def comparison_figure(self) -> Path:
        return self.figures / "comparison.png"

    @property
    def audit_figure(self) -> Path:
        return self.figures / "audit.png"

    def method_figure(self, model: str, method: str) -> Path:
        """One explanation method's maps of one model (``evaluation.figure_cases`` cases)."""
        return self.figures / f"{model}_{method}.png"

    def randomisation_figure(self, model: str) -> Path:
        return self.figures / f"{model}_randomisation.png"

    def intervention_figure(self, model: str) -> Path:
        return self.figures / f"{model}_intervention.png"

    @property
    def cases(self) -> Path:
        return self.figures / "cases"

    def case_dir(self, model: str) -> Path:
        return self.cases / model

    def case_figure(self, model: str, case_id: str) -> Path:
        return self.case_dir(model) / f"{safe_filename(case_id)}.png"

    def case_counterfactual(self, model: str, case_id: str) -> Path:
        """The model's counterfactual of a case (``Counterfactual.to_dict()`` plus its ``text``), beside its figure."""
        return self.case_dir(model) / f"{safe_filename(case_id)}.counterfactual.json"

    HEATMAP_CASES = "heatmaps"  # the folder under cases/ with every heatmap of a case side by side

    def case_heatmaps(self, case_id: str) -> Path:
        return self.cases / self.HEATMAP_CASES / f"{safe_filename(case_id)}.png"

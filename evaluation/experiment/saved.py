"""Open a finished run again: its config, its data (same split), its trained models, and new images to explain.

Nothing is retrained. The data is rebuilt from the run's resolved ``config.yaml`` (relative paths against the
directory the run was started from, recorded in ``run.json``) and checked case by case against ``splits.csv``, so
an explanation made later refers to exactly the cases the run trained and tested on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glasszoo.evaluation.experiment.config import ExperimentConfig, ModelSpec, load_config
from glasszoo.models import DataError
from glasszoo.training._imageio import fit_square, read_array, to_channels, to_unit_range
from glasszoo.training.adapters import Adapter, Adapters
from glasszoo.training.caseset import CaseSet
from glasszoo.training.data import load_caseset
from glasszoo.training.rundir import RunDir
from glasszoo.training.settings import FeaturesConfig


def _preview(values: list[str], n: int = 5) -> str:
    shown = ", ".join(values[:n])
    return f"{shown}, ... ({len(values)} in all)" if len(values) > n else shown


@dataclass
class SavedRun:
    """A run directory written by ``glasszoo run``, opened for reuse.

    Attributes:
        run_dir: the directory.
        config: the run's resolved experiment config.
        metrics: the run's ``metrics.json``.
        info: the run's ``run.json`` (start directory, glasszoo version), empty for runs written before it existed.
        trust_run: open tabular models stored as pickles (``model.pkl``, runs of older versions): a pickle can run
            code when it is opened, so this is off unless the user says so (``--trust-run``).
    """

    run_dir: Path
    config: ExperimentConfig
    metrics: dict
    info: dict = field(default_factory=dict)
    trust_run: bool = False
    _caseset: CaseSet | None = field(default=None, repr=False)
    _adapters: Adapters | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ models
    @property
    def model_names(self) -> list[str]:
        """Names of the models the run finished (those in ``metrics.json``), in config order."""
        done = self.metrics.get("models", {})
        return [s.name for s in self.config.models if s.name in done]

    def spec(self, name: str) -> ModelSpec:
        names = self.model_names
        for s in self.config.models:
            if s.name == name and name in names:
                return s
        raise DataError(f"{self.run_dir}: no finished model named '{name}' in this run; "
                        f"finished models: {', '.join(names) or 'none'}")

    @property
    def dir(self) -> RunDir:
        return RunDir(self.run_dir)

    def adapter(self, name: str) -> Adapter:
        """The adapter of the finished model ``name`` on the run's data (see ``glasszoo.training.adapters``)."""
        if self._adapters is None:
            self._adapters = Adapters(self.caseset, self.config.features, self.trust_run)
        spec = self.spec(name)
        return self._adapters(spec.model, self.features_of(name, self._adapters, self.caseset.images))

    def features_of(self, name: str, adapters: Adapters, images: np.ndarray) -> FeaturesConfig:
        """The feature settings of model ``name``; with ``region: predicted`` the run's segmentation model first
        outlines ``images`` (every case of the data ``adapters`` serve) into ``adapters.predicted_masks``."""
        features = self.config.features_for(self.spec(name))
        seg = features.segmenter  # set only with region: predicted
        if seg and seg not in adapters.predicted_masks:
            adapters.predicted_masks[seg] = self.load_model(seg).predict_masks(images)
        return features

    def load_model(self, name: str):
        """The trained model ``name`` with the weights the run selected (no retraining).

        Image models are rebuilt from the config and their checkpoint loaded with ``weights_only=True``; tabular
        models are read from ``model.skops``, which may build only the types the config's model holds
        (``glasszoo.training.storage``). Neither can run code from the run folder.
        """
        spec = self.spec(name)
        return self.adapter(name).load(spec.model, spec.params, self.dir.model(name))

    # ------------------------------------------------------------------ data
    @property
    def caseset(self) -> CaseSet:
        """The run's data, rebuilt and verified against ``splits.csv`` (loaded once)."""
        if self._caseset is None:
            self._caseset = self._load_caseset()
        return self._caseset

    def _load_caseset(self) -> CaseSet:
        base = self.info.get("cwd")
        try:
            cs = load_caseset(self.config.data, seed=self.config.seed, base_dir=base)
        except DataError as exc:
            raise DataError(f"cannot rebuild the data of run {self.run_dir}: {exc}") from None
        splits_csv = self.dir.splits
        if splits_csv.is_file():
            saved = pd.read_csv(splits_csv, dtype={"case_id": str, "split": str})
            same = (len(saved) == cs.n_cases and np.array_equal(saved["case_id"].to_numpy(dtype=str),
                                                                  cs.case_ids.astype(str))
                    and np.array_equal(saved["split"].to_numpy(dtype=str), cs.split.astype(str)))
            if not same:
                raise DataError(f"the data of run {self.run_dir} has changed since the run: its cases or split no "
                                f"longer match {splits_csv} ({len(saved)} cases then, {cs.n_cases} now)")
        return cs

    def case_row(self, case_id: str) -> int:
        """The row of ``case_id`` in :attr:`caseset`; a clear error (with examples of valid ids) if it is unknown."""
        ids = self.caseset.case_ids.astype(str)
        hit = np.flatnonzero(ids == str(case_id))
        if not len(hit):
            test = ids[self.caseset.indices("test")].tolist()
            raise DataError(f"case id '{case_id}' is not in the data of run {self.run_dir}; "
                            f"test case ids are e.g. {_preview(test)} (all ids: {self.dir.splits})")
        return int(hit[0])

    def read_image(self, path: str | Path, resize: bool = False, to_grey: bool = False,
                   name: str | None = None) -> np.ndarray:
        """An image file as the run's models take it: float32 [C, H, W] in [0, 1].

        The intensity scaling of the run's folder source is applied (``dtype`` for other sources). Channels are
        converted where the meaning is unambiguous (:func:`match_channels`: a grey scan saved as RGB with three
        identical channels, a grey image for an RGB run); a colour image for a grey run is converted to luminance
        only with ``to_grey``. With ``resize`` the image is resized to the models' size as the folder source does
        (its ``resize`` mode). Otherwise a wrong size or channel count is a :class:`DataError` naming the file
        (``name``, default the path: what messages call it).
        """
        path = Path(path)
        label = name or str(path)
        data = self.config.data
        where = f"image {label}"
        plane = read_array(path, where, slice_index=data.get("slice_index", "middle"))
        x = to_unit_range(plane, data.get("intensity", "dtype"), path, where)
        cs = self.caseset
        want_h, want_w = cs.img_size
        x = match_channels(x, cs.in_chans, to_grey, label)
        if x.shape[1:] != (want_h, want_w):
            if not resize:
                raise DataError(f"{label}: the image is {x.shape[1]}x{x.shape[2]} pixels but the models of this run "
                                f"take {want_h}x{want_w}; resize it first, or pass --resize to resize it as the run's "
                                f"data source does")
            if want_h != want_w:
                raise DataError(f"{label}: cannot resize to the non-square input {want_h}x{want_w}")
            x = fit_square(x, want_h, data.get("resize", "stretch"))
        return np.ascontiguousarray(x, dtype=np.float32)


def match_channels(x: np.ndarray, channels: int, to_grey: bool = False, name: str = "the image") -> np.ndarray:
    """Bring an image [C, H, W] to ``channels`` where the meaning is unambiguous, else refuse with a clear message.

    Three identical channels for a grey run: a grey scan saved as RGB, one channel is kept. A grey image for an RGB
    run: the grey is replicated into the three channels (what a grey scan shown in colour is). Colour for a grey run:
    converted to luminance (0.299 R + 0.587 G + 0.114 B) only with ``to_grey`` (the colours carry meaning the
    models never saw); without it a :class:`DataError` names the option.
    """
    have = x.shape[0]
    if have == channels:
        return x
    if channels == 3 and have == 1:
        return to_channels(x, 3)
    if channels == 1 and have == 3:
        if np.abs(x - x[:1]).max() <= 1e-6:
            return np.ascontiguousarray(x[:1])
        if to_grey:
            return to_channels(x, 1)
        raise DataError(f"{name}: the image is colour (3 different channels) but the models of this run take grey "
                        f"(1 channel); convert it to luminance with --to-grey (0.299 R + 0.587 G + 0.114 B), or "
                        f"convert it yourself")
    raise DataError(f"{name}: the image has {have} channels; the models of this run take {channels}")


def open_run(run_dir: str | Path, trust_run: bool = False) -> SavedRun:
    """Open the run in ``run_dir`` (a directory written by ``glasszoo run``); ``trust_run`` allows opening models
    stored as pickles (see :class:`SavedRun`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir} not found")
    rd = RunDir(run_dir)
    cfg_path, metrics_path = rd.config, rd.metrics
    for p in (cfg_path, metrics_path):
        if not p.is_file():
            raise DataError(f"{p} not found: RUN_DIR must be a directory written by 'glasszoo run'")
    cfg = load_config(cfg_path)
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{metrics_path}: not valid JSON ({exc})") from None
    info: dict[str, Any] = {}
    if rd.run_info.is_file():
        info = json.loads(rd.run_info.read_text())
    return SavedRun(run_dir=run_dir, config=cfg, metrics=metrics, info=info, trust_run=trust_run)

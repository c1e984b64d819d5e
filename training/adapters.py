"""One adapter per input kind: how a model of that kind is built, fitted, asked, explained, saved and loaded.

The runner, saved runs, the audit, the bench and the CLI call an adapter and never branch on the input kind:
:class:`Adapters` picks the adapter of a registered model. An :class:`ImageAdapter` feeds the CaseSet's images
and trains with the shared Lightning pipeline; a :class:`FeatureAdapter` feeds a feature table
(:func:`glasszoo.training.features.feature_table`, built once per data set and shared by every tabular model of a
run) and calls the estimator's ``fit``. Both see the same CaseSet, split and seed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from glasszoo.models import DataError, ModelInfo, create_model, missing_requirements, model_info
from glasszoo.training.caseset import CaseSet
from glasszoo.training.features import feature_descriptions, feature_table
from glasszoo.training.rundir import ModelDir
from glasszoo.training.settings import FeaturesConfig, TrainingConfig
from glasszoo.training.storage import load_tabular, save_tabular


@dataclass
class Fitted:
    """What fitting one model produced: its wall time and, for trained networks, the epochs."""

    train_seconds: float
    training: dict | None = None  # {"epochs", "best_epoch", "best_val_auc"} of image models


def check_data(name: str, model: str, params: dict, cs: CaseSet) -> None:
    """Raise :class:`DataError` naming the model when ``cs`` lacks what the registered ``model`` built with
    ``params`` declares it needs (lesion masks, concepts, two classes)."""
    missing = missing_requirements(model_info(model).requirements(params), cs, cs.indices("train"))
    if missing:
        raise DataError(f"model '{name}' ({model}) needs {' and '.join(missing)}, which data set '{cs.name}' "
                        f"does not have")


class Adapter:
    """The operations the pipeline runs on a model, for one input kind (see the subclasses)."""

    input_kind: ClassVar[str] = ""
    torch_model: ClassVar[bool] = False  # a torch module: pass counting, perturbation metrics and post-hoc explainers

    def __init__(self, cs: CaseSet, features: FeaturesConfig | None = None, trust_run: bool = False) -> None:
        self.cs = cs
        self.features = features or FeaturesConfig()  # the feature table's settings (feature adapters read them)
        self.trust_run = trust_run  # open weights stored as pickles (runs of older versions); see training.storage

    def build(self, model: str, params: dict) -> Any:
        raise NotImplementedError

    def fit(self, model: Any, mdir: ModelDir, tcfg: TrainingConfig, seed: int, name: str) -> Fitted:
        """Fit on the training split (the validation split selects), save the weights under ``mdir``."""
        raise NotImplementedError

    def inputs(self, rows: np.ndarray) -> np.ndarray:
        """What the model reads for the cases at ``rows``: images [n, C, H, W] or feature rows [n, F]."""
        raise NotImplementedError

    def predict(self, model: Any, rows: np.ndarray) -> np.ndarray:
        """Class probabilities [n, classes] of the cases at ``rows``."""
        return model.predict_proba(self.inputs(rows))

    def explain(self, model: Any, rows: np.ndarray, **kwargs: Any) -> list:
        """The model's own explanations of the cases at ``rows`` (a list, possibly empty)."""
        return list(model.explain(self.inputs(rows), case_ids=self.cs.case_ids[rows], **kwargs))

    def inputs_for_image(self, image: np.ndarray, name: str = "the model") -> np.ndarray:
        """The model's input for a new image [C, H, W] that is not a case of the data (``glasszoo explain --image``)."""
        raise NotImplementedError

    def n_params(self, model: Any) -> int:
        raise NotImplementedError

    def saved(self, mdir: ModelDir) -> bool:
        """Whether ``mdir`` holds this kind's weights (and the predictions) of a finished model."""
        return self.weights(mdir).is_file() and mdir.predictions.is_file()

    weights_name: ClassVar[str] = "weights"  # what the weights file is called in messages

    def store(self, model: Any, mdir: ModelDir) -> None:
        """Save a model fitted elsewhere (e.g. an edit of a saved one) in ``mdir`` as :meth:`fit` saves its own."""
        raise NotImplementedError

    def weights(self, mdir: ModelDir) -> Any:
        raise NotImplementedError

    def load(self, model: str, params: dict, mdir: ModelDir) -> Any:
        """The fitted model saved in ``mdir`` (no retraining); a :class:`DataError` names a missing file."""
        path = self.weights(mdir)
        if not path.is_file():
            raise DataError(f"{path} not found: the run's {self.weights_name} of '{mdir.path.name}' is missing")
        return self._restore(model, params, path, mdir.path.name)

    def _restore(self, model: str, params: dict, path: Any, name: str) -> Any:
        raise NotImplementedError

    def prepare(self) -> None:
        """Build what the adapter's models share (e.g. the feature table), so ``dataset_info`` describes it."""

    def table_info(self) -> dict:
        """How the adapter's feature table was made, once it is built (empty for image models)."""
        return {}

    def reads(self) -> dict:
        """What the adapter's models read, for the log, ``metrics.json`` (a model's ``reads``) and the report:
        ``text`` in words and ``ground_truth_masks_at_test`` (whether a test case's expert outline is an input)."""
        raise NotImplementedError

    def dataset_info(self) -> dict:
        """What the adapter adds under ``metrics.json``'s ``dataset`` (e.g. the feature table's provenance)."""
        return {}


class ImageAdapter(Adapter):
    """Image models: built sized for the data, trained by the shared Lightning pipeline, saved as a checkpoint."""

    input_kind = "image"
    torch_model = True

    def build(self, model: str, params: dict) -> Any:
        from glasszoo.training.train import build_image_model  # heavy: Lightning

        return build_image_model(model, params, self.cs)

    def fit(self, model: Any, mdir: ModelDir, tcfg: TrainingConfig, seed: int, name: str) -> Fitted:
        from glasszoo.training.train import train_image_model  # heavy: Lightning

        res = train_image_model(model, self.cs, tcfg, mdir.path, seed=seed, name=name)
        return Fitted(res.train_seconds, {"epochs": res.epochs, "best_epoch": res.best_epoch,
                                          "best_val_auc": res.best_val_auc})

    def inputs(self, rows: np.ndarray) -> np.ndarray:
        return self.cs.images[rows]

    def reads(self) -> dict:
        c, h, w = self.cs.images.shape[1:]
        return {"table": "image", "text": f"the images ({c}x{h}x{w})", "ground_truth_masks_at_test": False}

    def inputs_for_image(self, image: np.ndarray, name: str = "the model") -> np.ndarray:
        return np.asarray(image, dtype=np.float32)[None]

    def n_params(self, model: Any) -> int:
        return int(sum(p.numel() for p in model.parameters()))

    weights_name = "checkpoint"

    def store(self, model: Any, mdir: ModelDir) -> None:
        from glasszoo.training.train import save_checkpoint  # heavy: Lightning

        mdir.path.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, mdir.checkpoint)

    def weights(self, mdir: ModelDir) -> Any:
        return mdir.checkpoint

    def _restore(self, model: str, params: dict, path: Any, name: str) -> Any:
        from glasszoo.training.train import load_checkpoint  # heavy: Lightning

        net = self.build(model, params)
        try:
            load_checkpoint(net, path)
        except (RuntimeError, KeyError) as exc:
            raise DataError(f"{path}: does not fit model '{name}' as configured "
                            f"({str(exc).splitlines()[0]})") from None
        return net.eval()


class FeatureAdapter(Adapter):
    """Tabular models: fed the run's feature table (built on first use), fitted in-process, stored with skops
    (``glasszoo.training.storage``: opening a run cannot run code from it)."""

    input_kind = "features"

    def __init__(self, cs: CaseSet, features: FeaturesConfig | None = None, trust_run: bool = False,
                 predicted_masks: dict[str, np.ndarray] | None = None) -> None:
        super().__init__(cs, features, trust_run)
        self._table: tuple[np.ndarray, list[str]] | None = None
        self._info: dict = {}
        # segmentation model name -> its predicted masks [N, H, W] of every case (shared by the run's adapters)
        self.predicted_masks = predicted_masks if predicted_masks is not None else {}

    @property
    def predicted(self) -> bool:
        return self.features.region == "predicted"

    def _cases(self) -> tuple[CaseSet, FeaturesConfig]:
        """The cases and settings the table is computed from: with ``region: predicted`` the data with its masks
        replaced by the segmentation model's, read as masks."""
        if not self.predicted:
            return self.cs, self.features
        seg = self.features.segmenter
        masks = self.predicted_masks.get(seg)
        if masks is None:
            raise DataError(f"features.region: predicted reads the lesion masks of segmentation model '{seg}', "
                            f"which this run has not produced (did '{seg}' fail?)")
        cs = copy.copy(self.cs)  # shallow: the same images, labels and split; only the masks differ
        cs.masks = np.asarray(masks, dtype=np.uint8)
        return cs, dataclasses.replace(self.features, region="mask", segmenter=None)

    @property
    def table(self) -> tuple[np.ndarray, list[str]]:
        """The feature matrix [N, F] of every case and its column names (computed once)."""
        if self._table is None:
            t = time.perf_counter()
            cs, features = self._cases()
            X, names, finfo = feature_table(cs, features, return_info=True)
            self._table = (X, names)
            self._info = {"kind": self.features.kind, "n_features": len(names),
                          "seconds": time.perf_counter() - t, **(finfo or {})}
            if self.predicted:
                self._info["masks"] = f"predicted by {self.features.segmenter}"
        return self._table

    def reads(self) -> dict:
        f = self.features
        what = ("pyradiomics table" if f.kind == "radiomics" else "built-in intensity table (first-order statistics)")
        n = self._info.get("n_features")
        what += f" of {n} features" if n is not None else ""
        has_masks = self.cs.masks is not None and bool(np.asarray(self.cs.masks).any())
        oracle = f.region == "mask" and has_masks
        if f.region == "predicted":
            where = f"inside the lesion masks predicted by '{f.segmenter}' (no outline needed at test time)"
        elif oracle:
            where = "inside the ground-truth lesion masks, of the test cases too (an oracle the image models lack)"
        elif f.region == "otsu":
            where = "inside the Otsu foreground of each image"
        else:
            where = "over the whole image" + (" (the data has no masks)" if f.region == "mask" else "")
        return {"table": f.kind, "region": f.region, **({"segmenter": f.segmenter} if f.segmenter else {}),
                "n_features": n, "text": f"{what} {where}", "ground_truth_masks_at_test": oracle}

    def build(self, model: str, params: dict) -> Any:
        return create_model(model, **params)

    def fit(self, model: Any, mdir: ModelDir, tcfg: TrainingConfig, seed: int, name: str) -> Fitted:
        X, names = self.table
        cs = self.cs
        train, val = cs.indices("train"), cs.indices("val")
        np.random.seed(seed)  # for estimators that draw from the global numpy RNG
        t = time.perf_counter()
        model.fit(X[train], cs.labels[train], X[val], cs.labels[val], feature_names=names,
                  feature_descriptions=feature_descriptions(names))
        seconds = time.perf_counter() - t
        mdir.path.mkdir(parents=True, exist_ok=True)
        self.store(model, mdir)
        return Fitted(seconds)

    def store(self, model: Any, mdir: ModelDir) -> None:
        mdir.path.mkdir(parents=True, exist_ok=True)
        save_tabular(model, mdir.skops)

    def inputs(self, rows: np.ndarray) -> np.ndarray:
        return self.table[0][rows]

    def inputs_for_image(self, image: np.ndarray, name: str = "the model") -> np.ndarray:
        raise DataError(f"'{name}' reads a feature table built over the run's data set (with its lesion masks and "
                        f"the training split's imputation), not a single new image; explain a case of the run with "
                        f"--case CASE_ID")

    def n_params(self, model: Any) -> int:
        return int(getattr(model, "n_params_", self.table[0].shape[1]))

    weights_name = "fitted model"

    def weights(self, mdir: ModelDir) -> Any:
        return mdir.skops

    def saved(self, mdir: ModelDir) -> bool:
        return (mdir.skops.is_file() or mdir.pickle.is_file()) and mdir.predictions.is_file()

    def load(self, model: str, params: dict, mdir: ModelDir) -> Any:
        return load_tabular(mdir.skops, model_info(model).cls, mdir.pickle, self.trust_run)

    def prepare(self) -> None:
        self.table  # noqa: B018  (built once, on first use)

    def dataset_info(self) -> dict:
        return {"features": dict(self._info)} if self._info else {}

    def table_info(self) -> dict:
        """How this adapter's table was made, in brief (kind, size, masks, seconds, how many cases failed and were
        imputed), once it is built; the full provenance of the run's shared table is under ``dataset.features``."""
        out = {k: v for k, v in self._info.items() if not isinstance(v, (dict, list))}
        if isinstance(self._info.get("failures"), dict):
            out["n_failed_cases"] = len(self._info["failures"])
        if isinstance(self._info.get("imputed"), dict):
            out["n_imputed_cases"] = self._info["imputed"].get("n_cases")
        return out


ADAPTERS: dict[str, type[Adapter]] = {"image": ImageAdapter, "features": FeatureAdapter}


@dataclass
class Adapters:
    """The adapters of one data set, one per input kind and feature settings, created on first use (so each feature
    table is built once and only when a tabular model asks for it)."""

    cs: CaseSet
    features: FeaturesConfig | None = None
    trust_run: bool = False
    predicted_masks: dict[str, np.ndarray] = field(default_factory=dict)  # see FeatureAdapter.predicted_masks
    _made: dict[tuple[str, str], Adapter] = field(default_factory=dict)

    def for_info(self, info: ModelInfo, features: FeaturesConfig | None = None) -> Adapter:
        """The adapter of a model of ``info``; ``features`` (a model's own feature settings) replaces the run's."""
        kind = info.input_kind
        feats = features or self.features or FeaturesConfig()
        key = (kind, json.dumps(dataclasses.asdict(feats), sort_keys=True, default=str) if kind == "features" else "")
        if key not in self._made:
            if kind == "features":
                self._made[key] = FeatureAdapter(self.cs, feats, self.trust_run, self.predicted_masks)
            else:
                self._made[key] = ADAPTERS[kind](self.cs, feats, self.trust_run)
        return self._made[key]

    def __call__(self, model: str, features: FeaturesConfig | None = None) -> Adapter:
        """The adapter of the registered model ``model``."""
        return self.for_info(model_info(model), features)

    def dataset_info(self) -> dict:
        """What the run's adapters add under ``dataset`` (the first feature table made, for the feature
        settings shared by the run; a model with its own settings records its table under its ``reads``)."""
        out: dict = {}
        for a in reversed(list(self._made.values())):
            out.update(a.dataset_info())
        return out

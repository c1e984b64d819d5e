"""The few methods every zoo model answers, for image models and tabular models, with every optional hook declared.

Shared code (the training pipeline, the runner, the report) never asks a model what it is (no ``hasattr``, no family
names): it calls the hooks below, whose defaults say "nothing to add". A model overrides the ones it needs.

What a model needs from the data is declared in ``requires`` and checked for every model of a config before the
first one trains (:func:`missing_requirements`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from glasszoo.models.counterfactuals import ROBUST_SD, feature_counterfactual
from glasszoo.models.explanations import Counterfactual


def as_tensor(x: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """A float32 tensor on ``device`` from a numpy array or tensor."""
    t = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    return t.to(device=device, dtype=torch.float32)


def batched_no_grad(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int, fn) -> list:
    """Apply ``fn(xb)`` to batches of ``x`` (as float tensors on the model's device) in eval mode without gradients;
    the model's training mode is restored. Returns the list of per-batch results."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out.append(fn(as_tensor(x[i:i + batch_size], next(model.parameters()).device)))
    finally:
        model.train(was_training)
    return out



REQUIREMENTS: dict[str, str] = {
    "masks": "lesion masks in the training split",
    "concepts": "a concept matrix (data.concepts, or concept columns in the CSV)",
    "binary": "exactly two classes",
}
"""What a model may require of the data (the values of ``requires``), and how the check says it."""


class CaseData(Protocol):
    """What the models read of a data set (a ``glasszoo.training.CaseSet`` or a subset of one)."""

    images: np.ndarray
    labels: np.ndarray
    case_ids: np.ndarray
    class_names: list[str]
    masks: np.ndarray | None
    concepts: np.ndarray | None
    concept_names: list[str]
    positive_class: int
    name: str


def missing_requirements(requires: tuple[str, ...], data: CaseData, train_rows: np.ndarray | None = None) -> list[str]:
    """The requirements of ``requires`` that ``data`` does not meet, in words (empty when it meets them all)."""
    missing = []
    for need in requires:
        if need not in REQUIREMENTS:
            raise ValueError(f"unknown requirement {need!r}; known: {sorted(REQUIREMENTS)}")
        if need == "masks":
            masks = data.masks
            rows = slice(None) if train_rows is None else train_rows
            ok = masks is not None and bool(np.asarray(masks[rows]).any())
        elif need == "concepts":
            ok = data.concepts is not None and len(data.concept_names) > 0
        else:
            ok = len(data.class_names) == 2
        if not ok:
            missing.append(REQUIREMENTS[need])
    return missing


class ImageModel(nn.Module):
    """Base class of the zoo's image models.

    ``forward(x)`` returns class logits [N, classes] and nothing else, so Lightning, torchmetrics and captum work
    unchanged. Anything more a model computes (prototype activations, concept logits, attention maps) comes from a
    named method. Every optional hook is declared here with a default that adds nothing.

    Class attributes:
        explanation_kinds: the explanation kinds ``explain`` returns (empty: the model has no explanation of its own
            and is explained post hoc only).
        requires: what the model needs of the data (keys of :data:`REQUIREMENTS`).
        segments: whether :meth:`predict_masks` gives lesion masks (the run then scores them against the data's).
    """

    explanation_kinds: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    segments: ClassVar[bool] = False

    def __init__(self, num_classes: int, in_chans: int, img_size: int | tuple[int, int]) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ what the model needs of the data
    @classmethod
    def requirements(cls, params: dict) -> tuple[str, ...]:
        """What a model built with ``params`` (the config's keywords) needs of the data. Default: ``requires``."""
        return tuple(cls.requires)

    @classmethod
    def data_params(cls, data: CaseData, train_rows: np.ndarray) -> dict:
        """Keyword arguments the model takes from the data besides classes, channels and size (e.g. a concept
        bottleneck's concept names and their training-split scaling). Default: none."""
        return {}

    # ------------------------------------------------------------------ training hooks
    def extra_losses(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Additional named loss terms (already weighted) added to the cross-entropy. Default: none.

        ``batch`` holds ``image``, ``label`` and, when the data has them, ``mask`` and ``concepts``.
        """
        return {}

    @property
    def task_loss_weight(self) -> float:
        """Weight of the cross-entropy on the logits (e.g. 0 when only a concept head trains by SGD)."""
        return 1.0

    def param_groups(self, lr: float, weight_decay: float) -> list[dict] | None:
        """Optimizer parameter groups (e.g. per-part learning rates); None means one group of all parameters."""
        return None

    def training_callbacks(self, caseset: Any) -> list:
        """Lightning callbacks the model needs during training (e.g. staged schedules, prototype push).

        ``caseset`` is the run's CaseSet, so a callback can read the training split. Default: none.
        """
        return []

    def finish_training(self, caseset: Any) -> bool:
        """Called once the chosen epoch's weights are loaded at the end of training (``caseset``: the run's
        CaseSet); returns whether it changed the weights (the pipeline then saves the checkpoint again). Default:
        nothing to do."""
        return False

    @property
    def schedule_epochs(self) -> int | None:
        """The number of epochs the model's own stage schedule needs (the pipeline then trains exactly that many,
        whatever ``training.max_epochs`` says); None (default): the config's ``max_epochs``."""
        return None

    def selectable_epoch(self, epoch: int) -> bool:
        """Whether the weights after ``epoch`` may be chosen as the final model (e.g. only after a prototype push).

        Checkpoint selection and early stopping only consider selectable epochs. Default: every epoch.
        """
        return True

    # ------------------------------------------------------------------ predictions and explanations
    def predict_proba(self, x: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Class probabilities [N, classes] for images [N, C, H, W] in [0, 1]."""
        out = batched_no_grad(self, x, batch_size, lambda xb: torch.softmax(self(xb).float(), dim=1).cpu().numpy())
        return np.concatenate(out, axis=0) if out else np.zeros((0, self.num_classes), np.float32)

    def predict_masks(self, x: np.ndarray | torch.Tensor, threshold: float = 0.5) -> np.ndarray:
        """Predicted lesion masks uint8 [N, H, W], for models with ``segments = True``."""
        raise NotImplementedError(f"{type(self).__name__} does not segment")

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each attention gate's map [N, 1, h, w] (models with attention gates; their case figure shows them).
        Default: none."""
        return []

    def prototype_activation_maps(self, x: torch.Tensor) -> torch.Tensor | None:
        """Every prototype's activation map [N, P, h, w] over the patch grid of images x (not upsampled; larger means
        more similar), for the prototype-part metrics (``glasszoo.evaluation.prototype_parts``: consistency and
        stability). The caller puts the model in eval mode without gradients. Default: None (no prototypes)."""
        return None

    def relevant_prototypes(self) -> torch.Tensor | None:
        """Which prototypes take part in decisions, bool [P] (e.g. those with a non-zero class weight); the
        prototype-part metrics count only these. Default: None (all of them)."""
        return None

    def prototype_classes(self) -> torch.Tensor | None:
        """The class owning each prototype, long [P]; a prototype's consistency is then measured on the images of
        its class. Default: None (prototypes owned by no class: measured on every image)."""
        return None

    # ------------------------------------------------------------------ what a reader may change
    def disable_prototypes(self, prototypes: list[int], caseset: Any) -> dict:
        """Switch ``prototypes`` off (a reader said their reason is wrong) and refit the last layer only, by the
        model's convex last-layer problem, on the training split of ``caseset``; the prototypes stay off in the saved
        weights and never appear in explanations again. Returns what the edit did (``disabled``: every prototype off
        now, ``n_relevant_before`` / ``n_relevant_after``). Default: the model has no prototypes."""
        raise NotImplementedError(f"{type(self).__name__} has no prototypes to switch off")

    def disabled_prototypes(self) -> list[int]:
        """The prototypes switched off by :meth:`disable_prototypes` (default: none)."""
        return []

    def set_concepts(self, x: np.ndarray | torch.Tensor, values: dict[str, float]) -> np.ndarray | None:
        """Class probabilities [N, classes] of images ``x`` with the named concepts set to ``values`` (data units:
        1 present, 0 absent for a binary concept) and the others as the model predicts them: a reader's correction.
        Default: None (the model has no concepts)."""
        return None

    def explain(self, x: np.ndarray | torch.Tensor, target: np.ndarray | None = None,
                case_ids: np.ndarray | None = None, **kwargs: Any) -> list:
        """The model's own explanations of ``x`` for class ``target`` (default: the predicted class), as a list.

        Every explanation is an object of ``glasszoo.models.explanations``; a model with an explanation of its own
        returns at least one :class:`Heatmap` of the input's spatial shape, so its maps meet the same metrics as the
        post-hoc ones. Default: ``[]`` (no explanation of its own: the model is explained post hoc).
        """
        return []

    def explain_global(self):
        """A global explanation, for models that have one."""
        raise NotImplementedError(f"{type(self).__name__} has no global explanation")

    def reading_load(self, x: np.ndarray | torch.Tensor) -> dict | None:
        """What a reader must take in to follow one decision of this model, for the trade-off chart: ``{"count":
        number (the mean over the cases ``x`` when it varies per case), "unit": plural noun (e.g. "prototypes"),
        "definition": one sentence}``. ``x``: the model's inputs of the test cases. Default: None -- the decision
        cannot be followed from the model's explanation (a map shows where the model looked, not how it decided);
        the chart draws such a model as a band at its AUC."""
        return None

    def extra_metrics(self, test: CaseData, train: CaseData) -> dict:
        """Model-specific figures for ``metrics.json`` computed on the ``test`` cases the run passes (``train``
        for what refers to the training split, e.g. where prototypes come from). A returned ``explanation`` block
        is merged into the model's explanation scores; any other key becomes a block of its own. Default: none."""
        return {}


class TabularModel:
    """Base class of scikit-learn style models on a named feature table.

    ``fit(X, y, X_val=None, y_val=None, feature_names=None, feature_descriptions=None)`` returns ``self``; learned
    attributes end in ``_``. ``X`` is a float array [N, F] whose column names are given by ``feature_names``;
    ``feature_descriptions`` maps names to plain-language text for the global explanation.
    """

    explanation_kinds: ClassVar[tuple[str, ...]] = ("feature_attribution",)
    requires: ClassVar[tuple[str, ...]] = ()
    segments: ClassVar[bool] = False
    stored_types: ClassVar[tuple[str, ...]] = ()
    """Types (``module.QualName``) a fitted model holds besides the ones ``skops.io`` trusts by default (numpy,
    scipy, scikit-learn estimators) and its own class: the only others a saved run may make when it is opened."""

    @classmethod
    def requirements(cls, params: dict) -> tuple[str, ...]:
        """What a model built with ``params`` needs of the data. Default: ``requires``."""
        return tuple(cls.requires)

    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
            feature_names: list[str] | None = None, feature_descriptions: dict[str, str] | None = None
            ) -> TabularModel:
        raise NotImplementedError

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def explain(self, X: np.ndarray, target: np.ndarray | None = None, case_ids: np.ndarray | None = None) -> list:
        """Per-case explanations of the rows of ``X`` as a list (a :class:`FeatureAttribution` first)."""
        raise NotImplementedError

    def explain_global(self):
        raise NotImplementedError(f"{type(self).__name__} has no global explanation")

    def counterfactual(self, X: np.ndarray, target: np.ndarray | int | None = None, max_changes: int = 3,
                       class_names: list[str] | None = None, case_ids: np.ndarray | None = None) -> Counterfactual:
        """Per row of ``X``, the smallest change of its features, each within its training range, that flips the
        decision to ``target`` (default: the runner-up class), measured in robust training standard deviations
        (:func:`glasszoo.models.counterfactuals.robust_scale`)
        (:func:`glasszoo.models.counterfactuals.feature_counterfactual`; at most ``max_changes`` features).

        Needs ``feature_lo_``, ``feature_hi_`` and ``feature_scale_`` (the training minimum, maximum and robust
        deviation of each feature), which the zoo's glass-box models record when they are fitted.
        """
        ranges = [getattr(self, a, None) for a in ("feature_lo_", "feature_hi_", "feature_scale_")]
        if any(r is None for r in ranges):
            raise NotImplementedError(f"{type(self).__name__} records no training ranges of its features (refit it "
                                      f"with this version to search counterfactuals)")
        X = np.asarray(X, dtype=np.float64)
        names = list(getattr(self, "feature_names_", [f"x{j}" for j in range(X.shape[1])]))
        descriptions = getattr(self, "feature_descriptions_", {})
        targets = np.broadcast_to(np.asarray(-1 if target is None else target), (len(X),))
        cases = [feature_counterfactual(self.predict_proba, row, *ranges, names,
                                        target=None if int(t) < 0 else int(t), max_changes=max_changes,
                                        descriptions=descriptions) for row, t in zip(X, targets)]
        return Counterfactual(space="features", cases=cases, cost_unit=ROBUST_SD,
                              class_names=class_names, case_ids=case_ids)

    def complexity_(self) -> dict:
        """How big the fitted model is (terms, nodes, points; see each model). Default: nothing to report."""
        return {}

    def reading_load(self, X: np.ndarray) -> dict | None:
        """What a reader must take in to follow one decision (``{"count", "unit", "definition"}``, the count a mean
        over the rows of ``X`` when it varies per case); see :meth:`ImageModel.reading_load`. Default: None."""
        return None

    def extra_metrics(self, test: Any, train: Any) -> dict:
        """Model-specific blocks for ``metrics.json`` (default: ``complexity`` when the model reports one)."""
        c = self.complexity_()
        return {"complexity": c} if c else {}

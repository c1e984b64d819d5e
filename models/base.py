"""The few methods every zoo model answers, for image models and tabular models."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


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


class ImageModel(nn.Module):
    """Base class of the zoo's image models.

    ``forward(x)`` returns class logits [N, classes] and nothing else, so Lightning, torchmetrics and captum work
    unchanged. Anything more a model computes (prototype activations, concept logits, attention maps) comes from a
    named method. ``extra_losses`` lets a model add terms to the shared training loss.
    """

    explanation_kinds: ClassVar[tuple[str, ...]] = ("heatmap",)

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

    def extra_losses(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Additional named loss terms (already weighted) added to the cross-entropy. Default: none.

        ``batch`` holds ``image``, ``label`` and, when the data has them, ``mask`` and ``concepts``.
        """
        return {}

    @property
    def requires_masks(self) -> bool:
        """Whether training needs lesion masks (checked before training starts). Default: no."""
        return False

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

    def selectable_epoch(self, epoch: int) -> bool:
        """Whether the weights after ``epoch`` may be chosen as the final model (e.g. only after a prototype push).

        Checkpoint selection and early stopping only consider selectable epochs. Default: every epoch.
        """
        return True

    def explanation_metrics(self, caseset: Any) -> dict:
        """Model-specific explanation figures for ``metrics.json`` (e.g. prototype quality), merged under the
        model's ``explanation`` key after training. Default: none."""
        return {}

    def predict_proba(self, x: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Class probabilities [N, classes] for images [N, C, H, W] in [0, 1]."""
        out = batched_no_grad(self, x, batch_size, lambda xb: torch.softmax(self(xb).float(), dim=1).cpu().numpy())
        return np.concatenate(out, axis=0) if out else np.zeros((0, self.num_classes), np.float32)

    def explain(self, x: np.ndarray | torch.Tensor, target: np.ndarray | None = None,
                case_ids: np.ndarray | None = None, **kwargs: Any):
        """The model's own explanation of ``x`` for class ``target`` (default: the predicted class).

        Returns one explanation object (see ``glasszoo.models.explanations``) or a list of them; every image model
        returns at least one :class:`Heatmap` with the input's spatial shape, so all models meet the same metrics.
        """
        raise NotImplementedError

    def explain_global(self):
        """A global explanation, for models that have one."""
        raise NotImplementedError(f"{type(self).__name__} has no global explanation")


class TabularModel:
    """Base class of scikit-learn style models on a named feature table.

    ``fit(X, y, X_val=None, y_val=None)`` returns ``self``; learned attributes end in ``_``. ``X`` is a float array
    [N, F] whose column names are given by ``feature_names``.
    """

    explanation_kinds: ClassVar[tuple[str, ...]] = ("feature_attribution",)

    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
            feature_names: list[str] | None = None) -> TabularModel:
        raise NotImplementedError

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def explain(self, X: np.ndarray, target: np.ndarray | None = None, case_ids: np.ndarray | None = None):
        raise NotImplementedError

    def explain_global(self):
        raise NotImplementedError(f"{type(self).__name__} has no global explanation")

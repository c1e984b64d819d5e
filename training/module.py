"""The one LightningModule that trains every image model of the zoo."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from glasszoo.models.base import ImageModel


def auc_score(y: np.ndarray, proba: np.ndarray) -> float:
    """Binary AUC of class 1, or macro one-vs-rest AUC; NaN when undefined."""
    try:
        if proba.shape[1] == 2:
            return float(roc_auc_score(y, proba[:, 1]))
        return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(range(proba.shape[1]))))
    except ValueError:
        return float("nan")


class ClassifierModule(L.LightningModule):
    """Wraps any :class:`ImageModel`: weighted cross-entropy (times the model's ``task_loss_weight``) plus the
    model's own ``extra_losses``.

    Logs ``train_loss`` (and each extra term), ``val_loss``, ``val_auc`` and ``val_select`` (``val_auc`` on epochs
    the model's ``selectable_epoch`` allows, else -1: what early stopping and checkpoint selection watch).

    Args:
        model: the image model (``forward`` returns logits).
        lr: learning rate.
        weight_decay: decoupled weight decay (AdamW) or L2 (Adam, SGD).
        optimizer: ``adamw``, ``adam`` or ``sgd`` (momentum 0.9, Nesterov).
        scheduler: ``cosine`` (to zero over ``max_epochs``), ``onecycle`` (warm-up to ``lr`` then anneal, per step;
            Smith & Topin 2019) or ``none``.
        max_epochs: for the cosine schedule.
        class_weights: optional per-class cross-entropy weights.
    """

    def __init__(self, model: ImageModel, lr: float = 1e-3, weight_decay: float = 1e-4, optimizer: str = "adamw",
                 scheduler: str = "cosine", max_epochs: int = 20, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.save_hyperparameters(ignore=["model", "class_weights"])
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.empty(0),
                             persistent=False)
        self._val_probs: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _loss(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        weight = self.class_weights if self.class_weights.numel() else None
        return F.cross_entropy(logits.float(), batch["label"], weight=weight)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["image"])
        ce = self._loss(batch, logits) * self.model.task_loss_weight
        extras = self.model.extra_losses(batch, logits)
        loss = ce + sum(extras.values()) if extras else ce
        bs = len(batch["label"])
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=bs)
        for name, value in extras.items():
            self.log(f"train_{name}", value, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.model(batch["image"])
        self.log("val_loss", self._loss(batch, logits), on_step=False, on_epoch=True, batch_size=len(batch["label"]))
        self._val_probs.append(torch.softmax(logits.float(), 1).detach().cpu())
        self._val_labels.append(batch["label"].detach().cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._val_probs:
            return
        probs = torch.cat(self._val_probs).numpy()
        labels = torch.cat(self._val_labels).numpy()
        self._val_probs.clear()
        self._val_labels.clear()
        auc = auc_score(labels, probs)
        acc = float((probs.argmax(1) == labels).mean())
        auc = auc if np.isfinite(auc) else 0.0
        self.log("val_auc", auc, prog_bar=True)
        # what checkpoint selection and early stopping watch: val_auc on epochs the model allows to be chosen
        self.log("val_select", auc if self.model.selectable_epoch(int(self.current_epoch)) else -1.0)
        self.log("val_acc", acc)

    def configure_optimizers(self):
        hp = self.hparams
        groups = self.model.param_groups(hp.lr, hp.weight_decay)
        params = groups if groups is not None else [p for p in self.model.parameters() if p.requires_grad]
        if hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=hp.weight_decay)
        else:
            raise ValueError(f"unknown optimizer {hp.optimizer!r}")
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "onecycle":
            total = int(self.trainer.estimated_stepping_batches)
            # each parameter group peaks at its own lr (models may set per-part rates in param_groups)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                        total_steps=max(total, 1))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, hp.max_epochs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

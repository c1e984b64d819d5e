"""The one LightningModule that trains every image model of the zoo."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from glasszoo.models.base import ImageModel
from glasszoo.models.scoring import auc_score


class ClassifierModule(L.LightningModule):
    """Wraps any :class:`ImageModel`: weighted cross-entropy (times the model's ``task_loss_weight``) plus the
    model's own ``extra_losses``.

    Logs ``train_loss`` (and each extra term), ``val_loss``, ``val_auc`` and ``val_select`` (``val_auc``: what early
    stopping and checkpoint selection watch). Only epochs the model's ``selectable_epoch`` allows are validated: the
    others (e.g. ProtoPNet's epochs before its last push) log ``val_select`` -1 alone, without a forward pass, since
    their weights can never be chosen.

    Args:
        model: the image model (``forward`` returns logits).
        lr: learning rate.
        weight_decay: decoupled weight decay (AdamW) or L2 (Adam, SGD).
        optimizer: ``adamw``, ``adam`` or ``sgd`` (momentum 0.9, Nesterov).
        scheduler: ``cosine`` (to zero over ``max_epochs``), ``onecycle`` (warm-up to ``lr`` then anneal, per step;
            Smith & Topin 2019) or ``none``.
        max_epochs: for the cosine schedule.
        class_weights: optional per-class cross-entropy weights.
        channels_last: train in the channels-last memory layout (NHWC): the model's 4-D weights are converted when
            fitting is set up and every batch's images in the training and validation steps (faster convolutions
            with mixed precision on recent GPUs; the numbers are the same up to floating-point order).

    Under distributed training the validation predictions of all ranks are gathered (cases a rank repeated to even
    out the shares are counted once), so ``val_auc`` is that of the whole validation split on every rank.
    """

    def __init__(self, model: ImageModel, lr: float = 1e-3, weight_decay: float = 1e-4, optimizer: str = "adamw",
                 scheduler: str = "cosine", max_epochs: int = 20, class_weights: torch.Tensor | None = None,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.model = model
        self.channels_last = bool(channels_last)
        self.save_hyperparameters(ignore=["model", "class_weights"])
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.empty(0),
                             persistent=False)
        self._val_probs: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._val_index: list[torch.Tensor] = []
        self._train_sums: dict[str, torch.Tensor] = {}
        self._train_count = 0
        self._val_loss_sum: torch.Tensor | float = 0.0
        self._val_count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def setup(self, stage: str) -> None:
        # before the strategy moves the model to its device and wraps it (DDP), and before the optimisers exist
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _world_size(self) -> int:
        trainer = self._trainer
        return 1 if trainer is None else int(trainer.world_size)

    def _images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["image"]
        if self.channels_last and x.dim() == 4:  # on the device already: a cheap re-layout there
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _loss(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        weight = self.class_weights if self.class_weights.numel() else None
        return F.cross_entropy(logits.float(), batch["label"], weight=weight)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(self._images(batch))
        ce = self._loss(batch, logits) * self.model.task_loss_weight
        extras = self.model.extra_losses(batch, logits)
        loss = ce + sum(extras.values()) if extras else ce
        # epoch means weighted by batch size, summed here and logged once per epoch: a self.log call per step costs
        # more than a small model's step on a GPU
        bs = len(batch["label"])
        for name, value in (("loss", loss), *extras.items()):
            total = torch.as_tensor(value).detach().float() * bs
            self._train_sums[name] = self._train_sums[name] + total if name in self._train_sums else total
        self._train_count += bs
        return loss

    def on_train_epoch_start(self) -> None:
        self._train_sums, self._train_count = {}, 0

    def on_train_epoch_end(self) -> None:
        if not self._train_count:
            return
        sync = self._world_size() > 1  # ranks see the same number of cases (the sampler pads the shares)
        for name, total in self._train_sums.items():
            self.log(f"train_{name}", total / self._train_count, prog_bar=name == "loss", sync_dist=sync)
        self._train_sums, self._train_count = {}, 0

    def _selectable(self) -> bool:
        return bool(self.model.selectable_epoch(int(self.current_epoch)))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if not self._selectable():  # weights that cannot be chosen: nothing to score
            return
        logits = self.model(self._images(batch))
        bs = len(batch["label"])
        self._val_loss_sum = self._val_loss_sum + self._loss(batch, logits).detach() * bs
        self._val_count += bs
        self._val_probs.append(torch.softmax(logits.float(), 1).detach())
        self._val_labels.append(batch["label"].detach())
        index = batch.get("index")
        if index is None:  # batches built elsewhere: number them in order
            start = sum(len(t) for t in self._val_index)
            index = torch.arange(start, start + len(batch["label"]), device=batch["label"].device)
        self._val_index.append(index.detach())

    def _gathered_validation(self) -> tuple[np.ndarray, np.ndarray]:
        probs, labels, index = torch.cat(self._val_probs), torch.cat(self._val_labels), torch.cat(self._val_index)
        self._val_probs.clear()
        self._val_labels.clear()
        self._val_index.clear()
        if self._world_size() > 1:  # every rank has the same number of cases (the sampler pads the shares)
            probs, labels, index = (t.flatten(0, 1) for t in self.all_gather((probs, labels, index)))
        index, first = np.unique(index.cpu().numpy(), return_index=True)
        return probs.cpu().numpy()[first], labels.cpu().numpy()[first]

    def on_validation_epoch_start(self) -> None:
        self._val_loss_sum, self._val_count = 0.0, 0

    def on_validation_epoch_end(self) -> None:
        sync = self._world_size() > 1  # val_loss: mean of the ranks' means; the rest: equal on every rank
        if not self._selectable():
            self.log("val_select", -1.0, sync_dist=sync)
            return
        if not self._val_probs:
            return
        self.log("val_loss", self._val_loss_sum / self._val_count, sync_dist=sync)  # mean over cases, as train_loss
        probs, labels = self._gathered_validation()
        auc = auc_score(labels, probs)
        acc = float((probs.argmax(1) == labels).mean())
        auc = auc if np.isfinite(auc) else 0.0
        self.log("val_auc", auc, prog_bar=True, sync_dist=sync)
        # what checkpoint selection and early stopping watch: val_auc on epochs the model allows to be chosen
        self.log("val_select", auc, sync_dist=sync)
        self.log("val_acc", acc, sync_dist=sync)

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

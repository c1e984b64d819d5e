"""Train one image model of the zoo on a CaseSet with Lightning, and load it back."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import torch.utils.deterministic as det
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from glasszoo.models import ImageModel, create_model, model_info
from glasszoo.training.allocator import keep_freed_memory
from glasszoo.training.atomic import atomic_write
from glasszoo.training.caseset import CaseSet
from glasszoo.training.datamodule import CaseSetDataModule
from glasszoo.training.module import ClassifierModule
from glasszoo.training.rundir import ModelDir
from glasszoo.training.settings import TrainingConfig


class SelectableEarlyStopping(EarlyStopping):
    """Early stopping on ``val_select`` that ignores epochs the model does not allow to be chosen.

    Staged models (e.g. ProtoPNet before its push) report ``val_select = -1``; those epochs neither count
    towards ``patience`` nor stop training.
    """

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        model = trainer.lightning_module.model
        if not model.selectable_epoch(int(trainer.current_epoch)):
            return
        super()._run_early_stopping_check(trainer)


class ThrottledProgressBar(TQDMProgressBar):
    """Lightning's progress bar, redrawn at most every ``min_seconds`` (and at the end of each loop) instead of after
    every batch: a redraw per step is measurable overhead when steps take milliseconds (small models, GPUs)."""

    def __init__(self, min_seconds: float = 0.25) -> None:
        super().__init__()
        self.min_seconds = min_seconds
        self._last_draw = 0.0

    def _should_update(self, current: int, total: int) -> bool:
        now = time.monotonic()
        if not self.is_enabled or (current != total and now - self._last_draw < self.min_seconds):
            return False
        self._last_draw = now
        return True


@dataclass
class TrainResult:
    """What training one model produced."""

    train_seconds: float
    epochs: int
    best_epoch: int
    best_val_auc: float
    checkpoint: str
    global_rank: int = 0  # this process's rank under distributed training (0 = the one that writes files)
    world_size: int = 1


def build_image_model(model_name: str, params: dict, cs: CaseSet) -> ImageModel:
    """The registered model ``model_name`` sized for the CaseSet: classes, channels, image size, and whatever else
    the model takes from the data (its ``data_params``, e.g. a concept bottleneck's concepts and their scaling on the
    training split)."""
    data_params = model_info(model_name).cls.data_params(cs, cs.indices("train"))
    return create_model(model_name, num_classes=cs.num_classes, in_chans=cs.in_chans, img_size=cs.img_size,
                        **{**data_params, **params})


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed", "lightning.pytorch.callbacks.model_summary"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")  # inside Lightning's DDP gather


@contextlib.contextmanager
def _no_memory_fill():
    """Deterministic algorithms without PyTorch's filling of every new uninitialised tensor with NaN.

    ``deterministic: true`` switches on ``torch.use_deterministic_algorithms``, which by default also fills each
    ``torch.empty`` result (every activation and gradient buffer) so that reading uninitialised memory shows up. That
    debugging aid cost 4% of the training throughput on CPU (ResNet-18 at 64 px: 0.96 of a bare loop with it, 1.00
    without; ``evaluation.bench.bench_training``) and no op of the zoo reads uninitialised memory, so it is off while
    fitting: the algorithms, and with them the results, are still the deterministic ones.
    """
    before = det.fill_uninitialized_memory
    det.fill_uninitialized_memory = False
    try:
        yield
    finally:
        det.fill_uninitialized_memory = before


def build_trainer(tcfg: TrainingConfig, out_dir: str | Path, callbacks: list) -> L.Trainer:
    """The Lightning Trainer for ``tcfg``: device, precision and distribution keys, CSV logs under ``out_dir``.

    ``use_distributed_sampler=False``: the data module splits each epoch between ranks itself (a distributed
    sampler put in by Lightning would break its whole-batch items).
    """
    return L.Trainer(
        max_epochs=tcfg.max_epochs,
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        strategy=tcfg.strategy,
        num_nodes=tcfg.num_nodes,
        precision=tcfg.precision,
        # "warn": deterministic algorithms where they exist; on a GPU an op without one warns instead of failing
        deterministic="warn" if tcfg.deterministic else False,
        logger=CSVLogger(save_dir=str(out_dir), name=ModelDir(Path(out_dir)).logs.name, version=""),
        callbacks=[*callbacks, *([ThrottledProgressBar()] if tcfg.progress_bar else [])],
        enable_progress_bar=tcfg.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        use_distributed_sampler=False,
    )


def resolve_pin_memory(setting: bool | str, trainer: L.Trainer) -> bool:
    """``pin_memory: auto`` is on when the trainer runs on a CUDA GPU; true/false force it."""
    if setting == "auto":
        return isinstance(trainer.accelerator, CUDAAccelerator)
    return bool(setting)


def train_image_model(model: ImageModel, cs: CaseSet, tcfg: TrainingConfig, out_dir: str | Path, seed: int = 0,
                      name: str = "model", callbacks: list | None = None) -> TrainResult:
    """Fit ``model`` on the train split, select the epoch with the best validation AUC, load those weights.

    Writes Lightning CSV logs to ``out_dir/logs`` and the best checkpoint to ``out_dir/checkpoint.ckpt``.
    ``callbacks`` are extra Lightning callbacks (e.g. the benchmark's timers).
    """
    _quiet_lightning()
    keep_freed_memory()  # no page faults for the buffers every step frees and allocates again
    if model.schedule_epochs is not None:  # a model with a stage schedule sets its own epoch count
        tcfg = dataclasses.replace(tcfg, max_epochs=int(model.schedule_epochs))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(seed, workers=True, verbose=False)
    dm = CaseSetDataModule(cs, batch_size=tcfg.batch_size, augmentation=tcfg.augmentation,
                           num_workers=tcfg.num_workers, seed=seed)
    module = ClassifierModule(model, lr=tcfg.lr, weight_decay=tcfg.weight_decay, optimizer=tcfg.optimizer,
                              scheduler=tcfg.scheduler, max_epochs=tcfg.max_epochs,
                              class_weights=dm.class_weights(tcfg.class_weighting),
                              channels_last=tcfg.channels_last)
    ckpt = ModelCheckpoint(dirpath=out_dir, filename=ModelDir(out_dir).checkpoint.stem, monitor="val_select",
                           mode="max", save_top_k=1, save_weights_only=True, enable_version_counter=False)
    callbacks = [ckpt, *model.training_callbacks(cs), *(callbacks or [])]
    if tcfg.patience > 0:
        callbacks.append(SelectableEarlyStopping(monitor="val_select", mode="max", patience=tcfg.patience))
    trainer = build_trainer(tcfg, out_dir, callbacks)
    dm.pin_memory = resolve_pin_memory(tcfg.pin_memory, trainer)
    start = time.perf_counter()
    with _no_memory_fill():
        trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - start
    if tcfg.channels_last:  # hand the model back in the default layout (what predict_proba and explain expect)
        model.to(memory_format=torch.contiguous_format)
    load_checkpoint(model, ckpt.best_model_path)
    if model.finish_training(cs):  # e.g. the CBM's head fitted on the whole training split: the stored model too
        save_checkpoint(model, ckpt.best_model_path)
    model.eval()
    best = ckpt.best_model_score  # val_select of the chosen epoch, which equals its val_auc
    epoch_of_best = _best_epoch(ModelDir(out_dir).logs / "metrics.csv")
    return TrainResult(train_seconds=seconds, epochs=int(trainer.current_epoch), best_epoch=epoch_of_best,
                       best_val_auc=float(best) if best is not None else float("nan"),
                       checkpoint=str(ckpt.best_model_path), global_rank=int(trainer.global_rank),
                       world_size=int(trainer.world_size))


def _best_epoch(metrics_csv: Path) -> int:
    import pandas as pd  # heavy: only for reading the training log at the end

    try:
        df = pd.read_csv(metrics_csv)
        df = df.dropna(subset=["val_select"])
        return int(df.loc[df["val_select"].idxmax(), "epoch"])
    except (OSError, KeyError, ValueError):
        return -1


def save_checkpoint(model: ImageModel, path: str | Path) -> None:
    """Write ``model``'s weights (its ``state_dict``, extra state included) as a checkpoint that
    :func:`load_checkpoint` reads (atomically: an interrupted write leaves no half file)."""
    state = {"state_dict": {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v)
                            for k, v in model.state_dict().items()}}
    atomic_write(Path(path), lambda fh: torch.save(state, fh), binary=True)


def load_checkpoint(model: ImageModel, path: str | Path) -> ImageModel:
    """Load the weights of a glasszoo/Lightning checkpoint into ``model`` (``weights_only=True``: no pickles)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    sd = state.get("state_dict", state)
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    model.load_state_dict(sd)
    return model

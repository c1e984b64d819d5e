"""GPU-readiness switches tested on the CPU: mixed precision, channels-last, loader workers and pinned memory,
distributed training (the data split between ranks and the trainer's strategy), and their config errors."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from glasszoo.evaluation.experiment.config import _build, _validate_training
from glasszoo.models.errors import ConfigError
from glasszoo.training.datamodule import CaseSetDataModule, SeededBatches
from glasszoo.training.module import ClassifierModule
from glasszoo.training.settings import AugmentConfig, TrainingConfig
from glasszoo.training.synthetic import make_synthetic
from glasszoo.training.train import build_image_model, build_trainer, resolve_pin_memory, train_image_model

AUG = AugmentConfig(hflip=True, vflip=True, rotate90=True, rotate=10, brightness=0.1)


@pytest.fixture(scope="module")
def cs():
    return make_synthetic(n_cases=60, img_size=16, seed=0, memmap=False)


def training(**keys) -> TrainingConfig:
    """A TrainingConfig built and checked as the YAML loader does (``training:`` mapping)."""
    return _validate_training(_build(TrainingConfig, keys, "training", ""), "training", "")


class Probe(L.Callback):
    """Records, per training batch, the memory layout of the 4-D weights and the dtype the classifier computes in."""

    def __init__(self) -> None:
        self.layouts: list[bool] = []
        self.dtypes: list[torch.dtype] = []
        self.losses: list[float] = []
        self._hook = None

    def on_fit_start(self, trainer, pl_module) -> None:
        head = pl_module.model.net.get_classifier()
        self._hook = head.register_forward_hook(lambda m, i, o: self.dtypes.append(o.dtype))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        weights = [p for p in pl_module.model.parameters() if p.dim() == 4 and p.shape[1] > 1]
        self.layouts.append(all(p.is_contiguous(memory_format=torch.channels_last) for p in weights))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_fit_end(self, trainer, pl_module) -> None:
        self._hook.remove()


def test_bf16_channels_last_training_runs_with_finite_loss(cs, tmp_path):
    # 39 training cases in three equal batches of 13: CI once saw the third loss turn NaN with batches of 16, 16
    # and 7 on a CPU whose bf16 kernels differ from this machine's (not reproduced here); a 7-case batch of 1x1
    # feature maps is the most fragile BatchNorm statistic in bf16, and not what this test is about
    assert len(cs.indices("train")) == 39
    torch.manual_seed(0)
    model = build_image_model("blackbox", {"backbone": "resnet18", "stem": "standard"}, cs)
    probe = Probe()
    tc = training(max_epochs=1, batch_size=13, precision="bf16-mixed", channels_last=True, accelerator="cpu",
                  devices=1, progress_bar=False, augmentation={"hflip": True, "rotate90": True})
    res = train_image_model(model, cs, tc, tmp_path, callbacks=[probe])
    assert res.epochs == 1 and np.isfinite(res.best_val_auc)
    assert len(probe.losses) == 3 and all(np.isfinite(probe.losses))
    assert probe.layouts and all(probe.layouts)  # every 4-D weight is channels-last while training
    assert torch.bfloat16 in probe.dtypes  # autocast: the classifier ran in bf16
    # handed back in the default layout, and usable for inference
    assert all(p.is_contiguous() for p in model.parameters())
    proba = model.predict_proba(cs.images[:5])
    assert proba.shape == (5, 2) and np.isfinite(proba).all()


def test_fp32_training_keeps_the_default_layout(cs, tmp_path):
    torch.manual_seed(0)
    model = build_image_model("blackbox", {"backbone": "resnet18", "stem": "standard"}, cs)
    probe = Probe()
    train_image_model(model, cs, training(max_epochs=1, batch_size=16, accelerator="cpu", devices=1,
                                          progress_bar=False), tmp_path, callbacks=[probe])
    assert probe.layouts and not any(probe.layouts)
    assert set(probe.dtypes) == {torch.float32}


def _epochs(dm: CaseSetDataModule, n: int = 2) -> list[list[dict]]:
    loader = dm.train_dataloader()
    out = []
    for epoch in range(n):
        loader.sampler.set_epoch(epoch)
        out.append([{k: v.clone() for k, v in b.items()} for b in loader])
    return out


def test_loader_workers_give_identical_batches(cs):
    """Shuffling and augmentation are seeded per epoch and batch: 2 worker processes give the very same batches."""
    serial = _epochs(CaseSetDataModule(cs, batch_size=8, augmentation=AUG, num_workers=0, seed=3))
    workers = _epochs(CaseSetDataModule(cs, batch_size=8, augmentation=AUG, num_workers=2, seed=3))
    assert len(serial) == len(workers) == 2
    for a_epoch, b_epoch in zip(serial, workers):
        assert len(a_epoch) == len(b_epoch)
        for a, b in zip(a_epoch, b_epoch):
            assert set(a) == set(b)
            for key in a:
                assert torch.equal(a[key], b[key]), key
    # the epochs differ from each other, and the augmentation did change the images
    assert serial[0][0]["index"].tolist() != serial[1][0]["index"].tolist()
    first = serial[0][0]
    assert not torch.equal(first["image"], torch.from_numpy(cs.images[first["index"].numpy()]))


def test_workers_are_persistent_and_pinning_follows_the_setting(cs):
    dm = CaseSetDataModule(cs, batch_size=8, num_workers=2, pin_memory=True)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.pin_memory and loader.num_workers == 2
    loader = CaseSetDataModule(cs, batch_size=8).val_dataloader()
    assert not loader.persistent_workers and not loader.pin_memory


def test_distributed_ranks_share_each_epoch():
    n, world = 23, 3
    samplers = [SeededBatches(n, batch_size=4, shuffle=True, seed=5, rank=r, world_size=world) for r in range(world)]
    for epoch in (0, 1):
        seen = []
        counts = set()
        for s in samplers:
            s.set_epoch(epoch)
            batches = list(s)
            counts.add(len(batches))
            assert all(key == (epoch, b, s.rank) for b, (key, _) in enumerate(batches))
            seen += [int(p) for _, pos in batches for p in pos]
        assert len(counts) == 1  # every rank runs the same number of steps
        assert set(seen) == set(range(n))  # together they cover the epoch (padding repeats a few cases)
    one = SeededBatches(n, batch_size=4, shuffle=True, seed=5)
    one.set_epoch(1)
    again = SeededBatches(n, batch_size=4, shuffle=True, seed=5)
    again.set_epoch(1)
    assert [p.tolist() for _, p in one] == [p.tolist() for _, p in again]


def test_no_batch_of_one_per_rank():
    s = SeededBatches(9, batch_size=4, shuffle=True, world_size=1)
    assert [len(p) for _, p in s] == [4, 4]  # the lone ninth case is left out of the training epoch
    assert [len(p) for _, p in SeededBatches(9, batch_size=4, shuffle=False)] == [4, 4, 1]  # evaluation keeps it


def test_validation_gather_counts_each_case_once():
    """Cases repeated to pad the ranks' shares are counted once in the validation metrics."""
    module = ClassifierModule(torch.nn.Identity())
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.9, 0.1], [0.4, 0.6]])
    module._val_probs = [probs[:2], probs[2:]]
    module._val_labels = [torch.tensor([0, 1]), torch.tensor([0, 1])]
    module._val_index = [torch.tensor([10, 11]), torch.tensor([10, 12])]  # case 10 twice
    p, y = module._gathered_validation()
    assert p.shape == (3, 2) and y.tolist() == [0, 1, 1]
    np.testing.assert_allclose(p[:, 1], [0.1, 0.8, 0.6])


def test_ddp_strategy_and_nodes_reach_the_trainer(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    tc = training(strategy="ddp", accelerator="cpu", devices=1, num_nodes=1, progress_bar=False)
    trainer = build_trainer(tc, tmp_path, [])
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_nodes == 1 and not trainer._accelerator_connector.use_distributed_sampler
    assert resolve_pin_memory("auto", trainer) is False  # CPU
    assert resolve_pin_memory(True, trainer) is True
    trainer = build_trainer(training(accelerator="cpu", devices=1, precision="bf16-mixed"), tmp_path, [])
    assert trainer.precision == "bf16-mixed"


def test_hardware_defaults():
    tc = training()
    assert (tc.precision, tc.channels_last, tc.num_workers, tc.pin_memory, tc.strategy, tc.num_nodes) == \
        ("32-true", False, 0, "auto", "auto", 1)
    ok = training(precision="16-mixed", devices=[0, 1], strategy="ddp", num_nodes=2, pin_memory=True, num_workers=4)
    assert ok.devices == [0, 1] and ok.num_nodes == 2
    assert training(devices="0,1").devices == "0,1" and training(devices=-1).devices == -1


@pytest.mark.parametrize("keys, match", [
    ({"precision": "fp16"}, r"training\.precision: must be one of"),
    ({"precision": 16}, r"training\.precision"),
    ({"channels_last": "yes"}, r"training\.channels_last: expected true/false"),
    ({"accelerator": "tpu-v9"}, r"training\.accelerator: must be one of"),
    ({"devices": 0}, r"training\.devices"),
    ({"devices": "two"}, r"training\.devices"),
    ({"devices": [0, -1]}, r"training\.devices"),
    ({"num_workers": -1}, r"training\.num_workers: must be >= 0"),
    ({"pin_memory": "yes"}, r"training\.pin_memory: must be 'auto', true or false"),
    ({"pin_memory": 1}, r"training\.pin_memory"),
    ({"strategy": "dpp"}, r"training\.strategy: must be 'auto' or a Lightning strategy name"),
    ({"num_nodes": 0}, r"training\.num_nodes: must be >= 1"),
    ({"num_nodes": 2}, r"training\.num_nodes: 2 nodes need a distributed strategy"),
])
def test_bad_hardware_keys_name_the_key(keys, match):
    with pytest.raises(ConfigError, match=match):
        training(**keys)

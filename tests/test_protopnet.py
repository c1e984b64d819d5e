"""ProtoPNet: hand-computed distances, similarities, logits, costs and push; the staged schedule; explanations."""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from glasszoo.evaluation.experiment.config import parse_config, read_yaml
from glasszoo.evaluation.experiment.runner import run_experiment
from glasszoo.models import DataError, GlobalExplanation, Heatmap, ProtoPNet, PrototypeEvidence, create_model
from glasszoo.models.protopnet import cell_box
from glasszoo.training.caseset import CaseSet
from glasszoo.training.data import load_caseset
from glasszoo.training.datamodule import CaseSetDataModule
from glasszoo.training.module import ClassifierModule
from glasszoo.training.train import SelectableEarlyStopping, build_image_model, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EPS = 1e-4
W = np.array([[1.0, -0.5], [-0.5, 1.0]])  # the paper's last-layer initialisation, one prototype per class
U = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])  # bilinear 2 -> 4 (align_corners=False)


def _sim(d):
    return np.log((np.asarray(d) + 1) / (np.asarray(d) + EPS))


def _blocks(*values: float) -> np.ndarray:
    """A [1, 4, 4] image made of four constant 2x2 blocks (row-major)."""
    return np.kron(np.array(values, np.float32).reshape(2, 2), np.ones((2, 2), np.float32))[None]


def _tiny() -> ProtoPNet:
    """Two classes, one prototype each (0.2 for class 0, 0.85 for class 1); the patch grid of a 4x4 image is its
    2x2 block means (features = 2x2 average pooling, no add-on), so D = 1 and everything is computable by hand."""
    torch.manual_seed(0)
    model = ProtoPNet(2, 1, 4, prototypes_per_class=1, prototype_dim=1, warmup_epochs=1, joint_epochs=1,
                      last_layer_epochs=1)
    model.features = nn.AvgPool2d(2)
    model.add_on = nn.Identity()
    with torch.no_grad():
        model.prototypes.copy_(torch.tensor([0.2, 0.85]).view(2, 1, 1, 1))
    return model.eval()


def _hand_caseset() -> CaseSet:
    """Train rows 0-3; val and test rows hold exact copies of the prototypes (distance 0) the push must not see."""
    images = np.stack([
        _blocks(0.1, 0.5, 0.8, 1.0),  # 0 train, class 0
        _blocks(0.7, 0.0, 0.0, 0.0),  # 1 train, class 1
        _blocks(0.6, 0.25, 0.9, 0.3),  # 2 train, class 0
        _blocks(0.3, 0.4, 0.95, 0.5),  # 3 train, class 1
        _blocks(0.2, 0.2, 0.2, 0.2), _blocks(0.85, 0.85, 0.85, 0.85),  # 4, 5 val
        _blocks(0.2, 0.2, 0.2, 0.2), _blocks(0.85, 0.85, 0.85, 0.85),  # 6, 7 test
    ])
    return CaseSet(images=images, labels=np.array([0, 1, 0, 1, 0, 1, 0, 1]), class_names=["a", "b"],
                   case_ids=[f"c{i}" for i in range(8)], split=["train"] * 4 + ["val"] * 2 + ["test"] * 2)


def _random_caseset(n: int = 40, side: int = 16, seed: int = 0, masks: bool = False) -> CaseSet:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) // 6) % 2
    images = rng.random((n, 1, side, side), dtype=np.float32)
    images[labels == 1, :, side // 4:side // 2, side // 4:side // 2] = 1.0  # a learnable bright square
    split = np.array(["train", "train", "train", "train", "val", "test"] * (n // 6 + 1))[:n]
    m = np.zeros((n, side, side), np.uint8)
    m[:, side // 4:side // 2, side // 4:side // 2] = 1
    return CaseSet(images=images, labels=labels, class_names=["a", "b"], case_ids=[f"r{i}" for i in range(n)],
                   split=split, masks=m if masks else None)


def _small(**kw) -> ProtoPNet:
    """A real ProtoPNet on 16 px inputs: ResNet-18 cut at stage 2 (stride 8) gives a 2x2 grid."""
    torch.manual_seed(0)
    args = dict(stem="standard", feature_stage=2, prototypes_per_class=3, prototype_dim=8)
    return ProtoPNet(2, 1, 16, **{**args, **kw})


# ---------------------------------------------------------------------- known answers
def test_distances_similarities_logits_by_hand():
    model = _tiny()
    x = torch.from_numpy(_blocks(0.1, 0.5, 0.8, 1.0)[None])
    d = model.prototype_distances(x)[0].detach().numpy().reshape(2, 4)
    d_hand = np.array([[0.01, 0.09, 0.36, 0.64], [0.5625, 0.1225, 0.0025, 0.0225]])
    np.testing.assert_allclose(d, d_hand, atol=1e-6)
    sim = model.prototype_activations(x)[0].detach().numpy().reshape(2, 4)
    np.testing.assert_allclose(sim, _sim(d_hand), rtol=1e-4)
    scores = _sim([0.01, 0.0025])  # similarity of each prototype's nearest patch
    np.testing.assert_allclose(model(x)[0].detach().numpy(), W @ scores, rtol=1e-4)
    np.testing.assert_allclose(scores, [np.log(100.0), np.log(1.0025 / 0.0026)], rtol=1e-6)


def test_extra_losses_by_hand_with_and_without_the_cache():
    model = _tiny()
    batch = {"image": torch.from_numpy(np.stack([_blocks(0.1, 0.5, 0.8, 1.0), _blocks(0.3, 0.4, 0.95, 0.5)])),
             "label": torch.tensor([0, 1])}
    # own-class nearest distances: 0.01 (p0 on case 0), 0.01 (p1 on case 1); other class: 0.0025, 0.01
    hand = {"cluster": 0.8 * 0.01, "separation": -0.08 * (0.0025 + 0.01) / 2, "l1": 1e-4 * 1.0}
    cached = model.extra_losses(batch, model(batch["image"]))
    other_logits = model(batch["image"]).clone()  # not the forward's own tensor: recomputed
    recomputed = model.extra_losses(batch, other_logits)
    for losses in (cached, recomputed):
        assert set(losses) == set(hand)
        for k, v in hand.items():
            assert float(losses[k].detach()) == pytest.approx(v, rel=1e-4, abs=1e-9), k


def test_explain_by_hand_before_push():
    model = _tiny()
    x = _blocks(0.1, 0.5, 0.8, 1.0)[None]
    evidence, hm, sg = model.explain(x, case_ids=np.array(["q"]), top_k=2)
    scores = _sim([0.01, 0.0025])
    assert list(evidence.predicted) == [1]  # logits W @ scores = [1.63, 3.65]
    (m1, m0), = evidence.matches
    assert (m1.prototype, m0.prototype) == (1, 0)  # ordered by contribution to class 1: 5.96 > -2.30
    assert m1.contribution == pytest.approx(scores[1], rel=1e-4)
    assert m0.contribution == pytest.approx(-0.5 * scores[0], rel=1e-4)
    assert m0.similarity == pytest.approx(scores[0], rel=1e-4) and m0.prototype_class == 0
    assert (m1.source_case_id, m1.source_box) == ("", (0, 0, 0, 0))  # not projected yet
    sim_map = _sim([[0.5625, 0.1225], [0.0025, 0.0225]])
    np.testing.assert_allclose(m1.activation_map, U @ sim_map @ U.T, rtol=1e-4)
    np.testing.assert_allclose(hm.maps[0], U @ sim_map @ U.T, rtol=1e-4)
    assert hm.method == "prototype_activation" and list(hm.target) == [1] and list(hm.case_ids) == ["q"]
    # the second drawing of the same top prototype: its SmoothGrad, also carried by each match
    assert sg.method == "prototype_smoothgrad" and list(sg.target) == [1] and list(sg.case_ids) == ["q"]
    assert list(m1.drawings) == ["prototype_activation", "prototype_smoothgrad"]
    np.testing.assert_allclose(m1.drawings["prototype_activation"], m1.activation_map)
    np.testing.assert_allclose(sg.maps[0], m1.drawings["prototype_smoothgrad"])
    # explaining class 0 instead: contributions s0 * 1 = 4.61 and s1 * -0.5 = -2.98
    evidence, hm, _ = model.explain(x, target=np.array([0]), top_k=1)
    assert [m.prototype for m in evidence.matches[0]] == [0]
    assert evidence.matches[0][0].contribution == pytest.approx(scores[0], rel=1e-4)
    assert list(hm.target) == [0]


class _TopLeftOnly(nn.Module):
    """2x2 average pooling of the image's top-left 2x2 block only (the rest of the image is multiplied by 0)."""

    def forward(self, x):
        keep = torch.zeros_like(x)
        keep[..., :2, :2] = 1
        return nn.functional.avg_pool2d(x * keep, 2)


def test_smoothgrad_of_a_similarity_that_sees_one_region():
    model = _tiny()
    model.features = _TopLeftOnly()
    x = torch.from_numpy(_blocks(0.1, 0.5, 0.8, 1.0)[None])
    # without noise, one copy: cells (0.1, 0, 0, 0); p0 = 0.2 is nearest to the top-left cell (d = 0.01); its score
    # log((d + 1) / (d + eps)) has d'(pixel) = 2 (m - p) / 4, so |grad| = |1/1.01 - 1/0.0101| * 0.05 on the block
    model.smoothgrad_samples, model.smoothgrad_noise = 1, 0.0
    g = model.prototype_smoothgrad(x, torch.tensor([[0]]))[0, 0].numpy()
    hand = abs(1 / 1.01 - 1 / (0.01 + EPS)) * 0.05
    np.testing.assert_allclose(g[:2, :2], hand, rtol=1e-4)
    assert (g[2:] == 0).all() and (g[:, 2:] == 0).all()
    # with noise (sd 0.15 of the range, 16 copies): still exactly zero outside the region, its peak inside
    model.smoothgrad_samples, model.smoothgrad_noise = 16, 0.15
    g = model.prototype_smoothgrad(x, torch.tensor([[0]]))[0, 0].numpy()
    assert (g[2:] == 0).all() and (g[:, 2:] == 0).all() and (g[:2, :2] > 0).all()
    assert np.unravel_index(g.argmax(), g.shape) in {(0, 0), (0, 1), (1, 0), (1, 1)}
    # explain returns it as the second drawing of the top prototype (1 for the predicted class)
    _, hm, sg = model.explain(x.numpy(), target=np.array([0]), top_k=1)
    assert (sg.maps[0][2:] == 0).all() and sg.maps[0][:2, :2].min() > 0 and hm.maps[0][2:].max() > 0


def test_prototype_part_hooks():
    model = _tiny()
    x = torch.from_numpy(_blocks(0.1, 0.5, 0.8, 1.0)[None])
    torch.testing.assert_close(model.prototype_activation_maps(x), model.prototype_activations(x))
    assert model.prototype_classes().tolist() == [0, 1] and model.relevant_prototypes().tolist() == [True, True]
    with torch.no_grad():
        model.last_layer.weight[:, 1] = torch.tensor([5e-4, -5e-4])  # p1 adds (almost) nothing to any logit
    assert model.relevant_prototypes().tolist() == [True, False]


def test_push_by_hand_ignores_val_and_test():
    model = _tiny()
    cs = _hand_caseset()
    stats = model.push(cs, batch_size=3)
    # p0 (class 0; rows 0, 2): nearest 0.25 at row 2, cell (0, 1); p1 (class 1; rows 1, 3): 0.95 at row 3, (1, 0)
    assert model.source_row.tolist() == [2, 3]
    assert model.source_box.tolist() == [[0, 2, 2, 4], [2, 0, 4, 2]]
    assert model.source_case_ids == ["c2", "c3"]
    np.testing.assert_allclose(model.prototypes.detach().flatten().numpy(), [0.25, 0.95], atol=1e-6)
    np.testing.assert_allclose(model.push_distance.numpy(), [0.0025, 0.01], atol=1e-6)
    assert model.pushed and stats["images"] == 4 and model.push_images_per_second > 0
    # the activation map over the source image uses the projected prototype: p0 = 0.25 on row 2
    sim_map = _sim([[0.35 ** 2, 0.0], [0.65 ** 2, 0.05 ** 2]])
    np.testing.assert_allclose(model.source_activation[0].float().numpy(), U @ sim_map @ U.T, rtol=2e-3)
    # explanations now name the source
    evidence, *_ = model.explain(_blocks(0.1, 0.5, 0.8, 1.0)[None], top_k=2)
    got = {m.prototype: (m.source_case_id, m.source_box) for m in evidence.matches[0]}
    assert got == {0: ("c2", (0, 2, 2, 4)), 1: ("c3", (2, 0, 4, 2))}


def test_cell_box_scales_the_grid_cell_to_the_input():
    assert cell_box(0, 0, (3, 3), (48, 48)) == (0, 0, 16, 16)
    assert cell_box(2, 1, (3, 3), (48, 48)) == (32, 16, 48, 32)
    assert cell_box(3, 3, (4, 4), (28, 28)) == (21, 21, 28, 28)
    assert cell_box(1, 0, (2, 2), (5, 5)) == (2, 0, 5, 3)  # uneven: cells overlap by the rounding pixel


# ---------------------------------------------------------------------- push on a real network
def test_push_is_batch_size_invariant_and_projects_onto_own_class_train_patches():
    cs = _random_caseset()
    model = _small().eval()
    start = copy.deepcopy(model.state_dict())
    model.push(cs, batch_size=1)
    one = {k: v.clone() for k, v in model.state_dict().items() if k != "_extra_state"}
    ids_one = list(model.source_case_ids)
    model.load_state_dict(start)
    model.push(cs, batch_size=1000)
    assert model.source_row.tolist() == one["source_row"].tolist()
    assert model.source_box.tolist() == one["source_box"].tolist()
    assert model.source_case_ids == ids_one
    torch.testing.assert_close(model.prototypes, one["prototypes"])

    train = set(cs.indices("train").tolist())
    with torch.no_grad():
        z = model.prototype_features(torch.from_numpy(cs.images)).numpy()  # [N, D, 2, 2]
    protos = model.prototypes.detach().flatten(1).numpy()
    d_all = ((z[:, None] - protos[None, :, :, None, None]) ** 2).sum(2)  # [N, P, 2, 2]
    for j in range(model.n_prototypes):
        row = int(model.source_row[j])
        assert row in train and cs.labels[row] == int(model.prototype_class[j])
        r0, c0, _, _ = model.source_box[j].tolist()
        np.testing.assert_allclose(protos[j], z[row, :, r0 // 8, c0 // 8], rtol=1e-5, atol=1e-6)
        # it is the nearest patch among all training images of its class (checked by brute force after the push)
        own = [r for r in train if cs.labels[r] == cs.labels[row]]
        assert d_all[own, j].min() == pytest.approx(0.0, abs=1e-6)
        # the upsampled similarity map over the source image peaks inside the source box
        act = model.source_activation[j].float().numpy()
        pr, pc = np.unravel_index(np.argmax(act), act.shape)
        r0, c0, r1, c1 = model.source_box[j].tolist()
        assert r0 <= pr < r1 and c0 <= pc < c1


# ---------------------------------------------------------------------- staged schedule
class _Snapshots(Callback):
    def __init__(self) -> None:
        self.start: list[dict] = []
        self.end: list[dict] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.start.append(copy.deepcopy(pl_module.model.state_dict()))

    def on_train_epoch_end(self, trainer, pl_module):
        self.end.append(copy.deepcopy(pl_module.model.state_dict()))


def _fit(model: ProtoPNet, cs: CaseSet, max_epochs: int, extra: list | None = None) -> _Snapshots:
    snaps = _Snapshots()
    module = ClassifierModule(model, lr=1e-2, weight_decay=0.5, optimizer="adamw", scheduler="none",
                              max_epochs=max_epochs)
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        deterministic=True, callbacks=[*model.training_callbacks(cs), snaps, *(extra or [])])
    trainer.fit(module, datamodule=CaseSetDataModule(cs, batch_size=8, seed=0))
    return snaps


def _changed(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(a[k], b[k]) for k in keys)


def test_stages_freeze_the_right_parts_even_with_weight_decay():
    cs = _random_caseset()
    model = _small(warmup_epochs=1, joint_epochs=1, last_layer_epochs=2)
    assert model.total_epochs == 4 and model.push_epochs == [2]
    assert [model.selectable_epoch(e) for e in range(4)] == [False, False, True, True]
    snaps = _fit(model, cs, 4)
    s, e = snaps.start, snaps.end
    # warm-up: backbone (weights and BatchNorm statistics) and last layer untouched, add-on and prototypes learn
    assert not _changed(s[0], e[0], "features.") and not _changed(s[0], e[0], "last_layer.")
    assert _changed(s[0], e[0], "add_on.") and _changed(s[0], e[0], "prototypes")
    # joint: the backbone learns, the last layer stays at its initialisation (as in the paper)
    assert _changed(s[1], e[1], "features.") and not _changed(s[1], e[1], "last_layer.")
    # push at the start of epoch 2, then only the last layer changes (AdamW's decay of 0.5 moves nothing else)
    assert (s[2]["source_row"] >= 0).all() and (e[1]["source_row"] < 0).all()
    for prefix in ("features.", "add_on.", "prototypes", "source_"):
        assert not _changed(s[2], e[3], prefix), prefix
    assert _changed(s[2], e[2], "last_layer.") and _changed(s[3], e[3], "last_layer.")
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again after fit


def test_push_every_schedule():
    model = _small(warmup_epochs=1, joint_epochs=5, last_layer_epochs=2, push_every=2)
    stages = [model.stage_of(e) for e in range(model.total_epochs)]
    assert stages == ["warmup", "joint", "joint", "last_layer", "last_layer", "joint", "joint", "last_layer",
                      "last_layer", "joint", "last_layer", "last_layer"]
    assert model.push_epochs == [3, 7, 10] and model.total_epochs == 12
    assert not model.selectable_epoch(9) and model.selectable_epoch(10)


def test_frozen_parts_stay_in_eval_mode():
    model = _small()
    model.set_stage("last_layer")
    model.train()
    assert not model.features.training and not model.add_on.training and model.last_layer.training
    assert not any(p.requires_grad for p in model.features.parameters()) and not model.prototypes.requires_grad
    model.set_stage("warmup")
    assert not model.features.training and model.add_on.training and model.prototypes.requires_grad
    model.set_stage(None)
    assert model.features.training


def test_epoch_count_is_checked_and_early_stopping_waits_for_the_push():
    cs = _random_caseset()
    with pytest.raises(ValueError, match=r"max_epochs must equal the stage schedule's 3 epochs"):
        _fit(_small(warmup_epochs=1, joint_epochs=1, last_layer_epochs=1), cs, 5)
    # epochs before the push report val_select = -1; the pipeline's early stopping must not count them
    model = _small(warmup_epochs=2, joint_epochs=2, last_layer_epochs=1)
    stopper = SelectableEarlyStopping(monitor="val_select", mode="max", patience=1)
    _fit(model, cs, 5, [stopper])
    assert stopper.stopped_epoch == 0  # never stopped: the push (epoch 4) was reached
    content = model.explain_global().content
    assert content["pushed"] and content["prototypes"][0]["source_case_id"] != ""


class _ValidationLog(L.Callback):
    """Per epoch: how many validation forward passes the model ran, and the logged val_select / val_auc."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, float, float | None]] = []
        self._calls = 0

    def on_validation_start(self, trainer, pl_module) -> None:
        self._calls = 0
        self._hook = pl_module.model.register_forward_hook(lambda *_: setattr(self, "_calls", self._calls + 1))

    def on_validation_end(self, trainer, pl_module) -> None:
        self._hook.remove()
        logged = trainer.logged_metrics
        auc = float(logged["val_auc"]) if "val_auc" in logged else None
        self.rows.append((int(trainer.current_epoch), self._calls, float(logged["val_select"]), auc))


def test_only_selectable_epochs_are_validated():
    """Epochs before the last push cannot be chosen: no validation forward pass, val_select -1 and no val_auc; from
    the push on the validation split is scored (2 val cases of 12 here, in one batch)."""
    cs = _random_caseset(n=12)
    model = _small(warmup_epochs=1, joint_epochs=1, last_layer_epochs=1)  # the push ends epoch 1
    log = _ValidationLog()
    _fit(model, cs, 3, [log])
    assert [(e, calls) for e, calls, _, _ in log.rows] == [(0, 0), (1, 0), (2, 1)]
    assert [sel for _, _, sel, _ in log.rows[:2]] == [-1.0, -1.0]
    assert [auc is None for *_, auc in log.rows] == [True, True, False]
    assert 0.0 <= log.rows[2][2] == log.rows[2][3] <= 1.0  # the scored epoch: val_select is its val_auc


def test_onecycle_keeps_the_per_part_learning_rates():
    """The shared one-cycle schedule peaks each parameter group at its own lr, so the ratios survive."""
    cs = _random_caseset()
    model = _small(warmup_epochs=1, joint_epochs=1, last_layer_epochs=1, features_lr_ratio=0.1)
    module = ClassifierModule(model, lr=1e-2, weight_decay=0.0, optimizer="adamw", scheduler="onecycle",
                              max_epochs=3)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=model.training_callbacks(cs))
    trainer.fit(module, datamodule=CaseSetDataModule(cs, batch_size=8, seed=0))
    peaks = {g["name"]: g["max_lr"] for g in trainer.optimizers[0].param_groups}
    assert peaks["features"] == pytest.approx(1e-3) and peaks["add_on"] == pytest.approx(1e-2)


def test_param_groups_follow_the_ratios():
    assert {g["lr"] for g in _small().param_groups(3e-3, 1e-4)} == {3e-3}  # from scratch: one lr by default
    model = _small(features_lr_ratio=1 / 30, last_layer_lr_ratio=1 / 30)  # the paper's ratios
    groups = {g["name"]: g for g in model.param_groups(3e-3, 1e-4)}
    assert groups["features"]["lr"] == pytest.approx(1e-4) and groups["add_on"]["lr"] == pytest.approx(3e-3)
    assert groups["prototypes"]["lr"] == pytest.approx(3e-3) and groups["last_layer"]["lr"] == pytest.approx(1e-4)
    assert groups["prototypes"]["weight_decay"] == 0.0
    n = sum(len(g["params"]) for g in groups.values())
    assert n == len(list(model.parameters()))


# ---------------------------------------------------------------------- state dict and explanations
def test_state_dict_round_trip_keeps_push_records():
    model = _tiny()
    model.push(_hand_caseset())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    twin = _tiny()
    twin.load_state_dict(torch.load(buf, weights_only=True))
    assert twin.pushed and twin.source_case_ids == ["c2", "c3"]
    assert twin.source_box.tolist() == [[0, 2, 2, 4], [2, 0, 4, 2]] and twin.source_row.tolist() == [2, 3]
    assert twin.push_images_per_second == model.push_images_per_second and twin.n_pushes == 1
    torch.testing.assert_close(twin.source_activation, model.source_activation)
    assert twin.explain_global().content == model.explain_global().content


def test_explain_shapes_order_and_global():
    cs = _random_caseset()
    model = _small().eval()
    model.push(cs)
    x = cs.images[cs.indices("test")]
    evidence, hm, sg = model.explain(x, case_ids=cs.case_ids[cs.indices("test")], top_k=4)
    assert isinstance(evidence, PrototypeEvidence) and isinstance(hm, Heatmap)
    assert hm.maps.shape == (len(x), 16, 16) and len(evidence.matches) == len(x)
    weight = model.last_layer.weight.detach().numpy()
    for n, case in enumerate(evidence.matches):
        assert len(case) == 4
        contrib = [m.contribution for m in case]
        assert contrib == sorted(contrib, reverse=True)
        for m in case:
            assert m.contribution == pytest.approx(m.similarity * weight[hm.target[n], m.prototype], rel=1e-5)
            assert m.activation_map.shape == (16, 16) and m.source_case_id in set(cs.case_ids[cs.indices("train")])
        np.testing.assert_allclose(hm.maps[n], case[0].activation_map)
        np.testing.assert_allclose(sg.maps[n], case[0].drawings["prototype_smoothgrad"])
        assert all(m.drawings["prototype_smoothgrad"].shape == (16, 16) for m in case)
    # a case's SmoothGrad does not depend on the batch it is explained in (the noise of copy s is seeded with s), up
    # to the float rounding of convolutions over a batch of another size (1e-6 of the map's peak on an AVX2 EPYC)
    _, _, alone = model.explain(x[3:4], target=hm.target[3:4], top_k=1)
    np.testing.assert_allclose(alone.maps[0], sg.maps[3], rtol=1e-4, atol=1e-5 * float(np.abs(sg.maps[3]).max()))
    back = PrototypeEvidence.from_dict(json.loads(json.dumps(evidence.to_dict()))).matches[0][0]
    assert back.prototype == evidence.matches[0][0].prototype
    np.testing.assert_allclose(back.drawings["prototype_smoothgrad"], sg.maps[0], rtol=1e-6)
    glob = model.explain_global()
    assert isinstance(glob, GlobalExplanation) and glob.form == "prototype_gallery"
    protos = glob.content["prototypes"]
    assert len(protos) == 6 and [p["class"] for p in protos] == [0, 0, 0, 1, 1, 1]
    assert protos[4]["last_layer_weights"] == pytest.approx(weight[:, 4].tolist())
    assert protos[4]["source_case_id"] == model.source_case_ids[4] and len(protos[4]["source_box"]) == 4


def _quality(model, cs) -> dict:
    """The model's prototype-quality block, as the run asks for it: test and training cases passed in."""
    blocks = model.extra_metrics(cs.subset(cs.indices("test")), cs.subset(cs.indices("train")))
    assert set(blocks) == {"explanation"}
    return blocks["explanation"]["prototype_quality"]


def test_explanation_metrics():
    cs = _random_caseset(masks=True)
    model = _tiny()
    before = _quality(model, _hand_caseset())
    assert before["pushed"] is False and before["n_distinct_prototypes"] == 2 and "fraction_source_in_lesion" \
        not in before
    model.push(_hand_caseset())
    q = _quality(model, _hand_caseset())
    # nearest train images of p0 = 0.25: rows 2 (0.0), 3 (0.0025), 0 (0.0225), 1 (0.0625): classes 0, 1, 0, 1
    assert q["class_purity"] == pytest.approx(0.5)  # k = 5 > 4 train images: each prototype sees all of them
    assert q["n_prototypes"] == 2 and q["n_distinct_prototypes"] == 2 and q["last_layer_sparsity"] == 0.0
    real = _small()
    real.push(cs)
    q = _quality(real, cs)
    assert 0.0 <= q["fraction_source_in_lesion"] <= 1.0 and 0.0 <= q["class_purity"] <= 1.0
    hits = [bool(cs.masks[int(r)][b[0]:b[2], b[1]:b[3]].any())
            for r, b in zip(real.source_row.tolist(), real.source_box.tolist())]
    assert q["fraction_source_in_lesion"] == pytest.approx(np.mean(hits))


def test_registry_factory():
    model = create_model("protopnet", num_classes=3, in_chans=3, img_size=48, stem="standard",
                         prototypes_per_class=2, prototype_dim=16)
    assert model.n_prototypes == 6 and model.prototype_features(torch.rand(1, 3, 48, 48)).shape == (1, 16, 3, 3)
    with pytest.raises(ValueError, match="feature_stage=7"):
        create_model("protopnet", num_classes=2, feature_stage=7)


@pytest.mark.parametrize("stride, grid", [(32, 3), (16, 3), (8, 6)])
def test_output_stride_sets_the_prototype_grid(stride, grid):
    # stage 3 of a ResNet has reduction 16 (standard stem): stride 8 dilates it to 6x6 at 48 px, 16 and 32 keep 3x3
    model = create_model("protopnet", num_classes=2, in_chans=1, img_size=48, stem="standard", feature_stage=3,
                         prototypes_per_class=2, prototype_dim=8, output_stride=stride)
    assert model.prototype_features(torch.rand(2, 1, 48, 48)).shape == (2, 8, grid, grid)
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32, got 4"):
        create_model("protopnet", num_classes=2, output_stride=4)


def test_stitch_offsets_known_answers():
    from glasszoo.models._prototypes import stitch_offsets

    assert stitch_offsets(48, 6, 1) == [0]
    assert stitch_offsets(48, 6, 2) == [-2, 2]  # stride 8: fine cells centred at 4 k + 1.5
    assert stitch_offsets(48, 6, 4) == [-3, -1, 1, 3]
    assert stitch_offsets(28, 7, 2) == [-1, 1]
    assert stitch_offsets(28, 4, 2) is None  # stride 7: no whole-pixel half-stride shift
    assert stitch_offsets(50, 6, 2) is None  # the grid does not divide the side


def test_shift_and_stitch_samples_a_ramp_at_the_fine_cell_centres():
    """8x8 average pooling of a horizontal ramp (value = column) is the centre column of each patch; stitched by 2,
    the interior samples are the ramp at 4 k + 1.5, where bilinear upsampling of a stride-4 grid puts them."""
    from glasszoo.models._prototypes import shift_and_stitch

    x = torch.arange(48.0).view(1, 1, 1, 48).expand(1, 1, 48, 48).contiguous()
    calls = []

    def pooled(im):
        calls.append(im.shape)
        return F.avg_pool2d(im, 8)

    dense = shift_and_stitch(pooled, x, 2)
    assert dense.shape == (1, 1, 12, 12) and len(calls) == 1 + 4  # the base map and four shifts
    np.testing.assert_allclose(dense[0, 0, 5, 1:-1].numpy(), 4 * np.arange(1, 11) + 1.5)
    # the edges replicate the border pixels: column 0 of shift -2 averages 0, 0, 0, 1, ..., 5
    assert dense[0, 0, 5, 0].item() == pytest.approx((0 + 0 + 0 + 1 + 2 + 3 + 4 + 5) / 8)
    np.testing.assert_allclose(dense[0, 0, :, 3].numpy(), np.full(12, 13.5))  # constant down the columns
    assert shift_and_stitch(pooled, x, 1).shape == (1, 1, 6, 6)
    assert shift_and_stitch(pooled, x[..., :44, :44], 2).shape == (1, 1, 5, 5)  # 44 / 5 cells: plain map


def test_stitched_prototype_drawing_is_the_network_map_between_the_cells():
    cs = _random_caseset(side=16)
    plain = _small().eval()
    plain.push(cs)
    stitched = _small(stitch_factor=2).eval()
    stitched.load_state_dict(plain.state_dict())
    stitched.source_case_ids = list(plain.source_case_ids)
    x = cs.images[cs.indices("test")][:3]
    ev1, hm1, _ = plain.explain(x, top_k=1)
    ev2, hm2, _ = stitched.explain(x, top_k=1)
    # the same decision and prototype; only the drawing changes
    assert [c[0].prototype for c in ev1.matches] == [c[0].prototype for c in ev2.matches]
    assert [c[0].similarity for c in ev1.matches] == pytest.approx([c[0].similarity for c in ev2.matches])
    xt = torch.as_tensor(x)
    with torch.no_grad():
        base = plain.prototype_activations(xt)  # [3, P, 2, 2] at stride 8
        j = ev2.matches[0][0].prototype
        xp = F.pad(xt, (2, 2, 2, 2), mode="replicate")
        fine_01 = plain.prototype_activations(xp[..., 0:16, 4:20])  # shift (-2, +2): fine cells (2i, 2j + 1)
    assert base.shape[-2:] == (2, 2)
    dense = torch.zeros(4, 4)
    for a, dy in enumerate((-2, 2)):
        for b, dx in enumerate((-2, 2)):
            with torch.no_grad():
                dense[a::2, b::2] = plain.prototype_activations(xp[..., 2 + dy:18 + dy, 2 + dx:18 + dx])[0, j]
    np.testing.assert_allclose(dense[0::2, 1::2].numpy(), fine_01[0, j].numpy(), rtol=1e-5)
    expected = F.interpolate(dense[None, None], size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(hm2.maps[0], expected.numpy(), rtol=1e-4, atol=1e-6)
    assert not np.allclose(hm1.maps[0], hm2.maps[0])
    with pytest.raises(ValueError, match="stitch_factor must be 1, 2 or 4"):
        _small(stitch_factor=3)


# ---------------------------------------------------------------------- end to end
def test_run_experiment_with_blackbox_and_protopnet(tmp_path):
    raw = read_yaml(ROOT / "configs" / "quickstart.yaml")
    raw["data"].update(n_cases=120, img_size=32)
    raw["training"].update(max_epochs=1, progress_bar=False)
    raw["evaluation"].update(bootstrap=100, explain_cases=8, figure_cases=4, posthoc={"methods": ["gradcam"]})
    raw["output_dir"] = str(tmp_path)
    raw["models"] = [
        {"name": "blackbox", "params": {"backbone": "resnet18", "stem": "standard"}},
        {"name": "protopnet", "params": {"stem": "standard", "feature_stage": 2, "prototypes_per_class": 2,
                                         "prototype_dim": 16, "warmup_epochs": 1, "joint_epochs": 1,
                                         "last_layer_epochs": 1},
         "training": {"max_epochs": 3}},
    ]
    cfg = parse_config(raw, "quickstart-test")
    run_dir = run_experiment(cfg)
    m = json.loads((run_dir / "metrics.json").read_text())
    block = m["models"]["protopnet"]
    assert block["family"] == "prototype" and 0.0 <= block["task"]["auc"]["value"] <= 1.0
    exp = block["explanation"]
    splits = pd.read_csv(run_dir / "splits.csv")
    assert exp["prototype_evidence"]["n_cases"] == 8
    assert 0.0 <= exp["prototype_activation"]["pointing_game"]["value"] <= 1.0
    q = exp["prototype_quality"]
    assert q["pushed"] and q["n_prototypes"] == 4 and q["push_images_per_second"] > 0
    assert {"n_distinct_prototypes", "fraction_source_in_lesion", "class_purity", "last_layer_sparsity"} <= set(q)
    # consistency and stability (evaluation.prototype_parts) beside the model's own figures
    assert {"consistency", "consistent_fraction", "stability", "peak_stability"} <= set(q)
    assert all(0.0 <= q[k] <= 1.0 for k in ("consistency", "consistent_fraction", "stability", "peak_stability"))
    assert q["part_cases"] == int((splits["split"] == "test").sum()) and q["part_prototypes"] <= 4
    # both drawings of the top prototype are scored by the same metrics
    act, sg = exp["prototype_activation"], exp["prototype_smoothgrad"]
    assert set(act) == set(sg) and sg["source"] == "intrinsic" and 0.0 <= sg["pointing_game"]["value"] <= 1.0
    assert block["training"]["best_epoch"] == 2  # the only selectable epoch: the one after the push
    assert (run_dir / "figures" / "protopnet_prototype_activation.png").exists()
    assert "gradcam" in m["models"]["blackbox"]["explanation"]
    # the chosen checkpoint carries the push records (weights_only loading); sources are training cases
    train_ids = set(splits.loc[splits["split"] == "train", "case_id"])
    fresh = build_image_model("protopnet", cfg.models[1].params, load_caseset(cfg.data, seed=cfg.seed))
    load_checkpoint(fresh, run_dir / "models" / "protopnet" / "checkpoint.ckpt")
    assert fresh.pushed and set(fresh.source_case_ids) <= train_ids


def test_batchnorm_recalibration_uses_the_training_split_statistics():
    cs = _random_caseset()
    model = _small(push_batch_size=1000)
    bn = model.features.bn1
    with torch.no_grad():
        bn.running_mean.fill_(5.0)
        out = model.features.conv1(torch.from_numpy(cs.images[cs.indices("train")]))  # [N, 64, h, w]
    assert model.recalibrate_batchnorm(cs) == sum(isinstance(m, nn.BatchNorm2d) for m in model.features.modules())
    torch.testing.assert_close(bn.running_mean, out.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, out.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and model.training  # restored


def test_fit_last_layer_solves_the_last_layer_objective():
    from glasszoo.training.synthetic import make_synthetic

    torch.manual_seed(0)
    cs = make_synthetic(n_cases=80, img_size=32, seed=0)
    model = create_model("protopnet", num_classes=2, in_chans=1, img_size=32, stem="standard", feature_stage=2,
                         prototypes_per_class=2, prototype_dim=8, l1_weight=1e-4)
    train = cs.indices("train")
    scores = model.similarity_scores(cs.images[train])
    y = torch.as_tensor(cs.labels[train])

    def objective(w):
        ce = torch.nn.functional.cross_entropy(scores @ w.T, y)
        return float(ce + 1e-4 * (w * model._wrong_class).abs().sum())

    before = objective(model.last_layer.weight.detach())
    model.fit_last_layer(cs)
    after = objective(model.last_layer.weight.detach())
    assert after < before
    # the solution is stationary: a step of plain gradient descent on the smooth part does not lower it further
    w = model.last_layer.weight.detach().clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(scores @ w.T, y).backward()
    for eps in (1e-3, 1e-2):
        assert objective((w - eps * w.grad).detach()) >= after - 1e-6
    # a huge penalty removes every wrong-class connection and leaves own-class ones
    model.loss_weights["l1"] = 1e3
    model.fit_last_layer(cs)
    weight = model.last_layer.weight.detach()
    assert (weight[model._wrong_class.bool()] == 0).all()
    assert (weight[~model._wrong_class.bool()] != 0).any()


def test_fine_annotation_loss_by_hand_on_a_4x4_map():
    """IAIA-BL's fine-annotation loss: own-class prototypes pay the L2 norm of their activation outside the lesion,
    other-class prototypes the norm of all of it; averaged over the images with a lesion."""
    from glasszoo.models.protopnet import fine_annotation_loss

    mask = torch.zeros(2, 4, 4)
    mask[0, 1:3, 1:3] = 1  # image 0: a 2x2 lesion in the centre; image 1: no annotation
    act = torch.zeros(2, 2, 4, 4)
    act[0, 0] = 1.0  # own-class prototype fires everywhere: 12 of its 16 cells lie outside the lesion
    act[0, 0, 1:3, 1:3] = 5.0  # inside the lesion: free
    act[0, 1, 0, 0] = 3.0  # the other class's prototype fires on one cell (value 3) and one more (value 4)
    act[0, 1, 3, 3] = 4.0
    act[1] = 7.0  # an image without a lesion annotation adds nothing
    own = torch.tensor([[True, False], [True, False]])
    expected = math.sqrt(12 * 1.0 ** 2) + math.sqrt(3.0 ** 2 + 4.0 ** 2)  # sqrt(12) + 5
    assert fine_annotation_loss(act, mask, own).item() == pytest.approx(expected)
    # a prototype that fires only inside its class's lesion costs nothing
    inside = torch.zeros(1, 1, 4, 4)
    inside[0, 0, 1:3, 1:3] = 2.0
    assert fine_annotation_loss(inside, mask[:1], torch.tensor([[True]])).item() == 0.0
    assert fine_annotation_loss(act[1:], mask[1:], own[1:]).item() == 0.0  # no annotated image in the batch


def test_topk_pool_known_answers():
    from glasszoo.models.protopnet import topk_pool

    maps = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    assert topk_pool(maps, 1).item() == 15.0
    assert topk_pool(maps, 3).item() == pytest.approx((15 + 14 + 13) / 3)
    assert topk_pool(maps, 100).item() == pytest.approx(7.5)  # capped at the 16 cells


def test_mask_guided_protopnet_declares_masks_and_adds_the_loss():
    from glasszoo.models import model_info

    info = model_info("protopnet")
    assert info.requirements({}) == () and info.requirements({"fine_annotation_weight": 0.5}) == ("masks",)
    torch.manual_seed(0)
    model = create_model("protopnet", num_classes=2, in_chans=1, img_size=32, backbone="resnet18", stem="standard",
                         prototypes_per_class=2, prototype_dim=8, fine_annotation_weight=0.5, topk=3)
    x = torch.rand(4, 1, 32, 32)
    mask = torch.zeros(4, 32, 32, dtype=torch.uint8)
    mask[:, 10:20, 10:20] = 1
    batch = {"image": x, "label": torch.tensor([0, 1, 0, 1]), "mask": mask}
    logits = model(x)
    terms = model.extra_losses(batch, logits)
    act = torch.nn.functional.interpolate(model.prototype_activations(x), size=(32, 32), mode="bilinear",
                                          align_corners=False)
    from glasszoo.models.protopnet import fine_annotation_loss, topk_pool

    own = model.prototype_class[None, :] == batch["label"][:, None]
    assert terms["fine_annotation"].item() == pytest.approx(0.5 * fine_annotation_loss(act, mask, own).item(),
                                                            rel=1e-5)
    # top-k pooling feeds the logits
    expected = model.last_layer(topk_pool(model.prototype_activations(x), 3))
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(DataError, match="needs lesion masks"):
        model.extra_losses({"image": x, "label": batch["label"]}, model(x))


def test_the_pipeline_trains_as_many_epochs_as_the_schedule_needs(tmp_path):
    """A user who gives stage epochs needs no matching training.max_epochs: the schedule's 1 + 1 + 1 epochs run even
    when the config says 20 (a bare Lightning Trainer is still checked, above)."""
    from glasszoo.training.settings import TrainingConfig
    from glasszoo.training.train import train_image_model

    model = _small(warmup_epochs=1, joint_epochs=1, last_layer_epochs=1)
    assert model.schedule_epochs == model.total_epochs == 3
    res = train_image_model(model, _random_caseset(), TrainingConfig(max_epochs=20, batch_size=8, patience=0,
                                                                     progress_bar=False), tmp_path)
    assert res.epochs == 3 and model.pushed


def test_activation_precision_by_hand():
    """IAIA-BL's activation precision: the share of the top 5% of a prototype's activation that lies on the lesion,
    for the prototypes of the image's class on images with a lesion."""
    from glasszoo.models.protopnet import activation_precision

    masks = torch.zeros(2, 4, 4)
    masks[0, :2, :2] = 1  # image 0: lesion in the top-left 2x2; image 1: none
    act = torch.zeros(2, 3, 4, 4)
    act[0, 0, 0, 0] = 9.0  # prototype 0 fires hardest on the lesion
    act[0, 1, 3, 3] = 9.0  # prototype 1 fires hardest off it
    act[0, 2] = 9.0  # prototype 2 (another class) is not counted
    own = torch.tensor([[True, True, False], [True, True, False]])
    v = activation_precision(act, masks, own, top=0.05)  # top 5% of 16 pixels: the one hottest pixel
    assert v.tolist() == [1.0, 0.0]
    flat = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)  # hottest quarter: the bottom row
    assert activation_precision(flat, masks[:1], torch.tensor([[True]]), top=0.25).tolist() == [0.0]
    assert activation_precision(flat.flip(-1).flip(-2), masks[:1], torch.tensor([[True]]), top=0.25).tolist() == \
        [0.5]  # the top row now: two of its four pixels on the lesion

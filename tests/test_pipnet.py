"""PIP-Net: hand-computed assignments, presences, logits, losses, abstention and sources; the non-negative scoring
sheet that still learns; the staged schedule; explanations; the state dict; a tiny fit through the pipeline."""

from __future__ import annotations

import io
import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from glasszoo.models import GlobalExplanation, Heatmap, PIPNet, PrototypeEvidence, create_model, model_info
from glasszoo.models.pipnet import PIPNetSchedule, ScoringSheet, alignment_loss, dihedral, tanh_loss
from glasszoo.training.caseset import CaseSet
from glasszoo.training.datamodule import CaseSetDataModule
from glasszoo.training.module import ClassifierModule
from glasszoo.training.settings import TrainingConfig
from glasszoo.training.train import load_checkpoint, train_image_model

W = np.array([[2.0, 0.0], [0.5, 1.0]])  # the toy's scoring sheet [C, P]
SCALE = 3.0  # the toy's 1x1 convolution: channel logits (3 z, -3 z) for a patch of mean z


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-np.asarray(v, dtype=np.float64)))


def _blocks(*values: float) -> np.ndarray:
    """A [1, 4, 4] image made of four constant 2x2 blocks (row-major)."""
    return np.kron(np.array(values, np.float32).reshape(2, 2), np.ones((2, 2), np.float32))[None]


def _toy(**kwargs) -> PIPNet:
    """Two prototypes on the 2x2 grid of a 4x4 image: the patches are its 2x2 block means z (features = 2x2 average
    pooling) and the 1x1 convolution gives the channel logits (3 z, -3 z), so a patch's assignment is
    (sigmoid(6 z), sigmoid(-6 z)): prototype 0 is "bright", prototype 1 "dark". Everything is computable by hand."""
    torch.manual_seed(0)
    params = {"n_prototypes": 2, "pretrain_epochs": 1, "finetune_epochs": 1, "joint_epochs": 1, "jitter": 0.0,
              "noise_std": 0.0, "gallery_k": 2, **kwargs}
    model = PIPNet(2, 1, 4, **params)
    model.features = nn.AvgPool2d(2)
    model.add_on = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        model.add_on.weight.copy_(torch.tensor([SCALE, -SCALE]).view(2, 1, 1, 1))
        model.add_on.bias.zero_()
        model.scoring.weight.copy_(torch.tensor(W, dtype=torch.float32))
    return model.eval()


def _hand_presence(blocks) -> np.ndarray:
    z = np.asarray(blocks, dtype=np.float64)
    return np.array([_sigmoid(2 * SCALE * z).max(), _sigmoid(-2 * SCALE * z).max()])


def _hand_caseset(masks: bool = False) -> CaseSet:
    """Train rows 0-3; the val and test rows hold the brightest and darkest images, which the sources must not use."""
    images = np.stack([
        _blocks(0.1, 0.5, 0.8, 0.2),  # 0 train: brightest cell (1, 0) = 0.8
        _blocks(0.7, 0.05, 0.6, 0.3),  # 1 train: darkest cell (0, 1) = 0.05
        _blocks(0.6, 0.25, 0.9, 0.3),  # 2 train: brightest of the train split, cell (1, 0) = 0.9
        _blocks(0.3, 0.4, 0.5, 0.0),  # 3 train: darkest of the train split, cell (1, 1) = 0.0
        _blocks(1.0, 1.0, 1.0, 1.0), _blocks(0.0, 0.0, 0.0, 0.0),  # 4, 5 val
        _blocks(1.0, 1.0, 1.0, 1.0), _blocks(0.0, 0.0, 0.0, 0.0),  # 6, 7 test
    ])
    m = None
    if masks:
        m = np.zeros((8, 4, 4), np.uint8)
        m[:, 2:, 0:2] = 1  # the lesion is the bottom-left block of every image
    return CaseSet(images=images, labels=np.array([0, 1, 0, 1, 0, 1, 0, 1]), class_names=["a", "b"],
                   case_ids=[f"c{i}" for i in range(8)], split=["train"] * 4 + ["val"] * 2 + ["test"] * 2, masks=m)


def _random_caseset(n: int = 48, side: int = 16, seed: int = 0) -> CaseSet:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) // 6) % 2
    images = rng.random((n, 1, side, side), dtype=np.float32) * 0.5
    images[labels == 1, :, side // 4:side // 2, side // 4:side // 2] = 1.0  # a learnable bright square
    split = np.array(["train", "train", "train", "train", "val", "test"] * (n // 6 + 1))[:n]
    m = np.zeros((n, side, side), np.uint8)
    m[:, side // 4:side // 2, side // 4:side // 2] = 1
    return CaseSet(images=images, labels=labels, class_names=["a", "b"], case_ids=[f"r{i}" for i in range(n)],
                   split=split, masks=m)


def _small(**kwargs) -> PIPNet:
    torch.manual_seed(0)
    params = {"backbone": "resnet18", "stem": "small", "feature_stage": 2, "n_prototypes": 8,
              "pretrain_epochs": 1, "finetune_epochs": 1, "joint_epochs": 1, "gallery_k": 3, **kwargs}
    return PIPNet(2, 1, 16, **params)


# ------------------------------------------------------------------------------------------------ known answers
def test_assignments_presences_and_logits_by_hand():
    model = _toy()
    blocks = (0.1, 0.5, 0.8, 0.2)
    x = torch.as_tensor(_blocks(*blocks)[None])
    maps = model.prototype_activation_maps(x)
    z = np.array(blocks).reshape(2, 2)
    np.testing.assert_allclose(maps[0, 0].detach().numpy(), _sigmoid(2 * SCALE * z), rtol=1e-5)
    np.testing.assert_allclose(maps.sum(1).detach().numpy(), 1.0, rtol=1e-6)  # a softmax over the prototypes
    presence = _hand_presence(blocks)  # (sigmoid(4.8), sigmoid(-0.6)): both above the 0.1 threshold
    np.testing.assert_allclose(model.pool(maps)[0].detach().numpy(), presence, rtol=1e-5)
    # the scoring sheet: presences x weights = logits, e.g. class 1 = 0.5 * 0.99182 + 1.0 * 0.35434
    np.testing.assert_allclose(model(x)[0].detach().numpy(), W @ presence, rtol=1e-5)
    np.testing.assert_allclose(model.scoring(torch.tensor([[0.3, 0.7]])).detach().numpy(), [[0.6, 0.85]], rtol=1e-6)


def test_eval_mode_scores_presences_below_the_threshold_as_absent():
    model = _toy()
    x = torch.as_tensor(_blocks(0.9, 0.8, 0.7, 0.6)[None])
    presence = _hand_presence((0.9, 0.8, 0.7, 0.6))  # the dark prototype: sigmoid(-3.6) = 0.0266 < 0.1
    assert presence[1] < 0.1
    np.testing.assert_allclose(model.eval()(x)[0].detach().numpy(), W @ [presence[0], 0.0], rtol=1e-5)
    np.testing.assert_allclose(model.train()(x)[0].detach().numpy(), W @ presence, rtol=1e-5)


def test_threshold_scores_off_scores_raw_presences_and_abstention_still_flags():
    model = _toy(threshold_scores=False)
    with torch.no_grad():
        model.scoring.weight[:, 0] = 0.0
    x = _blocks(1.0, 0.9, 0.95, 1.0)[None]
    presence = _hand_presence((1.0, 0.9, 0.95, 1.0))
    np.testing.assert_allclose(model(torch.as_tensor(x))[0].detach().numpy(), W[:, 1] * presence[1], rtol=1e-5)
    assert model.abstains(x).tolist() == [True]


def test_batchnorm_recalibration_reads_the_training_split_only():
    cs = _random_caseset()
    model = _small()
    bn = model.features.bn1
    assert model.recalibrate_batchnorm(cs) > 0
    first = bn.running_mean.clone()
    assert not torch.equal(first, torch.zeros_like(first)) and bn.momentum == 0.1  # momentum restored
    noisy = _random_caseset()
    held_out = np.flatnonzero(noisy.split != "train")
    noisy.images[held_out] = 1.0  # val and test images changed: the statistics must not move
    assert model.recalibrate_batchnorm(noisy) > 0
    torch.testing.assert_close(bn.running_mean, first)


def test_alignment_loss_by_hand():
    one_hot = torch.zeros(2, 3, 2, 2)
    one_hot[:, 1] = 1.0
    assert alignment_loss(one_hot, one_hot).item() == pytest.approx(0.0, abs=1e-6)  # identical, certain: no loss
    # two prototypes, two patches: (0.8, 0.2) vs (0.6, 0.4) -> dot 0.56; (0.5, 0.5) vs itself -> dot 0.5
    a = torch.tensor([[0.8, 0.5], [0.2, 0.5]]).view(1, 2, 1, 2)
    b = torch.tensor([[0.6, 0.5], [0.4, 0.5]]).view(1, 2, 1, 2)
    expected = -(math.log(0.56) + math.log(0.5)) / 2
    assert alignment_loss(a, b).item() == pytest.approx(expected, rel=1e-5)
    assert alignment_loss(b, a).item() == pytest.approx(expected, rel=1e-5)
    # disagreeing certain assignments pay -log(eps)
    other = torch.zeros(2, 3, 2, 2)
    other[:, 0] = 1.0
    assert alignment_loss(one_hot, other).item() == pytest.approx(-math.log(1e-7), rel=1e-4)


def test_tanh_loss_by_hand():
    presence = torch.tensor([[0.2, 0.1, 0.0], [0.3, 0.9, 0.0]])  # batch sums 0.5, 1.0, 0.0
    expected = -(math.log(math.tanh(0.5) + 1e-7) + math.log(math.tanh(1.0) + 1e-7) + math.log(1e-7)) / 3
    assert tanh_loss(presence).item() == pytest.approx(expected, rel=1e-5)
    assert tanh_loss(torch.full((64, 4), 0.5)).item() == pytest.approx(0.0, abs=1e-6)  # present everywhere


def test_extra_losses_by_hand_per_stage():
    model = _toy(view_symmetry=False, l1_weight=0.01).train()
    x = torch.as_tensor(np.stack([_blocks(0.1, 0.5, 0.8, 0.2), _blocks(0.7, 0.05, 0.6, 0.3)]))
    batch = {"image": x, "label": torch.tensor([0, 1])}
    z = x[:, 0, ::2, ::2].double().numpy()  # the block means
    a = np.stack([_sigmoid(2 * SCALE * z), _sigmoid(-2 * SCALE * z)], axis=1)  # [N, P, 2, 2]
    presence = a.reshape(2, 2, -1).max(2)
    align = -np.log((a * a).sum(1) + 1e-7).mean()  # no jitter, no symmetry: view 2 is view 1
    tanh = -np.log(np.tanh(presence.sum(0)) + 1e-7).mean()
    model.set_stage("joint")
    out = model.extra_losses(batch, model(x))
    assert out["align"].item() == pytest.approx(1.25 * align, rel=1e-5)
    assert out["tanh"].item() == pytest.approx(1.0 * tanh, rel=1e-5)
    assert out["l1"].item() == pytest.approx(0.01 * W.sum(), rel=1e-6)
    assert model.task_loss_weight == 1.0
    model.set_stage("pretrain", epoch=0)  # one pretraining epoch: the ramp is at its end, e / E = 1
    out = model.extra_losses(batch, model(x))
    assert set(out) == {"align", "tanh"} and model.task_loss_weight == 0.0
    assert out["align"].item() == pytest.approx(0.5 * align, rel=1e-5)
    assert out["tanh"].item() == pytest.approx(5.0 * tanh, rel=1e-5)
    model.set_stage("finetune")
    assert set(model.extra_losses(batch, model(x))) == {"l1"}
    ramp = _toy(pretrain_epochs=4)
    assert [ramp.pretrain_progress(e) for e in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_the_second_view_maps_back_onto_the_first_views_grid():
    t = torch.arange(12.0).view(1, 3, 4)
    for code in range(8):
        assert torch.equal(dihedral(dihedral(t, code), code, inverse=True), t)
    assert torch.equal(dihedral(t, 4), t.flip(-1)) and torch.equal(dihedral(t, 1), torch.rot90(t, 1, (-2, -1)))
    # the toy is exactly equivariant (block means, 1x1 convolution), so without jitter the mapped-back assignments
    # of the flipped / turned view equal the first view's, patch for patch
    model = _toy()
    x = torch.as_tensor(np.stack([_blocks(0.1, 0.5, 0.8, 0.2)] * 16))
    torch.manual_seed(1)
    v, codes = model.second_view(x)
    assert len(set(codes)) > 1 and not torch.equal(v, x)
    torch.manual_seed(1)
    torch.testing.assert_close(model.view_maps(x), model.prototype_activation_maps(x))


def test_the_second_view_jitters_intensities_within_the_unit_range():
    model = _toy(jitter=0.3, noise_std=0.05, view_symmetry=False)
    x = torch.rand(8, 1, 16, 16)
    v, codes = model.second_view(x)
    assert v.shape == x.shape and codes == [0] * 8
    assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    assert float((v - x).abs().mean()) > 0.01


def test_abstains_when_no_relevant_prototype_is_present():
    model = _toy()
    with torch.no_grad():
        model.scoring.weight[:, 0] = 0.0  # the bright prototype gives no points: irrelevant
    assert model.relevant_prototypes().tolist() == [False, True]
    bright = _blocks(1.0, 0.9, 0.95, 1.0)  # the dark prototype: sigmoid(-5.4) = 0.0045, absent
    some_dark = _blocks(1.0, 0.9, 0.95, 0.0)  # ... present on the last block: sigmoid(0) = 0.5
    x = np.stack([bright, some_dark])
    assert model.abstains(x).tolist() == [True, False]
    logits = model(torch.as_tensor(x)).detach().numpy()
    np.testing.assert_allclose(logits[0], [0.0, 0.0], atol=1e-7)  # nothing present: no evidence for any class
    np.testing.assert_allclose(logits[1], W[:, 1] * 0.5, rtol=1e-5)
    q = model.extra_metrics(_Rows(x), _Rows(x))["explanation"]["prototype_quality"]
    assert q["n_relevant_prototypes"] == 1 and q["n_abstained_test"] == 1 and q["abstained_test_fraction"] == 0.5
    assert q["abstained_test_case_ids"] == ["t0"]


class _Rows:
    """The few fields of a CaseData the metrics read, for hand-made images."""

    def __init__(self, images, labels=None, masks=None, ids=None):
        self.images = np.asarray(images)
        self.labels = np.zeros(len(images), np.int64) if labels is None else np.asarray(labels)
        self.masks = masks
        self.case_ids = np.array(ids if ids is not None else [f"t{i}" for i in range(len(images))], dtype=object)


# ------------------------------------------------------------------------------------------------ the scoring sheet
def test_scoring_sheet_stays_nonnegative_and_a_clamped_weight_still_learns():
    sheet = ScoringSheet(2, 1)
    with torch.no_grad():
        sheet.weight.copy_(torch.tensor([[0.0, 0.3]]))
    opt = torch.optim.Adam(sheet.parameters(), lr=0.05)
    x = torch.tensor([[1.0, 1.0]])
    for _ in range(20):
        opt.zero_grad()
        # the gradient pushes weight 0 up (more evidence wanted) and weight 1 down, past zero
        loss = -sheet(x * torch.tensor([[1.0, 0.0]])).sum() + 5 * sheet(x * torch.tensor([[0.0, 1.0]])).sum()
        loss.backward()
        opt.step()
        sheet.project_()
        assert float(sheet.weight.detach().min()) >= 0.0
    assert float(sheet.weight.detach()[0, 0]) > 0.5  # grew from exactly 0: the clamp does not stop learning
    assert float(sheet.weight.detach()[0, 1]) == 0.0  # projected to exactly 0: sparsity
    # why not relu(W) (the reference code): a weight at 0 gets no gradient through relu, ours gets it
    w = torch.zeros(1, 2, requires_grad=True)
    (torch.relu(w) * torch.tensor([[-1.0, 1.0]])).sum().backward()
    assert w.grad.abs().sum() == 0
    sheet.weight.grad = None
    with torch.no_grad():
        sheet.weight.zero_()
    sheet(torch.tensor([[-1.0, 1.0]])).sum().backward()
    torch.testing.assert_close(sheet.weight.grad, torch.tensor([[-1.0, 1.0]]))
    # the forward pass never sees a negative weight, even before a projection
    with torch.no_grad():
        sheet.weight.copy_(torch.tensor([[-2.0, 1.0]]))
    torch.testing.assert_close(sheet(torch.tensor([[1.0, 1.0]])), torch.tensor([[1.0]]))


def _fit(model: PIPNet, cs: CaseSet, max_epochs: int, callbacks: list | None = None, lr: float = 0.01) -> None:
    dm = CaseSetDataModule(cs, batch_size=8)
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[*model.training_callbacks(cs), *(callbacks or [])])
    trainer.fit(ClassifierModule(model, lr=lr, scheduler="none", max_epochs=max_epochs), datamodule=dm)


def test_stages_freeze_the_scoring_sheet_in_pretraining_and_weights_stay_nonnegative():
    cs = _random_caseset()
    model = _small(pretrain_epochs=1, finetune_epochs=1, joint_epochs=1)
    seen = {}

    class Watch(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen[trainer.current_epoch] = (model.scoring.weight.detach().clone(),
                                           model.features.conv1.weight.detach().clone(),
                                           float(model.scoring.weight.detach().min()))

    start_w, start_f = model.scoring.weight.detach().clone(), model.features.conv1.weight.detach().clone()
    _fit(model, cs, 3, [Watch()])
    assert torch.equal(seen[0][0], start_w) and not torch.equal(seen[0][1], start_f)  # pretrain: sheet frozen
    assert not torch.equal(seen[1][0], seen[0][0]) and torch.equal(seen[1][1], seen[0][1])  # finetune: sheet only
    assert not torch.equal(seen[2][0], seen[1][0]) and not torch.equal(seen[2][1], seen[1][1])  # joint: all
    assert min(v[2] for v in seen.values()) >= 0.0
    assert model.has_sources and model.sources_epoch == 2  # recorded for the final weights (no checkpoint here)


def test_the_schedule_checks_the_epoch_count_and_selects_after_pretraining():
    model = _small(pretrain_epochs=2, finetune_epochs=1, joint_epochs=2)
    assert model.schedule_epochs == model.total_epochs == 5
    assert [model.stage_of(e) for e in range(6)] == ["pretrain"] * 2 + ["finetune"] + ["joint"] * 3
    assert [model.selectable_epoch(e) for e in range(5)] == [False, False, True, True, True]
    with pytest.raises(ValueError, match="max_epochs must equal the stage schedule's 5 epochs"):
        _fit(model, _random_caseset(), 4)
    with pytest.raises(ValueError, match="finetune_epochs \\+ joint_epochs"):
        _small(finetune_epochs=0, joint_epochs=0)
    assert isinstance(model.training_callbacks(None)[0], PIPNetSchedule)


def test_param_groups_follow_the_ratios():
    model = _small(features_lr_ratio=0.5, scoring_lr_ratio=10.0)
    groups = {g["name"]: g for g in model.param_groups(0.01, 1e-4)}
    assert groups["features"]["lr"] == pytest.approx(0.005) and groups["add_on"]["lr"] == pytest.approx(0.01)
    assert groups["scoring"]["lr"] == pytest.approx(0.1) and groups["scoring"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


# ------------------------------------------------------------------------------------------------ sources
def test_sources_by_hand_come_from_the_training_split_only():
    model = _toy()
    cs = _hand_caseset(masks=True)
    out = model.record_sources(cs, batch_size=3, epoch=7)  # batches of 3: the running top-k crosses batches
    assert out["images"] == 4 and model.sources_epoch == 7
    # bright prototype 0: most present in row 2 (cell (1, 0) = 0.9), then row 0 (cell (1, 0) = 0.8)
    # dark prototype 1: row 3 (cell (1, 1) = 0.0), then row 1 (cell (0, 1) = 0.05); never the val/test copies
    assert model.gallery_row.tolist() == [[2, 0], [3, 1]]
    assert model.source_case_ids == ["c2", "c3"] and model.gallery_case_ids == [["c2", "c0"], ["c3", "c1"]]
    assert model.source_box.tolist() == [[2, 0, 4, 2], [2, 2, 4, 4]]
    assert model.gallery_box[1, 1].tolist() == [0, 2, 2, 4]
    np.testing.assert_allclose(model.gallery_presence.numpy(),
                               [[_sigmoid(5.4), _sigmoid(4.8)], [_sigmoid(0.0), _sigmoid(-0.3)]], rtol=1e-5)
    # prototype quality: prototype 0's top patch is on the lesion (bottom-left block), prototype 1's is not
    train = _Rows(cs.images[:4], cs.labels[:4], cs.masks[:4], cs.case_ids[:4])
    test = _Rows(cs.images[6:], cs.labels[6:], cs.masks[6:], cs.case_ids[6:])
    q = model.extra_metrics(test, train)["explanation"]["prototype_quality"]
    assert q["fraction_source_in_lesion"] == 0.5 and q["n_relevant_prototypes"] == 2
    # classes by largest weight: prototype 0 -> class 0 (2.0 > 0.5), prototype 1 -> class 1; gallery labels
    # [0, 0] and [1, 1]: pure
    assert model.prototype_classes().tolist() == [0, 1] and q["class_purity"] == 1.0
    assert q["scoring_sheet_sparsity"] == 0.25 and q["n_abstained_test"] == 0
    with torch.no_grad():
        model.scoring.weight[:, 1] = 0.0  # relevant prototypes only: now the only one is on the lesion
    assert model.extra_metrics(test, train)["explanation"]["prototype_quality"]["fraction_source_in_lesion"] == 1.0


def test_state_dict_round_trip_keeps_the_sources():
    model = _small()
    cs = _random_caseset()
    model.record_sources(cs, epoch=3)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    twin = _small()
    assert not twin.has_sources
    twin.load_state_dict(torch.load(buf, weights_only=True))
    assert twin.has_sources and twin.sources_epoch == 3
    assert twin.source_case_ids == model.source_case_ids and twin.gallery_case_ids == model.gallery_case_ids
    for name in ("source_row", "source_box", "source_presence", "gallery_row", "gallery_box", "gallery_presence"):
        assert torch.equal(getattr(twin, name), getattr(model, name)), name
    train_ids = set(cs.case_ids[cs.indices("train")])
    assert {c for g in twin.gallery_case_ids for c in g} <= train_ids


# ------------------------------------------------------------------------------------------------ explanations
def test_explain_contributions_add_up_to_the_logit_and_the_map_is_the_top_prototypes():
    model = _small(n_prototypes=8)
    cs = _random_caseset()
    model.record_sources(cs)
    x = cs.images[cs.indices("test")][:4]
    logits = model.eval()(torch.as_tensor(x)).detach().numpy()
    ev, hm = model.explain(x, case_ids=np.array(list("abcd")), top_k=model.n_prototypes)
    assert isinstance(ev, PrototypeEvidence) and isinstance(hm, Heatmap) and hm.method == "prototype_presence"
    assert hm.maps.shape == (4, 16, 16) and list(hm.case_ids) == list("abcd")
    np.testing.assert_array_equal(ev.predicted, logits.argmax(1))
    np.testing.assert_array_equal(hm.target, logits.argmax(1))
    w = model.scoring.nonneg_weight().detach().numpy()
    for n, case in enumerate(ev.matches):
        assert len(case) == 8 and sorted(m.prototype for m in case) == list(range(8))
        contrib = [m.contribution for m in case]
        assert contrib == sorted(contrib, reverse=True)
        assert sum(contrib) == pytest.approx(logits[n, ev.predicted[n]], rel=1e-4, abs=1e-5)
        for m in case:
            assert m.contribution == pytest.approx(m.similarity * w[ev.predicted[n], m.prototype], rel=1e-5, abs=1e-7)
            assert m.source_case_id == model.source_case_ids[m.prototype] and m.activation_map.shape == (16, 16)
            assert m.prototype_class == int(w[:, m.prototype].argmax())
        np.testing.assert_allclose(hm.maps[n], case[0].activation_map, rtol=1e-6)
    # an explicit target, and top_k
    ev1, hm1 = model.explain(x, target=np.zeros(4, int), top_k=2)
    assert all(len(c) == 2 for c in ev1.matches) and hm1.target.tolist() == [0, 0, 0, 0]
    g = model.explain_global()
    assert isinstance(g, GlobalExplanation) and g.form == "prototype_gallery"
    entry = g.content["prototypes"][0]
    assert {"prototype", "class", "source_case_id", "source_row", "source_box", "push_distance",
            "last_layer_weights", "top_k", "relevant"} <= set(entry)
    assert len(entry["top_k"]) == 3 and entry["top_k"][0]["case_id"] == entry["source_case_id"]
    assert g.content["n_prototypes"] == 8 and g.content["sources_recorded"] is True


def test_registry_and_hooks():
    info = model_info("pipnet")
    assert info.family == "prototype" and info.cls is PIPNet and "Nauta" in info.paper and "CVPR 2023" in info.paper
    model = create_model("pipnet", num_classes=3, in_chans=1, img_size=32, **info.test_kwargs)
    maps = model.eval().prototype_activation_maps(torch.rand(2, 1, 32, 32))
    assert maps.shape == (2, 8, 16, 16)  # stage 2 of the 28-px stem (the auto choice at 32 px): stride 2
    torch.testing.assert_close(maps.sum(1), torch.ones(2, 16, 16))
    assert model.relevant_prototypes().dtype == torch.bool and model.relevant_prototypes().all()
    assert create_model("pipnet", num_classes=2, in_chans=1, img_size=32, backbone="resnet18").n_prototypes == 128


# ------------------------------------------------------------------------------------------------ through the pipeline
def test_a_tiny_fit_through_the_pipeline_keeps_sources_of_the_chosen_weights(tmp_path):
    cs = _random_caseset(n=60)
    model = _small(pretrain_epochs=1, finetune_epochs=1, joint_epochs=2)
    res = train_image_model(model, cs, TrainingConfig(max_epochs=20, batch_size=8, patience=0, lr=0.01,
                                                      progress_bar=False), tmp_path)
    assert res.epochs == 4 and res.best_epoch >= 1  # the schedule's 4 epochs; pretraining never chosen
    assert float(model.scoring.weight.detach().min()) >= 0.0
    fresh = _small(pretrain_epochs=1, finetune_epochs=1, joint_epochs=2)
    load_checkpoint(fresh, res.checkpoint)
    assert fresh.has_sources and fresh.sources_epoch == res.best_epoch  # the sources of the checkpoint's weights
    assert set(fresh.source_case_ids) <= set(cs.case_ids[cs.indices("train")])
    # the sources are those the loaded weights give
    again = _small()
    again.load_state_dict(fresh.state_dict())
    again.record_sources(cs)
    assert again.source_case_ids == fresh.source_case_ids
    torch.testing.assert_close(again.source_presence, fresh.source_presence)


def test_outside_lesion_loss_by_hand_on_a_2x2_grid():
    """Each prototype pays its relevance times the L2 norm of its assignment weighted by the cells' share off the
    lesion; images without a lesion add nothing."""
    from glasszoo.models.pipnet import outside_lesion_loss

    mask = torch.zeros(2, 4, 4)
    mask[0, :2, :2] = 1  # cell (0, 0) all lesion
    mask[0, 2, 2] = 1  # cell (1, 1) one quarter lesion
    a = torch.zeros(2, 2, 2, 2)
    a[0, 0] = torch.tensor([[0.9, 0.5], [0.5, 0.8]])
    a[0, 1] = 1 - a[0, 0]
    a[1] = 0.5  # no mask: free
    relevance = torch.tensor([2.0, 0.0])  # prototype 1 has no weight: it may stand for the background
    outside = np.array([[0.0, 1.0], [1.0, 0.75]])
    expected = 2.0 * math.sqrt(((np.array([[0.9, 0.5], [0.5, 0.8]]) * outside) ** 2).sum())
    assert outside_lesion_loss(a, mask, relevance).item() == pytest.approx(expected, rel=1e-6)
    assert outside_lesion_loss(a[1:], mask[1:], relevance).item() == 0.0
    # a relevant prototype present only on the lesion costs nothing
    on = torch.zeros(1, 2, 2, 2)
    on[0, 0, 0, 0] = 1.0
    assert outside_lesion_loss(on, mask[:1], relevance).item() == 0.0


def test_mask_guidance_trains_with_the_sheet_only_and_needs_masks():
    model = _toy(view_symmetry=False, fine_annotation_weight=0.5).train()
    x = torch.as_tensor(np.stack([_blocks(0.1, 0.5, 0.8, 0.2), _blocks(0.7, 0.05, 0.6, 0.3)]))
    mask = torch.zeros(2, 4, 4)
    mask[:, :2, :2] = 1
    batch = {"image": x, "label": torch.tensor([0, 1]), "mask": mask}
    from glasszoo.models.pipnet import outside_lesion_loss

    model.set_stage("joint")
    out = model.extra_losses(batch, model(x))
    with torch.no_grad():
        expected = 0.5 * outside_lesion_loss(model.prototype_activation_maps(x), mask,
                                             model.scoring.nonneg_weight().amax(dim=0))
    assert out["fine_annotation"].item() == pytest.approx(expected.item(), rel=1e-6) and expected.item() > 0
    model.set_stage("finetune")
    assert "fine_annotation" in model.extra_losses(batch, model(x))
    model.set_stage("pretrain", epoch=0)
    assert "fine_annotation" not in model.extra_losses(batch, model(x))
    assert PIPNet.requirements({"fine_annotation_weight": 0.1}) == ("masks",)
    assert PIPNet.requirements({}) == ()
    model.set_stage("joint")
    from glasszoo.models.errors import DataError

    with pytest.raises(DataError, match="needs lesion masks"):
        model.extra_losses({"image": x, "label": batch["label"]}, model(x))
    with pytest.raises(ValueError, match="fine_annotation_weight"):
        _toy(fine_annotation_weight=-1.0)

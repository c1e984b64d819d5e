"""Attention-gated models: the gate by hand, Attention U-Net shapes, size checks, losses, explanations, metrics, a
tiny overfit; the attention-gated classifier with and without masks; the segmentation figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glasszoo.evaluation.seg_figures import plot_segmentation_case
from glasszoo.evaluation.segmentation import dice
from glasszoo.models import AttentionGate, AttentionGatedClassifier, AttentionUNet, Heatmap, create_model, model_info
from glasszoo.models.attention_unet import combine_gate_maps, dice_bce_loss
from glasszoo.models.errors import DataError
from glasszoo.training.synthetic import make_synthetic


def unet(**kw) -> AttentionUNet:
    torch.manual_seed(0)
    args = {"num_classes": 2, "in_chans": 1, "img_size": 32, "depth": 2, "base_width": 4}
    return create_model("attention_unet", **{**args, **kw})


def classifier(**kw) -> AttentionGatedClassifier:
    torch.manual_seed(0)
    args = {"num_classes": 2, "in_chans": 1, "img_size": 32, "depth": 2, "base_width": 4}
    return create_model("attention_classifier", **{**args, **kw})


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


# --------------------------------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------------------------------


def test_attention_gate_equals_the_hand_computed_formula():
    gate = AttentionGate(in_channels=2, gating_channels=3, inter_channels=2, subsample=1)
    wx = np.array([[1.0, -1.0], [0.5, 2.0]])  # [inter, C_x]
    wg = np.array([[0.3, 0.0, -0.7], [1.0, 1.0, 1.0]])  # [inter, C_g]
    wpsi = np.array([1.5, -2.0])
    with torch.no_grad():
        gate.W_x.weight.copy_(torch.tensor(wx, dtype=torch.float32)[:, :, None, None])
        gate.W_g.weight.copy_(torch.tensor(wg, dtype=torch.float32)[:, :, None, None])
        gate.W_g.bias.zero_()
        gate.psi.weight.copy_(torch.tensor(wpsi, dtype=torch.float32)[None, :, None, None])
        gate.psi.bias.zero_()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 2, 3, 4))
    g = rng.normal(size=(2, 3, 3, 4))
    # q = psi . ReLU(W_x x + W_g g) per pixel, alpha = sigmoid(q)
    inter = np.einsum("kc,nchw->nkhw", wx, x) + np.einsum("kc,nchw->nkhw", wg, g)
    alpha = sigmoid(np.einsum("k,nkhw->nhw", wpsi, np.maximum(inter, 0)))[:, None]
    xt, gt = torch.tensor(x, dtype=torch.float32), torch.tensor(g, dtype=torch.float32)
    out = gate(xt, gt)
    np.testing.assert_allclose(gate.coefficients(xt, gt).detach().numpy(), alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.detach().numpy(), alpha * x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gate.last_alpha.numpy(), alpha, rtol=1e-5, atol=1e-6)
    assert not gate.last_alpha.requires_grad


def test_subsampling_gate_computes_on_the_coarse_grid_and_resamples_alpha():
    # W_x: 2x2 stride-2 sum over one channel -> theta on the 2x2 grid of g
    gate = AttentionGate(in_channels=1, gating_channels=1, inter_channels=1, subsample=2)
    with torch.no_grad():
        gate.W_x.weight.fill_(1.0)
        gate.W_g.weight.fill_(2.0)
        gate.W_g.bias.zero_()
        gate.psi.weight.fill_(1.0)
        gate.psi.bias.fill_(-1.0)
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) / 16
    g = torch.tensor([[[[0.5, -3.0], [0.0, 1.0]]]])
    blocks = x.view(2, 2, 2, 2).permute(0, 2, 1, 3).sum(dim=(2, 3))  # the four 2x2 block sums
    coarse = torch.sigmoid(torch.relu(blocks + 2 * g[0, 0]) - 1.0)[None, None]
    expected = F.interpolate(coarse, size=(4, 4), mode="bilinear", align_corners=False)
    alpha = gate.coefficients(x, g)
    assert alpha.shape == (1, 1, 4, 4)
    torch.testing.assert_close(alpha, expected)
    torch.testing.assert_close(gate(x, g), expected * x)
    # a gating signal on another grid is resampled to theta's grid; outputs keep x's shape
    gate2 = AttentionGate(in_channels=8, gating_channels=16, inter_channels=4, subsample=2)
    out = gate2(torch.rand(3, 8, 12, 20), torch.rand(3, 16, 3, 5))
    assert out.shape == (3, 8, 12, 20) and gate2.last_alpha.shape == (3, 1, 12, 20)
    assert ((gate2.last_alpha > 0) & (gate2.last_alpha < 1)).all()


def test_combine_gate_maps_product_normalised_and_mean():
    flat = torch.full((1, 2, 2), 0.5)  # an uninformative gate: constant everywhere
    informative = torch.tensor([[[0.1, 0.2, 0.4, 0.8]] * 4])  # [1, 4, 4], varies along columns
    prod = combine_gate_maps([flat, informative], (4, 4))
    torch.testing.assert_close(prod, informative / 0.8)  # the constant gate is normalised away
    assert prod.max() == 1.0
    mean = combine_gate_maps([flat, informative], (4, 4), mode="mean")
    torch.testing.assert_close(mean, (0.5 + informative) / 2 / 0.65)  # the constant washes contrast out
    closed = torch.tensor([[[1.0, 1.0, 1.0, 0.0]] * 4])  # a gate closing the last column hides it in the product
    assert (combine_gate_maps([informative, closed], (4, 4))[..., 3] == 0).all()
    assert (combine_gate_maps([torch.zeros(2, 3, 3)], (6, 6)) == 0).all()  # all-zero stays zero, no NaN
    with pytest.raises(ValueError, match="mode"):
        combine_gate_maps([flat], (4, 4), mode="max")


# --------------------------------------------------------------------------------------------------------------------
# Attention U-Net: shapes and sizes
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("base_width", [4, 8])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_attention_unet_shapes(depth, base_width, in_chans):
    h, w = 32, 48
    model = unet(depth=depth, base_width=base_width, in_chans=in_chans, img_size=(h, w), num_classes=3).eval()
    x = torch.rand(2, in_chans, h, w)
    with torch.no_grad():
        logits = model(x)
        seg = model.segment(x)
        maps = model.attention_maps(x)
    assert logits.shape == (2, 3) and seg.shape == (2, 1, h, w)
    assert [tuple(m.shape) for m in maps] == [(2, h // 2 ** i, w // 2 ** i) for i in range(depth)]
    assert all(((m > 0) & (m < 1)).all() for m in maps)
    # the last decoder block is at full resolution with base_width channels
    assert model.seg_head.in_channels == base_width
    assert model.classifier.in_features == base_width + 2 * base_width * 2 ** depth + 1


@pytest.mark.parametrize("size,depth,nearest", [(30, 2, "28 or 32"), (33, 3, "32 or 40"), (20, 3, "16 or 24"),
                                                (6, 3, "8")])
def test_non_divisible_input_size_is_a_value_error_naming_it(size, depth, nearest):
    with pytest.raises(ValueError, match=rf"input size {size}x{size} is not divisible by {2 ** depth}.*{nearest}"):
        unet(img_size=size, depth=depth)
    with pytest.raises(ValueError, match=r"input size 32x36 .*width 32 or 40"):
        unet(img_size=(32, 36), depth=3)
    model = unet(img_size=32, depth=2)  # a valid model refuses invalid inputs too
    with pytest.raises(ValueError, match="input size 30x32"):
        model(torch.rand(1, 1, 30, 32))


def test_timm_encoder_resnet18_at_32px():
    model = unet(encoder="resnet18", depth=3).train()
    x = torch.rand(2, 1, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    assert model.encoder.reductions == [2, 4, 8, 16]
    seg = model.segment(x)
    assert seg.shape == (2, 1, 32, 32)  # upsampled from the /2 grid of resnet's first level
    assert [tuple(m.shape) for m in model.attention_maps(x)] == [(2, 16, 16), (2, 8, 8), (2, 4, 4)]
    loss = F.cross_entropy(logits, torch.tensor([0, 1])) + sum(
        model.extra_losses({"image": x, "label": torch.tensor([0, 1]), "mask": torch.ones(2, 32, 32)}, logits).values())
    loss.backward()
    with pytest.raises(ValueError, match=r"input size 40x40 is not divisible by 16.*resnet18"):
        unet(encoder="resnet18", depth=3, img_size=40)
    with pytest.raises(ValueError, match="has 5 feature levels"):
        unet(encoder="resnet18", depth=5)
    with pytest.raises(ValueError, match="unknown encoder"):
        unet(encoder="not_a_timm_model")


# --------------------------------------------------------------------------------------------------------------------
# Attention U-Net: losses, predictions, explanations, metrics
# --------------------------------------------------------------------------------------------------------------------


def test_dice_bce_loss_by_hand():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    mask = torch.tensor([[[0, 1], [0, 1]]], dtype=torch.uint8)
    p = [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1)), 1 / (1 + math.exp(-3))]
    t = [0, 1, 0, 1]
    inter = p[1] + p[3]
    dice_loss = 1 - (2 * inter + 1) / (sum(p) + 2 + 1)
    bce = -sum(ti * math.log(pi) + (1 - ti) * math.log(1 - pi) for pi, ti in zip(p, t)) / 4
    assert dice_bce_loss(logits, mask).item() == pytest.approx(dice_loss + bce, rel=1e-6)
    # [N, H, W] logits work too; an empty mask predicted empty costs ~0 Dice
    assert dice_bce_loss(logits[:, 0], mask).item() == pytest.approx(dice_loss + bce, rel=1e-6)
    very_negative = torch.full((1, 8, 8), -30.0)
    assert dice_bce_loss(very_negative, torch.zeros(1, 8, 8)).item() == pytest.approx(0.0, abs=1e-6)


def test_extra_losses_use_the_cached_segmentation_and_weight_it():
    model = unet(seg_weight=2.0, img_size=16).train()
    x = torch.rand(2, 1, 16, 16)
    mask = (torch.rand(2, 16, 16) > 0.7).to(torch.uint8)
    batch = {"image": x, "label": torch.tensor([0, 1]), "mask": mask}
    logits = model(x)
    known = torch.randn(2, 1, 16, 16)
    model._cache = (logits, known)  # the segmentation of this very forward pass
    model.segment = lambda _x: pytest.fail("extra_losses must not run a second forward pass")
    terms = model.extra_losses(batch, logits)
    assert list(terms) == ["segmentation"]
    assert terms["segmentation"].item() == pytest.approx(2.0 * dice_bce_loss(known, mask).item(), rel=1e-6)
    assert model._cache is None  # released
    del model.segment
    # logits from elsewhere (eval mode, no cache): recomputed from the images
    model.eval()
    with torch.no_grad():
        logits = model(x)
        terms = model.extra_losses(batch, logits)
        expected = 2.0 * dice_bce_loss(model.segment(x), mask)
    assert terms["segmentation"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_extra_losses_without_mask_is_a_data_error():
    model = unet().train()
    x = torch.rand(2, 1, 32, 32)
    logits = model(x)
    msg = "attention_unet needs lesion masks; the data set has none — use attention_classifier"
    with pytest.raises(DataError, match=msg):
        model.extra_losses({"image": x, "label": torch.tensor([0, 1])}, logits)


def test_predict_masks_thresholds_the_sigmoid():
    model = unet(img_size=16)
    fixed = torch.tensor([-1.0, -0.01, 0.01, 2.0]).repeat(16 * 4)[: 16 * 16].view(1, 1, 16, 16)
    model.segment = lambda xb: fixed.expand(len(xb), -1, -1, -1)
    x = np.zeros((3, 1, 16, 16), np.float32)
    masks = model.predict_masks(x, batch_size=2)
    assert masks.dtype == np.uint8 and masks.shape == (3, 16, 16)
    np.testing.assert_array_equal(masks[0], (fixed[0, 0] > 0).numpy().astype(np.uint8))  # sigmoid > 0.5
    np.testing.assert_array_equal(model.predict_masks(x, threshold=0.6)[0],
                                  (fixed[0, 0] > math.log(0.6 / 0.4)).numpy().astype(np.uint8))


def test_explain_gives_attention_and_segmentation_heatmaps():
    model = unet(depth=3, base_width=4, img_size=32).eval()
    x = np.random.default_rng(0).random((5, 1, 32, 32), dtype=np.float32)
    ids = np.array(list("abcde"))
    exps = model.explain(x, case_ids=ids, batch_size=2)
    assert [e.method for e in exps] == ["attention", "segmentation"]
    assert all(isinstance(e, Heatmap) and e.maps.shape == (5, 32, 32) for e in exps)
    assert all((e.maps >= 0).all() and (e.maps <= 1).all() for e in exps)
    np.testing.assert_allclose(exps[0].maps.reshape(5, -1).max(1), 1.0, rtol=1e-6)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        logits = model(xt)
        np.testing.assert_allclose(exps[1].maps, torch.sigmoid(model.segment(xt))[:, 0].numpy(), atol=1e-6)
        expected = combine_gate_maps(model.attention_maps(xt), (32, 32)).numpy()
    np.testing.assert_allclose(exps[0].maps, expected, atol=1e-6)
    np.testing.assert_array_equal(exps[0].target, logits.argmax(1).numpy())
    assert list(exps[1].case_ids) == list(ids)
    given = model.explain(x, target=np.array([1, 0, 1, 0, 1]))
    np.testing.assert_array_equal(given[0].target, [1, 0, 1, 0, 1])
    assert not model.training


def _segmentation_block(model, cs):
    """The run's segmentation block of a model that segments (``segments = True``), on the test split."""
    from types import SimpleNamespace

    from glasszoo.evaluation.experiment.runner import _model_metrics

    cfg = SimpleNamespace(evaluation=SimpleNamespace(bootstrap=100), seed=0)
    return _model_metrics(model, cs, cfg).get("segmentation")


def test_segmentation_metrics_on_a_tiny_caseset(monkeypatch):
    cs = make_synthetic(n_cases=40, img_size=32, seed=1)
    model = unet(depth=2, base_width=4)
    assert model.segments and not AttentionGatedClassifier.segments
    test = cs.indices("test")
    out = _segmentation_block(model, cs)
    assert {"dice", "iou", "hausdorff95", "n_cases", "n_cases_hausdorff", "empty_prediction_rate"} <= set(out)
    assert out["n_cases"] == len(test)
    for key in ("dice", "iou"):
        assert 0.0 <= out[key]["value"] <= 1.0
    hd = out["hausdorff95"]["value"]
    assert np.isnan(hd) or 0.0 <= hd <= 32 * math.sqrt(2)
    # known answer: a model predicting the ground truth exactly scores Dice = IoU = 1 and HD95 = 0
    monkeypatch.setattr(model, "predict_masks", lambda x, threshold=0.5: cs.masks[test])
    perfect = _segmentation_block(model, cs)
    assert perfect["dice"]["value"] == 1.0 and perfect["iou"]["value"] == 1.0
    assert perfect["hausdorff95"]["value"] == 0.0 and perfect["dice"]["ci"] == [1.0, 1.0]
    assert perfect["n_cases_hausdorff"] == len(test)  # every synthetic case has a lesion
    assert perfect["threshold"] == 0.5
    cs.masks = None
    assert _segmentation_block(model, cs) is None  # nothing to score against


def test_attention_unet_overfits_16_synthetic_cases():
    # 16 phantom scans at 32 px; 60 full-batch Adam steps on the segmentation loss alone. Across seeds 0-8 this
    # reached a train Dice (eval mode, thresholded at 0.5) of 0.73-0.94, mean ~0.85, in ~2 s; an untrained model
    # (or one predicting the whole image: Dice ~0.17 with lesions ~9% of the image) is far below 0.7.
    cs = make_synthetic(n_cases=30, img_size=32, seed=0)
    x, m = torch.from_numpy(cs.images[:16]), torch.from_numpy(cs.masks[:16])
    model = unet(depth=2, base_width=8).train()
    before = dice(model.predict_masks(x.numpy()), cs.masks[:16]).mean()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        logits = model(x)
        model.extra_losses({"image": x, "label": torch.from_numpy(cs.labels[:16]), "mask": m}, logits)[
            "segmentation"].backward()
        opt.step()
    after = dice(model.predict_masks(x.numpy()), cs.masks[:16]).mean()
    assert before < 0.3
    assert after > 0.7


# --------------------------------------------------------------------------------------------------------------------
# Attention-gated classifier
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aggregation", ["mean", "ft", "concat"])
@pytest.mark.parametrize("in_chans,side,classes", [(1, 32, 2), (3, 28, 3), (1, 30, 2)])
def test_classifier_shapes(aggregation, in_chans, side, classes):
    model = classifier(aggregation=aggregation, in_chans=in_chans, img_size=side, num_classes=classes,
                       depth=3).eval()
    x = torch.rand(2, in_chans, side, side)
    with torch.no_grad():
        logits = model(x)
        maps = model.attention_maps(x)
        heads = model.head_logits(x)
    assert logits.shape == (2, classes)
    # gated levels 1 and 2 of depth 3 (poolings round up: 30 -> 15 -> 8)
    up = [math.ceil(side / 2), math.ceil(side / 4)]
    assert [tuple(m.shape) for m in maps] == [(2, up[0], up[0]), (2, up[1], up[1])]
    if aggregation == "concat":
        assert heads == {}
    else:
        assert list(heads) == ["gate_level1", "gate_level2", "global"]
        if aggregation == "mean":  # the final logits are the mean of the heads' logits
            torch.testing.assert_close(logits, torch.stack(list(heads.values())).mean(0))


def test_classifier_trains_without_masks_and_deep_supervision_by_hand():
    model = classifier(seg_weight=0.0, deep_supervision=0.5).train()
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 1, 0])
    logits = model(x)
    heads = [h.detach() for h in model._cache[1]]
    terms = model.extra_losses({"image": x, "label": y}, logits)  # no mask in the batch: fine
    assert list(terms) == ["deep_supervision"]
    expected = 0.5 * np.mean([F.cross_entropy(h, y).item() for h in heads])
    assert terms["deep_supervision"].item() == pytest.approx(expected, rel=1e-6)
    (F.cross_entropy(logits, y) + terms["deep_supervision"]).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert classifier(deep_supervision=0.0).extra_losses({"image": x, "label": y}, logits) == {}


def test_classifier_with_segmentation_needs_masks():
    model = classifier(seg_weight=1.0).train()
    x, y = torch.rand(2, 1, 32, 32), torch.tensor([0, 1])
    logits = model(x)
    with pytest.raises(DataError, match="attention_classifier with seg_weight > 0 needs lesion masks"):
        model.extra_losses({"image": x, "label": y}, logits)
    logits = model(x)
    mask = torch.zeros(2, 32, 32, dtype=torch.uint8)
    mask[:, 10:20, 8:16] = 1
    terms = model.extra_losses({"image": x, "label": y, "mask": mask}, logits)
    assert set(terms) == {"deep_supervision", "segmentation"}
    with torch.no_grad():
        seg = model.segment(x)
    assert seg.shape == (2, 1, 32, 32)
    assert model.head_names == ["gate_level0", "gate_level1", "global", "lesion"]
    exps = model.eval().explain(x.numpy())
    assert [e.method for e in exps] == ["attention", "segmentation"]
    with pytest.raises(RuntimeError, match="no segmentation head"):
        classifier().segment(x)


def test_classifier_explain_and_size_checks():
    model = classifier(depth=3, img_size=28, in_chans=3).eval()
    x = np.random.default_rng(1).random((3, 3, 28, 28), dtype=np.float32)
    (hm,) = model.explain(x, case_ids=np.array(["a", "b", "c"]))
    assert hm.method == "attention" and hm.maps.shape == (3, 28, 28)
    assert (hm.maps >= 0).all() and np.allclose(hm.maps.reshape(3, -1).max(1), 1.0)
    # the decision's map, by hand: each gate's alpha upsampled and scaled to sum 1 (its share of its head's pooled
    # evidence per pixel), a uniform 1 / (H W) for the global head, their mean, scaled to maximum 1
    with torch.no_grad():
        gates = model.attention_maps(torch.from_numpy(x))
    shares = [F.interpolate(g[:, None], size=(28, 28), mode="bilinear", align_corners=False)[:, 0].numpy()
              for g in gates]
    shares = [m / m.sum(axis=(1, 2), keepdims=True) for m in shares] + [np.full((3, 28, 28), 1 / 28 ** 2)]
    expected = np.mean(shares, axis=0)
    np.testing.assert_allclose(hm.maps, expected / expected.max(axis=(1, 2), keepdims=True), atol=1e-5)
    with pytest.raises(ValueError, match=r"input size 6x6 is too small for depth=3"):
        classifier(depth=3, img_size=6)
    with pytest.raises(ValueError, match="depth must be an integer >= 2"):
        classifier(depth=1)
    with pytest.raises(ValueError, match="aggregation"):
        classifier(aggregation="max")
    timm_model = classifier(encoder="resnet18", depth=3).eval()
    assert timm_model(torch.rand(2, 1, 32, 32)).shape == (2, 2)


def test_both_models_are_registered_with_their_papers():
    unet_info, clf_info = model_info("attention_unet"), model_info("attention_classifier")
    assert unet_info.family == clf_info.family == "attention"
    assert "Oktay" in unet_info.paper and "Schlemper" in clf_info.paper
    assert "Oktay" in AttentionUNet.__doc__ and "Schlemper" in AttentionGatedClassifier.__doc__


# --------------------------------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------------------------------


def test_plot_segmentation_case_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((1, 32, 32), dtype=np.float32)
    true = np.zeros((32, 32), np.uint8)
    true[10:20, 12:22] = 1
    pred = np.roll(true, 2, axis=1)
    path = tmp_path / "figs" / "case.png"
    plot_segmentation_case(image, pred, true, [rng.random((32, 32)), rng.random((16, 16))], path, title="case 1")
    assert path.is_file() and path.stat().st_size > 1000
    rgb = tmp_path / "rgb.png"
    plot_segmentation_case(rng.random((3, 32, 32)), np.zeros((32, 32)), None, [], rgb)  # empty prediction, no truth
    assert rgb.is_file()
    with pytest.raises(ValueError, match="pred_mask must be"):
        plot_segmentation_case(image, np.zeros((16, 16)), true, [], tmp_path / "bad.png")


def test_gate_supervision_loss_by_hand():
    from glasszoo.models.attention_unet import gate_supervision_loss

    # a 2x2 gate over a 4x4 mask whose top-left cell is fully on the lesion and top-right half on it
    masks = torch.zeros(1, 4, 4)
    masks[0, :2, :2] = 1
    masks[0, :2, 2] = 1
    alpha = torch.tensor([[[[0.9, 0.5], [0.2, 0.1]]]])
    targets = [1.0, 0.5, 0.0, 0.0]
    bce = [-(t * math.log(a) + (1 - t) * math.log(1 - a)) for a, t in zip([0.9, 0.5, 0.2, 0.1], targets)]
    assert float(gate_supervision_loss(alpha, masks)) == pytest.approx(sum(bce) / 4, rel=1e-6)


def test_gate_supervision_trains_the_gates_and_needs_masks():
    assert AttentionGatedClassifier.requirements({"gate_supervision": 0.5}) == ("masks",)
    assert AttentionGatedClassifier.requirements({}) == ()
    model = classifier(gate_supervision=0.5).train()
    x, y = torch.rand(2, 1, 32, 32), torch.tensor([0, 1])
    with pytest.raises(DataError, match="attention_classifier with gate_supervision > 0 needs lesion masks"):
        model.extra_losses({"image": x, "label": y}, model(x))
    mask = torch.zeros(2, 32, 32)
    mask[:, 12:20, 12:20] = 1
    terms = model.extra_losses({"image": x, "label": y, "mask": mask}, model(x))
    assert set(terms) == {"deep_supervision", "gate_supervision"}
    terms["gate_supervision"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gates[0].psi.parameters())

"""Concept bottleneck models: the concept spec, the sparse label head, intervention by hand, the three modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from glasszoo.evaluation.experiment.config import parse_config
from glasszoo.evaluation.experiment.runner import run_experiment
from glasszoo.models import ConceptBottleneck, ConceptEvidence, Heatmap, create_model
from glasszoo.models._linear import fit_sparse_linear
from glasszoo.models.cbm import concept_spec
from glasszoo.models.errors import DataError
from glasszoo.training.caseset import CaseSet


def tiny_cbm(**kw) -> ConceptBottleneck:
    args = {"concept_names": ["a", "b", "c"], "concept_kinds": ["binary", "binary", "continuous"],
            "concept_center": [0.0, 0.0, 10.0], "concept_scale": [1.0, 1.0, 2.0], "stem": "standard"}
    return create_model("cbm", num_classes=2, in_chans=1, img_size=32, **{**args, **kw}).eval()


def caseset(concepts: np.ndarray, split: list[str], names=("x", "y")) -> CaseSet:
    n = len(concepts)
    return CaseSet(images=np.zeros((n, 1, 8, 8), np.float32), labels=np.arange(n) % 2, class_names=["n", "p"],
                   case_ids=[f"c{i}" for i in range(n)], split=split, concepts=concepts, concept_names=list(names))


def test_concept_spec_uses_the_training_split_and_detects_kinds():
    c = np.array([[0, 1], [1, 3], [0, 5], [1, 100], [0, -100], [1, 7], [0, 50], [1, 60]], np.float32)
    # labels alternate 0/1, so every split holds both classes
    cs = caseset(c, ["train", "train", "train", "val", "test", "test", "val", "test"])
    spec = concept_spec(cs, cs.indices("train"))
    assert spec["concept_kinds"] == ["binary", "continuous"]
    assert spec["concept_center"] == [0.0, pytest.approx(3.0)]  # mean of 1, 3, 5: val/test are not looked at
    assert spec["concept_scale"] == [1.0, pytest.approx(np.std([1, 3, 5]))]
    bare = CaseSet(images=np.zeros((6, 1, 8, 8), np.float32), labels=[0, 1] * 3, class_names=["n", "p"],
                   case_ids=list("abcdef"), split=["train"] * 2 + ["val"] * 2 + ["test"] * 2, name="bare")
    with pytest.raises(DataError, match="data set 'bare' has no concepts.*data.concepts: derived"):
        concept_spec(bare, bare.indices("train"))


def test_intervention_changes_the_logit_by_weight_times_correction():
    model = tiny_cbm()
    w = torch.tensor([[0.5, -1.0, 2.0], [-0.5, 1.5, 0.25]])
    b = torch.tensor([0.1, -0.2])
    with torch.no_grad():
        model.label_head.weight.copy_(w)
        model.label_head.bias.copy_(b)
    acts = np.array([[0.2, 0.9, 0.5], [0.7, 0.1, -1.0]], np.float32)  # continuous concept: standardised
    true = np.array([[1.0, 0.0, 14.0], [0.0, 1.0, 8.0]], np.float32)  # data units; c: (14 - 10) / 2 = 2
    base = model.intervene(acts, true, np.zeros(3, bool))
    np.testing.assert_allclose(base, acts @ w.numpy().T + b.numpy(), rtol=1e-6)
    std_true = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
    for j in range(3):
        fix = np.zeros(3, bool)
        fix[j] = True
        delta = model.intervene(acts, true, fix) - base
        expected = w.numpy()[None, :, j] * (std_true[:, j] - acts[:, j])[:, None]
        np.testing.assert_allclose(delta, expected, atol=1e-6)
    # correcting all concepts gives the head applied to the true (standardised) concepts
    np.testing.assert_allclose(model.intervene(acts, true, np.ones(3, bool)), std_true @ w.numpy().T + b.numpy(),
                               atol=1e-6)


def test_intervention_curve_orders():
    model = tiny_cbm()
    with torch.no_grad():
        model.label_head.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
        model.label_head.bias.zero_()
    acts = np.array([[0.45, 0.9, 3.0], [0.1, 0.55, -3.0]] * 5, np.float32)
    true = np.array([[1.0, 1.0, 10.0], [0.0, 0.0, 10.0]] * 5, np.float32)
    labels = np.array([1, 0] * 5)
    rand = model.intervention_curve(acts, true, labels, order="random")
    unc = model.intervention_curve(acts, true, labels, order="uncertain_first")
    assert rand["n_corrected"] == unc["n_corrected"] == [0, 1, 2, 3]
    assert rand["auc"][0] == unc["auc"][0] and rand["auc"][-1] == unc["auc"][-1] == 1.0
    # uncertain first: case 0 corrects a (|0.45 - 0.5| smallest) first, case 1 corrects b (0.55) first
    logits1 = model.intervene(acts, true, np.array([[True, False, False], [False, True, False]] * 5))
    p1 = torch.softmax(torch.as_tensor(logits1), 1).numpy()
    assert unc["accuracy"][1] == pytest.approx(float((p1.argmax(1) == labels).mean()))
    assert unc["auc"][1] == pytest.approx(roc_auc_score(labels, p1[:, 1]))
    with pytest.raises(ValueError, match="order must be"):
        model.intervention_curve(acts, true, labels, order="alphabetical")


def test_fit_sparse_linear_matches_sklearn_without_penalty_and_zeroes_noise_with_it():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(300, 4))
    y = (c[:, 0] - 0.5 * c[:, 1] + rng.normal(scale=1.0, size=300) > 0).astype(int)
    w, b = fit_sparse_linear(torch.as_tensor(c), torch.as_tensor(y), 2, l1=0.0, steps=3000)
    p = torch.softmax(torch.as_tensor(c, dtype=torch.float32) @ w.T + b, 1).numpy()
    ref = LogisticRegression(C=1e6, max_iter=5000).fit(c, y).predict_proba(c)
    np.testing.assert_allclose(p, ref, atol=2e-3)
    w, _ = fit_sparse_linear(torch.as_tensor(c), torch.as_tensor(y), 2, l1=0.05, steps=2000)
    assert (w[:, 2:].abs() < 1e-6).all()  # the two noise concepts get no weight
    assert w[1, 0] - w[0, 0] > 0.5 and w[1, 1] - w[0, 1] < 0


def test_explain_contributions_add_up_to_the_logit():
    torch.manual_seed(0)
    model = tiny_cbm()
    x = torch.rand(3, 1, 32, 32)
    ev, hm = model.explain(x.numpy())
    assert isinstance(ev, ConceptEvidence) and isinstance(hm, Heatmap) and hm.method == "concept_gradcam"
    with torch.no_grad():
        logits = model(x).numpy()
    pred = logits.argmax(1)
    np.testing.assert_array_equal(ev.target, pred)
    bias = model.label_head.bias.detach().numpy()
    np.testing.assert_allclose(ev.contribution.sum(1) + bias[pred], logits[np.arange(3), pred], atol=1e-5)
    acts = model.predict_concepts(x.numpy())
    np.testing.assert_allclose(ev.predicted[:, 2], acts[:, 2] * 2.0 + 10.0, rtol=1e-5)  # data units
    np.testing.assert_allclose(ev.predicted[:, :2], acts[:, :2], rtol=1e-6)  # probabilities
    assert hm.maps.shape == (3, 32, 32) and (hm.maps >= 0).all()
    text = model.explain_global().text
    assert text.startswith("logit[class 0] =") and "x a" in text


def test_two_stage_modes_train_no_label_head_by_sgd():
    for mode in ("sequential", "independent"):
        model = tiny_cbm(mode=mode)
        assert model.task_loss_weight == 0.0
        assert not any(p.requires_grad for p in model.label_head.parameters())
        assert len(model.training_callbacks(None)) == 1
    joint = tiny_cbm(mode="joint")
    assert joint.task_loss_weight == 1.0 and joint.label_head.weight.requires_grad
    with pytest.raises(ValueError, match="mode must be one of"):
        tiny_cbm(mode="both")
    with pytest.raises(ValueError, match="unique"):
        tiny_cbm(concept_names=["a", "a", "c"])


def test_the_label_head_is_refitted_at_the_end_of_training_only_if_steps_followed_its_last_fit(monkeypatch):
    """The sequential head is fitted before every validation; at the end of training it is fitted again only when
    the weights changed after that (or no validation ran), since the same fit of the same weights is the same head."""
    from types import SimpleNamespace

    from glasszoo.models.cbm import LabelHeadFit

    callback = LabelHeadFit(tiny_cbm(mode="sequential"), None)
    fits = []
    monkeypatch.setattr(callback, "fit", lambda: fits.append(1))

    def trainer(step: int) -> SimpleNamespace:
        return SimpleNamespace(state=SimpleNamespace(fn="fit"), global_step=step)

    callback.on_fit_end(trainer(0), None)  # no validation at all
    assert len(fits) == 1
    callback.on_validation_epoch_start(trainer(5), None)
    callback.on_fit_end(trainer(5), None)  # validated at the last step: that head stands
    assert len(fits) == 2
    callback.on_fit_end(trainer(7), None)  # two steps after the last validation
    assert len(fits) == 3
    validating = SimpleNamespace(state=SimpleNamespace(fn="validate"), global_step=9)
    callback.on_validation_epoch_start(validating, None)  # trainer.validate() after fit: no refit
    assert len(fits) == 3


def test_with_head_fit_cases_validations_fit_a_subsample_and_the_chosen_head_the_whole_split(tmp_path, monkeypatch):
    """``head_fit_cases``: every validation's head is fitted on the same random subsample of the training split;
    once the chosen epoch is loaded its head is fitted on the whole split, and that is the stored model."""
    from glasszoo.models import cbm as cbm_module
    from glasszoo.training.settings import TrainingConfig
    from glasszoo.training.synthetic import make_synthetic
    from glasszoo.training.train import load_checkpoint, train_image_model

    cs = make_synthetic(n_cases=60, img_size=32, seed=0)
    train = cs.indices("train")
    model = create_model("cbm", num_classes=2, in_chans=1, img_size=32, stem="standard", mode="sequential",
                         head_fit_cases=10, **cbm_module.concept_spec(cs, train))
    fitted_rows = []
    real_fit = cbm_module.LabelHeadFit.fit

    def fit(self):
        fitted_rows.append(self.rows())
        real_fit(self)

    monkeypatch.setattr(cbm_module.LabelHeadFit, "fit", fit)
    res = train_image_model(model, cs, TrainingConfig(max_epochs=2, batch_size=16, progress_bar=False), tmp_path)
    validations, final = fitted_rows[:2], fitted_rows[-1]
    assert len(fitted_rows) == 3  # two validations, then the chosen epoch on the whole split
    assert len(validations[0]) == 10 and np.array_equal(validations[0], validations[1])
    assert set(validations[0]) <= set(train) and np.array_equal(final, train)
    c = torch.as_tensor(model.predict_concepts(cs.images[train]))
    w, b = fit_sparse_linear(c, torch.as_tensor(cs.labels[train]), 2, model.label_l1)
    torch.testing.assert_close(model.label_head.weight.detach(), w)
    torch.testing.assert_close(model.label_head.bias.detach(), b)
    stored = load_checkpoint(create_model("cbm", num_classes=2, in_chans=1, img_size=32, stem="standard",
                                          mode="sequential", **cbm_module.concept_spec(cs, train)), res.checkpoint)
    torch.testing.assert_close(stored.label_head.weight.detach(), w)
    with pytest.raises(ValueError, match="head_fit_cases must be a positive integer"):
        tiny_cbm(mode="sequential", head_fit_cases=0)


def test_run_with_the_three_modes(tmp_path):
    cfg = parse_config({
        "experiment": "cbm", "seed": 0, "output_dir": str(tmp_path),
        "data": {"source": "synthetic", "n_cases": 160, "img_size": 32},
        "training": {"max_epochs": 1, "batch_size": 32, "progress_bar": False},
        "evaluation": {"bootstrap": 50, "explain_cases": 8, "case_figures_per_class": 1, "report_misclassified": 0},
        "models": [{"name": f"cbm_{m}", "model": "cbm", "params": {"stem": "standard", "mode": m}}
                   for m in ("joint", "sequential", "independent")],
    }, "cbm-test")
    run_dir = run_experiment(cfg)
    m = json.loads((run_dir / "metrics.json").read_text())
    from glasszoo.training.data import load_caseset

    cs = load_caseset(cfg.data, seed=0)
    train, test = cs.indices("train"), cs.indices("test")
    for mode in ("joint", "sequential", "independent"):
        block = m["models"][f"cbm_{mode}"]["explanation"]
        c = block["concepts"]
        assert c["mode"] == mode and set(c["per_concept"]) == set(cs.concept_names)
        accs = [v["accuracy"] for v in c["per_concept"].values()]
        assert c["mean_concept_accuracy"] == pytest.approx(np.mean(accs))
        for order in ("random", "uncertain_first"):
            assert c["intervention"][order]["n_corrected"] == list(range(len(cs.concept_names) + 1))
        assert block["concept_gradcam"]["n_cases"] == 8 and "pointing_game" in block["concept_gradcam"]
        assert (run_dir / "figures" / f"cbm_{mode}_intervention.png").is_file()
        assert len(list((run_dir / "figures" / "cases" / f"cbm_{mode}").glob("*.png"))) == 2
    # independent: the head is the sparse logistic regression on the true training concepts, so with every
    # concept corrected the test AUC is that regression's AUC on the true test concepts
    w, b = fit_sparse_linear(torch.as_tensor(cs.concepts[train]), torch.as_tensor(cs.labels[train]), 2, 1e-3)
    p = torch.softmax(torch.as_tensor(cs.concepts[test]) @ w.T + b, 1).numpy()
    all_fixed = m["models"]["cbm_independent"]["explanation"]["concepts"]["intervention"]["random"]["auc"][-1]
    assert all_fixed == pytest.approx(roc_auc_score(cs.labels[test], p[:, 1]), abs=1e-6)
    assert all_fixed > 0.9  # the label rule is a linear threshold on the concepts


def test_the_concept_figure_maps_the_largest_absolute_contribution_and_its_bars_add_up(tmp_path, monkeypatch):
    """The concept map is of the concept that moved the logit most (|contribution|, here a negative one), and the
    figure's bars (contributions + the head's bias) sum to the explained logit."""
    import glasszoo.evaluation.case_figures as cf
    from glasszoo.evaluation.case_figures import Case, explain_case

    torch.manual_seed(0)
    model = tiny_cbm()
    with torch.no_grad():  # a head whose strongest term argues against the class
        model.label_head.weight.copy_(torch.tensor([[0.1, -3.0, 0.2], [0.3, 0.1, -0.2]]))
        model.label_head.bias.copy_(torch.tensor([0.7, -0.4]))
    x = torch.rand(1, 1, 32, 32)
    ev, hm = model.explain(x.numpy(), target=np.array([0]))
    logits = model(x).detach().numpy()[0]
    assert ev.contribution[0].sum() + ev.intercept[0] == pytest.approx(logits[0], abs=1e-5)
    top = int(np.abs(ev.contribution[0]).argmax())
    assert top == 1 and ev.contribution[0, 1] < 0 < ev.contribution[0].max()  # not the largest positive one
    np.testing.assert_allclose(hm.maps[0], cbm_gradcam(model, x, top)[0], rtol=1e-4, atol=1e-6)
    drawn = {}
    real_barh = cf.plt.Axes.barh

    def spy(self, y, widths, *a, **kw):
        drawn["bars"] = list(widths)
        return real_barh(self, y, widths, *a, **kw)

    monkeypatch.setattr(cf.plt.Axes, "barh", spy)
    exps = explain_case(model, Case(x=x.numpy(), image=x.numpy()[0]), ["n", "p"], tmp_path / "c.png")
    k = int(exps[0].target[0])  # the figure explains the predicted class
    assert (tmp_path / "c.png").is_file() and len(drawn["bars"]) == 4  # three concepts and the intercept
    assert sum(drawn["bars"]) == pytest.approx(logits[k], abs=1e-5)


def cbm_gradcam(model, x, concept):
    """Captum's Grad-CAM of one concept output on the last feature stage, upsampled (the reference map)."""
    from captum.attr import LayerGradCam

    from glasszoo.models._backbones import last_feature_module

    attr = LayerGradCam(model.concept_outputs, last_feature_module(model.net)).attribute(
        x, target=torch.tensor([concept]), relu_attributions=True)
    return torch.nn.functional.interpolate(attr, size=x.shape[-2:], mode="bilinear",
                                           align_corners=False)[:, 0].detach().numpy()


def test_output_stride_sets_the_resolution_of_the_concept_map():
    # resnet18 at 48 px (standard stem): last stage 2x2 at stride 32, 6x6 at stride 8; the concept Grad-CAM reads it
    kw = dict(num_classes=2, in_chans=1, img_size=48, concept_names=["a", "b"], backbone="resnet18", stem="standard")
    for stride, side in ((32, 2), (8, 6)):
        model = create_model("cbm", output_stride=stride, **kw).eval()
        assert model.net.forward_features(torch.rand(1, 1, 48, 48)).shape[-2:] == (side, side)

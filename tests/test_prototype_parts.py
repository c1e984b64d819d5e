"""Prototype consistency and stability (Huang et al., ICCV 2023) on hand-built maps and masks; how the prototype case
figure chooses between a prototype's drawings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from standins import TinyNet

from glasszoo.evaluation import case_figures
from glasszoo.evaluation.case_figures import choose_drawing, plot_prototype_case, pointing_game_scores
from glasszoo.evaluation.prototype_parts import (
    add_noise,
    consistency,
    part_hits,
    prototype_part_scores,
    stability,
)
from glasszoo.evaluation.report import _diagnostics_section
from glasszoo.models import ImageModel, PrototypeMatch

TL, BR = (0, 0), (1, 1)  # cells of a 2x2 patch grid


def _grid(*cells: tuple[int, int]) -> torch.Tensor:
    """Maps [len(cells), 2, 2]: 1 at the given cell, 0 elsewhere."""
    out = torch.zeros(len(cells), 2, 2)
    for i, (r, c) in enumerate(cells):
        out[i, r, c] = 1.0
    return out


def _lesion_top_left(n: int) -> torch.Tensor:
    """Masks [n, 4, 4] with the top-left 2x2 block as the lesion (the top-left cell of a 2x2 grid)."""
    m = torch.zeros(n, 4, 4, dtype=torch.uint8)
    m[:, :2, :2] = 1
    return m


class FixedMaps(ImageModel):
    """Prototype maps that do not depend on the image: ``maps`` [N, P, h, w] for the N images it is given."""

    def __init__(self, maps: torch.Tensor, classes: list[int] | None = None, relevant: list[bool] | None = None):
        super().__init__(2, 1, 4)
        self.register_buffer("maps", maps.float())
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.classes = None if classes is None else torch.tensor(classes)
        self.relevant = None if relevant is None else torch.tensor(relevant)

    def forward(self, x):
        return torch.zeros(len(x), 2) + self.dummy

    def prototype_activation_maps(self, x):
        return self.maps[:len(x)]

    def relevant_prototypes(self):
        return self.relevant

    def prototype_classes(self):
        return self.classes


class PooledImage(FixedMaps):
    """One prototype whose map is the image's 2x2 block means: it fires where the image is bright."""

    def __init__(self):
        super().__init__(torch.zeros(1, 1, 2, 2))

    def prototype_activation_maps(self, x):
        return F.avg_pool2d(x[:, :1], 2)


def _bright(*cells: tuple[int, int]) -> np.ndarray:
    """Images [n, 1, 4, 4], black with the 2x2 block of the given cell white."""
    return np.kron(_grid(*cells).numpy(), np.ones((2, 2), np.float32))[:, None]


# ---------------------------------------------------------------------- part hits, consistency, stability by hand
def test_part_hits_of_the_peak_and_of_a_box_around_it():
    maps = torch.stack([_grid(TL, BR), _grid(BR, TL)], dim=1)  # [2 images, 2 prototypes, 2, 2]
    masks = _lesion_top_left(2)
    # bilinear 2 -> 4 puts the peak of a top-left cell at pixel (0, 0), of a bottom-right cell at (3, 3)
    assert part_hits(maps, masks).tolist() == [[True, False], [False, True]]
    # a box of half-side 1 px around (3, 3) (rows/cols 2-3) still misses the lesion (rows/cols 0-1); 2 px reach it
    assert part_hits(maps, masks, region=0.25).tolist() == [[True, False], [False, True]]
    assert part_hits(maps, masks, region=0.5).tolist() == [[True, True], [True, True]]


def test_consistency_and_stability_shares_by_hand():
    hits = np.array([[1, 1], [1, 1], [1, 1], [1, 0], [1, 0]], bool)
    counted = np.ones_like(hits)
    np.testing.assert_allclose(consistency(hits, counted), [1.0, 0.6])
    counted[:, 1] = [True, False, False, True, True]  # prototype 1 counted on 3 images: 1 hit of 3
    np.testing.assert_allclose(consistency(hits, counted), [1.0, 1 / 3])
    assert np.isnan(consistency(hits, np.zeros_like(hits))).all()  # no image counts: undefined, not 0
    after = hits.copy()
    after[[0, 3], 1] = ~after[[0, 3], 1]  # two of prototype 1's counted images change
    np.testing.assert_allclose(stability(hits, after, counted), [1.0, 1 / 3])


def test_scores_of_fixed_maps_consistency_classes_relevance_and_stability_one():
    # 7 images; labels 0 0 0 0 0 1 0; the last has no lesion (it does not count)
    p0 = _grid(TL, TL, TL, TL, TL, BR, BR)  # class 0: always on the lesion of its class's annotated images
    p1 = _grid(TL, TL, TL, BR, BR, TL, TL)  # class 0: on the lesion in 3 of its 5 annotated images
    p2 = _grid(BR, BR, BR, BR, BR, BR, BR)  # class 1, but not relevant: not counted at all
    model = FixedMaps(torch.stack([p0, p1, p2], dim=1), classes=[0, 0, 1], relevant=[True, True, False])
    masks = _lesion_top_left(7)
    masks[6] = 0
    labels = np.array([0, 0, 0, 0, 0, 1, 0])
    images = np.zeros((7, 1, 4, 4), np.float32)
    out = prototype_part_scores(model, images, masks.numpy(), labels, threshold=0.8, noise=0.05, seed=0)
    assert out["part_cases"] == 6 and out["part_prototypes"] == 2
    assert out["consistency"] == pytest.approx((1.0 + 0.6) / 2)
    assert out["consistent_fraction"] == pytest.approx(0.5)  # 0.6 < 0.8: only prototype 0 is consistent
    assert out["stability"] == 1.0 and out["peak_stability"] == 1.0  # the maps do not see the noise
    assert (out["consistency_threshold"], out["stability_noise"], out["part_region"]) == (0.8, 0.05, 0.0)
    # at a threshold of 0.6 both are consistent; owned by no class, every annotated image counts (p1: 4 of 6)
    assert prototype_part_scores(model, images, masks.numpy(), labels, threshold=0.6)["consistent_fraction"] == 1.0
    free = FixedMaps(torch.stack([p0, p1], dim=1))
    out = prototype_part_scores(free, images, masks.numpy(), labels)
    assert out["consistency"] == pytest.approx((5 / 6 + 4 / 6) / 2) and out["part_prototypes"] == 2


def test_stability_when_the_peak_moves():
    model = PooledImage()
    clean = _bright(TL, TL, TL, TL, TL)  # bright on the lesion: every peak hits it
    perturbed = _bright(TL, BR, TL, BR, TL)  # the perturbation moves the peak off the lesion on 2 of 5 images
    masks = _lesion_top_left(5).numpy()
    labels = np.zeros(5, int)
    out = prototype_part_scores(model, clean, masks, labels, perturbed=perturbed)
    assert out["consistency"] == 1.0 and out["consistent_fraction"] == 1.0
    assert out["stability"] == pytest.approx(0.6) and out["peak_stability"] == pytest.approx(0.6)
    # a peak that moves but stays on the lesion changes the peak patch, not the part hit
    masks[1] = 1
    out = prototype_part_scores(model, clean, masks, labels, perturbed=perturbed)
    assert out["stability"] == pytest.approx(0.8) and out["peak_stability"] == pytest.approx(0.6)
    # real noise (sd 0.05, clipped at 0.0625) cannot move a peak with a contrast of 1
    assert prototype_part_scores(model, clean, masks, labels, noise=0.05, seed=3)["stability"] == 1.0


def test_noise_is_seeded_and_clipped():
    x = np.full((200, 1, 8, 8), 0.5, np.float32)
    a, b = add_noise(x, 0.05, seed=1), add_noise(x, 0.05, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, add_noise(x, 0.05, seed=2))
    d = a - x
    assert np.abs(d).max() <= 0.0625 + 1e-6 and np.abs(d).max() > 0.06  # clipped at 1.25 sd, and reaches it
    # the sd of a normal clipped at c = 1.25 sd: sqrt(erf(c / sqrt 2) - 2 c phi(c) + c^2 (1 - erf(c / sqrt 2)))
    c = 1.25
    inside, phi = math.erf(c / math.sqrt(2)), math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    assert d.std() == pytest.approx(0.05 * math.sqrt(inside - 2 * c * phi + c * c * (1 - inside)), rel=0.02)
    assert abs(d.mean()) < 2e-3


def test_a_model_without_prototypes_gets_no_scores():
    model = TinyNet(2, 1, 4)
    assert model.prototype_activation_maps(torch.zeros(1, 1, 4, 4)) is None
    assert model.relevant_prototypes() is None and model.prototype_classes() is None
    assert prototype_part_scores(model, np.zeros((3, 1, 4, 4), np.float32), None, np.zeros(3, int)) == {}


def test_without_masks_only_the_peak_stability():
    model = PooledImage()
    out = prototype_part_scores(model, _bright(TL, TL), None, np.zeros(2, int), perturbed=_bright(TL, BR))
    assert out["peak_stability"] == pytest.approx(0.5) and out["part_cases"] == 0
    assert "consistency" not in out and "stability" not in out


def test_the_report_shows_the_new_figures():
    metrics = {"models": {"proto": {"explanation": {"prototype_quality": {
        "class_purity": 0.76, "consistency": 0.625, "consistent_fraction": 0.5, "stability": 0.9}}}}}
    html = _diagnostics_section(metrics)
    for key, value in (("consistency", "0.625"), ("consistent_fraction", "0.500"), ("stability", "0.900")):
        assert f"<th scope=\"row\">{key}</th><td>{value}</td>" in html


# ---------------------------------------------------------------------- the prototype figure's drawing
def _match(**drawings: np.ndarray) -> PrototypeMatch:
    first = next(iter(drawings.values())) if drawings else np.zeros((4, 4), np.float32)
    return PrototypeMatch(prototype=3, prototype_class=1, similarity=2.0, contribution=1.5, source_case_id="",
                          source_box=(0, 0, 0, 0), activation_map=first, drawings=drawings)


def test_pointing_game_scores_read_the_heatmap_blocks():
    explanation = {"prototype_evidence": {"kind": "prototype_evidence", "n_cases": 8},
                   "prototype_activation": {"kind": "heatmap", "pointing_game": {"value": 0.5, "ci": [0.3, 0.7]}},
                   "prototype_smoothgrad": {"kind": "heatmap", "pointing_game": {"value": 0.9, "ci": [0.7, 1.0]}},
                   "gradcam": {"kind": "heatmap", "pointing_game": {"value": float("nan"), "ci": [0, 0]}},
                   "prototype_quality": {"n_prototypes": 20}}
    assert pointing_game_scores(explanation) == {"prototype_activation": 0.5, "prototype_smoothgrad": 0.9}


def test_the_figure_draws_the_better_scored_drawing_and_says_why():
    up, grad = np.eye(4, dtype=np.float32), np.fliplr(np.eye(4)).astype(np.float32)
    m = _match(prototype_activation=up, prototype_smoothgrad=grad)
    method, drawn, why = choose_drawing(m, {"prototype_activation": 0.5, "prototype_smoothgrad": 0.9})
    assert method == "prototype_smoothgrad" and np.array_equal(drawn, grad)
    assert why == "drawn by SmoothGrad of its similarity\n(pointing game 0.90 vs 0.50 for upsampling)"
    method, drawn, why = choose_drawing(m, {"prototype_activation": 0.7, "prototype_smoothgrad": 0.4})
    assert method == "prototype_activation" and np.array_equal(drawn, up)
    assert why == "drawn by upsampling its similarity map\n(pointing game 0.70 vs 0.40 for SmoothGrad)"
    method, _, why = choose_drawing(m, {"prototype_activation": 0.5, "prototype_smoothgrad": 0.5})
    assert method == "prototype_activation" and why.endswith("(pointing game 0.50 vs 0.50 for SmoothGrad; a tie "
                                                             "keeps the first)")
    method, _, why = choose_drawing(m, {})
    assert method == "prototype_activation" and why.endswith("(no pointing-game scores to choose by)")
    # a match with no drawings: its activation map, with nothing to say
    method, drawn, why = choose_drawing(_match(), {"prototype_smoothgrad": 1.0})
    assert method == "activation_map" and why == "" and not drawn.any()


def test_the_case_figure_title_names_the_drawing(monkeypatch, tmp_path):
    titles: list[str] = []
    monkeypatch.setattr(case_figures, "_save", lambda fig, path: titles.extend(a.get_title() for a in fig.axes))
    up = np.zeros((8, 8), np.float32)
    up[0, 0] = 1
    grad = np.zeros((8, 8), np.float32)
    grad[5, 5] = 1
    m = _match(prototype_activation=up, prototype_smoothgrad=grad)
    plot_prototype_case(np.zeros((1, 8, 8), np.float32), [m], ["a", "b"], np.array([0.3, 0.7]), np.array([0.1, 1.6]),
                        1, tmp_path / "f.png", lambda _cid: None,
                        scores={"prototype_activation": 0.25, "prototype_smoothgrad": 0.75})
    assert ("this part of the image ...\ndrawn by SmoothGrad of its similarity\n(pointing game 0.75 vs 0.25 for "
            "upsampling)") in titles


def test_fraction_on_lesion_by_hand():
    from types import SimpleNamespace

    from glasszoo.models._prototypes import fraction_on_lesion

    masks = np.zeros((2, 8, 8), np.uint8)
    masks[0, 2:4, 2:4] = 1  # case a: a lesion in the top-left quarter; case b: none
    data = SimpleNamespace(masks=masks, case_ids=np.array(["a", "b"], dtype=object))
    # on a's lesion, off a's lesion, on b (no lesion there), a case not in the data (left out)
    boxes = [(0, 0, 4, 4), (4, 4, 8, 8), (0, 0, 4, 4), (0, 0, 8, 8)]
    assert fraction_on_lesion(["a", "a", "b", "zz"], boxes, data) == pytest.approx(1 / 3)
    assert fraction_on_lesion(["zz"], [(0, 0, 8, 8)], data) is None
    assert fraction_on_lesion(["a"], [(0, 0, 8, 8)], SimpleNamespace(masks=None, case_ids=data.case_ids)) is None

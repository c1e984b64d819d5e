"""Tiny stand-in models for pipeline tests (runner, resume, seeds, audit, report, explain), after Lightning's "boring"
models: they train in milliseconds, so the pipeline is tested without a real backbone. Real backbones are trained
only where the backbone is what a test is about.

``standin_models`` (a fixture in conftest.py) registers them for one test and removes them afterwards, so no test
leaves an entry in the registry.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from glasszoo.models import FeatureAttribution, Heatmap, ImageModel, TabularModel
from glasszoo.models.base import as_tensor


class TinyNet(ImageModel):
    """Two convolutions, global average pooling and a linear layer; no explanation of its own (like the black box:
    the run explains it post hoc)."""

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int | tuple[int, int] = 16,
                 width: int = 4) -> None:
        super().__init__(num_classes, in_chans, img_size)
        self.features = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class TinyCAM(TinyNet):
    """TinyNet that explains itself: its class activation map (Zhou et al., CVPR 2016) is its own heatmap."""

    explanation_kinds = ("heatmap",)

    def explain(self, x, target=None, case_ids=None, **kwargs) -> list:
        self.eval()
        with torch.no_grad():
            xt = as_tensor(x, self.device)
            feats = self.features(xt)
            logits = self.head(feats.mean((2, 3)))
            t = logits.argmax(1) if target is None else torch.as_tensor(np.asarray(target), dtype=torch.long)
            cam = torch.einsum("nchw,nc->nhw", feats, self.head.weight[t]).clamp_min(0)
        return [Heatmap(maps=cam.cpu().numpy().astype(np.float32), method="cam", target=t.cpu().numpy(),
                        case_ids=case_ids)]


class FailingNet(TinyNet):
    """A model whose training always fails (its extra loss raises), for the failure-isolation tests."""

    def extra_losses(self, batch, logits):
        raise RuntimeError("planted failure in training")


class NeedsMasks(TinyNet):
    """A model that declares it needs lesion masks."""

    requires = ("masks",)


class TinyLogReg(TabularModel):
    """Plain logistic regression on the feature table."""

    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, X, y, X_val=None, y_val=None, feature_names=None, feature_descriptions=None):
        self.mu_, self.sd_ = X.mean(0), X.std(0) + 1e-9
        self.clf_ = LogisticRegression(C=self.C).fit((X - self.mu_) / self.sd_, y)
        self.feature_names_ = list(feature_names)
        self.n_params_ = int(self.clf_.coef_.size + 1)
        return self

    def predict_proba(self, X):
        return self.clf_.predict_proba((X - self.mu_) / self.sd_)

    def explain(self, X, target=None, case_ids=None) -> list:
        z = (X - self.mu_) / self.sd_
        return [FeatureAttribution(self.feature_names_, X, z * self.clf_.coef_[0], np.ones(len(X), int),
                                   float(self.clf_.intercept_[0]), case_ids)]

    def complexity_(self) -> dict:
        return {"n_nonzero": int((np.abs(self.clf_.coef_) > 0).sum())}


STANDINS = {
    "tiny_net": (TinyNet, "stand-in-black-box"),
    "tiny_cam": (TinyCAM, "stand-in-cam"),
    "tiny_failing": (FailingNet, "stand-in-failing"),
    "tiny_needs_masks": (NeedsMasks, "stand-in-masks"),
    "tiny_logreg": (TinyLogReg, "stand-in-linear"),
}
"""Registry name -> (class, family) of every stand-in."""


def standin_config(n_cases: int = 160, img_size: int = 16, models: list | None = None, **evaluation) -> dict:
    """A raw config (as read from YAML) of tiny synthetic data and the stand-ins; one epoch, no progress bar."""
    ev = {"bootstrap": 50, "explain_cases": 8, "figure_cases": 2, "case_figures_per_class": 1,
          "report_misclassified": 2,
          "posthoc": {"models": ["stand-in-black-box"], "methods": ["gradcam", "saliency"]},
          "quality": {"cases": 4, "steps": 3, "faithfulness_subsets": 4, "randomisation_stages": 2,
                      "randomisation_cases": 2, "sensitivity_samples": 2}}
    ev.update(evaluation)
    return {
        "experiment": "standin",
        "seed": 0,
        "data": {"source": "synthetic", "n_cases": n_cases, "img_size": img_size},
        "training": {"max_epochs": 1, "batch_size": 32, "patience": 0, "progress_bar": False},
        "features": {"kind": "intensity"},
        "evaluation": ev,
        "models": models if models is not None else ["tiny_net", "tiny_cam", "tiny_logreg"],
    }

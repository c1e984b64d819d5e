"""glasszoo.models: every model family, one registry, and the explanation types."""

from glasszoo.models import blackbox as _blackbox  # noqa: F401  (registers the models)
from glasszoo.models._registry import ModelInfo, check_kwargs, create_model, list_models, model_info, register_model
from glasszoo.models.attention_unet import AttentionGate, AttentionGatedClassifier, AttentionUNet  # (registers)
from glasszoo.models.base import ImageModel, TabularModel
from glasszoo.models.blackbox import BlackBoxCNN
from glasszoo.models.cbm import ConceptBottleneck  # (registers cbm)
from glasszoo.models.explanations import (
    EXPLANATION_KINDS,
    ConceptEvidence,
    FeatureAttribution,
    GlobalExplanation,
    Heatmap,
    PrototypeEvidence,
    PrototypeMatch,
)
from glasszoo.models.glassbox import EBM, PointScore, ShallowTree, SparseLogReg  # (registers the glass-box models)
from glasszoo.models.protopnet import ProtoPNet  # (registers protopnet)

__all__ = [
    "EXPLANATION_KINDS",
    "AttentionGate",
    "AttentionGatedClassifier",
    "AttentionUNet",
    "BlackBoxCNN",
    "ConceptBottleneck",
    "ConceptEvidence",
    "EBM",
    "FeatureAttribution",
    "GlobalExplanation",
    "Heatmap",
    "ImageModel",
    "ModelInfo",
    "PointScore",
    "ProtoPNet",
    "PrototypeEvidence",
    "PrototypeMatch",
    "ShallowTree",
    "SparseLogReg",
    "TabularModel",
    "check_kwargs",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]

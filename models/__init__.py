"""glasszoo.models: every model family, one registry, the base classes with their hooks, the explanation types and
the errors. The bottom layer: it imports nothing else of glasszoo.

The errors and explanation types load at once (numpy only). Everything else loads on first use (PEP 562
``__getattr__``): the registry, the base classes and every family module, which torch, timm and Lightning come with,
so that ``glasszoo report`` or a reader of ``metrics.json`` does not wait for them. The first such access imports
every family module of :data:`FAMILY_MODULES`, so the registry is complete before it is read.
"""

from __future__ import annotations

import importlib
from typing import Any

from glasszoo.models.errors import ConfigError, DataError, GlasszooError  # noqa: F401
from glasszoo.models.explanations import (  # noqa: F401
    EXPLANATION_KINDS,
    ConceptEvidence,
    Counterfactual,
    FeatureAttribution,
    GlobalExplanation,
    Heatmap,
    PrototypeEvidence,
    PrototypeMatch,
)

FAMILY_MODULES = ("attention_unet", "blackbox", "cbm", "glassbox", "pipnet", "protopnet", "riskscore", "rules")
"""The modules whose classes register themselves: a new family is one file here plus its name in this tuple."""

_LAZY = {
    "ModelInfo": "_registry", "check_kwargs": "_registry", "create_model": "_registry", "list_models": "_registry",
    "model_info": "_registry", "register_model": "_registry", "unregister_model": "_registry",
    "REQUIREMENTS": "base", "CaseData": "base", "ImageModel": "base", "TabularModel": "base",
    "missing_requirements": "base", "auc_score": "scoring", "resolve_pretrained": "_backbones",
    "AttentionGate": "attention_unet", "AttentionGatedClassifier": "attention_unet", "AttentionUNet": "attention_unet",
    "BlackBoxCNN": "blackbox", "ConceptBottleneck": "cbm", "PIPNet": "pipnet", "ProtoPNet": "protopnet",
    "EBM": "glassbox", "PointScore": "glassbox", "ShallowTree": "glassbox", "SparseLogReg": "glassbox",
    "FIGS": "rules", "RuleFit": "rules", "FasterRisk": "riskscore",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'glasszoo.models' has no attribute {name!r}")
    for family in FAMILY_MODULES:  # registers every model class before the registry is used
        importlib.import_module(f"glasszoo.models.{family}")
    value = getattr(importlib.import_module(f"glasszoo.models.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = sorted(["EXPLANATION_KINDS", "ConceptEvidence", "ConfigError", "DataError", "FeatureAttribution",
                  "GlasszooError", "GlobalExplanation", "Heatmap", "PrototypeEvidence", "PrototypeMatch", *_LAZY])

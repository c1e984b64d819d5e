"""glasszoo.training: data sources, the CaseSet contract, feature tables and the shared Lightning pipeline.

Submodules that pull in Lightning, pyradiomics or SimpleITK are imported lazily (heavy: ``import glasszoo.training``
stays cheap for the report and the CLI's light commands).
"""

from __future__ import annotations

import importlib

from glasszoo.models.errors import ConfigError, DataError, GlasszooError
from glasszoo.training.caseset import SPLITS, CaseSet

_LAZY = {
    "load_caseset": "glasszoo.training.data",
    "make_synthetic": "glasszoo.training.synthetic",
    "load_medmnist": "glasszoo.training.medmnist",
    "load_folder": "glasszoo.training.folder",
    "stratified_split": "glasszoo.training.split",
    "CaseSetDataModule": "glasszoo.training.datamodule",
    "ClassifierModule": "glasszoo.training.module",
}

__all__ = ["SPLITS", "CaseSet", "ConfigError", "DataError", "GlasszooError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glasszoo.training' has no attribute {name!r}")

"""glasszoo.training: data sources, the CaseSet contract, the shared Lightning pipeline and the CLI.

Heavy submodules are imported lazily so that ``glasszoo.models`` can use the error types without a cycle.
"""

from __future__ import annotations

import importlib

from glasszoo.training.caseset import SPLITS, CaseSet
from glasszoo.training.errors import ConfigError, DataError, GlasszooError

_LAZY = {
    "load_caseset": "glasszoo.training.data",
    "make_synthetic": "glasszoo.training.synthetic",
    "load_medmnist": "glasszoo.training.medmnist",
    "load_folder": "glasszoo.training.folder",
    "stratified_split": "glasszoo.training.data",
    "CaseSetDataModule": "glasszoo.training.datamodule",
    "ClassifierModule": "glasszoo.training.module",
    "load_config": "glasszoo.training.config",
    "run_experiment": "glasszoo.training.runner",
}

__all__ = ["SPLITS", "CaseSet", "ConfigError", "DataError", "GlasszooError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glasszoo.training' has no attribute {name!r}")

"""One registry for every model family: image models and tabular (radiomic-feature) models alike."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from glasszoo.models.base import ImageModel, TabularModel
from glasszoo.models.errors import ConfigError


@dataclass(frozen=True)
class ModelInfo:
    """What the zoo knows about a registered model class.

    Attributes:
        name: registry name used in configs.
        family: model family (e.g. ``"black-box"``, ``"prototype"``): a label for tables and for selecting models
            in a config; shared code never branches on it.
        cls: the model class (an :class:`ImageModel` or a :class:`TabularModel`); its ``__init__`` signature is the
            set of keywords a config may give.
        paper: the reference the implementation follows.
        test_kwargs: small settings used by the registry-wide unit tests.
    """

    name: str
    family: str
    cls: type
    paper: str = ""
    test_kwargs: dict = field(default_factory=dict)

    @property
    def input_kind(self) -> str:
        """``"image"`` (eats CaseSet images) or ``"features"`` (eats a feature table), from the base class."""
        return "image" if issubclass(self.cls, ImageModel) else "features"

    @property
    def explanations(self) -> tuple[str, ...]:
        """Explanation kinds the model's own ``explain()`` returns (empty: explained post hoc only)."""
        return tuple(self.cls.explanation_kinds)

    def requirements(self, params: dict | None = None) -> tuple[str, ...]:
        """What the model built with ``params`` needs of the data (``glasszoo.models.base.REQUIREMENTS``)."""
        return tuple(self.cls.requirements(dict(params or {})))

    @property
    def intrinsic(self) -> bool:
        """Whether the model explains itself (has explanation kinds of its own)."""
        return bool(self.explanations)

    @property
    def parameters(self) -> dict[str, inspect.Parameter]:
        params = dict(inspect.signature(self.cls.__init__).parameters)
        params.pop("self", None)
        return params


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, *, family: str, paper: str = "", test_kwargs: dict | None = None
                   ) -> Callable[[type], type]:
    """Class decorator registering a model class under ``name`` (the class itself is the factory)."""

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, (ImageModel, TabularModel))):
            raise TypeError(f"register_model('{name}'): {cls!r} is not an ImageModel or TabularModel class")
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"model name '{name}' is already registered")
        _REGISTRY[name] = ModelInfo(name, family, cls, paper, dict(test_kwargs or {}))
        return cls

    return deco


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (for tests that register a stand-in model)."""
    _REGISTRY.pop(name, None)


def list_models(pattern: str = "*", family: str | None = None, input_kind: str | None = None) -> list[str]:
    """Sorted names of registered models matching a shell-style ``pattern`` (and family / input kind)."""
    return sorted(
        n for n, info in _REGISTRY.items()
        if fnmatch.fnmatchcase(n, pattern)
        and (family is None or info.family == family)
        and (input_kind is None or info.input_kind == input_kind)
    )


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of ``name``; unknown names raise :class:`ConfigError` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = fnmatch.filter(_REGISTRY, f"*{name[:4]}*") if name else []
        hint = f" Did you mean {close}?" if close else ""
        raise ConfigError(f"unknown model '{name}'. Registered models: {list_models()}.{hint}") from None


def check_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` if ``kwargs`` holds a keyword the class of ``name`` does not take."""
    params = model_info(name).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = sorted(k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
        raise ConfigError(f"model '{name}' got unknown keyword(s) {unknown}; it accepts {allowed}")


def create_model(name: str, **kwargs: Any) -> Any:
    """Build the registered model ``name``. Unknown names or keywords fail loudly."""
    info = model_info(name)
    check_kwargs(name, kwargs)
    return info.cls(**kwargs)

"""One registry for every model family: image models and tabular (radiomic-feature) models alike."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from glasszoo.training.errors import ConfigError

INPUT_KINDS = ("image", "features")


@dataclass(frozen=True)
class ModelInfo:
    """What the zoo knows about a registered model.

    Attributes:
        name: registry name used in configs.
        family: model family (e.g. ``"black-box"``, ``"prototype"``).
        input_kind: ``"image"`` (eats CaseSet images) or ``"features"`` (eats a radiomic feature table).
        explanations: explanation kinds ``explain()`` returns (see ``glasszoo.models.EXPLANATION_KINDS``);
            the first one is the primary kind.
        factory: callable building the model from keyword arguments.
        paper: the reference the implementation follows.
        test_kwargs: small settings used by the registry-wide unit tests.
    """

    name: str
    family: str
    input_kind: str
    explanations: tuple[str, ...]
    factory: Callable[..., Any]
    paper: str = ""
    test_kwargs: dict = field(default_factory=dict)

    @property
    def parameters(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.factory).parameters)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    family: str,
    input_kind: str,
    explanations: tuple[str, ...],
    paper: str = "",
    test_kwargs: dict | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a model factory under ``name``."""
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"model name '{name}' is already registered")
        _REGISTRY[name] = ModelInfo(name, family, input_kind, tuple(explanations), factory, paper,
                                    dict(test_kwargs or {}))
        return factory

    return deco


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
    """Raise :class:`ConfigError` if ``kwargs`` holds a keyword the factory of ``name`` does not take."""
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
    return info.factory(**kwargs)

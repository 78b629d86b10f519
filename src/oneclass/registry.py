"""The method registry: ``register`` / ``create`` / ``available`` (after timm's registry)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    from .detector import Detector

_METHODS: dict[str, type[Detector]] = {}
T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator that registers a Detector subclass under ``name``."""

    if not isinstance(name, str) or name != _key(name) or not name:
        raise ValueError(f"method name {name!r} must be lower case with underscores "
                         f"({_key(str(name))!r}): get() and the CLI look names up that way")

    def deco(cls: T) -> T:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name  # type: ignore[attr-defined]
        _METHODS[name] = cls  # type: ignore[assignment]
        return cls

    return deco


def _key(name: str) -> str:
    """How a method name is looked up: ``Deep-SVDD`` finds ``deep_svdd``."""
    if not isinstance(name, str):
        raise ConfigError(f"a method name is a string, not {name!r}")
    return name.strip().lower().replace("-", "_")


def _ensure_loaded() -> None:
    from . import methods  # noqa: F401  (importing registers every method)


def available() -> list[str]:
    """Names of the registered methods, sorted."""
    _ensure_loaded()
    return sorted(_METHODS)


def get(name: str) -> type[Detector]:
    """The Detector class registered under ``name``."""
    _ensure_loaded()
    key = _key(name)
    if key not in _METHODS:
        close = difflib.get_close_matches(key, list(_METHODS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown method {name!r}{hint}; available: {', '.join(sorted(_METHODS))}"
        )
    return _METHODS[key]


def create(name: str, **params) -> Detector:
    """Build an unfitted detector: ``create("deep_svdd", epochs=10)``."""
    return get(name)(**params)

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


def parameter_notes(cls: type) -> dict[str, str]:
    """The comments written beside each entry of the ``defaults`` dicts of ``cls`` and its
    bases (a comment on the lines above an entry, and one after it on its line), by
    parameter name; the most derived class's note wins. Read from the source, so a class
    without source (a frozen build) gives none."""
    notes: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if "defaults" in vars(klass):
            notes.update(_defaults_comments(klass))
    return notes


def _defaults_comments(klass: type) -> dict[str, str]:
    import ast
    import inspect
    import io
    import tokenize

    try:
        source = inspect.getsource(klass)
    except (OSError, TypeError):
        return {}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return {}
    notes: dict[str, str] = {}
    start = next((k for k, t in enumerate(tokens[:-2]) if t.type == tokenize.NAME
                  and t.string == "defaults" and tokens[k + 1].string in ("=", ":")), None)
    # the dict itself: past an annotation (defaults: ClassVar[dict[str, Any]] = {...})
    start = next((k for k in range(start, len(tokens)) if tokens[k].string == "{"), None) \
        if start is not None else None
    if start is None:
        return notes
    depth, above, last, last_row = 0, [], None, -1
    for k in range(start, len(tokens)):
        t = tokens[k]
        if t.type == tokenize.OP and t.string in "([{":
            depth += 1
        elif t.type == tokenize.OP and t.string in ")]}":
            depth -= 1
            if depth == 0:
                break
        elif t.type == tokenize.COMMENT and depth == 1:
            text = t.string.lstrip("#").strip()
            if last is not None and t.start[0] == last_row:  # after an entry, on its line
                notes[last] = f"{notes[last]} {text}".strip()
            else:
                above.append(text)
        elif t.type == tokenize.STRING and depth == 1 and tokens[k + 1].string == ":":
            last, last_row = ast.literal_eval(t.string), t.start[0]
            notes[last] = " ".join(above)
            above = []
        elif t.type == tokenize.OP and t.string == "," and depth == 1:
            last_row = t.start[0] if last is not None else last_row
    return {k: v for k, v in notes.items() if v}

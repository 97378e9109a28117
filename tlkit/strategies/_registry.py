"""The strategy registry: one plain dict, filled by ``@register_strategy`` and the ``tlkit.strategies`` entry points."""
from __future__ import annotations

import fnmatch
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from tlkit.errors import TlkitError, did_you_mean

if TYPE_CHECKING:
    from tlkit.strategies.base import Strategy

__all__ = ["register_strategy", "list_strategies", "get_strategy", "create_strategy", "load_entry_points"]

_STRATEGIES: dict[str, type[Strategy]] = {}
_ENTRY_POINT_GROUP = "tlkit.strategies"
_entry_points_loaded = False

T = TypeVar("T", bound=type)


def register_strategy(name: str) -> Callable[[T], T]:
    """Class decorator: make a Strategy subclass available under ``name``.

    Registering a different class under a taken name is an error (re-running the same file is not).
    """

    def decorator(cls: T) -> T:
        existing = _STRATEGIES.get(name)
        if existing is not None and _qualname(existing) != _qualname(cls):
            raise TlkitError(f"Strategy name {name!r} is already registered by {_qualname(existing)}; "
                             f"{_qualname(cls)} cannot take it. HINT: pick another name.")
        cls.name = name
        _STRATEGIES[name] = cls
        return cls

    return decorator


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def load_entry_points() -> None:
    """Import third-party strategies advertised under the ``tlkit.strategies`` entry-point group (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=_ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, type):  # a clash with another class under the same name is an error, as for built-ins
            register_strategy(ep.name)(obj)


def list_strategies(pattern: str = "*") -> list[str]:
    """Registered strategy names matching a glob, sorted: ``list_strategies("l*")``."""
    load_entry_points()
    return sorted(n for n in _STRATEGIES if fnmatch.fnmatch(n, pattern))


def get_strategy(name: str) -> type[Strategy]:
    """The registered class for ``name``; an unknown name lists what exists, with close matches first."""
    load_entry_points()
    if name not in _STRATEGIES:
        raise TlkitError(did_you_mean(name, _STRATEGIES, "strategy")
                         + " HINT: register your own with @register_strategy('name').")
    return _STRATEGIES[name]


def create_strategy(name: str, num_groups: int, epochs: int, **params: Any) -> Strategy:
    """Instantiate a registered strategy for a backbone with ``num_groups`` layer groups (head included)."""
    return get_strategy(name)(num_groups=num_groups, epochs=epochs, **params)

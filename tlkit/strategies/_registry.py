"""The strategy registry: ``@register_strategy`` and the ``tlkit.strategies`` entry points (see tlkit.registry)."""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from tlkit.errors import TlkitError
from tlkit.registry import Registry
from tlkit.strategies.base import Strategy

__all__ = ["STRATEGIES", "register_strategy", "list_strategies", "get_strategy", "create_strategy"]

T = TypeVar("T", bound=type)


def _check_strategy(name: str, obj: object) -> None:
    if not (isinstance(obj, type) and issubclass(obj, Strategy)):
        raise TlkitError(f"strategy {name!r} must be a subclass of tlkit.Strategy but got {obj!r}.")


STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategy", "tlkit.strategies", check=_check_strategy, name_attribute="name",
    hint="HINT: register your own with @register_strategy('name').")


def register_strategy(name: str) -> Callable[[T], T]:
    """Class decorator: make a Strategy subclass available under ``name`` (and set its ``name``)."""
    return STRATEGIES.register(name)


def list_strategies(pattern: str = "*") -> list[str]:
    """Registered strategy names matching a glob, sorted: ``list_strategies("l*")``."""
    return STRATEGIES.list(pattern)


def get_strategy(name: str) -> type[Strategy]:
    """The registered class for ``name``; an unknown name lists what exists, with close matches first."""
    return STRATEGIES.get(name)


def create_strategy(name: str, num_groups: int, epochs: int, **params: Any) -> Strategy:
    """Instantiate a registered strategy for a backbone with ``num_groups`` layer groups (head included)."""
    return get_strategy(name)(num_groups=num_groups, epochs=epochs, **params)

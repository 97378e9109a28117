"""One registry shape for every kind of plugin: strategies, datasets and metrics.

A registry is a plain dict filled by a decorator (``@register_strategy("last_n")``), listed with a glob, read with a
"did you mean" for unknown names, and extended by third-party packages through an entry-point group. It is
fvcore's ``Registry`` with timm's ``list_*("glob*")`` and Optuna-style messages; nothing else.

Example:
    METRICS = Registry("metric", entry_point_group="tlkit.metrics")

    @METRICS.register("accuracy")
    def accuracy(labels, logits): ...

    METRICS.list("*acc*")   # ['accuracy', 'balanced_accuracy', ...]
    METRICS.get("acuracy")  # TlkitError: Unknown metric 'acuracy'. Did you mean 'accuracy'? Available: ...
"""
from __future__ import annotations

import fnmatch
import logging
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

from tlkit.errors import TlkitError, describe_error, did_you_mean

__all__ = ["Registry", "qualname"]

T = TypeVar("T")
log = logging.getLogger("tlkit")


def qualname(obj: Any) -> str:
    """``module.QualName`` of a class or function (how a registry tells a re-registration from a clash: an
    experiment file loaded twice defines new but same-named objects); the repr of anything else."""
    if hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    return repr(obj)


class Registry(Generic[T]):
    """Named plugins of one kind.

    Args:
        kind: what the entries are, for messages (``strategy``, ``dataset``, ``metric``).
        entry_point_group: the ``importlib.metadata`` group third-party packages advertise entries under.
        check: called with ``(name, obj)`` on registration; raises TlkitError when ``obj`` is not of this kind
            (an entry point that names a function where a Strategy class is expected, say).
        hint: appended to the unknown-name message, e.g. how to register your own.
        identity: what makes two registrations the same one (default: the qualified name, see ``qualname``).
        name_attribute: a class attribute that registration sets to the registered name (``Strategy.name``).
    """

    def __init__(self, kind: str, entry_point_group: str, check: Callable[[str, Any], None] | None = None,
                 hint: str = "", identity: Callable[[Any], str] = qualname, name_attribute: str | None = None
                 ) -> None:
        self.kind = kind
        self._identity = identity
        self._name_attribute = name_attribute
        self.entry_point_group = entry_point_group
        self._check = check
        self._hint = hint
        self._entries: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make ``obj`` available under ``name``.

        Registering a different object under a taken name is an error; registering the same one again (an
        experiment file loaded twice) is not.
        """
        if not isinstance(name, str) or not name:
            raise TlkitError(f"A {self.kind} name must be a non-empty string but got {name!r}.")

        def decorator(obj: T) -> T:
            if self._check is not None:
                self._check(name, obj)
            existing = self._entries.get(name)
            if existing is not None and self._identity(existing) != self._identity(obj):
                raise TlkitError(f"The {self.kind} name {name!r} is already registered by "
                                 f"{self._identity(existing)}; {self._identity(obj)} cannot take it. HINT: pick "
                                 f"another name.")
            self._entries[name] = obj
            if self._name_attribute is not None:
                setattr(obj, self._name_attribute, name)
            return obj

        return decorator

    def load_entry_points(self) -> None:
        """Import the entries advertised under ``entry_point_group`` by installed packages (once).

        An entry point that fails to import, or is not of this kind, is an error naming the entry point: a plugin
        that silently vanished would make a study compare less than its author asked for.
        """
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            try:
                obj = ep.load()
            except Exception as err:  # noqa: BLE001 - any import failure of a plugin is reported the same way
                raise TlkitError(f"The {self.kind} entry point {ep.name!r} ({ep.value}, group "
                                 f"{self.entry_point_group!r}) cannot be imported ({describe_error(err)}). HINT: fix "
                                 f"or uninstall the package that declares it.") from None
            try:
                self.register(ep.name)(obj)
            except TlkitError as err:
                raise TlkitError(f"The {self.kind} entry point {ep.name!r} ({ep.value}): {err}") from None

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a glob, sorted: ``list("l*")``."""
        self.load_entry_points()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def get(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name lists what exists, close matches first."""
        self.load_entry_points()
        if name not in self._entries:
            raise TlkitError(did_you_mean(str(name), self._entries, self.kind) + (f" {self._hint}" if self._hint
                                                                                  else ""))
        return self._entries[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the entry registered as ``name`` (a class or a factory) with the arguments."""
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def __contains__(self, name: object) -> bool:
        self.load_entry_points()
        return name in self._entries

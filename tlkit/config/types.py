"""The type checker of experiment fields: every dataclass field against its annotation, with its dotted path.

Written here rather than taken from a library (pydantic, typeguard) because tlkit's messages name the field's path
in the experiment (``train.epochs must be int but got 2.5``) and widen ints to floats the way Python users expect,
for a handful of annotation shapes (X, X | None, list[X], dict[K, V]); a dependency would cost more than its 50 lines.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

from tlkit.errors import TlkitError

__all__ = ["check_types", "check_value"]


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(value: Any, tp: Any, path: str) -> Any:
    """Return ``value`` (ints widened to float where a float is wanted) or raise naming ``path``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [o for o in typing.get_args(tp) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) == 1:  # Optional[X]: report X's own, more precise, error
            return check_value(value, options[0], path)
        for option in options:
            try:
                return check_value(value, option, path)
            except TlkitError:
                pass
        raise TlkitError(f"{path} must be one of {', '.join(map(type_name, options))} but got {value!r}.")
    if tp is type(None):
        if value is not None:
            raise TlkitError(f"{path} must be None but got {value!r}.")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TlkitError(f"{path} must be a list but got {value!r}.")
        (item_tp,) = typing.get_args(tp)
        return [check_value(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TlkitError(f"{path} must be a dict but got {value!r}.")
        key_tp, value_tp = typing.get_args(tp)
        return {check_value(k, key_tp, path): check_value(v, value_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise TlkitError(f"{path} must be int but got {value!r}.")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise TlkitError(f"{path} must be {type_name(tp)} but got {value!r} ({type(value).__name__}).")
    return value


def check_types(obj: Any, prefix: str = "") -> None:
    """Check (and widen) every field of a dataclass tree against its annotation."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        path = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_types(value, prefix=f"{path}.")
            continue
        setattr(obj, f.name, check_value(value, hints[f.name], path))

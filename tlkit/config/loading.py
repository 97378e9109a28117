"""Loading an experiment file (plain Python that defines ``experiment = Experiment(...)``) and ``--set`` overrides.

Errors in the file are reported as ``file:line: message``; an override is a Python literal parsed with
``ast.literal_eval`` (never ``eval``) and type-checked like the file's own values.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import importlib.util
import sys
import traceback
import typing
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from tlkit.config.experiment import (MOVED_TO_RUNTIME, Data, Experiment, Runtime, Source, Train, check_study_name,
                                     validate)
from tlkit.config.types import check_value
from tlkit.errors import TlkitError, describe_error, did_you_mean

__all__ = ["load_experiment", "apply_overrides", "distribution_like"]


def load_experiment(path: str | Path) -> Experiment:
    """Run an experiment file and return its ``experiment`` (or ``get_experiment()``).

    Errors in the file are reported as ``file:line: message`` so the user can jump straight to it.
    """
    path = Path(path)
    if not path.is_file():
        raise TlkitError(f"Experiment file {str(path)!r} does not exist. HINT: pass the path of a Python file "
                         f"that defines `experiment = Experiment(...)`, e.g. experiments/digits.py.")
    if path.suffix != ".py":
        raise TlkitError(f"Experiment file {str(path)!r} is not a Python file (.py): an experiment is Python code "
                         f"that defines `experiment = Experiment(...)`. HINT: pass the experiment's .py file (results "
                         f"folders are read by python -m tlkit.report, not by the sweep).")
    module_name = f"tlkit_experiment_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # as `python file.py` does: the file may import a module beside it
    try:
        spec.loader.exec_module(module)
        exp = module.get_experiment() if hasattr(module, "get_experiment") else getattr(module, "experiment", None)
    except SyntaxError as err:
        raise TlkitError(f"{path}:{err.lineno}: syntax error: {err.msg}. HINT: fix the line and run again.") from None
    except TlkitError as err:
        raise TlkitError(f"{path}:{_line_in(path, err)}: {err}") from None
    except SystemExit as err:  # sys.exit(0) would end the sweep "successfully" having done nothing
        raise TlkitError(f"{path}:{_line_in(path, err)}: the file called sys.exit({err.code!r}) while it was loaded, "
                         f"so it defines no experiment. HINT: an experiment file only defines `experiment = "
                         f"Experiment(...)`; put script code under `if __name__ == '__main__':`.") from None
    except Exception as err:  # noqa: BLE001 - any error in user code is reported, with its line
        raise TlkitError(f"{path}:{_line_in(path, err)}: {_explain(err)} HINT: fix that line of the experiment file "
                         f"and run again.") from None
    finally:
        sys.path.remove(folder)
    if not isinstance(exp, Experiment):
        raise TlkitError(f"{path} defines no `experiment = Experiment(...)` nor `get_experiment()` "
                         f"(found {type(exp).__name__}). HINT: see experiments/digits.py for the shape.")
    if not exp.name:
        exp.name = check_study_name(path.stem, f"the experiment file's name {path.name!r}")
    return exp


def _line_in(path: Path, err: BaseException) -> int | str:
    """The line of ``path`` where ``err`` was raised (the innermost frame in that file)."""
    line: int | str = "?"
    for frame in traceback.extract_tb(err.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    return line


def _explain(err: Exception) -> str:
    """``Type: first line of the message``, safe for any exception user code raises; ``Train.__init__() got an
    unexpected keyword argument 'epoch'`` becomes a did-you-mean message."""
    text = describe_error(err)
    if isinstance(err, TypeError) and "unexpected keyword argument" in text:
        cls_name = text.removeprefix("TypeError: ").split(".")[0].split("(")[0]
        key = text.rsplit("'", 2)[-2]
        if cls_name == "Train" and key in MOVED_TO_RUNTIME:
            return f"TypeError: {_moved(key)}"
        cls = {c.__name__: c for c in (Data, Train, Runtime, Source, Experiment)}.get(cls_name)
        if cls is not None:
            return "TypeError: " + did_you_mean(key, [f.name for f in dataclasses.fields(cls)], f"{cls_name} field")
    return text


def _moved(key: str) -> str:
    return (f"train.{key} is now runtime.{key}: how a machine runs the study, not what it computes (changing it "
            f"continues the same study). HINT: Experiment(runtime=Runtime({key}=...)) in the experiment file, or "
            f"--set runtime.{key}=...")


def _parse_literal(text: str) -> Any:
    """A Python literal, or the bare text as a string (so ``--set train.optimizer=sgd`` works unquoted)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _paths(obj: Any, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(value):
            out += _paths(value, prefix + f.name + ".")
        elif f.name == "search":
            out += [f"{prefix}search.{k}" for k in value]
    return out


def apply_overrides(exp: Experiment, overrides: list[str]) -> Experiment:
    """Apply ``KEY=VALUE`` overrides (``train.lr=3e-4``, ``backbones='["test_vit"]'``) and re-check every type.

    Values are Python literals parsed with ``ast.literal_eval`` (never ``eval``); a bare word is a string.
    ``search.lr=[1e-5, 1e-3]`` sets a searched range (keeping its log scale); a list of choices sets a categorical;
    ``search.lr=None`` stops searching ``lr`` (``train.lr`` is then used). Setting a field the experiment searches
    (``train.lr`` while ``search.lr`` exists) is refused: the search would override it.
    """
    exp = copy.deepcopy(exp)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise TlkitError(f"Bad --set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4.")
        value = _parse_literal(raw.strip())
        *parents, leaf = key.split(".")
        target: Any = exp
        for part in parents:
            if part == "source" and target is exp and exp.source is None:
                raise TlkitError(f"Bad --set {item!r}: this experiment has no source task to override.")
            target = getattr(target, part, None) if dataclasses.is_dataclass(target) else None
            if target is None:
                break
        if isinstance(target, dict) and parents[-1:] == ["search"]:
            if leaf not in target:
                raise TlkitError(f"Bad --set {item!r}: " + did_you_mean(key, _paths(exp), "key"))
            if value is None:
                del target[leaf]
            else:
                target[leaf] = distribution_like(target[leaf], value, key)
            continue
        if parents[:1] == ["strategy_params"] and len(parents) == 2:
            exp.strategy_params.setdefault(parents[1], {})[leaf] = list(value) if isinstance(value, tuple) else value
            continue
        if parents[-1:] == ["train"] and leaf in MOVED_TO_RUNTIME:
            raise TlkitError(f"Bad --set {item!r}: {_moved(leaf)}")
        if parents == ["train"] and leaf in exp.search:
            raise TlkitError(f"Bad --set {item!r}: the experiment searches {leaf!r} (search.{leaf}), so every trial "
                             f"overrides train.{leaf} and this would change nothing. HINT: set the searched range, "
                             f"--set search.{leaf}=[low,high], or stop searching it first: --set search.{leaf}=None "
                             f"--set {item}.")
        if not dataclasses.is_dataclass(target) or leaf not in {f.name for f in dataclasses.fields(target)}:
            raise TlkitError(f"Bad --set {item!r}: " + did_you_mean(key, _paths(exp), "key"))
        hints = typing.get_type_hints(type(target))
        try:
            setattr(target, leaf, check_value(value, hints[leaf], key))
        except TlkitError as err:
            raise TlkitError(f"Bad --set {item!r}: {err}") from None
    validate(exp)
    return exp


def distribution_like(old: BaseDistribution, value: Any, key: str) -> BaseDistribution:
    """``value`` (``[low, high]``, or a list of choices) as a distribution of ``old``'s kind and scale: a range keeps
    its int or float type and its log scale; ``key`` names it in errors."""
    if isinstance(old, (FloatDistribution, IntDistribution)):
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise TlkitError(f"Bad --set {key}: a searched range is [low, high], e.g. --set {key}=[1e-4,1e-2], "
                             f"but got {value!r}.")
        low, high = value
        try:
            if isinstance(old, IntDistribution):
                return IntDistribution(int(low), int(high), log=old.log)
            return FloatDistribution(float(low), float(high), log=old.log)
        except ValueError as err:
            raise TlkitError(f"Bad --set {key}: {err}") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise TlkitError(f"Bad --set {key}: categorical choices are a list, e.g. [32, 64], but got {value!r}.")
    bad = [v for v in value if v is not None and not isinstance(v, (bool, int, float, str))]
    if bad:
        raise TlkitError(f"Bad --set {key}: a categorical choice is None, a bool, a number or a string but got "
                         f"{bad[0]!r}. HINT: e.g. --set {key}=[32, 64].")
    return CategoricalDistribution(list(value))

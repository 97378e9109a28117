"""What makes two runs the same study: the experiment as JSON, its identity (the fields that change what a trial
computes) and content digests of the files it names."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import typing
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution, distribution_to_json

from tlkit.config.experiment import Experiment
from tlkit.utils.files import sha256

__all__ = ["experiment_to_dict", "identity", "file_digest", "fingerprint"]


def experiment_to_dict(exp: Experiment) -> dict[str, Any]:
    """A JSON-ready dict of the resolved experiment (distributions as Optuna's own JSON)."""
    out = dataclasses.asdict(exp)
    out["search"] = {k: json.loads(distribution_to_json(v)) for k, v in exp.search.items()}
    out["strategy_params"] = {s: {k: json.loads(distribution_to_json(v)) if isinstance(v, BaseDistribution) else v
                                  for k, v in params.items()} for s, params in exp.strategy_params.items()}
    return out


RETIRED = frozenset({"source.train.device", "source.train.keep_checkpoints"})
"""Keys a study's stored identity may hold that are no longer part of it (fields moved to ``Runtime``): a study
recorded before the move continues."""


def not_identity_paths(cls: type = Experiment, prefix: str = "") -> set[str]:
    """The dotted paths whose field metadata says ``NOT_IDENTITY`` (``trials``, ``data.root``, ``runtime``, ...),
    read from the dataclasses themselves, so no list is kept by hand."""
    paths = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("identity", True):
            paths.add(prefix + f.name)
            continue
        for tp in (hints[f.name], *typing.get_args(hints[f.name])):  # Source | None: Source's fields too
            if dataclasses.is_dataclass(tp):
                paths |= not_identity_paths(tp, f"{prefix}{f.name}.")
    return paths


def identity(exp: Experiment, backbone: str | None = None, strategy: str | None = None) -> dict[str, Any]:
    """The flattened fields that make two runs comparable; a change to any of them means a new study.

    For one cell (``backbone``, ``strategy``) only its own backbone's weights file and its own strategy's
    ``strategy_params`` count: another cell's do not change what this one computes, so adding a strategy with its
    own parameters, or a backbone with a weights file, adds cells without touching the others."""
    flat: dict[str, Any] = {}
    excluded = not_identity_paths()

    def walk(value: Any, path: str) -> None:
        if path in excluded:
            return
        if isinstance(value, dict) and path != "search" and not path.endswith("search"):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else k)
        elif path.startswith("weights."):
            flat[path] = file_digest(value)  # the file's content, not where it lies
        else:
            flat[path] = value

    walk(experiment_to_dict(exp), "")
    return {k: v for k, v in flat.items() if concerns(k, backbone, strategy)}


def concerns(key: str, backbone: str | None, strategy: str | None) -> bool:
    """Whether identity ``key`` bears on the cell (``backbone``, ``strategy``); None: on every cell."""
    if backbone is not None and key.startswith("weights.") and key != f"weights.{backbone}":
        return False
    return strategy is None or not key.startswith("strategy_params.") or key.startswith(f"strategy_params.{strategy}.")


def file_digest(path: str) -> str:
    """SHA-256 (16 hex digits) of a file's content, cached by path, size and mtime; ``missing:<path>`` if absent."""
    file = Path(path).expanduser()
    if not file.is_file():
        return f"missing:{path}"
    stat = file.stat()
    return _digest(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256(Path(path))[:16]


def fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

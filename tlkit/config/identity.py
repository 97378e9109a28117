"""What makes two runs the same study: the experiment as JSON, its identity (the fields that change what a trial
computes) and content digests of the files it names."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
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


# Fields that do not change what a trial computes: a study may grow or move without being a different study.
# Each cell is its own study, so adding a backbone or a strategy adds cells without touching the others.
_NOT_IDENTITY = {"trials", "repeats", "name", "backbones", "strategies", "data.root", "data.download",
                 "source.data.root", "source.data.download", "train.device", "train.keep_checkpoints",
                 "train.checkpoint_every_s", "source.train.checkpoint_every_s",
                 "keep_top_backbones"}


def identity(exp: Experiment) -> dict[str, Any]:
    """The flattened fields that make two runs comparable; a change to any of them means a new study."""
    flat: dict[str, Any] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict) and path != "search" and not path.endswith("search"):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else k)
        elif path.startswith("weights."):
            flat[path] = file_digest(value)  # the file's content, not where it lies
        elif path not in _NOT_IDENTITY:
            flat[path] = value

    walk(experiment_to_dict(exp), "")
    return flat


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

"""tlkit: which pretrained backbone, which freezing strategy, which hyperparameters — answered with evidence.

Public API:
    Experiment, Data, Train, Source, Runtime   what a study compares (see experiments/*.py), how a machine runs it
    load_experiment                       load an experiment file
    Strategy, register_strategy           add a freezing strategy (get_strategy, list_strategies, create_strategy)
    Dataset, register_dataset             add a dataset (get_dataset, list_datasets)
    Metric, register_metric               add a validation metric with its direction (get_metric, list_metrics)
    TrialSpec, run_trial, Callback        run one trial outside a sweep (what every sweep trial goes through),
    splits_for, resolve_pretrained        with the splits and starting weights a sweep would give it
    load_best                             the best model of a cell, ready for inference

Each name is imported from its module on first use (PEP 562 ``__getattr__``, as SciPy and scikit-image do), so
``import tlkit`` costs no torch, timm, Optuna or pandas: ``python -m tlkit.report`` and the other commands import
only what they use, and a library user pays for what they touch.
"""
from __future__ import annotations

import importlib
import os as _os
from typing import TYPE_CHECKING, Any

# Before anything imports torch and with it OpenMP: idle compute threads spin ~10 us, then sleep, instead of
# OpenMP's ~300,000 spins. Beside another busy process the default made a sweep 10.8x slower, this 2.3x, at the
# same idle speed (docs/benchmarks.md, benchmarks/shared_machine.py). A user's own OpenMP setting wins.
if "GOMP_SPINCOUNT" not in _os.environ and "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "10000"

from tlkit.errors import TlkitError  # noqa: E402 - after the OpenMP setting; the standard library only

_HOMES = {
    "tlkit.config.experiment": ("Data", "Experiment", "Runtime", "Source", "Train"),
    "tlkit.config.loading": ("load_experiment",),
    "tlkit.search.best": ("load_best",),
    "tlkit.data.datasets": ("Dataset", "get_dataset", "list_datasets", "register_dataset"),
    "tlkit.metrics": ("Metric", "get_metric", "list_metrics", "register_metric"),
    "tlkit.engine.runner": ("TrialResult", "TrialSpec", "run_trial"),
    "tlkit.engine.loop": ("Callback",),
    "tlkit.engine.splits": ("splits_for",),
    "tlkit.engine.source": ("resolve_pretrained",),
    "tlkit.strategies": ("Strategy", "create_strategy", "get_strategy", "list_strategies", "register_strategy"),
}
_LAZY = {name: module for module, names in _HOMES.items() for name in names}
"""Where each public name lives; ``tests/test_package.py`` checks every name of ``__all__`` resolves."""

__all__ = ["Data", "Experiment", "Runtime", "Source", "Train", "TlkitError", "load_experiment", "load_best",
           "Strategy", "register_strategy", "get_strategy", "list_strategies", "create_strategy", "Dataset",
           "register_dataset", "get_dataset", "list_datasets", "Metric", "register_metric", "get_metric",
           "list_metrics", "TrialSpec", "TrialResult", "run_trial", "Callback", "splits_for", "resolve_pretrained"]
__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports them
    from tlkit.config.experiment import Data, Experiment, Runtime, Source, Train
    from tlkit.config.loading import load_experiment
    from tlkit.data.datasets import Dataset, get_dataset, list_datasets, register_dataset
    from tlkit.engine.loop import Callback
    from tlkit.engine.runner import TrialResult, TrialSpec, run_trial
    from tlkit.engine.source import resolve_pretrained
    from tlkit.engine.splits import splits_for
    from tlkit.metrics import Metric, get_metric, list_metrics, register_metric
    from tlkit.search.best import load_best
    from tlkit.strategies import Strategy, create_strategy, get_strategy, list_strategies, register_strategy


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is used, then keep the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tlkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

"""tlkit: which pretrained backbone, which freezing strategy, which hyperparameters — answered with evidence.

Public API:
    Experiment, Data, Train, Source       what a study compares (see experiments/*.py)
    load_experiment                       load an experiment file
    Strategy, register_strategy           add a freezing strategy (list_strategies, create_strategy)
    Dataset, register_dataset             add a dataset (list_datasets)
    register_metric                       add a validation metric with its direction (list_metrics)
    TrialSpec, run_trial                  run one trial outside a sweep (what every sweep trial goes through)
    load_best                             the best model of a cell, ready for inference
"""
import os as _os

# Before anything imports torch and with it OpenMP: idle compute threads spin ~10 us, then sleep, instead of
# OpenMP's ~300,000 spins. Beside another busy process the default made a sweep 10.8x slower, this 2.3x, at the
# same idle speed (docs/benchmarks.md, benchmarks/shared_machine.py). A user's own OpenMP setting wins.
if "GOMP_SPINCOUNT" not in _os.environ and "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "10000"

from tlkit.errors import TlkitError  # noqa: E402 - after the OpenMP setting
from tlkit.config.experiment import Data, Experiment, Source, Train, load_experiment
from tlkit.search.export import load_best
from tlkit.data.datasets import Dataset, list_datasets, register_dataset
from tlkit.metrics import list_metrics, register_metric
from tlkit.engine.runner import TrialResult, TrialSpec, run_trial
from tlkit.strategies import Strategy, create_strategy, list_strategies, register_strategy

__all__ = ["Data", "Experiment", "Source", "Train", "TlkitError", "load_experiment", "load_best", "Strategy",
           "register_strategy", "list_strategies", "create_strategy", "Dataset", "register_dataset",
           "list_datasets", "register_metric", "list_metrics", "TrialSpec", "TrialResult", "run_trial"]
__version__ = "0.1.0"

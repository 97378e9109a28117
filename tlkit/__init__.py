"""tlkit: which pretrained backbone, which freezing strategy, which hyperparameters — answered with evidence.

Public API:
    Experiment, Data, Train, Source   what a study compares (see experiments/*.py)
    load_experiment                   load an experiment file
    register_strategy, Strategy       add a freezing strategy
    list_strategies, create_strategy  the strategy registry
    load_best                         the best model of a cell, ready for inference
"""
from tlkit.errors import TlkitError
from tlkit.experiment import Data, Experiment, Source, Train, load_experiment
from tlkit.export import load_best
from tlkit.strategies import Strategy, create_strategy, list_strategies, register_strategy

__all__ = ["Data", "Experiment", "Source", "Train", "TlkitError", "load_experiment", "load_best", "Strategy",
           "register_strategy", "list_strategies", "create_strategy"]
__version__ = "0.1.0"

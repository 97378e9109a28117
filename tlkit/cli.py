"""What the commands that run an experiment share (``python -m tlkit.sweep``, ``python -m tlkit.rank``): the flags
that name the experiment and its inputs, the experiment with them applied, the device, the checks before anything
is written, and tlkit's log on the terminal.
"""
from __future__ import annotations

import argparse
import logging

import torch

from tlkit.config.experiment import Experiment, recipe_values, validate
from tlkit.config.loading import apply_overrides, load_experiment
from tlkit.data.datasets import get_dataset
from tlkit.data.tensors import Splits, cache_dir
from tlkit.engine.splits import splits_for
from tlkit.errors import TlkitError
from tlkit.metrics import get_metric
from tlkit.models.backbones import check_backbone, check_runs, create_backbone, layer_groups
from tlkit.search.objective import CellPlan, plan_cell
from tlkit.search.study import Cell, cells
from tlkit.strategies import get_strategy

__all__ = ["add_experiment_arguments", "resolve_experiment", "pick_device", "prepare", "log_to"]

log = logging.getLogger("tlkit")


def add_experiment_arguments(p: argparse.ArgumentParser) -> None:
    """The experiment file and the flags that change it: ``--data-dir``, ``--weights``, ``--set``, ``--device``."""
    p.add_argument("experiment", help="path of an experiment file (Python defining `experiment = Experiment(...)`)")
    p.add_argument("--data-dir", help="where the dataset is (a folder or .zip; overrides data.root)")
    p.add_argument("--weights", action="append", default=[], metavar="BACKBONE=PATH",
                   help="pretrained weights file for a backbone (safetensors or a state dict); repeatable")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override an experiment field with a Python literal, e.g. --set train.lr=3e-4 "
                        "--set backbones='[\"test_resnet\"]'; repeatable")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the experiment's runtime.device)")


def resolve_experiment(args: argparse.Namespace, trials: int | None = None, repeats: int | None = None,
                       study: str | None = None, replicates: str | None = None) -> Experiment:
    """The experiment file with the flags of ``add_experiment_arguments`` (and the sweep's ``trials``, ``repeats``,
    ``study`` and ``replicates``) applied and re-checked."""
    exp = load_experiment(args.experiment)
    overrides = list(args.overrides)
    if trials is not None:
        overrides.append(f"trials={trials}")
    if repeats is not None:
        overrides.append(f"repeats={repeats}")
    if replicates is not None:
        overrides.append(f"replicates={int(replicates) if replicates.isdigit() else replicates!r}")
    if args.device:
        overrides.append(f"runtime.device={args.device!r}")
    exp = apply_overrides(exp, overrides)
    if args.data_dir:
        exp.data.root = args.data_dir
        if exp.source is not None and exp.source.data.root is None:
            exp.source.data.root = args.data_dir
    for item in args.weights:
        backbone, sep, path = item.partition("=")
        if not sep or not path:
            raise TlkitError(f"Bad --weights {item!r}: expected BACKBONE=PATH, e.g. --weights resnet18=r18.pth.")
        exp.weights[backbone] = path
    if study:
        exp.name = study
    return validate(exp)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TlkitError(f"Unknown device {name!r}. HINT: use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TlkitError(f"Device {name!r} asked for, but no CUDA GPU is available. HINT: --device cpu.")
    return device


def prepare(exp: Experiment) -> tuple[Splits, dict[Cell, CellPlan]]:
    """Check names, load the data and plan each cell (its strategy, layer groups and search space): everything that
    can fail on bad input, before the study is touched. Returns the splits and the plan of every cell."""
    cache_dir()  # a TLKIT_CACHE that is a file fails here, not at the first cache write of some trial
    for backbone in exp.backbones:
        check_backbone(backbone)
    for name in exp.strategies:
        get_strategy(name)  # an unknown name says "did you mean" before the data is loaded
    if exp.source is not None:
        get_dataset(exp.source.data.name)  # an unknown name says "did you mean" before anything is trained
    splits = splits_for(exp.data, exp.train.image_size, exp.seed)
    metric = get_metric(exp.metric)
    if splits.num_classes < metric.min_classes:
        raise TlkitError(f"metric {exp.metric!r} needs at least {metric.min_classes} classes but the data has "
                         f"{splits.num_classes}. HINT: choose another metric, e.g. accuracy.")
    num_groups = {b: len(layer_groups(create_backbone(b, splits.num_classes, exp.train.image_size),
                                      coarse=exp.train.coarse_groups)) for b in exp.backbones}
    for backbone in exp.backbones:
        check_runs(backbone, splits.num_classes, recipe_values(exp.search, exp.train, "image_size"),
                   min([*recipe_values(exp.search, exp.train, "batch_size"), len(splits.train)]))
    return splits, {cell: plan_cell(exp, cell, num_groups[cell.backbone]) for cell in cells(exp)}


def log_to(handler: logging.Handler, level: int) -> None:
    """tlkit's own log (not the root logger: timm's and Optuna's info lines stay out of the user's terminal)."""
    handler.setFormatter(logging.Formatter("[tlkit] %(message)s"))
    for old in list(log.handlers):
        log.removeHandler(old)
    log.addHandler(handler)
    log.setLevel(level)

"""What a study compares: the Experiment definition, loading it from a file, and ``--set`` overrides.

An experiment file is plain Python that defines ``experiment = Experiment(...)`` (or a ``get_experiment()``
function). Everything is a dataclass with typed fields, so a wrong type or an unknown key is caught before any
trial runs, with the field's dotted path in the message.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
import sys
import traceback
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from tlkit.engine.checkpoint import sha256
from tlkit.errors import TlkitError, close_matches, describe_error, did_you_mean
from tlkit.metrics import get_metric

__all__ = ["Data", "Train", "Source", "Experiment", "load_experiment", "apply_overrides", "experiment_to_dict",
           "validate", "recipe_values"]

AUGMENTATIONS = ("crop", "hflip")
PRUNERS = ("median", "hyperband", "none")
MAX_SEED = 400_000
"""Derived seeds must stay below 2**32 (NumPy's limit): the sampler of a cell is seeded with seed x 10007 + trials."""


@dataclass
class Data:
    """Which images and labels. ``name`` is a registered dataset: ``python -c "import tlkit;
    print(tlkit.list_datasets())"`` lists them (digits, cifar10, cifar100, imagefolder, table, flowers102, ...)."""

    name: str = "digits"
    root: Union[str, None] = None
    """Folder or ``.zip`` for ``imagefolder``, the file for ``table``, the data dir for downloadable datasets
    (default ``$TLKIT_CACHE/data``). ``--data-dir`` overrides it."""
    classes: Union[list[int], None] = None
    """Keep only these class indices (relabelled 0..k-1 in this order). None keeps all."""
    val_fraction: float = 0.2
    """Share of the training split held out (stratified, seeded) for model selection."""
    train_per_class: Union[int, None] = None
    """Cap on training images per class (before the validation split), for budget studies."""
    test_per_class: Union[int, None] = None
    download: bool = True
    """Allow torchvision to download the dataset when it is not under the data dir."""
    decode_size: Union[int, None] = None
    """Square size images are stored at when decoded (shorter side resized, centre crop). None: the dataset's own
    size when all images share one (CIFAR: 32), else 256 for torchvision's datasets and the first image's size for
    folders and tables."""
    options: dict[str, Any] = field(default_factory=dict)
    """Dataset-specific settings, e.g. the column names of a ``table``."""

    def __post_init__(self) -> None:
        self.validate("data.")

    def validate(self, prefix: str) -> None:
        """Check every field; ``prefix`` says where this section sits (``data.`` or ``source.data.``)."""
        check_types(self, prefix)
        if self.decode_size is not None and self.decode_size < 1:
            raise TlkitError(f"{prefix}decode_size must be None or an int >= 1 but got {self.decode_size!r}.")
        if not 0.0 < self.val_fraction < 1.0:
            raise TlkitError(f"{prefix}val_fraction must be in (0, 1) but got {self.val_fraction}. HINT: 0.1 to 0.25 "
                             f"is usual; the validation split is carved from the training split.")
        for name in ("train_per_class", "test_per_class"):
            cap = getattr(self, name)
            if cap is not None and cap < 1:
                raise TlkitError(f"{prefix}{name} must be None or an int >= 1 but got {cap!r}.")
        if self.classes is None:
            return
        if len(self.classes) < 2:
            raise TlkitError(f"{prefix}classes={self.classes} keeps {'no class' if not self.classes else 'one class'}: "
                             f"a classifier needs at least 2 classes to score anything meaningful. HINT: list at "
                             f"least 2 class indices, or leave {prefix}classes=None for all of them.")
        if len(set(self.classes)) != len(self.classes):
            raise TlkitError(f"{prefix}classes must not repeat a class but got {self.classes}.")
        if min(self.classes) < 0:
            raise TlkitError(f"{prefix}classes must be class indices >= 0 but got {self.classes}. HINT: the "
                             f"dataset's classes are numbered 0, 1, ... in its own order.")


@dataclass
class Train:
    """The training recipe shared by every cell. Searched hyperparameters override the fields of the same name."""

    epochs: int = 10
    batch_size: int = 128
    """Images per optimizer step (the last partial batch of an epoch is dropped); a training split of at most this
    many images is one step per epoch on all of it, never zero steps."""
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    image_size: int = 32
    augment: list[str] = field(default_factory=lambda: ["crop", "hflip"])
    crop_padding: int = 4
    coarse_groups: bool = False
    """Use timm's coarse layer grouping (fewer, larger groups) instead of the fine one."""
    cache_features: bool = True
    """While only the head trains, use the backbone's features of the un-augmented images (a probe on fixed
    features), computed once per (weights, images, preprocessing) and kept in ``$TLKIT_CACHE/features`` for every
    trial, cell and later sweep that needs them (``tlkit.engine.features``); likewise, when ``augment`` is empty, the
    output of the frozen layer groups below the trainable ones (``tlkit.engine.prefix``). False recomputes them every
    epoch, with
    augmentation."""
    device: str = "auto"
    amp: bool = True
    """bfloat16 autocast on CUDA (on CPU only with ``cpu_amp``)."""
    cpu_amp: Union[bool, None] = None
    """bfloat16 autocast on CPU as well (with ``amp``): faster on CPUs with native bf16 (AVX512-BF16, AMX) for models
    big enough (speed in docs/benchmarks.md: evaluation changes ~1 prediction in 300, no detectable accuracy
    difference; its effect on training is not measured); as on CUDA, not bit-for-bit repeatable. None or False:
    float32."""
    channels_last: Union[bool, None] = None
    """channels_last memory for the model and its inputs. None: decided per architecture and device from
    measurements (``tlkit.engine.compute``: every CNN on CUDA; on CPU the architectures it speeds up)."""
    max_batches: Union[int, None] = None
    """Stop each epoch after this many batches: a fast real run for smoke tests."""
    keep_checkpoints: str = "best"
    """``best``: once a trial ends keep only its best weights; ``last``: also keep its last two epoch checkpoints."""
    checkpoint_every_s: Union[float, None] = None
    """Seconds of training between a trial's epoch checkpoints (None: ``tlkit.engine.runner.CHECKPOINT_EVERY_S``, 10 s;
    0: every epoch). A kill re-runs at most this much training, to the same numbers; short epochs (a probe on
    cached features takes a fraction of a second) are cheaper to re-run than to save."""

    def __post_init__(self) -> None:
        self.validate("train.")

    def validate(self, prefix: str) -> None:
        """Check every value (type, range, choice); ``prefix`` says where the recipe sits (``train.`` or
        ``source.train.``). A value no trial can train with is refused here, never found by a crashed trial."""
        check_types(self, prefix)
        for f in dataclasses.fields(self):
            problem = recipe_problem(f.name, getattr(self, f.name), prefix + f.name)
            if problem:
                raise TlkitError(f"{problem} HINT: fix it in the experiment file or with --set {prefix}{f.name}=...")
        if self.warmup_epochs >= self.epochs:
            raise TlkitError(f"{prefix}warmup_epochs must be less than {prefix}epochs but got {self.warmup_epochs} "
                             f"warm-up epochs of {self.epochs}: the rate would never leave its warm-up. HINT: lower "
                             f"{prefix}warmup_epochs (0 turns warm-up off).")


# What each recipe value must be. Fixed values and every value a search space can give pass the same test.
RECIPE_CHOICES = {"optimizer": ("adamw", "sgd"), "scheduler": ("cosine", "constant"),
                  "keep_checkpoints": ("best", "last")}
RECIPE_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "image_size": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: 0 < v < math.inf, "a finite number > 0"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "crop_padding": (lambda v: v >= 0, ">= 0"),
    "max_batches": (lambda v: v is None or v >= 1, "None or an int >= 1"),
    "checkpoint_every_s": (lambda v: v is None or 0 <= v < math.inf, "None or a finite number of seconds >= 0"),
}


def recipe_problem(name: str, value: Any, path: str) -> str | None:
    """What is wrong with ``value`` as the recipe field ``name`` (a sentence naming ``path``), or None."""
    try:
        value = _check_value(value, typing.get_type_hints(Train)[name], path)
    except TlkitError as err:
        return str(err)
    if name in RECIPE_CHOICES and value not in RECIPE_CHOICES[name]:
        return did_you_mean(value, RECIPE_CHOICES[name], path)
    if name == "augment":
        bad = [a for a in value if a not in AUGMENTATIONS]
        return did_you_mean(bad[0], AUGMENTATIONS, f"augmentation in {path}") if bad else None
    if name in RECIPE_RANGES and not RECIPE_RANGES[name][0](value):
        return f"{path} must be {RECIPE_RANGES[name][1]} but got {value!r}."
    return None


@dataclass
class Source:
    """A source task tlkit trains each backbone on once; its weights become the backbone's pretrained weights."""

    data: Data
    train: Train = field(default_factory=Train)


def default_search() -> dict[str, BaseDistribution]:
    return {
        "lr": FloatDistribution(1e-4, 1e-2, log=True),
        "weight_decay": FloatDistribution(1e-5, 1e-1, log=True),
    }


@dataclass
class Experiment:
    """One study: every (backbone, strategy) cell gets the same data split, recipe, trial budget and sampler seed.

    Example:
        experiment = Experiment(
            data=Data("digits", classes=[5, 6, 7, 8, 9]),
            backbones=["test_resnet", "test_vit"],
            strategies=["linear_probe", "last_n", "full_finetune"],
            train=Train(epochs=5, image_size=32),
            trials=4,
        )
    """

    backbones: list[str]
    strategies: list[str]
    data: Data = field(default_factory=Data)
    train: Train = field(default_factory=Train)
    search: dict[str, BaseDistribution] = field(default_factory=default_search)
    """Shared hyperparameters to search; keys are ``train`` fields. Strategies add their own."""
    name: str = ""
    """The study name; defaults to the experiment file's name."""
    metric: str = "accuracy"
    """Validation metric that selects epochs, trials and winners, in its own direction: accuracy,
    balanced_accuracy, macro_f1, top5_accuracy (maximised), error_rate, log_loss (minimised), or your own
    (``tlkit.register_metric``)."""
    trials: int = 4
    """Finished trials per cell."""
    repeats: int = 3
    """Seeds each cell's best configuration is trained with again after its search (shared by every cell, so the
    comparisons are paired); the intervals and tests of the report come from them (3 or more: tests over seeds).
    0 skips them: the report then tests each cell's best search trial over test examples."""
    seed: int = 0
    pruner: str = "median"
    """Optuna's pruner on the per-epoch validation metric: ``median`` (MedianPruner), ``hyperband`` or ``none``."""
    pretrained: bool = True
    """Start from pretrained weights (timm hub, ``weights`` files, or ``source``)."""
    weights: dict[str, str] = field(default_factory=dict)
    """Backbone name -> local weights file (safetensors or a state dict), used instead of the hub."""
    source: Union[Source, None] = None
    keep_top_backbones: Union[int, None] = None
    """Search only the k backbones that LogME ranks best before training (``tlkit.rank``); the log and the report
    name the dropped ones and why. None searches every backbone."""

    def __post_init__(self) -> None:
        check_types(self)
        self.data.validate("data.")
        self.train.validate("train.")
        if self.source is not None:
            self.source.data.validate("source.data.")
            self.source.train.validate("source.train.")
        if not self.backbones:
            raise TlkitError("The experiment lists no backbones. HINT: set backbones=['resnet18', ...].")
        if not self.strategies:
            raise TlkitError("The experiment lists no strategies. HINT: set strategies=['linear_probe', ...].")
        get_metric(self.metric)  # an unknown name says "did you mean"
        if self.pruner not in PRUNERS:
            raise TlkitError(did_you_mean(self.pruner, PRUNERS, "pruner"))
        if self.trials < 1:
            raise TlkitError(f"trials must be >= 1 but got {self.trials}.")
        if self.repeats < 0:
            raise TlkitError(f"repeats must be >= 0 but got {self.repeats}.")
        if self.keep_top_backbones is not None and (self.keep_top_backbones < 1 or not self.pretrained):
            raise TlkitError(f"keep_top_backbones must be None or an int >= 1, with pretrained weights, but got "
                             f"{self.keep_top_backbones} (pretrained={self.pretrained}). HINT: the ranking scores "
                             f"pretrained features; set keep_top_backbones=None to search every backbone.")
        train_fields = {f.name: f for f in dataclasses.fields(Train)}
        for key, dist in self.search.items():
            if key not in train_fields:
                raise TlkitError(did_you_mean(key, train_fields, "search key (search keys are train fields)"))
            if not isinstance(dist, BaseDistribution):
                raise TlkitError(f"search[{key!r}] must be an optuna distribution (e.g. FloatDistribution(1e-4, "
                                 f"1e-2, log=True)) but got {dist!r}.")
        check_search(self.search, self.train)
        if not 0 <= self.seed <= MAX_SEED:
            raise TlkitError(f"seed must be an int in [0, {MAX_SEED}] but got {self.seed}. HINT: any seed in that "
                             f"range; tlkit derives the sampler's, the trials' and the split's seeds from it.")
        stray = [b for b in self.weights if b not in self.backbones]
        if stray:
            raise TlkitError(f"Weights are given for backbone {stray[0]!r}, which is not one of the experiment's "
                             f"backbones ({', '.join(self.backbones)}).{close_matches(stray[0], self.backbones)} HINT: "
                             f"name the backbone exactly as in backbones: --weights BACKBONE=PATH or "
                             f"weights={{BACKBONE: PATH}}.")


def _possible_values(dist: BaseDistribution) -> list[Any]:
    """The values a distribution can give that bound the rest: a range's ends, or every choice."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def check_search(search: dict[str, BaseDistribution], recipe: Train) -> None:
    """Every value a search distribution can give must be a value the recipe accepts (a range's ends decide, as
    every limit is an interval), so no sampled trial can crash on it; searched warm-up must stay below the epochs."""
    for key, dist in search.items():
        for value in _possible_values(dist):
            problem = recipe_problem(key, value, f"train.{key}")
            if problem:
                raise TlkitError(f"search[{key!r}] ({dist}) can give {value!r}, which no trial can use: {problem} "
                                 f"HINT: make every value it can give a valid train.{key} (a range within the "
                                 f"limits, IntDistribution for an int field, choices from the allowed ones).")
    warmup, epochs = recipe_values(search, recipe, "warmup_epochs"), recipe_values(search, recipe, "epochs")
    if max(warmup) >= min(epochs):
        raise TlkitError(f"train.warmup_epochs can be {max(warmup)} while train.epochs can be {min(epochs)}: warm-up "
                         f"must end before training does. HINT: keep every searched or fixed warmup_epochs below "
                         f"every epochs value.")


def recipe_values(search: dict[str, BaseDistribution], recipe: Train, name: str) -> list[Any]:
    """The values of recipe field ``name`` that bound what a trial can see: the fixed value, or the search's."""
    return _possible_values(search[name]) if name in search else [getattr(recipe, name)]


# --- type checking -----------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(value: Any, tp: Any, path: str) -> Any:
    """Return ``value`` (ints widened to float where a float is wanted) or raise naming ``path``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [o for o in typing.get_args(tp) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) == 1:  # Optional[X]: report X's own, more precise, error
            return _check_value(value, options[0], path)
        for option in options:
            try:
                return _check_value(value, option, path)
            except TlkitError:
                pass
        raise TlkitError(f"{path} must be one of {', '.join(map(_type_name, options))} but got {value!r}.")
    if tp is type(None):
        if value is not None:
            raise TlkitError(f"{path} must be None but got {value!r}.")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TlkitError(f"{path} must be a list but got {value!r}.")
        (item_tp,) = typing.get_args(tp)
        return [_check_value(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TlkitError(f"{path} must be a dict but got {value!r}.")
        key_tp, value_tp = typing.get_args(tp)
        return {_check_value(k, key_tp, path): _check_value(v, value_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise TlkitError(f"{path} must be int but got {value!r}.")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise TlkitError(f"{path} must be {_type_name(tp)} but got {value!r} ({type(value).__name__}).")
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
        setattr(obj, f.name, _check_value(value, hints[f.name], path))


# --- loading -----------------------------------------------------------------------------------------------------

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
    if not isinstance(exp, Experiment):
        raise TlkitError(f"{path} defines no `experiment = Experiment(...)` nor `get_experiment()` "
                         f"(found {type(exp).__name__}). HINT: see experiments/digits.py for the shape.")
    if not exp.name:
        exp.name = path.stem
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
        cls = {c.__name__: c for c in (Data, Train, Source, Experiment)}.get(cls_name)
        if cls is not None:
            return "TypeError: " + did_you_mean(key, [f.name for f in dataclasses.fields(cls)], f"{cls_name} field")
    return text


# --- overrides ---------------------------------------------------------------------------------------------------

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
                target[leaf] = _distribution_like(target[leaf], value, key)
            continue
        if parents == ["train"] and leaf in exp.search:
            raise TlkitError(f"Bad --set {item!r}: the experiment searches {leaf!r} (search.{leaf}), so every trial "
                             f"overrides train.{leaf} and this would change nothing. HINT: set the searched range, "
                             f"--set search.{leaf}=[low,high], or stop searching it first: --set search.{leaf}=None "
                             f"--set {item}.")
        if not dataclasses.is_dataclass(target) or leaf not in {f.name for f in dataclasses.fields(target)}:
            raise TlkitError(f"Bad --set {item!r}: " + did_you_mean(key, _paths(exp), "key"))
        hints = typing.get_type_hints(type(target))
        try:
            setattr(target, leaf, _check_value(value, hints[leaf], key))
        except TlkitError as err:
            raise TlkitError(f"Bad --set {item!r}: {err}") from None
    validate(exp)
    return exp


def _distribution_like(old: BaseDistribution, value: Any, key: str) -> BaseDistribution:
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


def validate(exp: Experiment) -> Experiment:
    """Check the whole experiment again after fields changed in place (overrides, ``--data-dir``, ``--weights``):
    every section, with the dotted path of each field in the message."""
    exp.__post_init__()
    return exp


# --- serialising -------------------------------------------------------------------------------------------------

def experiment_to_dict(exp: Experiment) -> dict[str, Any]:
    """A JSON-ready dict of the resolved experiment (distributions as Optuna's own JSON)."""
    out = dataclasses.asdict(exp)
    out["search"] = {k: json.loads(distribution_to_json(v)) for k, v in exp.search.items()}
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

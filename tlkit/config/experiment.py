"""What a study compares: the Experiment and its parts (Data, Train, Source), with the checks of each value.

Everything is a dataclass with typed fields (checked by ``tlkit.config.types``), so a wrong type, an unknown key or
a value no trial can use is caught before any trial runs, with the field's dotted path in the message. Loading a
file and ``--set`` are in ``tlkit.config.loading``; what makes two runs the same study in ``tlkit.config.identity``.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from tlkit.config.augment_names import augment_list, augment_problem, odd_mixed_batch
from tlkit.config.types import check_types, check_value
from tlkit.errors import TlkitError, close_matches, did_you_mean
from tlkit.metrics import get_metric

__all__ = ["Data", "Train", "Runtime", "Source", "Experiment", "NOT_IDENTITY", "validate", "recipe_values",
           "check_search", "check_study_name"]

"""``train.augment``'s names. ``name`` or ``name:value`` (``"randaugment:12"``, ``"mixup:0.2"``) where a default is
given; README's experiment-file section says what each does and costs."""
"""Augmentations that mix the images and labels of a batch (``timm.data.Mixup``): the loss takes soft targets."""
PRUNERS = ("median", "hyperband", "none")
MAX_SEED = 400_000
"""Derived seeds must stay below 2**32 (NumPy's limit): the sampler of a cell is seeded with seed x 10007 + trials."""


NOT_IDENTITY = {"identity": False}
"""Field metadata of what does not change what a trial computes (where the data lies, how many trials or cells, how
this machine runs it): a study may grow, move or change machines without becoming another study. The identity
(``tlkit.config.identity``) is every other field, so a new field is part of it unless it says otherwise here."""


@dataclass
class Data:
    """Which images and labels. ``name`` is a registered dataset: ``python -c "import tlkit;
    print(tlkit.list_datasets())"`` lists them (digits, cifar10, cifar100, imagefolder, table, flowers102, ...)."""

    name: str = "digits"
    root: Union[str, None] = field(default=None, metadata=NOT_IDENTITY)
    """Folder or ``.zip`` for ``imagefolder``, the file for ``table``, the data dir for downloadable datasets
    (default ``$TLKIT_CACHE/data``). ``--data-dir`` overrides it."""
    classes: Union[list[int], None] = None
    """Keep only these class indices (relabelled 0..k-1 in this order). None keeps all."""
    val_fraction: float = 0.2
    """Share of the training split held out (stratified, seeded) for model selection."""
    train_per_class: Union[int, None] = None
    """Cap on training images per class (before the validation split), for budget studies."""
    test_per_class: Union[int, None] = None
    download: bool = field(default=True, metadata=NOT_IDENTITY)
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
    augment: Union[list[str], str] = field(default_factory=lambda: ["crop", "hflip"])
    """Names from ``AUGMENTATIONS``, applied to each training image (mixup/cutmix to each batch). A string joins
    them with ``+`` (``"randaugment+mixup:0.2"``; ``"none"``: no augmentation) and becomes the list: that is the
    form to search, as Optuna's choices are plain values:
    ``search={"augment": CategoricalDistribution(["crop+hflip", "randaugment+mixup"])}``."""
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
    ema_decay: Union[float, None] = None
    """Keep an exponential moving average of the weights (``timm.utils.ModelEmaV3``, updated every step with this
    decay, e.g. 0.999): validation scores, and the best epoch keeps, the averaged weights. None: off."""

    def __post_init__(self) -> None:
        self.validate("train.")

    def validate(self, prefix: str) -> None:
        """Check every value (type, range, choice); ``prefix`` says where the recipe sits (``train.`` or
        ``source.train.``). A value no trial can train with is refused here, never found by a crashed trial."""
        check_types(self, prefix)
        self.augment = augment_list(self.augment)
        for f in dataclasses.fields(self):
            problem = recipe_problem(f.name, getattr(self, f.name), prefix + f.name)
            if problem:
                raise TlkitError(f"{problem} HINT: fix it in the experiment file or with --set {prefix}{f.name}=...")
        if self.warmup_epochs >= self.epochs:
            raise TlkitError(f"{prefix}warmup_epochs must be less than {prefix}epochs but got {self.warmup_epochs} "
                             f"warm-up epochs of {self.epochs}: the rate would never leave its warm-up. HINT: lower "
                             f"{prefix}warmup_epochs (0 turns warm-up off).")
        problem = odd_mixed_batch(self.augment, self.batch_size, prefix)
        if problem:
            raise TlkitError(problem)


RECIPE_CHOICES = {"optimizer": ("adamw", "sgd"), "scheduler": ("cosine", "constant")}
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
    "ema_decay": (lambda v: v is None or 0 < v < 1, "None or in (0, 1)"),
}


def recipe_problem(name: str, value: Any, path: str) -> str | None:
    """What is wrong with ``value`` as the recipe field ``name`` (a sentence naming ``path``), or None."""
    try:
        value = check_value(value, typing.get_type_hints(Train)[name], path)
    except TlkitError as err:
        return str(err)
    if name in RECIPE_CHOICES and value not in RECIPE_CHOICES[name]:
        return did_you_mean(value, RECIPE_CHOICES[name], path)
    if name == "augment":
        return augment_problem(augment_list(value), path)
    if name in RECIPE_RANGES and not RECIPE_RANGES[name][0](value):
        return f"{path} must be {RECIPE_RANGES[name][1]} but got {value!r}."
    return None


@dataclass
class Runtime:
    """How this run executes on this machine, not what it computes: changing any of it (another device, another
    checkpoint cadence) continues the same study."""

    device: str = "auto"
    """cpu, cuda, cuda:1 ...; auto: CUDA when there is one (``--device`` sets it)."""
    keep_checkpoints: str = "best"
    """``best``: once a trial ends keep only its best weights; ``last``: also keep its last two epoch checkpoints."""
    checkpoint_every_s: Union[float, None] = None
    """Seconds of training between a trial's epoch checkpoints (None: ``tlkit.engine.runner.CHECKPOINT_EVERY_S``, 10 s;
    0: every epoch). A kill re-runs at most this much training, to the same numbers; short epochs (a probe on
    cached features takes a fraction of a second) are cheaper to re-run than to save."""

    def __post_init__(self) -> None:
        self.validate("runtime.")

    def validate(self, prefix: str) -> None:
        check_types(self, prefix)
        if self.keep_checkpoints not in ("best", "last"):
            raise TlkitError(did_you_mean(self.keep_checkpoints, ("best", "last"), f"{prefix}keep_checkpoints"))
        every = self.checkpoint_every_s
        if every is not None and not 0 <= every < math.inf:
            raise TlkitError(f"{prefix}checkpoint_every_s must be None or a finite number of seconds >= 0 but got "
                             f"{every!r}.")


MOVED_TO_RUNTIME = ("device", "keep_checkpoints", "checkpoint_every_s")
"""Former ``Train`` fields, now ``Runtime``'s: an experiment file or ``--set`` naming them gets a message saying so."""


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

    backbones: list[str] = field(metadata=NOT_IDENTITY)
    strategies: list[str] = field(metadata=NOT_IDENTITY)
    data: Data = field(default_factory=Data)
    train: Train = field(default_factory=Train)
    search: dict[str, BaseDistribution] = field(default_factory=default_search)
    """Shared hyperparameters to search; keys are ``train`` fields. Strategies add their own."""
    strategy_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per strategy, its own hyperparameters fixed (``{"last_n": {"n_groups": 1}}``) or searched in another range
    (``{"last_n": {"n_groups": IntDistribution(1, 2)}}``) instead of the strategy's own search space; with --set:
    ``--set strategy_params.last_n.n_groups=1``. Checked against each backbone's layer groups before any trial."""
    name: str = field(default="", metadata=NOT_IDENTITY)
    """The study name; defaults to the experiment file's name."""
    metric: str = "accuracy"
    """Validation metric that selects epochs, trials and winners, in its own direction: accuracy,
    balanced_accuracy, macro_f1, top5_accuracy (maximised), error_rate, log_loss (minimised), or your own
    (``tlkit.register_metric``)."""
    trials: int = field(default=4, metadata=NOT_IDENTITY)
    """Finished trials per cell."""
    repeats: int = field(default=3, metadata=NOT_IDENTITY)
    """Seeds each cell's best configuration is trained with again after its search (shared by every cell, so the
    comparisons are paired); the intervals and tests of the report come from them (3 or more: tests over seeds).
    0 skips them: the report then tests each cell's best search trial over test examples."""
    replicates: Union[int, str] = field(default=1, metadata=NOT_IDENTITY)
    """Reruns of the whole study (Bouthillier et al. 2021): replicate r draws its own train/validation split (and
    ``train_per_class``/``test_per_class`` subsets), runs each cell's search with its own sampler seed and trains
    with its own seeds; every cell of a backbone shares replicate r, so comparisons over replicates are paired.
    Replicate 0 is the study a single run gives; raising it later trains only the new replicates. ``"auto"`` adds
    replicates until every comparison is decided, up to ``max_replicates`` (``tlkit.sweep.run_auto``)."""
    max_replicates: int = field(default=10, metadata=NOT_IDENTITY)
    """The most replicates ``replicates="auto"`` runs."""
    rope: float = field(default=0.01, metadata=NOT_IDENTITY)
    """Region of practical equivalence, in metric units (0.01 = 1 point of accuracy): two strategies whose
    difference is shown to lie within +-rope are reported ``equivalent``."""
    soups: bool = field(default=True, metadata=NOT_IDENTITY)
    """After each cell's search, its uniform and greedy model soups and its top-3 ensemble from the trials it ran
    (``tlkit.search.soups``), compared with the best trial in the report (``soups.csv``)."""
    seed: int = 0
    pruner: str = "median"
    """Optuna's pruner on the per-epoch validation metric: ``median`` (MedianPruner), ``hyperband`` or ``none``."""
    pretrained: bool = True
    """Start from pretrained weights (timm hub, ``weights`` files, or ``source``)."""
    weights: dict[str, str] = field(default_factory=dict)
    """Backbone name -> local weights file (safetensors or a state dict), used instead of the hub."""
    source: Union[Source, None] = None
    runtime: Runtime = field(default_factory=Runtime, metadata=NOT_IDENTITY)
    """How this machine runs the study (device, checkpoints): never part of its identity."""
    keep_top_backbones: Union[int, None] = field(default=None, metadata=NOT_IDENTITY)
    """Search only the k backbones that LogME ranks best before training (``tlkit.rank``); the log and the report
    name the dropped ones and why. None searches every backbone."""

    def __post_init__(self) -> None:
        check_types(self)
        if self.name:
            check_study_name(self.name)
        for what in ("backbones", "strategies"):
            repeated = sorted({x for x in getattr(self, what) if getattr(self, what).count(x) > 1})
            if repeated:
                raise TlkitError(f"{what} lists {', '.join(map(repr, repeated))} more than once; each is one cell of "
                                 f"the comparison. HINT: list each {what[:-1]} once.")
        self.data.validate("data.")
        self.train.validate("train.")
        self.runtime.validate("runtime.")
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
        if self.replicates != "auto" and not (isinstance(self.replicates, int) and self.replicates >= 1):
            raise TlkitError(f"replicates must be an int >= 1 or 'auto' but got {self.replicates!r} (1 runs the study "
                             f"once).")
        if self.max_replicates < 4:
            raise TlkitError(f"max_replicates must be >= 4 (replicates='auto' decides from 4 on: 2 to choose each "
                             f"backbone's reference on, 2 to test it) but got {self.max_replicates}.")
        if not 0 <= self.rope < float("inf"):
            raise TlkitError(f"rope must be a number >= 0 in metric units (0.01 = 1 point of accuracy) but got "
                             f"{self.rope}.")
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
        for name in self.strategy_params:
            if name not in self.strategies:
                raise TlkitError(f"strategy_params names {name!r}, which is not one of the experiment's strategies "
                                 f"({', '.join(self.strategies)}).{close_matches(name, self.strategies)} HINT: name a "
                                 f"strategy of strategies=[...].")
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
    for augment in recipe_values(search, recipe, "augment"):
        for batch_size in _batch_sizes(search, recipe):
            problem = odd_mixed_batch(augment_list(augment), batch_size, "train.")
            if problem:
                raise TlkitError(f"search can give train.augment={augment!r} with train.batch_size={batch_size}: "
                                 f"{problem}")
    warmup, epochs = recipe_values(search, recipe, "warmup_epochs"), recipe_values(search, recipe, "epochs")
    if max(warmup) >= min(epochs):
        raise TlkitError(f"train.warmup_epochs can be {max(warmup)} while train.epochs can be {min(epochs)}: warm-up "
                         f"must end before training does. HINT: keep every searched or fixed warmup_epochs below "
                         f"every epochs value.")


def _batch_sizes(search: dict[str, BaseDistribution], recipe: Train) -> list[Any]:
    """``recipe_values`` of the batch size, with an odd one among them if the search can give one (its first two
    values tell, for an int range: ``low`` and ``low + step``)."""
    dist = search.get("batch_size")
    if isinstance(dist, IntDistribution) and dist.high > dist.low:
        return [dist.low, dist.low + dist.step]
    return recipe_values(search, recipe, "batch_size")


def recipe_values(search: dict[str, BaseDistribution], recipe: Train, name: str) -> list[Any]:
    """The values of recipe field ``name`` that bound what a trial can see: the fixed value, or the search's."""
    return _possible_values(search[name]) if name in search else [getattr(recipe, name)]


_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_. -]*")


def check_study_name(name: str, what: str = "") -> str:
    """``name``, refused unless it is one safe path segment: it becomes ``results/<name>/`` and ``<store>/<name>/``,
    whose push deletes remote files it does not have, so ``../x``, ``/abs`` or a glob (``*``, ``?``, ``[``: fsspec's
    ``rm`` expands them on object stores) must never reach a path. Letters, digits, ``_``, ``-``, ``.`` and spaces,
    starting with a letter, digit or ``_`` (not ``..``, a hidden folder or a flag); at most 100 characters. No ``/``
    or ``:`` either: Optuna's study names use them as separators."""
    what = what or f"The study name {name!r}"
    if len(name) > 100 or not _SAFE_NAME.fullmatch(name):
        raise TlkitError(f"{what} cannot name a results folder: a study name is one folder name (letters, digits, "
                         f"'_', '-', '.' and spaces, starting with a letter, digit or '_', at most 100 characters), so "
                         f"that nothing is written outside results/ or the --store. HINT: pass --study NAME (or set "
                         f"name='...' in the experiment file), e.g. --study my_study; use --out for another folder.")
    return name


def validate(exp: Experiment) -> Experiment:
    """Check the whole experiment again after fields changed in place (overrides, ``--data-dir``, ``--weights``):
    every section, with the dotted path of each field in the message."""
    exp.__post_init__()
    return exp

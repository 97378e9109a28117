"""The Optuna edge of a sweep: sample a cell's hyperparameters, run the trial, report, prune, re-queue.

The trial itself runs in ``tlkit.engine.runner.run_trial``, which knows nothing of Optuna. Here a cell's objective turns
an Optuna trial into a ``TrialSpec`` (its folder ``trials/<backbone>/<strategy>/trial_NNNN``, NNNN its run: the
cell's configurations numbered in the order first sampled), reports each epoch so the pruner can stop it, records
the result as user attributes (the storage is the source of truth for every table), and re-queues the trial with
the same parameters when the process is interrupted or crashes, so the next run resumes it from its checkpoint.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from tlkit.search import _optuna
from tlkit.data.tensors import Splits
from tlkit.errors import TlkitError, describe_error, did_you_mean
from tlkit.config.experiment import Experiment
from tlkit.config.loading import distribution_like
from tlkit.engine.runner import PRUNED, TimeUp, TrialResult, TrialSpec, run_trial
from tlkit.strategies import Strategy, get_strategy
from tlkit.search.queue import DuplicateRun, claim_run, holding, reseed_sampler
from tlkit.search.study import Cell, replicate_seed
from tlkit.search.workers import worker_id
from tlkit.engine.loop import Callback, EpochResult, PruneTrial, Trainer
from tlkit.models.weights import Pretrained

INTERRUPTED = "interrupted; re-queued with the same parameters on the next run"
TIMED_OUT = "stopped by --timeout after a checkpointed epoch; resumes with the same parameters on the next run"

__all__ = ["CellPlan", "plan_cell", "SweepRun", "make_objective", "trial_folder", "short_name", "suggest",
           "search_space", "spec_for", "requeue_on_failure", "Reporter", "record"]


@dataclass(frozen=True)
class CellPlan:
    """A cell resolved once, before anything runs: its strategy class, its backbone's layer groups, what its search
    samples and what every trial of it fixes. Trials, repeats and the sweep's HParams read these; nothing looks the
    strategy up by name or computes its search space again."""

    cell: Cell
    strategy: type[Strategy]
    num_groups: int
    space: dict[str, BaseDistribution]
    fixed: dict[str, Any]


def plan_cell(exp: Experiment, cell: Cell, num_groups: int) -> CellPlan:
    """The plan of ``cell``; a bad strategy name or ``strategy_params`` entry is a TlkitError here."""
    strategy = get_strategy(cell.strategy)
    return CellPlan(cell, strategy, num_groups, search_space(exp, strategy, num_groups),
                    fixed_params(exp, cell.strategy))


@dataclass
class SweepRun:
    """What every trial of a sweep shares."""

    exp: Experiment
    out: Path
    splits: Splits
    pretrained: dict[str, Pretrained]
    device: torch.device
    plans: dict[Cell, CellPlan]
    """Each cell's strategy, layer groups and search space, resolved once (``plan_cell``)."""
    callbacks: Callable[[Cell, str, dict[str, Any]], list[Callback]] = field(default=lambda cell, name, params: [])
    """Extra callbacks per trial (TensorBoard, progress): ``callbacks(cell, name, params)``, ``name`` the trial's
    short name (``t3`` for the trial in ``trial_0003``, ``t3-seed1`` for seed 1 of its configuration's repeats)."""
    deadline: float | None = None
    """``time.monotonic()`` when ``--timeout`` runs out (None: no time budget)."""
    store: Any = None
    """A ``tlkit.engine.store.Store`` every worker reaches (``--store``), or None."""
    on_test_score: Callable[[Cell, str, float, int], None] = field(default=lambda cell, name, value, epoch: None)
    """Called when a trial's best model has been scored on the test split: ``on_test_score(cell, name, value,
    epoch)``, ``name`` as for ``callbacks`` and ``epoch`` the trial's last (TensorBoard adds the score to the trial's
    run)."""

    def check_time(self) -> None:
        """Before a trial starts: stop the sweep if its time budget is spent."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TimeUp("time budget spent")


def trial_folder(out: Path, cell: Cell, run: int) -> Path:
    return out / "trials" / cell.folder / trial_name(run)


def trial_name(run: int) -> str:
    return f"trial_{run:04d}"


def short_name(run: int, seed: int | None = None) -> str:
    """``t3`` for the trial in ``trial_0003``; ``t3-seed1`` for repeat seed 1 of its configuration."""
    return f"t{run}" if seed is None else f"t{run}-seed{seed}"


def search_space(exp: Experiment, strategy: type[Strategy], num_groups: int) -> dict[str, BaseDistribution]:
    """The experiment's shared hyperparameters plus the strategy's own, as ``exp.strategy_params`` fixes or
    re-ranges them. A strategy hyperparameter with the name of a shared one is an error: one would silently
    override the other."""
    given = {**strategy.search_space(num_groups, exp.train.epochs), **strategy_params(exp, strategy, num_groups)}
    own = {k: v for k, v in given.items() if isinstance(v, BaseDistribution)}  # a fixed value is not searched
    clash = sorted(set(own) & set(exp.search))
    if clash:
        raise TlkitError(f"Strategy {strategy.name!r} searches {clash}, which the experiment's search space also "
                         f"names; one would silently override the other. HINT: remove {clash} from the experiment's "
                         f"search (or rename the strategy's hyperparameter).")
    return {**exp.search, **own}


def strategy_params(exp: Experiment, strategy: type[Strategy], num_groups: int) -> dict[str, Any]:
    """``exp.strategy_params`` of ``strategy``: fixed values as given, searched ones as distributions (a list is
    shaped like the strategy's own distribution of that name, keeping its log scale, as ``--set search.lr=[a, b]``
    does; else ``[low, high]`` of numbers is a range, another list a choice). Each value, every end or choice of a
    distribution included, is checked against the type of the strategy's default and by building the strategy with
    it, so no trial can get a value it refuses."""
    own = strategy.search_space(num_groups, exp.train.epochs)
    out = {}
    for key, value in exp.strategy_params.get(strategy.name, {}).items():
        where = f"strategy_params[{strategy.name!r}][{key!r}]"
        if key not in strategy.defaults:
            known = did_you_mean(key, strategy.defaults, f"{strategy.name} hyperparameter") if strategy.defaults \
                else f"{strategy.name} takes no hyperparameters."
            raise TlkitError(f"{where}: {known} HINT: python -m tlkit.strategies list shows each strategy's.")
        if isinstance(value, (list, tuple)):
            value = distribution_like(own.get(key) or _shape_of(value), value, where)
        for v in _ends(value) if isinstance(value, BaseDistribution) else [value]:
            _check_param(strategy, key, v, num_groups, exp.train.epochs, where)
        out[key] = value
    return out


def _shape_of(value: list[Any] | tuple[Any, ...]) -> BaseDistribution:
    """The distribution a bare list asks for: two ints a range of ints, two numbers a float range, else choices."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if len(value) == 2 and numbers:
        return IntDistribution(0, 1) if all(isinstance(v, int) for v in value) else FloatDistribution(0.0, 1.0)
    return CategoricalDistribution([None])


def _kind_fits(value: Any, default: Any) -> bool:
    """Whether ``value`` is of the default's kind: a bool for a bool, an int (not a bool) for an int, an int or a
    float for a float, anything for a None default."""
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _check_param(strategy: type[Strategy], key: str, value: Any, num_groups: int, epochs: int, where: str) -> None:
    default = strategy.defaults[key]
    if not _kind_fits(value, default):
        raise TlkitError(f"{where} must be {type(default).__name__} (its default is {default!r}) but got {value!r}.")
    try:
        strategy(num_groups, epochs, **{key: value})
    except Exception as err:  # noqa: BLE001 - a strategy's own check may raise anything: it is bad input here
        raise TlkitError(f"{where} can be {value!r}, which {strategy.name} refuses with {num_groups} layer groups: "
                         f"{describe_error(err) if not isinstance(err, TlkitError) else err}") from None


def fixed_params(exp: Experiment, strategy: str) -> dict[str, Any]:
    """The strategy hyperparameters ``exp.strategy_params`` fixes (not searched): every trial of the cell uses them."""
    return {k: v for k, v in exp.strategy_params.get(strategy, {}).items()
            if not isinstance(v, (BaseDistribution, list, tuple))}


def _ends(dist: BaseDistribution) -> list[Any]:
    return list(dist.choices) if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high]


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise TypeError(f"unsupported distribution {dist!r}")


class Reporter(Callback):
    """Records each epoch in the trial (so tables show a running or killed trial) and lets Optuna prune."""

    def __init__(self, trial: optuna.Trial, retry: bool) -> None:
        self.trial = trial
        self.retry = retry
        self.reported = set(_optuna.frozen_trial(trial).intermediate_values)  # a retry inherits its epochs

    def on_fit_start(self, trainer: Trainer) -> None:
        """Say at once where a resumed trial starts: the process may be killed again before it ends."""
        if self.retry or trainer.epoch > 0:
            self.trial.set_user_attr("resumed_from_epoch", trainer.epoch)

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        t = self.trial
        t.set_user_attr("history", [r.as_row() for r in trainer.history])
        t.set_user_attr("epochs_run", trainer.epoch)
        t.set_user_attr("trainable_params", max(r.trainable_params for r in trainer.history))
        t.set_user_attr("wall_time", round(trainer.elapsed, 3))
        t.set_user_attr("best_epoch", trainer.best_epoch)
        if result.epoch not in self.reported:
            t.report(result.val_metric, result.epoch)
            self.reported.add(result.epoch)
        if t.should_prune():
            raise PruneTrial(f"{type(t.study.pruner).__name__} at epoch {result.epoch}")


def record(trial: optuna.Trial, result: TrialResult) -> None:
    for key in ("history", "epochs_run", "trainable_params", "total_params", "num_groups", "wall_time",
                "best_epoch"):
        trial.set_user_attr(key, getattr(result, key))
    if result.replayed:  # the dead attempt had finished; only telling Optuna was left
        trial.set_user_attr("resumed_from_epoch", result.epochs_run)
    if result.state == PRUNED:
        trial.set_user_attr("pruned_reason", result.reason)


def spec_for(run: SweepRun, cell: Cell, params: dict[str, Any], seed: int, folder: Path) -> TrialSpec:
    """The trial a cell's sampled (or best) ``params`` describe: searched recipe fields go into the recipe, the rest
    are the strategy's; the starting weights are the backbone's unless the strategy trains from scratch."""
    exp, plan = run.exp, run.plans[cell.design]
    pretrained = run.pretrained.get(cell.backbone) if plan.strategy.pretrained else None
    return TrialSpec(backbone=cell.backbone, strategy=plan.strategy,
                     params={**plan.fixed, **{k: v for k, v in params.items() if k not in exp.search}},
                     recipe=dataclasses.replace(exp.train, **{k: v for k, v in params.items() if k in exp.search}),
                     metric=exp.metric, seed=seed, folder=folder,
                     weights=pretrained.state_dict if pretrained else None,
                     weights_origin=pretrained.origin if pretrained else "random init (from scratch)",
                     store=run.store, runtime=exp.runtime)


def make_objective(run: SweepRun, cell: Cell) -> Callable[[optuna.Trial], float]:
    """The Optuna objective of one cell: the best validation metric over the trial's epochs."""
    exp, plan = run.exp, run.plans[cell.design]

    def attempt(trial: optuna.Trial) -> float:
        run_number, retried = claim_run(trial)
        trial.set_user_attr("worker", worker_id())
        seed = replicate_seed(exp.seed, cell.replicate)
        reseed_sampler(trial.study, seed, exp.trials, run_number)
        params = {name: suggest(trial, name, dist) for name, dist in plan.space.items()}
        spec = spec_for(run, cell, params, seed=seed + run_number, folder=trial_folder(run.out, cell, run_number))
        for key, value in {"backbone": cell.backbone, "strategy": cell.strategy, "run": run_number,
                           "weights": spec.weights_origin,
                           **({"fixed_params": plan.fixed} if plan.fixed else {})}.items():
            trial.set_user_attr(key, value)
        if retried is not None:
            trial.set_user_attr("resumed_from_trial", retried)
        extra = run.callbacks(cell, short_name(run_number), params)
        result = run_trial(spec, run.splits, run.device, callbacks=[Reporter(trial, retried is not None), *extra],
                           deadline=run.deadline)
        record(trial, result)
        if result.state == PRUNED:
            raise optuna.TrialPruned(result.reason)
        return result.value

    return holding(requeue_on_failure(attempt))


def requeue_on_failure(attempt: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
    """An objective that queues its trial again, same parameters and folder, when the process is interrupted or
    crashes (out of memory, full disk, ...): the sweep stops, and the rerun resumes the trial from its checkpoint."""

    def objective(trial: optuna.Trial) -> float:
        try:
            return attempt(trial)
        except (optuna.TrialPruned, DuplicateRun):
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("failure_reason", INTERRUPTED)
            _optuna.requeue(trial.study, _optuna.frozen_trial(trial))
            raise
        except TimeUp:
            trial.set_user_attr("failure_reason", TIMED_OUT)
            _optuna.requeue(trial.study, _optuna.frozen_trial(trial))
            raise
        except Exception as err:
            trial.set_user_attr("failure_reason", f"crashed ({describe_error(err)}); re-queued")
            _optuna.requeue(trial.study, _optuna.frozen_trial(trial))
            raise

    return objective

"""One Optuna trial of one cell: sample, build, resume if a checkpoint exists, fit, record.

The trial's folder is ``trials/<backbone>/<strategy>/trial_NNNN`` with NNNN its run (the cell's configurations
numbered in the order first sampled); a trial re-queued after a crash keeps its run's folder and seed, so it continues
where the dead one stopped.
While it runs the folder holds the last two epoch checkpoints; once it is finished, ``best.safetensors`` (its best
epoch's weights), ``trial.json`` (what it ran) and ``outcome.json`` (how it ended).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from tlkit.backbones import create_backbone, layer_groups, preprocessing
from tlkit.checkpoint import load_latest, prune_epochs, save_epoch, save_weights, set_rng_state, write_json
from tlkit.data import Splits
from tlkit.experiment import Experiment
from tlkit.strategies import get_strategy
from tlkit.study import Cell, requeue, run_of, worker_id
from tlkit.train import BN_POLICY, Callback, EpochResult, NonFiniteError, Trainer
from tlkit.weights import Pretrained, load_into

INTERRUPTED = "interrupted; re-queued with the same parameters on the next run"
OUTCOME = "outcome.json"

__all__ = ["SweepRun", "make_objective", "trial_folder", "suggest", "build_model"]


@dataclass
class SweepRun:
    """What every trial of a sweep shares."""

    exp: Experiment
    out: Path
    splits: Splits
    pretrained: dict[str, Pretrained]
    device: torch.device
    callbacks: Callable[[Cell, int, dict[str, Any]], list[Callback]] = field(default=lambda cell, run, params: [])
    """Extra callbacks per trial (TensorBoard, progress): ``callbacks(cell, run_number, params)``."""


def trial_folder(out: Path, cell: Cell, run: int) -> Path:
    return out / "trials" / cell.folder / f"trial_{run:04d}"


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise TypeError(f"unsupported distribution {dist!r}")


def build_model(backbone: str, num_classes: int, pretrained: Pretrained | None, seed: int,
                image_size: int | None = None) -> torch.nn.Module:
    """A fresh model; the new head's random init depends only on ``seed``."""
    torch.manual_seed(seed)
    model = create_backbone(backbone, num_classes, image_size)
    if pretrained is not None and pretrained.state_dict is not None:
        load_into(model, pretrained.state_dict, pretrained.origin)
    return model


class Recorder(Callback):
    """Stores each epoch in the trial (the storage is the source of truth for tables) and lets Optuna prune."""

    def __init__(self, trial: optuna.Trial, wall_before: float) -> None:
        self.trial = trial
        self.wall_before = wall_before
        self.started = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        t = self.trial
        t.set_user_attr("history", [r.as_row() for r in trainer.history])
        t.set_user_attr("epochs_run", trainer.epoch)
        t.set_user_attr("trainable_params", max(r.trainable_params for r in trainer.history))
        t.set_user_attr("wall_time", round(self.wall_before + time.perf_counter() - self.started, 3))
        t.set_user_attr("best_epoch", trainer.best_epoch)
        t.report(result.val_metric, result.epoch)
        if t.should_prune():
            t.set_user_attr("pruned_reason", f"{type(t.study.pruner).__name__} at epoch {result.epoch}")
            raise optuna.TrialPruned(f"pruned at epoch {result.epoch}")


class Checkpointer(Callback):
    """Best weights when the validation metric improves, then the epoch's resumable checkpoint."""

    def __init__(self, folder: Path, recorder: Recorder) -> None:
        self.folder = folder
        self.recorder = recorder

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        if trainer.best_epoch == result.epoch:
            save_weights(self.folder / "best.safetensors", trainer.model, metadata={"epoch": str(result.epoch)})
        wall = self.recorder.wall_before + time.perf_counter() - self.recorder.started
        save_epoch(self.folder, result.epoch, trainer.model, {**trainer.state_dict(), "wall_time": wall})


def make_objective(run: SweepRun, cell: Cell) -> Callable[[optuna.Trial], float]:
    """The Optuna objective of one cell: returns the best validation metric over the trial's epochs."""
    exp = run.exp

    def attempt(trial: optuna.Trial) -> float:
        run_number, retried = run_of(trial)
        trial.set_user_attr("worker", worker_id())
        strategy_cls = get_strategy(cell.strategy)
        pretrained = run.pretrained.get(cell.backbone) if strategy_cls.pretrained else None
        model = build_model(cell.backbone, run.splits.num_classes, pretrained, exp.seed + run_number,
                            exp.train.image_size)
        groups = layer_groups(model, coarse=exp.train.coarse_groups)
        space = {**exp.search, **strategy_cls.search_space(len(groups), exp.train.epochs)}
        params = {name: suggest(trial, name, dist) for name, dist in space.items()}
        recipe = dataclasses.replace(exp.train, **{k: params[k] for k in exp.search})
        strategy = strategy_cls(num_groups=len(groups), epochs=recipe.epochs,
                                **{k: v for k, v in params.items() if k not in exp.search})
        total = sum(p.numel() for p in model.parameters())
        for key, value in {"backbone": cell.backbone, "strategy": cell.strategy, "run": run_number,
                           "total_params": total, "num_groups": len(groups), "bn_policy": BN_POLICY,
                           "weights": pretrained.origin if pretrained else "random init (from scratch)"}.items():
            trial.set_user_attr(key, value)
        folder = trial_folder(run.out, cell, run_number)
        write_json(folder / "trial.json", {"backbone": cell.backbone, "strategy": strategy.describe(),
                                           "params": params, "recipe": dataclasses.asdict(recipe),
                                           "groups": [g.name for g in groups], "seed": exp.seed + run_number,
                                           "weights": trial.user_attrs["weights"]})
        if retried is not None:
            trial.set_user_attr("resumed_from_trial", retried)
            outcome = _read_outcome(folder)
            if outcome is not None:  # the dead attempt had finished; only telling Optuna was left
                trial.set_user_attr("resumed_from_epoch", trial.user_attrs.get("epochs_run", 0))
                return _replay(trial, outcome)
        latest = load_latest(folder)
        recorder = Recorder(trial, wall_before=latest[1].get("wall_time", 0.0) if latest else 0.0)
        trainer = Trainer(model, groups, strategy, run.splits, recipe, exp.metric, seed=exp.seed + run_number,
                          device=run.device, **preprocessing(model),
                          callbacks=[recorder, Checkpointer(folder, recorder),
                                     *run.callbacks(cell, run_number, params)])
        if latest is not None:
            weights, state = latest
            model.load_state_dict(weights)
            trainer.load_state_dict(state)
            set_rng_state(state["rng"])
        if latest is not None or retried is not None:
            trial.set_user_attr("resumed_from_epoch", trainer.epoch)
        try:
            trainer.fit()
        except NonFiniteError as err:
            _finish(exp, folder, {"state": "PRUNED", "reason": str(err)})
            return _replay(trial, {"state": "PRUNED", "reason": str(err)})
        except optuna.TrialPruned as err:
            _finish(exp, folder, {"state": "PRUNED", "reason": trial.user_attrs.get("pruned_reason", str(err))})
            raise
        # A crash (any other exception) keeps the epoch state and re-queues the run (see objective): a rerun resumes.
        if not math.isfinite(trainer.best_metric):
            _finish(exp, folder, {"state": "PRUNED", "reason": "no finite validation metric"})
            return _replay(trial, {"state": "PRUNED", "reason": "no finite validation metric"})
        _finish(exp, folder, {"state": "COMPLETE", "value": trainer.best_metric})
        return trainer.best_metric

    def objective(trial: optuna.Trial) -> float:
        try:
            return attempt(trial)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:  # wherever it lands, the run is queued again, to resume from its checkpoint
            trial.set_user_attr("failure_reason", INTERRUPTED)
            requeue(trial.study, trial.study._storage.get_trial(trial._trial_id))
            raise
        except Exception as err:  # a crash (out of memory, full disk, ...): the sweep stops, the rerun resumes
            trial.set_user_attr("failure_reason", f"crashed ({type(err).__name__}: {str(err)[:200]}); re-queued")
            requeue(trial.study, trial.study._storage.get_trial(trial._trial_id))
            raise

    return objective


def _finish(exp: Experiment, folder: Path, outcome: dict[str, Any]) -> None:
    """Record the outcome, then apply retention (only ``best.safetensors`` stays unless
    ``train.keep_checkpoints='last'``). The outcome is written first: if the process dies before Optuna hears of
    it, the retry reads it instead of training the trial again from scratch."""
    write_json(folder / OUTCOME, outcome)
    if exp.train.keep_checkpoints == "best":
        prune_epochs(folder, keep=0)


def _read_outcome(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / OUTCOME).read_text())
    except (OSError, ValueError):
        return None


def _replay(trial: optuna.Trial, outcome: dict[str, Any]) -> float:
    """Tell Optuna a recorded outcome: the value, or prune with the recorded reason."""
    if outcome["state"] == "COMPLETE":
        return outcome["value"]
    trial.set_user_attr("pruned_reason", outcome["reason"])
    raise optuna.TrialPruned(outcome["reason"])

"""Repeats: each cell's best configuration trained again with K seeds, so a comparison has a spread to test against.

Seed ``s`` is the same for every cell of a study (``repeat_seed``), so it gives every strategy of a backbone the same
data order, augmentation and head initialisation: the comparisons are paired. Each repeat is a trial of the cell's
*repeats study* (``<study>:repeats/<backbone>/<strategy>`` in the same storage), queued with its seed, so Optuna's
waiting-trial queue hands each repeat to one worker, the heartbeat takes over a dead worker's repeat, and a killed
repeat resumes from its checkpoint (``repeats/<backbone>/<strategy>/run_NNNN/seed_S``) with the same numbers. A repeat
records its validation and test scores and its per-example test predictions as user attributes. Raising K later
queues only the missing seeds; a new best configuration (more search trials) gets repeats of its own.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tlkit.search import _optuna
from tlkit.config.experiment import Experiment
from tlkit.config.identity import identity
from tlkit.metrics import get_metric
from tlkit.engine.runner import COMPLETE, run_trial
from tlkit.search.best import score_test
from tlkit.search.queue import NONE_LEFT, DuplicateRun, holding, optimize_one
from tlkit.search.records import current_repeats, repeats_study_name
from tlkit.search.study import Cell, replicate_seed
from tlkit.search.workers import take_up_lost_trials, worker_id
from tlkit.search.objective import Reporter, SweepRun, record, requeue_on_failure, short_name, spec_for

__all__ = ["repeat_seed", "open_repeats_study", "run_repeats", "REPEAT_SEED_OFFSET"]

REPEAT_SEED_OFFSET = 100_000
"""Repeat seeds start here, far from the search trials' seeds (``exp.seed + run``)."""
log = logging.getLogger("tlkit")


def repeat_seed(exp: Experiment, index: int, replicate: int = 0) -> int:
    """The seed of repeat ``index`` (of ``replicate``): the same in every cell, so repeats are paired across
    strategies."""
    return replicate_seed(exp.seed, replicate) + REPEAT_SEED_OFFSET + index


def repeat_folder(out: Path, cell: Cell, config_run: int, index: int) -> Path:
    return out / "repeats" / cell.folder / f"run_{config_run:04d}" / f"seed_{index}"


def open_repeats_study(storage: Any, study: str, exp: Experiment, cell: Cell) -> optuna.Study:
    s = optuna.create_study(storage=storage, study_name=repeats_study_name(study, cell), load_if_exists=True,
                            direction=get_metric(exp.metric).direction, pruner=optuna.pruners.NopPruner())
    if "identity" not in s.user_attrs:
        for key, value in {"identity": identity(exp, cell.backbone, cell.strategy), "backbone": cell.backbone,
                           "strategy": cell.strategy, **({"replicate": cell.replicate} if cell.replicate else {})
                           }.items():
            s.set_user_attr(key, value)
    return s


def _queue_missing(repeats: optuna.Study, best: FrozenTrial, config_run: int, k: int) -> None:
    have = current_repeats(repeats, config_run)
    for index in range(k):
        if index not in have:
            repeats.enqueue_trial({}, user_attrs={"repeat": index, "config_run": config_run,
                                                  "config_trial": best.number, "params": best.params})


def run_repeats(run: SweepRun, search: optuna.Study, repeats: optuna.Study, cell: Cell, label: str) -> None:
    """Train the cell's best configuration with every missing seed (until ``exp.repeats`` are finished)."""
    try:
        best = search.best_trial
    except ValueError:
        return  # no completed search trial: nothing to repeat
    config_run = best.user_attrs.get("run", best.number)
    _queue_missing(repeats, best, config_run, run.exp.repeats)
    objective = holding(requeue_on_failure(lambda trial: _attempt(run, cell, trial)))
    take_up_lost_trials(repeats)
    waiting = repeats.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if waiting:
        log.info("%s %s/%s: repeats of trial %d's configuration with seeds %s", label, cell.backbone, cell.strategy,
                 config_run, ", ".join(str(t.user_attrs.get("repeat")) for t in waiting))
    while True:
        take_up_lost_trials(repeats)
        if not repeats.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return
        run.check_time()
        optimize_one(repeats, objective)


def _attempt(run: SweepRun, cell: Cell, trial: optuna.Trial) -> float:
    frozen = _optuna.frozen_trial(trial)
    if "repeat" not in frozen.user_attrs:  # the queue ran dry: another worker took the last seed (see claim_run)
        trial.set_user_attr("duplicate_of", NONE_LEFT)
        raise DuplicateRun("no queued seed was left: another worker took the last one")
    index, config_run = frozen.user_attrs["repeat"], frozen.user_attrs["config_run"]
    if not _optuna.is_retry(frozen):  # two workers queued the same seed at once: the first trial holds it
        owner = min(t.number for t in trial.study.get_trials(deepcopy=False)
                    if t.user_attrs.get("config_run") == config_run and t.user_attrs.get("repeat") == index
                    and not _optuna.is_retry(t) and "duplicate_of" not in t.user_attrs)
        if owner != trial.number:
            trial.set_user_attr("duplicate_of", owner)
            raise DuplicateRun(f"seed {index} is trial {owner}'s")
    trial.set_user_attr("worker", worker_id())
    if _optuna.is_retry(frozen):
        trial.set_user_attr("resumed_from_trial", _optuna.previous_attempt(frozen))
    seed = repeat_seed(run.exp, index, cell.replicate)
    spec = spec_for(run, cell, trial.user_attrs["params"], seed=seed,
                    folder=repeat_folder(run.out, cell, config_run, index))
    trial.set_user_attr("seed", seed)
    params = {**trial.user_attrs["params"], "repeat": index}
    result = run_trial(spec, run.splits, run.device,
                       callbacks=[Reporter(trial, _optuna.is_retry(frozen)),
                                  *run.callbacks(cell, short_name(config_run, index), params)],
                       deadline=run.deadline)
    record(trial, result)
    if result.state != COMPLETE:
        raise optuna.TrialPruned(result.reason)
    if "test_metric" not in frozen.user_attrs:
        test, predictions, _ = score_test(run, cell.backbone, spec.folder / "best.safetensors")
        trial.set_user_attr("test_metric", test.metric)
        trial.set_user_attr("test_loss", test.loss)
        trial.set_user_attr("predictions", predictions.to_json())
        run.on_test_score(cell, short_name(config_run, index), test.metric, result.epochs_run - 1)
    return result.value

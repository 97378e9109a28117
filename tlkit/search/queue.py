"""A cell's queue of runs: each run is one sampled configuration, numbered over first attempts only, so a study that
was killed and resumed numbers and seeds its runs exactly as an uninterrupted one; retries go first."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Callable, Iterator

import optuna
from filelock import FileLock, Timeout
from optuna.trial import FrozenTrial, TrialState

from tlkit.search import _optuna

__all__ = ["POLL_S", "FINISHED", "reseed_sampler", "DuplicateRun", "ensure_runs", "NONE_LEFT", "MOVED",
           "retries_first", "claim_run", "finished_count", "run_of", "optimize_one", "hold_trial", "holding",
           "TrialTakenElsewhere"]

log = logging.getLogger("tlkit")

POLL_S = 5
"""How often a worker looks again at cells whose last trials other workers hold (a database query, no more)."""


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def reseed_sampler(s: optuna.Study, seed: int, trials: int, run: int) -> None:
    """A sampler seeded by (seed, run): a restarted sweep draws what an uninterrupted one would, and two workers
    sampling at the same moment draw different configurations (their runs differ). Taken modulo 2**32, numpy's
    seed range, so a large experiment seed or a replicate's (``seed + r * 1_000_000``) works too."""
    s.sampler = optuna.samplers.TPESampler(seed=(seed * 10_007 + run) % 2**32,
                                           n_startup_trials=max(2, min(10, trials // 2)))


class DuplicateRun(Exception):
    """A waiting trial for a run another trial already holds (two workers queued the same budget at once): it ends
    FAIL at once, untrained and uncounted."""


def _by_run(s: optuna.Study) -> dict[int, list[FrozenTrial]]:
    runs: dict[int, list[FrozenTrial]] = {}
    for t in s.get_trials(deepcopy=False):
        if isinstance(t.user_attrs.get("run"), int) and "duplicate_of" not in t.user_attrs:
            runs.setdefault(t.user_attrs["run"], []).append(t)
    return runs


def ensure_runs(s: optuna.Study, budget: int) -> None:
    """Queue the cell's whole budget: a waiting trial for every run ``0..budget-1`` that has none.

    Workers then claim runs one waiting trial at a time through Optuna's queue, which hands each trial to exactly one
    worker; so however many workers share a study, every run is trained once and the cell ends with exactly its
    budget. A run left with only failed attempts (its retry lost) is queued again as a retry, with its parameters.
    """
    runs = _by_run(s)
    for run in range(budget):
        attempts = runs.get(run, [])
        if not attempts:
            s.enqueue_trial({}, user_attrs={"run": run})
        elif all(t.state == TrialState.FAIL for t in attempts):
            _optuna.requeue(s, _optuna.reload(s, max(attempts, key=lambda t: t.number)))


NONE_LEFT = -1
"""``duplicate_of`` of a trial Optuna opened after the queue ran dry: a duplicate of no trial in particular."""


MOVED = -2
"""``duplicate_of`` of a waiting first attempt taken off the queue so that a retry queued after it runs first."""


def retries_first(s: optuna.Study) -> int:
    """Put a cell's waiting retries before the later runs' waiting first attempts; returns how many were moved.

    Optuna takes waiting trials in trial order, and a retry is queued when its attempt dies, behind the runs queued
    up front (``ensure_runs``). Run in that order, a resumed sweep would start run r+1 before the retry of run r
    finished: the sampler would propose run r+1 from a history without run r, and the pruner would judge run r
    against run r+1, so the cell could end with other configurations than an uninterrupted sweep. So each waiting
    first attempt of a later run is taken off the queue untrained (``duplicate_of`` MOVED: not counted, not a run's
    attempt), and ``ensure_runs`` queues its run again, behind the retry.
    """
    waiting = [t for t in s.get_trials(deepcopy=False, states=(TrialState.WAITING,))
               if isinstance(t.user_attrs.get("run"), int)]
    retries = [t for t in waiting if _optuna.is_retry(t)]
    moved = 0
    for t in waiting:
        behind = [r for r in retries if r.number > t.number and r.user_attrs["run"] < t.user_attrs["run"]]
        if behind and not _optuna.is_retry(t):
            run = min(r.user_attrs["run"] for r in behind)
            moved += _optuna.take_off_queue(s, t, {"duplicate_of": MOVED, "failure_reason": (
                f"queued again behind the retry of run {run}, which runs first (not trained)")})
    return moved


def claim_run(trial: optuna.Trial) -> tuple[int, int | None]:
    """``(run, retried)`` of a trial just taken from the queue: its run, and the dead attempt it continues (None
    for a first attempt). A duplicate of a run another trial holds raises :class:`DuplicateRun`."""
    frozen = _optuna.frozen_trial(trial)
    run = frozen.user_attrs.get("run")
    if not isinstance(run, int) and not _optuna.is_retry(frozen):
        # Optuna opens a fresh trial when the queue is empty: another worker took the last waiting trial between
        # this worker's look at the queue and its optimize() call. Training it would exceed the budget.
        trial.set_user_attr("duplicate_of", NONE_LEFT)
        raise DuplicateRun("no queued run was left: another worker took the last one")
    if not isinstance(run, int):
        return run_of(trial)  # a retry of a trial run by an older tlkit, which numbered runs on the fly
    retried = _optuna.previous_attempt(frozen)
    if retried is None:
        owner = min(t.number for t in _by_run(trial.study)[run] if not _optuna.is_retry(t))
        if owner != trial.number:
            trial.set_user_attr("duplicate_of", owner)
            raise DuplicateRun(f"run {run} is trial {owner}'s")
    return run, retried


class TrialTakenElsewhere(BaseException):
    """Raised by ``hold_trial`` when another process on this machine runs the very trial this one was given. A
    BaseException, not an Exception, on purpose: Optuna records every Exception an objective raises as the trial's
    failure, and this trial is the other process's to record; this one leaves it untouched (``optimize_one``)."""


@contextlib.contextmanager
def hold_trial(trial: optuna.Trial) -> Iterator[None]:
    """Hold ``trial`` for this process while the objective runs it. Two processes on one SQLite file can both take
    the same waiting trial: SQLite has no row locks, so Optuna's WAITING -> RUNNING change is no lock there
    (PostgreSQL's is, and every worker of a SQLite study is on the machine that has the file). A lock file per trial
    beside the database settles it: the second process raises ``TrialTakenElsewhere`` instead of training it too."""
    database = _optuna.sqlite_file(trial.study)
    if database is None:
        yield
        return
    lock = FileLock(str(database) + f".trial-{trial._trial_id}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TrialTakenElsewhere(f"trial {trial.number} is run by another process on this machine") from None
    try:
        yield
    finally:
        lock.release()
        Path(lock.lock_file).unlink(missing_ok=True)


def holding(objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
    """``objective`` run while this process holds its trial (``hold_trial``)."""

    def held(trial: optuna.Trial) -> float:
        with hold_trial(trial):
            return objective(trial)

    return held


def optimize_one(study: optuna.Study, objective: Callable[[optuna.Trial], float]) -> None:
    """``study.optimize(objective, n_trials=1)``: take one waiting trial and run it; one that another process on
    this machine took at the same moment (``hold_trial``) is left to it. If both still finished it (a process that
    took it before holding it), the second is told by Optuna that the trial is finished already: the first's
    result stands, and the worker goes on."""
    try:
        study.optimize(objective, n_trials=1, catch=(DuplicateRun,))
    except TrialTakenElsewhere as err:
        log.info("%s: %s; this worker leaves it", study.study_name, err)
    except ValueError as err:
        if not str(err).startswith("Cannot tell a "):
            raise
        log.warning("another worker finished the same trial of %s at the same moment (%s); its result stands",
                    study.study_name, err)


def finished_count(s: optuna.Study) -> int:
    """Finished (complete or pruned) runs of a cell: each run counts once."""
    return sum(1 for attempts in _by_run(s).values() if any(t.state in FINISHED for t in attempts))


def run_of(trial: optuna.Trial) -> tuple[int, int | None]:
    """``(run, retried)``: the trial's run, and the number of the dead attempt it continues (None if none).

    A run is one sampled configuration of a cell, numbered 0, 1, ... over first attempts only; a retry continues
    its run (same folder, same seed). So a study that was killed and resumed numbers and seeds its runs exactly as
    an uninterrupted one, and computes the same results.
    """
    frozen = _optuna.frozen_trial(trial)
    first = _optuna.first_attempt(frozen)
    run = sum(1 for t in trial.study.get_trials(deepcopy=False) if t.number < first and not _optuna.is_retry(t))
    return run, _optuna.previous_attempt(frozen)

"""Every use of Optuna's internals, in one place, behind a few functions.

tlkit needs four things Optuna has no public API for: the storage of a study, a trial's storage id, and the two
system attributes its heartbeat retry writes (``failed_trial``: the attempt a retry continues; ``retry_history``:
every attempt before it). ``tests/test_optuna_internals.py`` checks each function against the installed Optuna, and
``pyproject.toml`` caps Optuna at the newest version that test has passed on.
"""
from __future__ import annotations

from pathlib import Path

from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

__all__ = ["RetryCallback", "heartbeat_retry", "storage_of", "frozen_trial", "reload", "first_attempt",
           "earlier_attempts", "previous_attempt", "is_retry", "requeue", "fail_trial", "take_off_queue"]

# Optuna 5 renamed the heartbeat's retry callback and the storage argument and getter that go with it.
_OPTUNA_5 = hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
RetryCallback = optuna.storages.RetryHeartbeatStaleTrialCallback if _OPTUNA_5 else \
    optuna.storages.RetryFailedTrialCallback


def heartbeat_retry(callback: RetryCallback) -> dict[str, RetryCallback]:
    """The ``RDBStorage`` keyword argument that installs ``callback`` for trials whose heartbeat went stale."""
    return {"heartbeat_stale_trial_callback" if _OPTUNA_5 else "failed_trial_callback": callback}


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study lives in (``Study._storage``)."""
    return study._storage


def sqlite_file(study: optuna.Study) -> Path | None:
    """The SQLite file a study is stored in (through Optuna's cached storage to its RDB engine), or None for any
    other storage."""
    storage = storage_of(study)
    engine = getattr(getattr(storage, "_backend", storage), "engine", None)
    if engine is None or not engine.url.drivername.startswith("sqlite") or not engine.url.database:
        return None
    return Path(engine.url.database)


def frozen_trial(trial: optuna.Trial) -> FrozenTrial:
    """A running trial's current record, read back from the storage (system attributes included)."""
    return storage_of(trial.study).get_trial(trial._trial_id)


def reload(study: optuna.Study, trial: FrozenTrial) -> FrozenTrial:
    """A trial's record as the storage holds it now (a FrozenTrial is a snapshot)."""
    return storage_of(study).get_trial(trial._trial_id)


def is_retry(trial: FrozenTrial) -> bool:
    """Whether Optuna's heartbeat retry (or tlkit's re-queue) made this trial to continue a dead attempt."""
    return "failed_trial" in trial.system_attrs


def first_attempt(trial: FrozenTrial) -> int:
    """The number of the first attempt of the configuration this trial runs (its own number if it is one)."""
    return trial.system_attrs.get("failed_trial", trial.number)


def earlier_attempts(trial: FrozenTrial) -> list[int]:
    """The numbers of every dead attempt this retry continues, oldest first (empty for a first attempt)."""
    return list(trial.system_attrs.get("retry_history") or [])


def previous_attempt(trial: FrozenTrial) -> int | None:
    """The number of the dead attempt this retry continues (None for a first attempt)."""
    history = earlier_attempts(trial)
    return history[-1] if history else None


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a retry of a failed ``trial`` with the same parameters, through the storage's heartbeat callback
    (``RetryCallback``), so it is recorded exactly as Optuna records its own retries."""
    storage = storage_of(study)
    callback = storage.get_heartbeat_stale_trial_callback() if _OPTUNA_5 else storage.get_failed_trial_callback()
    if callback is None:
        raise RuntimeError("the study's storage has no heartbeat retry callback (open it with tlkit.search.study)")
    if any(previous_attempt(t) == trial.number for t in study.get_trials(deepcopy=False)):
        return  # already re-queued (say by the process that ran it, whose storage then failed): one retry, not two
    callback(study, trial)


def take_off_queue(study: optuna.Study, trial: FrozenTrial, notes: dict[str, Any]) -> bool:
    """End a WAITING ``trial`` untrained: claimed the way Optuna's own ``ask`` claims one (the WAITING -> RUNNING
    change is the lock, so no other worker gets it), given the user attributes ``notes`` and failed. False when
    another worker took it first."""
    storage = storage_of(study)
    try:
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    for key, value in notes.items():
        storage.set_trial_user_attr(trial._trial_id, key, value)
    storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    return True


def fail_trial(study: optuna.Study, trial: FrozenTrial, note: tuple[str, str]) -> bool:
    """Mark a RUNNING trial FAIL with a user attribute ``note`` first; False when another worker finished or failed
    it first (the state change is the lock)."""
    storage = storage_of(study)
    try:
        storage.set_trial_user_attr(trial._trial_id, *note)
        return storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False

"""The contract tlkit relies on from Optuna's internals (tlkit.search._optuna), checked against the installed Optuna.

If an Optuna release renames ``Study._storage``, ``Trial._trial_id`` or the ``failed_trial``/``retry_history``
system attributes of its heartbeat retry, these tests fail first, and pyproject's upper bound on Optuna says which
release this was last checked against. Fast: an in-memory SQLite storage, no training.
"""
from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from tlkit.search import _optuna
from tlkit.search.storage import open_storage

# study.ask() on a storage with heartbeats: fine here, Optuna only recommends optimize().
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")

def _study() -> optuna.Study:
    storage = open_storage("sqlite:///:memory:")
    return optuna.create_study(storage=storage, study_name="contract", direction="maximize")


def test_storage_and_frozen_trial_of_a_running_trial():
    study = _study()
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    assert _optuna.storage_of(study) is study._storage
    frozen = _optuna.frozen_trial(trial)
    assert frozen.number == trial.number and frozen.state == TrialState.RUNNING and "lr" in frozen.params
    assert not _optuna.is_retry(frozen) and _optuna.first_attempt(frozen) == 0
    assert _optuna.previous_attempt(frozen) is None and _optuna.earlier_attempts(frozen) == []


def test_a_requeued_trial_is_a_retry_with_the_same_parameters_and_its_history():
    study = _study()
    first = study.ask()
    lr = first.suggest_float("lr", 1e-4, 1e-2, log=True)
    first.report(0.5, 0)
    assert _optuna.fail_trial(study, _optuna.frozen_trial(first), ("failure_reason", "worker died"))
    _optuna.requeue(study, _optuna.reload(study, _optuna.frozen_trial(first)))
    retry = study.ask()  # Optuna hands out the waiting retry first
    assert retry.number == 1 and retry.suggest_float("lr", 1e-4, 1e-2, log=True) == lr
    frozen = _optuna.frozen_trial(retry)
    assert _optuna.is_retry(frozen) and _optuna.first_attempt(frozen) == 0
    assert _optuna.previous_attempt(frozen) == 0 and _optuna.earlier_attempts(frozen) == [0]
    assert frozen.intermediate_values == {0: 0.5}  # tlkit's storage inherits the reported epochs
    # A retry of the retry keeps the whole history, oldest first.
    assert _optuna.fail_trial(study, frozen, ("failure_reason", "died again"))
    _optuna.requeue(study, _optuna.reload(study, frozen))
    third = _optuna.frozen_trial(study.ask())
    assert _optuna.first_attempt(third) == 0 and _optuna.earlier_attempts(third) == [0, 1]
    assert study.trials[0].user_attrs["failure_reason"] == "worker died"


def test_failing_a_finished_trial_is_refused():
    study = _study()
    trial = study.ask()
    study.tell(trial, 0.9)
    assert not _optuna.fail_trial(study, study.trials[0], ("failure_reason", "too late"))
    assert study.trials[0].state == TrialState.COMPLETE


def test_a_waiting_trial_is_taken_off_the_queue_once_untrained():
    """take_off_queue claims a WAITING trial the way ``ask`` does (WAITING -> RUNNING is the lock), notes it and
    fails it; a second claim, or a claim on a trial another worker took, is refused."""
    study = _study()
    study.enqueue_trial({"lr": 1e-3})
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    assert _optuna.take_off_queue(study, waiting, {"duplicate_of": "MOVED"})
    done = study.trials[0]
    assert done.state == TrialState.FAIL and done.user_attrs == {"duplicate_of": "MOVED"}
    assert not _optuna.take_off_queue(study, waiting, {"duplicate_of": "again"})  # already taken: refused
    study.enqueue_trial({"lr": 2e-3})
    taken = study.ask()  # another worker claims it first
    assert not _optuna.take_off_queue(study, study.trials[1], {"x": 1})
    assert study.trials[1].state == TrialState.RUNNING and taken.number == 1

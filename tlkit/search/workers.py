"""Which worker holds a trial, and whether it is alive: on this host at once by process id and start time (``/proc``),
elsewhere by Optuna's heartbeat; a dead worker's trials are re-queued with the same parameters."""
from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tlkit.search import _optuna

__all__ = ["worker_id", "take_up_lost_trials", "take_up_dead_local_trials"]

def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_id() -> str:
    """``host:pid:start`` — enough to tell, on this host, whether the worker that owns a trial is alive."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _is_dead_local(worker: str | None) -> bool:
    if not worker:
        return False
    host, pid, start = worker.rsplit(":", 2)
    if host != socket.gethostname():
        return False  # another machine's worker: the heartbeat decides
    if not Path("/proc").is_dir():
        return False
    return _start_time(int(pid)) != start or int(pid) == os.getpid()


def take_up_lost_trials(s: optuna.Study) -> int:
    """Re-queue the trials of dead workers: on this host at once (by process id), elsewhere once their heartbeat
    is older than the grace period (Optuna's ``fail_stale_trials``, which a worker that only waits would never
    call). Returns how many were taken up here."""
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9; the warning only adds noise
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(s)
    return take_up_dead_local_trials(s)


def take_up_dead_local_trials(s: optuna.Study) -> int:
    """Fail and re-queue (same parameters) RUNNING trials whose worker process on this host is gone.

    Optuna's heartbeat does the same for any worker, but only after the grace period; the process id tells at once.
    The trial's state change is the lock: of several workers starting together, only one re-queues it.
    """
    taken = 0
    for t in s.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_dead_local(t.user_attrs.get("worker")):
            continue
        if _optuna.fail_trial(s, t, ("failure_reason", "worker process died; re-queued")):
            _optuna.requeue(s, _optuna.reload(s, t))
            taken += 1
    return taken

"""The Optuna side of a sweep: one storage, one study per (backbone, strategy) cell, and no lost trials.

Each cell is its own study (same budget, same sampler seed, same data split) so a sampler that likes one cell cannot
starve another. Trials left RUNNING by a dead process are failed and re-queued with the same parameters by Optuna's
heartbeat machinery (its retry callback); on the same machine a dead worker is recognised at
once by its process id, so a restarted sweep resumes immediately instead of waiting out the grace period.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from tlkit.search import _optuna
from tlkit.engine.checkpoint import check_writable
from tlkit.errors import TlkitError, describe_error
from tlkit.config.experiment import Experiment
from tlkit.config.identity import RETIRED, identity
from tlkit.metrics import get_metric

__all__ = ["NONE_LEFT", "MOVED", "retries_first", "Cell", "cells", "quiet_optuna", "open_storage", "check_identity",
           "open_cell_study", "finished_count", "ensure_runs", "claim_run", "DuplicateRun",
           "take_up_dead_local_trials", "take_up_lost_trials", "worker_id", "run_of", "cell_studies",
           "check_results_folder", "HEARTBEAT_S"]

HEARTBEAT_S = 30
POLL_S = 5
"""How often a worker looks again at cells whose last trials other workers hold (a database query, no more)."""
CREATION_RACE = ("already exists", "UNIQUE constraint failed", "duplicate key value")
"""What SQLite and PostgreSQL say when two workers create Optuna's tables (or its alembic_version row) at once."""
GRACE_S = 90
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ATTEMPT_ATTRS = ("worker", "failure_reason", "pruned_reason", "resumed_from_trial", "resumed_from_epoch")
"""User attributes that describe one attempt at a trial; a retry starts without them."""

@dataclass(frozen=True)
class Cell:
    """One comparison cell: a backbone under a strategy."""

    backbone: str
    strategy: str

    def study_name(self, study: str) -> str:
        return f"{study}/{self.backbone}/{self.strategy}"

    @property
    def folder(self) -> Path:
        """``resnet18.a1_in1k/last_n``: browsable, and safe for hub names with ``/`` or ``:``."""
        return Path(self.backbone.replace("/", "_").replace(":", "_")) / self.strategy


def cells(exp: Experiment) -> list[Cell]:
    return [Cell(b, s) for b in exp.backbones for s in exp.strategies]


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's log at ERROR while a tlkit run lasts (``with quiet_optuna():`` or ``@quiet_optuna()``), then back
    to the level it had.

    tlkit says how each trial went itself (progress lines; a failed trial without a traceback): Optuna's INFO line
    per trial and its WARNING with a traceback would say it twice. Scoped rather than set on import, because a user
    who imports tlkit into their own process keeps the Optuna log they chose.
    """
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


class _Retry(_optuna.RetryCallback):
    """Optuna's retry (same parameters, reported epochs kept), without the dead attempt's notes: a retry that
    inherited ``failure_reason`` would show a completed trial as failed."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
        super().__call__(study, trial)


SQLITE_BUSY_TIMEOUT_S = 60


def _engine_kwargs(url: str) -> dict[str, Any]:
    """PostgreSQL: check a pooled connection before use (a server restart must not fail the next trial). SQLite:
    wait up to a minute for another local worker's write instead of failing at once ("database is locked")."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None) -> RDBStorage:
    """Optuna's RDB storage with heartbeats on: SQLite for one machine, PostgreSQL for many workers.

    A trial whose heartbeat is older than ``grace_period`` seconds (default ``GRACE_S``) is failed and re-queued by
    the next worker that starts a trial; tests pass a few seconds.
    """
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; the warning only adds noise
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=heartbeat_interval or HEARTBEAT_S,
                                  grace_period=grace_period or GRACE_S,
                                  **_optuna.heartbeat_retry(_Retry(inherit_intermediate_values=True)),
                                  engine_kwargs=_engine_kwargs(url))
        except Exception as err:  # noqa: BLE001 - driver errors vary; the remedy does not
            if attempt < 2 and any(m in str(err) for m in CREATION_RACE):
                time.sleep(1.0)  # two workers created the tables of a new database at once; the other one won
                continue
            if url.startswith("sqlite") and ("not a database" in str(err) or "malformed" in str(err)):
                raise TlkitError(f"The study storage {url!r} is not a SQLite database, or is damaged "
                                 f"({describe_error(err)}). HINT: move the file aside (sqlite3's .recover may save "
                                 f"its trials) and run again to start the study anew, or pass --storage.") from None
            raise TlkitError(f"Cannot open the study storage {url!r} ({describe_error(err)}). HINT: check the URL, "
                             f"that the database server "
                             f"is running, and for PostgreSQL that psycopg is installed "
                             f"(pip install 'tlkit[postgres]').") from None
    raise AssertionError("unreachable")


def cell_studies(storage: RDBStorage | str, study: str) -> dict[str, Any]:
    """Existing studies of this sweep, by name."""
    return {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
            if s.study_name.startswith(f"{study}/")}


def check_identity(storage: RDBStorage, study: str, exp: Experiment) -> None:
    """Refuse to mix trials of a changed experiment into an existing study; name what changed."""
    mine = identity(exp)
    for name, summary in cell_studies(storage, study).items():
        theirs = summary.user_attrs.get("identity")
        changed = [c for c in _changes(theirs, mine) if not (c[0] in RETIRED and c[2] is None)] \
            if theirs is not None else []
        if not changed:  # a field added since (absent there, None here) changes nothing
            continue
        shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changed[:6])
        raise TlkitError(f"Study {study!r} was run with a different experiment ({shown}"
                         f"{' ...' if len(changed) > 6 else ''}). Mixing its trials with new ones would make the "
                         f"comparison meaningless. HINT: keep it and start a new study in its own folder: --study "
                         f"NEW_NAME (results go to results/NEW_NAME; if you pass --out, give a new folder too, as "
                         f"trial folders are per results folder), or delete the old results folder to start over.")


def check_results_folder(out: Path, study: str) -> None:
    """One results folder, one study: trial folders and exported models are per folder, so a second study there
    would overwrite the first one's."""
    check_writable(out)
    try:
        theirs = json.loads((Path(out) / "experiment.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):  # none, or damaged: the sweep writes it anew
        return
    if theirs and theirs != study:
        raise TlkitError(f"The results folder {str(out)!r} holds study {theirs!r}; study {study!r} would overwrite "
                         f"its trial folders and best models. HINT: give study {study!r} its own folder with --out "
                         f"(or leave out --out: results/{study}), or pass --study {theirs} to continue that study.")


def _changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every leaf that differs, e.g. ``search.lr.attributes.low``."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """Optuna's pruner by name: ``median`` (a trial below the median of earlier trials at the same epoch stops,
    after 2 trials and from the second epoch), ``hyperband`` (successive halving brackets over 1..epochs epochs),
    or ``none``. Which pruner stopped a trial, and at which epoch, is in trials.csv (``note``)."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs))
    return optuna.pruners.NopPruner()


def open_cell_study(storage: RDBStorage, study: str, exp: Experiment, cell: Cell) -> optuna.Study:
    pruner = make_pruner(exp.pruner, exp.train.epochs)
    s = optuna.create_study(storage=storage, study_name=cell.study_name(study),
                            direction=get_metric(exp.metric).direction, load_if_exists=True, pruner=pruner)
    if "identity" not in s.user_attrs:
        s.set_user_attr("identity", identity(exp))
        s.set_user_attr("backbone", cell.backbone)
        s.set_user_attr("strategy", cell.strategy)
    return s


def reseed_sampler(s: optuna.Study, seed: int, trials: int, run: int) -> None:
    """A sampler seeded by (seed, run): a restarted sweep draws what an uninterrupted one would, and two workers
    sampling at the same moment draw different configurations (their runs differ)."""
    s.sampler = optuna.samplers.TPESampler(seed=seed * 10_007 + run, n_startup_trials=max(2, min(10, trials // 2)))


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


def finished_count(s: optuna.Study) -> int:
    """Finished (complete or pruned) runs of a cell: each run counts once."""
    return sum(1 for attempts in _by_run(s).values() if any(t.state in FINISHED for t in attempts))


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

"""The study storage: one Optuna RDB storage (SQLite beside the results, or PostgreSQL for many machines) with
Optuna's heartbeat and its retry callback, so a trial left RUNNING by a dead process is failed and re-queued with
the same parameters; Optuna's own log level, quiet only inside tlkit's runs."""
from __future__ import annotations

import contextlib
import copy
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from tlkit.search import _optuna
from tlkit.errors import TlkitError, describe_error, mask_secrets, url_password

__all__ = ["HEARTBEAT_S", "CREATION_RACE", "GRACE_S", "ATTEMPT_ATTRS", "quiet_optuna", "default_storage",
           "SQLITE_BUSY_TIMEOUT_S", "open_storage"]

HEARTBEAT_S = 30


CREATION_RACE = ("already exists", "UNIQUE constraint failed", "duplicate key value")
"""What SQLite and PostgreSQL say when two workers create Optuna's tables (or its alembic_version row) at once."""


GRACE_S = 90


ATTEMPT_ATTRS = ("worker", "failure_reason", "pruned_reason", "resumed_from_trial", "resumed_from_epoch")
"""User attributes that describe one attempt at a trial; a retry starts without them."""


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
                raise TlkitError(mask_secrets(
                    f"The study storage {url!r} is not a SQLite database, or is damaged ({describe_error(err)}). "
                    f"HINT: move the file aside (sqlite3's .recover may save its trials) and run again to start the "
                    f"study anew, or pass --storage.", [url_password(url)])) from None
            raise TlkitError(mask_secrets(
                f"Cannot open the study storage {url!r} ({describe_error(err)}). HINT: check the URL, that the "
                f"database server is running, and for PostgreSQL that psycopg is installed (pip install "
                f"'tlkit[postgres]').", [url_password(url)])) from None
    raise AssertionError("unreachable")

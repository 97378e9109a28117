"""Beyond one process: three workers on one study, on SQLite and on the real PostgreSQL server, share the trials
through Optuna's queue, and every cell ends with exactly its budget. One race on each per run of the suite: a lost
race is a matter of timing, so every CI run is another try (a second race on each took about 50 s more of a suite
that must stay under ten minutes).

PostgreSQL is the server this machine runs (``TLKIT_TEST_postgres``, default ``postgresql://postgres@127.0.0.1:5432``);
the tests fail, not skip, when it is missing.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tlkit.testing import write_experiment

SERVER = os.environ.get("TLKIT_TEST_postgres", "postgresql://postgres@127.0.0.1:5432")
STRATEGIES = ["last_n", "linear_probe"]
BUDGET, WORKERS = 3, 3


@pytest.fixture
def fresh_database():
    """A new, empty database: the workers race to create Optuna's tables, as on a first real run."""
    import psycopg

    name = f"tlkit_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{SERVER}/test", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield f"{SERVER}/{name}"
    with psycopg.connect(f"{SERVER}/test", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _race(tmp: Path, storage: str) -> list[Path]:
    """Three workers start at once on one study, each with its own results folder; returns the folders."""
    exp = write_experiment(tmp, strategies=STRATEGIES, trials=BUDGET, repeats=1, train={"epochs": 1})
    env = {**os.environ, "TLKIT_CACHE": str(tmp / "cache"), "HF_HUB_OFFLINE": "1", "TLKIT_THREADS": "1"}
    outs = [tmp / f"w{i}" for i in range(WORKERS)]
    command = [sys.executable, "-m", "tlkit.sweep", str(exp), "--study", "race", "--storage", storage, "--quiet"]
    workers = [subprocess.Popen(command + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for out in outs]
    try:
        errors = [w.communicate(timeout=300)[1] for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0] * WORKERS, errors
    return outs


def _assert_exact_budgets(storage: str, outs: list[Path]) -> None:
    for strategy in STRATEGIES:
        trials = optuna.load_study(study_name=f"race/test_resnet/{strategy}", storage=storage).get_trials()
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert sorted(t.user_attrs["run"] for t in finished) == list(range(BUDGET)), "each run finished once"
        assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
        assert len({tuple(sorted(t.params.items())) for t in finished}) == BUDGET, "no configuration sampled twice"
        for t in finished:  # trained by one worker, in that worker's own results folder
            homes = [o for o in outs if (o / f"trials/test_resnet/{strategy}/trial_{t.user_attrs['run']:04d}/"
                                         "outcome.json").is_file()]
            assert len(homes) == 1, (strategy, t.number, homes)
        unused = [t for t in trials if t not in finished]  # only duplicates queued by a racing worker, untrained
        assert all("duplicate_of" in t.user_attrs for t in unused), [t.user_attrs for t in unused]
        repeats = optuna.load_study(study_name=f"race:repeats/test_resnet/{strategy}", storage=storage).get_trials()
        assert len([t for t in repeats if t.state == TrialState.COMPLETE]) == 1, "the one repeat ran once"


@pytest.mark.slow
def test_three_workers_on_postgres_end_with_exact_budgets(tmp_path, fresh_database):
    outs = _race(tmp_path, fresh_database)
    _assert_exact_budgets(fresh_database, outs)


@pytest.mark.slow
def test_three_workers_on_one_sqlite_file_end_with_exact_budgets(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    outs = _race(tmp_path, storage)
    _assert_exact_budgets(storage, outs)
    workers = {t.user_attrs.get("worker") for s in STRATEGIES
               for t in optuna.load_study(study_name=f"race/test_resnet/{s}", storage=storage).get_trials()}
    assert len(workers - {None}) >= 2, "the trials were shared"


# SIGKILL the first worker once, right after the checkpoint of epoch 1 of last_n's run 0 reached the store.
KILL_AFTER_PUSH = '''
import os, signal
from pathlib import Path
import tlkit.engine.store

_MARKER = os.environ.get("TLKIT_TEST_KILL_MARKER")


def _push(self, folder, names=None, _real=tlkit.engine.store.Store.push):
    _real(self, folder, names)
    hit = Path(folder).name == "trial_0000" and "last_n" in Path(folder).parts
    if _MARKER and hit and (Path(folder) / "epoch_0001.pt").exists() and not Path(_MARKER).exists():
        Path(_MARKER).touch()
        os.kill(os.getpid(), signal.SIGKILL)


tlkit.engine.store.Store.push = _push
'''


@pytest.fixture
def s3(tmp_path):
    """A local S3 endpoint (moto's server) with an empty bucket, and the environment that points s3fs at it."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/tlkit", method="PUT"),
                                       timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield env
    finally:
        server.kill()
        server.wait()


@pytest.mark.slow
def test_a_trial_taken_over_by_another_worker_resumes_from_the_shared_store(tmp_path, fresh_database, s3):
    """Two workers in two results folders share one S3 store and one PostgreSQL study; the first is killed with
    SIGKILL mid-trial; the second takes the trial over, resumes it from its last checkpoint in the store, and ends
    with the numbers of an uninterrupted run."""
    exp = write_experiment(tmp_path, strategies=["last_n"], trials=1, train={"epochs": 4}, prelude=KILL_AFTER_PUSH)
    env = {**os.environ, **s3, "TLKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "TLKIT_TEST_KILL_MARKER": str(tmp_path / "killed")}
    command = [sys.executable, "-m", "tlkit.sweep", str(exp), "--study", "takeover", "--storage", fresh_database,
               "--store", "s3://tlkit/store", "--quiet"]
    first = subprocess.run(command + ["--out", str(tmp_path / "w1")], env=env, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == -9 and (tmp_path / "killed").exists(), first.stderr[-2000:]
    second = subprocess.run(command + ["--out", str(tmp_path / "w2")], env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    reference = subprocess.run([sys.executable, "-m", "tlkit.sweep", str(exp), "--study", "takeover", "--out",
                                str(tmp_path / "ref"), "--quiet"], env={**env, "TLKIT_TEST_KILL_MARKER": ""},
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    import pandas as pd

    taken, ref = pd.read_csv(tmp_path / "w2" / "trials.csv"), pd.read_csv(tmp_path / "ref" / "trials.csv")
    done = taken[taken.state == "COMPLETE"].iloc[0]
    assert done.resumed_from_epoch == 2 and done.resumed_from_trial == 0  # from the store, not from scratch
    assert done.val_accuracy == ref[ref.state == "COMPLETE"].iloc[0].val_accuracy
    history = pd.read_csv(tmp_path / "w2" / "history.csv")
    ref_history = pd.read_csv(tmp_path / "ref" / "history.csv")
    columns = ["epoch", "train_loss", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(history[history.trial == done.trial][columns].reset_index(drop=True),
                                  ref_history[columns].reset_index(drop=True))
    import hashlib

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    best = "trials/test_resnet/last_n/trial_0000/best.safetensors"
    assert sha(tmp_path / "w2" / best) == sha(tmp_path / "ref" / best)
    assert not (tmp_path / "w2" / "trials/test_resnet/last_n/trial_0000/epoch_0000.pt").exists()  # retention


def test_a_trial_another_worker_finished_at_the_same_moment_does_not_stop_this_one(tmp_path, caplog):
    """SQLite has no row locks: two workers can take the same waiting trial. The second to finish is told the
    trial is finished already; the first's result stands and the second goes on (it used to crash)."""
    import logging

    import optuna

    from tlkit.search.queue import optimize_one

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", direction="maximize")
    study.enqueue_trial({"x": 1.0})

    def objective(trial):
        x = trial.suggest_float("x", 0, 2)
        study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.COMPLETE, values=[5.0])
        return x  # the other worker told 5.0 while this one trained

    caplog.set_level(logging.WARNING, logger="tlkit")
    optimize_one(study, objective)
    assert [t.value for t in study.trials] == [5.0]
    assert "another worker finished the same trial of s" in caplog.text

    def broken(trial):
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        optimize_one(study, broken)  # an error of the objective still stops the sweep (Optuna re-raises it)


def test_a_trial_held_by_another_process_is_left_to_it_untouched(tmp_path, caplog):
    """The lock beside a SQLite file: a second process given the very trial another one runs leaves it RUNNING for
    that process to finish, trains nothing and records nothing."""
    import logging

    from filelock import FileLock

    from tlkit.search.queue import holding, optimize_one

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    study.enqueue_trial({"x": 1.0})
    trained = []
    other = FileLock(str(tmp_path / "s.db") + ".trial-1.lock")  # trial ids start at 1 in a new file
    other.acquire()
    caplog.set_level(logging.INFO, logger="tlkit")
    optimize_one(study, holding(lambda trial: trained.append(trial.suggest_float("x", 0, 2)) or 0.0))
    assert trained == [] and [t.state.name for t in study.trials] == ["RUNNING"]
    assert "trial 0 is run by another process on this machine; this worker leaves it" in caplog.text
    other.release()

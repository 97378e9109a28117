"""Beyond one machine: several workers on one PostgreSQL-backed study share the trials through Optuna."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import optuna
import pytest

from tlkit.testing import write_experiment

SERVER = os.environ.get("TLKIT_TEST_postgres", "postgresql://postgres@127.0.0.1:5432")


@pytest.fixture
def fresh_database():
    """A new, empty database: both workers then race to create Optuna's tables, as on a first real run."""
    import psycopg

    name = f"tlkit_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{SERVER}/test", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield f"{SERVER}/{name}"
    with psycopg.connect(f"{SERVER}/test", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.slow
def test_two_workers_share_one_postgres_study(tmp_path, fresh_database):
    postgres = fresh_database
    study = "workers"
    exp = write_experiment(tmp_path, strategies=["last_n", "linear_probe"], trials=3)
    env = {**os.environ, "TLKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "tlkit.sweep", str(exp), "--study", study, "--storage", postgres, "--quiet"]
    workers = [subprocess.Popen(command + ["--out", str(tmp_path / f"w{i}")], env=env, stderr=subprocess.PIPE,
                                text=True) for i in range(2)]
    try:
        errors = [w.communicate(timeout=300)[1] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], errors
        names = [s.study_name for s in optuna.get_all_study_summaries(postgres)
                 if s.study_name.startswith(f"{study}/")]
        assert sorted(names) == [f"{study}/test_resnet/last_n", f"{study}/test_resnet/linear_probe"]
        for name in names:
            trials = optuna.load_study(study_name=name, storage=postgres).get_trials()
            finished = [t for t in trials if t.state.is_finished()]
            assert len(finished) >= 3  # at most one extra per additional worker, as with Optuna's n_trials
            strategy = name.rsplit("/", 1)[1]
            for t in finished:  # each run was trained by one worker, in that worker's own results folder
                homes = [w for w in range(2) if (tmp_path / f"w{w}" / "trials" / "test_resnet" / strategy /
                                                 f"trial_{t.user_attrs['run']:04d}" / "outcome.json").is_file()]
                assert len(homes) == 1, (name, t.number, homes)
        # The trials were shared: both processes ran some of them.
        workers_seen = {t.user_attrs["worker"] for name in names
                        for t in optuna.load_study(study_name=name, storage=postgres).get_trials()}
        assert len(workers_seen) == 2, workers_seen
    finally:
        for w in workers:
            w.kill()

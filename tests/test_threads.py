"""How many compute threads a sweep uses: the user's choice first (--threads, TLKIT_THREADS, OMP_NUM_THREADS), else
the CPUs this process may really use (affinity, cgroup quota) split between workers; and the sweep says which."""
from __future__ import annotations

import logging

import pytest
import torch

import tlkit.engine.threads
from tlkit.errors import TlkitError
from tlkit.engine.threads import available_cpus, choose_threads, configure_threads


@pytest.fixture(autouse=True)
def _no_user_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TLKIT_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)


def _machine(monkeypatch: pytest.MonkeyPatch, affinity: int, quota: float | None) -> None:
    monkeypatch.setattr(tlkit.engine.threads.os, "sched_getaffinity", lambda pid: set(range(affinity)))
    monkeypatch.setattr(tlkit.engine.threads, "_cgroup_cpus", lambda: quota)


@pytest.mark.parametrize("affinity, quota, cpus", [(8, None, 8), (8, 2.0, 2), (8, 2.5, 2), (2, 4.0, 2), (8, 0.5, 1)])
def test_available_cpus_is_the_affinity_capped_by_the_cgroup_quota(monkeypatch, affinity, quota, cpus):
    _machine(monkeypatch, affinity, quota)
    assert available_cpus() == cpus


def test_the_cgroup_quota_is_read_from_cpu_max(monkeypatch, tmp_path):
    files = {"/sys/fs/cgroup/cpu.max": "150000 100000\n"}
    real = tlkit.engine.threads.Path

    def fake_path(name):
        path = tmp_path / name.strip("/").replace("/", "_")
        if name in files:
            path.write_text(files[name])
        return real(path)

    monkeypatch.setattr(tlkit.engine.threads, "Path", fake_path)
    assert tlkit.engine.threads._cgroup_cpus() == pytest.approx(1.5)
    files["/sys/fs/cgroup/cpu.max"] = "max 100000\n"
    assert tlkit.engine.threads._cgroup_cpus() is None


@pytest.mark.parametrize("workers, threads", [(1, 4), (2, 2), (3, 1), (8, 1)])
def test_the_cpus_are_split_between_workers(monkeypatch, workers, threads):
    _machine(monkeypatch, 4, None)
    assert choose_threads(workers=workers)[0] == threads


def test_the_user_decides_first(monkeypatch):
    _machine(monkeypatch, 4, None)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads() == (3, "OMP_NUM_THREADS")
    monkeypatch.setenv("TLKIT_THREADS", "2")
    assert choose_threads() == (2, "TLKIT_THREADS")
    assert choose_threads(requested=1) == (1, "--threads")


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_thread_count_is_refused_with_its_source(monkeypatch, value):
    monkeypatch.setenv("TLKIT_THREADS", value)
    with pytest.raises(TlkitError, match=f"TLKIT_THREADS must be a whole number >= 1 but got '{value}'"):
        choose_threads()


def test_the_sweep_sets_and_logs_its_thread_count(monkeypatch, caplog):
    _machine(monkeypatch, 2, None)
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="tlkit"):
            assert configure_threads(workers=2) == 1
        assert torch.get_num_threads() == 1
        assert "using 1 compute thread (2 CPUs available, 2 workers;" in caplog.text
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("env, expected", [({}, "10000"), ({"GOMP_SPINCOUNT": "7"}, "7"),
                                           ({"OMP_WAIT_POLICY": "ACTIVE"}, None)])
def test_importing_tlkit_sets_a_short_openmp_spin_unless_the_user_chose(env, expected):
    """docs/benchmarks.md: OpenMP's default spin made a sweep 10.8x slower beside another busy process."""
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    printed = subprocess.run([sys.executable, "-c", "import os, tlkit; print(os.environ.get('GOMP_SPINCOUNT'))"],
                             env={**clean, **env}, capture_output=True, text=True, check=True).stdout.strip()
    assert printed == str(expected)

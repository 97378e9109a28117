"""How many compute threads a sweep uses: from the CPUs this process may actually run on, split between workers.

PyTorch starts as many threads as the machine has cores. On a shared machine that is a trap: tiny models run
thousands of short parallel regions, and each waits for its slowest thread, which the scheduler may have given to
another process. ``benchmarks/shared_machine.py`` measures the cost; the choice below is what it supports (see
docs/benchmarks.md).

The user decides first: ``--threads N``, then ``TLKIT_THREADS``, then the usual ``OMP_NUM_THREADS``.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from tlkit.errors import TlkitError

__all__ = ["available_cpus", "choose_threads", "configure_threads"]

log = logging.getLogger("tlkit")


def _cgroup_cpus() -> float | None:
    """The CPU quota of this process's cgroup (v2 ``cpu.max``, v1 ``cfs_quota_us``), in CPUs; None if unlimited."""
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            text = Path(quota_file).read_text().split()
            if period_file is None:
                quota, period = text[0], text[1]
            else:
                quota, period = text[0], Path(period_file).read_text().strip()
            if quota in ("max", "-1"):
                return None
            return float(quota) / float(period)
        except (OSError, ValueError, IndexError):
            continue
    return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup quota (a container's ``--cpus``)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus()
    return max(1, min(cpus, math.floor(quota)) if quota else cpus)


def choose_threads(requested: int | None = None, workers: int = 1) -> tuple[int, str]:
    """``(threads, why)``: the user's number if given, else the available CPUs split between the workers."""
    for value, source in ((requested, "--threads"), (os.environ.get("TLKIT_THREADS"), "TLKIT_THREADS"),
                          (os.environ.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS")):
        if value is None or value == "":
            continue
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise TlkitError(f"{source} must be a whole number >= 1 but got {value!r}. HINT: e.g. --threads 2.")
        return threads, source
    cpus = available_cpus()
    return max(1, cpus // max(1, workers)), f"{cpus} CPUs available" + (f", {workers} workers" if workers > 1 else "")


def configure_threads(requested: int | None = None, workers: int = 1) -> int:
    """Set PyTorch's compute threads for this process and say so in the log."""
    threads, why = choose_threads(requested, workers)
    torch.set_num_threads(threads)
    log.info("using %d compute thread%s (%s; --threads N or TLKIT_THREADS to change)", threads,
             "s" * (threads != 1), why)
    return threads

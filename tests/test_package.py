"""The package as a newcomer meets it: one name for one idea across tlkit."""
from __future__ import annotations

import collections
import importlib
import inspect
import pkgutil
import subprocess
import sys

import optuna
import pytest

import tlkit


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(tlkit.__path__, "tlkit.")]


def test_no_two_public_classes_share_a_name():
    """Two classes called ``Cell`` (a study's key and the scores the statistics read) made every reader check the
    import to know which one a signature meant."""
    homes: dict[str, list[str]] = collections.defaultdict(list)
    for name in _modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == name and not attr.startswith("_"):
                homes[attr].append(name)
    assert {k: v for k, v in homes.items() if len(v) > 1} == {}


def _fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter (this one has imported everything already); returns its stdout."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_importing_tlkit_leaves_optunas_log_level_alone():
    """A library user imports tlkit into their own process: their Optuna log level is theirs (tlkit quiets Optuna
    only while its own sweep runs, tlkit.search.study.quiet_optuna)."""
    out = _fresh_python(
        "import importlib, pkgutil, optuna\n"
        "optuna.logging.set_verbosity(optuna.logging.DEBUG)\n"
        "import tlkit\n"
        "for m in pkgutil.walk_packages(tlkit.__path__, 'tlkit.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(optuna.logging.get_verbosity())\n")
    assert int(out) == optuna.logging.DEBUG


def test_quiet_optuna_restores_the_level_even_on_error():
    from tlkit.search.study import quiet_optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        with pytest.raises(RuntimeError), quiet_optuna():
            assert optuna.logging.get_verbosity() == optuna.logging.ERROR
            raise RuntimeError("a sweep that fails")
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.set_verbosity(before)

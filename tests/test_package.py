"""The package as a newcomer meets it: one name for one idea across tlkit."""
from __future__ import annotations

import ast
import collections
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

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
    only while its own sweep runs, tlkit.search.storage.quiet_optuna)."""
    out = _fresh_python(
        "import importlib, pkgutil, optuna\n"
        "optuna.logging.set_verbosity(optuna.logging.DEBUG)\n"
        "import tlkit\n"
        "for m in pkgutil.walk_packages(tlkit.__path__, 'tlkit.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(optuna.logging.get_verbosity())\n")
    assert int(out) == optuna.logging.DEBUG


def test_quiet_optuna_restores_the_level_even_on_error():
    from tlkit.search.storage import quiet_optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        with pytest.raises(RuntimeError), quiet_optuna():
            assert optuna.logging.get_verbosity() == optuna.logging.ERROR
            raise RuntimeError("a sweep that fails")
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.set_verbosity(before)


ROOT = Path(__file__).resolve().parents[1]
OPTUNA_STATES = {s.name for s in TrialState}


def _subject(node: ast.expr) -> str | None:
    """``state`` for ``state``, ``result.state`` and ``trials["state"]``; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return str(node.slice.value)
    return None


def _strings(node: ast.expr) -> list[str]:
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]


def test_states_are_optunas_names_and_outcomes_tlkits_own():
    """A trial's state is spelled as Optuna's TrialState, a fit's outcome as ``tlkit.engine.loop.OUTCOMES``,
    wherever tlkit compares one with a literal (docs/results.md, "Outcome vocabulary")."""
    from tlkit.engine.loop import OUTCOMES
    from tlkit.engine.runner import STATES

    assert set(STATES) <= OPTUNA_STATES and not set(OUTCOMES) & OPTUNA_STATES
    wrong = []
    for path in sorted((ROOT / "tlkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            if len(node.comparators) != 1:
                continue
            left, right = node.left, node.comparators[0]
            pairs = [(left, right)] + ([(right, left)] if isinstance(node.ops[0], (ast.Eq, ast.NotEq)) else [])
            for subject, allowed in (("state", OPTUNA_STATES), ("outcome", set(OUTCOMES))):
                wrong += [f"{path.relative_to(ROOT)}:{node.lineno} {subject} {w!r}" for side, other in pairs
                          if _subject(side) == subject for w in _strings(other) if w not in allowed]
    assert wrong == []


def test_committed_tables_write_optunas_state_names():
    tables = [path for path in sorted((ROOT / "results").glob("*/*.csv")) if "state" in pd.read_csv(path).columns]
    assert tables
    for path in tables:
        assert set(pd.read_csv(path)["state"]) <= OPTUNA_STATES, path


def test_import_tlkit_is_cheap_and_every_public_name_resolves():
    """``import tlkit`` loads no heavy library (PEP 562 ``__getattr__`` in tlkit/__init__.py: 4 s -> 0.03 s on the
    AVX512 development host, under load); each name of ``__all__`` imports its module on first use."""
    out = _fresh_python(
        "import sys, tlkit\n"
        "heavy = ('torch', 'timm', 'optuna', 'pandas', 'numpy', 'matplotlib', 'scipy', 'sklearn')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy + ('tlkit',)))\n"
        "from tlkit import *\n"
        "print(all(getattr(tlkit, n) is globals()[n] for n in tlkit.__all__), set(tlkit.__all__) <= set(dir(tlkit)))\n")
    assert out.splitlines() == ["['tlkit', 'tlkit.errors']", "True True"]


def test_a_name_tlkit_does_not_have_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Experimnet'"):
        tlkit.Experimnet  # noqa: B018
    assert tlkit.Experiment is importlib.import_module("tlkit.config.experiment").Experiment


def test_short_number_is_what_a_reader_expects():
    from tlkit.utils.text import short_number

    assert [short_number(x) for x in (300, 1000, 1234567, 2500, 0.5, 9876, 45000, 3.25e9, 0.123456)] == [
        "300", "1k", "1.23M", "2.5k", "0.5", "9.88k", "45k", "3.25G", "0.123"]


def test_one_trial_outside_a_sweep_needs_only_the_top_level_api(tmp_path):
    """run_trial and everything it needs (the splits, the starting weights, a Callback) come from ``tlkit``
    itself, not from its submodules; so does each registry's get_*."""
    exp = tlkit.Experiment(backbones=["test_resnet"], strategies=["last_n"], pretrained=False,
                           data=tlkit.Data("digits", classes=[5, 6, 7], train_per_class=20),
                           train=tlkit.Train(epochs=1, batch_size=16, image_size=16))
    splits = tlkit.splits_for(exp.data, exp.train.image_size, exp.seed)
    weights = tlkit.resolve_pretrained(exp, "test_resnet", splits.num_classes)
    seen = []

    class Count(tlkit.Callback):
        def on_epoch_end(self, trainer, result):  # noqa: ANN001
            seen.append(result.epoch)

    spec = tlkit.TrialSpec(backbone="test_resnet", strategy="last_n", params={"n_groups": 1}, recipe=exp.train,
                           metric=exp.metric, seed=0, folder=tmp_path / "trial", weights=weights.state_dict)
    result = tlkit.run_trial(spec, splits, "cpu", callbacks=[Count()])
    assert result.state == "COMPLETE" and seen == [0]
    assert tlkit.get_strategy("last_n").name == "last_n" and tlkit.get_metric("accuracy").direction == "maximize"
    assert tlkit.get_dataset("digits").__name__ and isinstance(tlkit.get_metric("log_loss"), tlkit.Metric)


def test_public_functions_have_type_hints():
    for name in tlkit.__all__:
        obj = getattr(tlkit, name)
        if inspect.isfunction(obj):
            hints = obj.__annotations__
            assert "return" in hints and all(p in hints for p in inspect.signature(obj).parameters
                                             if p not in ("self", "cls")), name

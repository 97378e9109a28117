"""The package as a newcomer meets it: one name for one idea across tlkit."""
from __future__ import annotations

import collections
import importlib
import inspect
import pkgutil

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

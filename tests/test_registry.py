"""The one registry shape behind strategies, datasets and metrics: register, list with a glob, did-you-mean,
duplicates, and entry points (a plugin that is not of the registry's kind is an error naming it)."""
from __future__ import annotations

import sys
import textwrap

import pytest

from tlkit.data.datasets.base import DATASETS
from tlkit.errors import TlkitError
from tlkit.metrics import METRICS
from tlkit.registry import Registry
from tlkit.strategies import STRATEGIES


def _check_str(name, obj):
    if not isinstance(obj, str):
        raise TlkitError(f"colour {name!r} must be a str but got {obj!r}.")


@pytest.fixture
def colours():
    reg = Registry("colour", "tlkit_test.colours", check=_check_str, hint="HINT: register it.")
    reg.register("red")("#f00")
    reg.register("rose")("#f08")
    reg.register("blue")("#00f")
    return reg


def test_list_with_a_glob_get_and_create(colours):
    assert colours.list() == ["blue", "red", "rose"]
    assert colours.list("r*") == ["red", "rose"]
    assert colours.get("blue") == "#00f" and "red" in colours and "green" not in colours
    factories = Registry("factory", "tlkit_test.factories")
    factories.register("pair")(lambda a, b=0: (a, b))
    assert factories.create("pair", 1, b=2) == (1, 2)


def test_an_unknown_name_lists_close_matches_and_the_hint(colours):
    with pytest.raises(TlkitError, match=r"Unknown colour 'rde'\. Did you mean 'red'\? Available: blue, red, "
                                         r"rose\. HINT: register it\."):
        colours.get("rde")


def test_a_taken_name_is_an_error_the_same_object_again_is_not(colours):
    colours.register("red")("#f00")  # the same value: fine (a file loaded twice)
    with pytest.raises(TlkitError, match=r"colour name 'red' is already registered by '#f00'; '#e00' cannot"):
        colours.register("red")("#e00")
    with pytest.raises(TlkitError, match="must be a str but got 3"):
        colours.register("green")(3)
    with pytest.raises(TlkitError, match="non-empty string"):
        colours.register("")


def _install_plugin(tmp_path, monkeypatch, group, body, target):
    pkg = tmp_path / "tlkit_plugin_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    dist = tmp_path / "tlkit_plugin_test-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tlkit-plugin-test\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\nmine = tlkit_plugin_test:{target}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tlkit_plugin_test", raising=False)


@pytest.mark.parametrize("registry, kind", [(STRATEGIES, "strategy"), (DATASETS, "dataset"), (METRICS, "metric")])
def test_an_entry_point_of_the_wrong_kind_is_an_error_naming_it(tmp_path, monkeypatch, registry, kind):
    _install_plugin(tmp_path, monkeypatch, registry.entry_point_group, "def not_a_plugin(): pass\n",
                    "not_a_plugin")
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    try:
        with pytest.raises(TlkitError, match=rf"The {kind} entry point 'mine' \(tlkit_plugin_test:not_a_plugin\): "
                                             rf"{kind} 'mine' must be"):
            registry.list()
    finally:
        registry._entries.pop("mine", None)


def test_an_entry_point_that_fails_to_import_is_an_error_naming_it(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "tlkit.datasets", "raise ImportError('needs h5py')\n", "Thing")
    monkeypatch.setattr(DATASETS, "_entry_points_loaded", False)
    with pytest.raises(TlkitError, match=r"dataset entry point 'mine' .* cannot be imported \(ImportError: needs "
                                         r"h5py\)\. HINT: fix or uninstall"):
        DATASETS.get("digits")

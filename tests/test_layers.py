"""The package's layers, read from its source: every import of a tlkit module (at module level, inside a function,
under ``if TYPE_CHECKING:``) goes down a layer or sideways, never up, and no chain of imports comes back to where it
started. An import inside a function hides a cycle from Python but not from this test.

A failure names each offending import as ``file:line importer -> imported (layer a -> layer b)`` and each cycle as
its path, one import per step. ``LAYERS`` below is the order, lowest first.
"""
from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

import tlkit

ROOT = Path(tlkit.__file__).resolve().parent

LAYERS: list[tuple[str, list[str]]] = [  # lowest first; "x*" is x and everything under it
    ("foundation", ["tlkit.errors", "tlkit.utils*", "tlkit.registry", "tlkit.metrics"]),
    ("config", ["tlkit.config*"]),
    ("data and models", ["tlkit.data*", "tlkit.models*"]),
    ("strategies", ["tlkit.strategies*"]),
    ("engine", ["tlkit.engine*"]),
    ("search and analysis", ["tlkit.search*", "tlkit.analysis*"]),
    ("output", ["tlkit.output*"]),
    ("commands", ["tlkit.sweep", "tlkit.report", "tlkit.predict", "tlkit.rank", "tlkit.export", "tlkit.cli*",
                  "tlkit.strategies.__main__", "tlkit.testing", "tlkit"]),
]

PENDING: dict[tuple[str, str], str] = {}
"""(importer, imported): why an upward import is still allowed, while a move is under way; empty on main. Each entry
must still be there (test_every_pending_upward_import_is_still_there): the list only shrinks."""


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.importer} -> {self.imported}"


def layer_of(module: str, layers: list[tuple[str, list[str]]] = LAYERS) -> int | None:
    """The index of the layer ``module`` belongs to: its most specific pattern wins (``tlkit.strategies.__main__``
    is a command although ``tlkit.strategies*`` is a lower layer)."""
    best: tuple[int, int] | None = None  # (specificity, layer)
    for index, (_, patterns) in enumerate(layers):
        for pattern in patterns:
            base = pattern.rstrip("*")
            if module == base or (pattern.endswith("*") and module.startswith(base + ".")):
                specificity = len(base) * 2 + (not pattern.endswith("*"))
                if best is None or specificity > best[0]:
                    best = (specificity, index)
    return None if best is None else best[1]


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """``{module name: file}`` of every module of the package under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path, modules: dict[str, Path], root: Path = ROOT) -> list[Import]:
    """Every import of a tlkit module in ``path``, wherever it sits in the file. ``from a import b`` is an import of
    ``a.b`` when that is a module, else of ``a``; relative imports are resolved against ``module``'s package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    rel = str(path.relative_to(root.parent))
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        for target in targets:
            while target and target not in modules:  # `import tlkit.a.b` names tlkit.a.b; a name inside it, its module
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] == "tlkit" and target != module:
                found.append(Import(module, target, rel, node.lineno))
    return sorted(set(found), key=lambda i: (i.line, i.imported))


def import_graph(root: Path = ROOT) -> dict[str, list[Import]]:
    modules = module_files(root)
    return {module: imports_of(module, path, modules, root) for module, path in modules.items()}


def is_upward(imp: Import, layers: list[tuple[str, list[str]]] = LAYERS) -> bool:
    """An import of a higher layer. A package's ``__init__`` may import its own submodules whatever their layer
    (it re-exports them)."""
    low, high = layer_of(imp.importer, layers), layer_of(imp.imported, layers)
    return low is not None and high is not None and high > low and not imp.imported.startswith(imp.importer + ".")


def upward_imports(graph: dict[str, list[Import]], layers: list[tuple[str, list[str]]] = LAYERS,
                   pending: dict[tuple[str, str], str] | None = None) -> list[str]:
    """Each import of a higher layer (but those in ``pending``), and each module that belongs to no layer."""
    problems = [f"{module} belongs to no layer: add it to LAYERS in tests/test_layers.py"
                for module in sorted(graph) if layer_of(module, layers) is None]
    for imp in (i for module in sorted(graph) for i in graph[module]):
        if is_upward(imp, layers) and (imp.importer, imp.imported) not in (pending or {}):
            low, high = layer_of(imp.importer, layers), layer_of(imp.imported, layers)
            problems.append(f"{imp} imports upward: layer {low} ({layers[low][0]}) -> layer {high} "
                            f"({layers[high][0]})")
    return problems


def _components(graph: dict[str, list[Import]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative): each cycle lies within one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted({i.imported for i in graph.get(start, [])})))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted({i.imported for i in graph.get(child, [])}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def cycles(graph: dict[str, list[Import]]) -> list[str]:
    """One shortest cycle through the first module of each strongly connected component with more than one
    module, written as its chain of imports."""
    problems = []
    for component in _components(graph):
        if len(component) < 2:
            continue
        members, start = set(component), component[0]
        came_from: dict[str, Import] = {}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for imp in graph.get(node, []):
                if imp.imported not in members or imp.imported in came_from:
                    continue
                came_from[imp.imported] = imp
                if imp.imported == start:
                    queue.clear()
                    break
                queue.append(imp.imported)
        path, node = [], start
        while True:
            path.append(came_from[node])
            node = came_from[node].importer
            if node == start:
                break
        path.reverse()
        chain = " -> ".join([start, *(i.imported for i in path)])
        problems.append(f"cycle {chain} (modules in it: {', '.join(component)}):\n"
                        + "\n".join(f"    {imp}" for imp in path))
    return problems


def test_no_module_imports_a_higher_layer():
    problems = upward_imports(import_graph(), pending=PENDING)
    if problems:
        pytest.fail(f"{len(problems)} upward import(s):\n" + "\n".join(problems), pytrace=False)


def test_no_import_cycle():
    problems = cycles(import_graph())
    if problems:
        pytest.fail(f"{len(problems)} import cycle(s):\n" + "\n".join(problems), pytrace=False)


def test_every_pending_upward_import_is_still_there():
    """An entry of PENDING whose import is gone (or no longer upward) is taken off the list, so it cannot hide the
    import coming back."""
    graph = import_graph()
    stale = [f"{a} -> {b} ({why})" for (a, b), why in PENDING.items()
             if not any(i.imported == b and is_upward(i) for i in graph.get(a, []))]
    assert not stale, "no longer imported upward, remove from PENDING in tests/test_layers.py: " + "; ".join(stale)


def test_every_module_is_read(tmp_path):
    """The parser sees each kind of import the package uses (so the two tests above cannot pass by reading
    nothing): module level, inside a function, under TYPE_CHECKING, relative, and a submodule by ``from``."""
    package = tmp_path / "tlkit"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from tlkit.sub import low\n",
        "top.py": "import tlkit.sub.low\n\ndef f():\n    from tlkit.sub.high import Thing\n",
        "sub/__init__.py": "from . import high\n",
        "sub/low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..top import f\n",
        "sub/high.py": "from .low import name\nThing = 1\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    modules = module_files(package)
    found = {(i.importer, i.imported, i.line) for m, p in modules.items() for i in imports_of(m, p, modules, package)}
    assert found == {("tlkit", "tlkit.sub.low", 1), ("tlkit.top", "tlkit.sub.low", 1),
                     ("tlkit.top", "tlkit.sub.high", 4), ("tlkit.sub", "tlkit.sub.high", 1),
                     ("tlkit.sub.low", "tlkit.top", 3), ("tlkit.sub.high", "tlkit.sub.low", 1)}


def test_the_checks_catch_a_planted_cycle_and_an_upward_import():
    layers = [("low", ["tlkit.a*"]), ("high", ["tlkit.b*", "tlkit"])]
    graph = {
        "tlkit": [Import("tlkit", "tlkit.a", "tlkit/__init__.py", 1)],
        "tlkit.a": [Import("tlkit.a", "tlkit.a.x", "tlkit/a/__init__.py", 1)],
        "tlkit.a.x": [Import("tlkit.a.x", "tlkit.a.y", "tlkit/a/x.py", 3)],
        "tlkit.a.y": [Import("tlkit.a.y", "tlkit.a.x", "tlkit/a/y.py", 7),
                      Import("tlkit.a.y", "tlkit.b", "tlkit/a/y.py", 8)],
        "tlkit.b": [Import("tlkit.b", "tlkit.a.y", "tlkit/b.py", 2)],
        "tlkit.c": [],
    }
    assert upward_imports(graph, layers) == [
        "tlkit.c belongs to no layer: add it to LAYERS in tests/test_layers.py",
        "tlkit/a/y.py:8 tlkit.a.y -> tlkit.b imports upward: layer 0 (low) -> layer 1 (high)"]
    assert len(upward_imports(graph, layers, pending={("tlkit.a.y", "tlkit.b"): "moves"})) == 1
    assert cycles(graph) == [
        "cycle tlkit.a.x -> tlkit.a.y -> tlkit.a.x (modules in it: tlkit.a.x, tlkit.a.y, tlkit.b):\n"
        "    tlkit/a/x.py:3 tlkit.a.x -> tlkit.a.y\n    tlkit/a/y.py:7 tlkit.a.y -> tlkit.a.x"]
    assert not cycles({k: v for k, v in graph.items() if k != "tlkit.a.y"})


def test_layer_of_takes_the_most_specific_pattern():
    assert layer_of("tlkit.strategies.__main__") == 7 and layer_of("tlkit.strategies.last_n") == 3
    assert layer_of("tlkit") == 7 and layer_of("tlkit.utils.files") == 0 and layer_of("tlkit.cli") == 7
    assert layer_of("tlkit.sweeping") is None

"""Every command the README shows is run here, as written, in a fresh folder (the doc test).

Sweep commands run with ``--check`` (everything a sweep checks before training, nothing trained or written), so
the experiments, data, weights and flags they name are real; the commands that read results run against a tiny real
study in a folder laid out as the README says (``results/digits``); Python blocks are executed. A command that needs
the internet (ImageNet weights from the hub) must fail offline with the message that says so. Only the install and
test commands themselves are left to CI, and the benchmarks print measurements pasted into the README.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
from PIL import Image
from safetensors.torch import save_file

from tlkit.testing import run_tiny_sweep
from conftest import shared_data_folder

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SKIPPED = ("pip install", "python -m pytest", "python benchmarks/", "bash benchmarks/", "TLKIT_TEST_DATA=")


def _blocks(language: str) -> list[str]:
    """The README's fenced code blocks of one language ("" for plain blocks), in order."""
    blocks, current, fence = [], None, ""
    for line in README.splitlines():
        if line.startswith("```") and current is None:
            current, fence = [], line[3:].strip()
        elif line.startswith("```"):
            if fence == language:
                blocks.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def shell_commands() -> list[str]:
    """Commands of the README's plain code blocks: continuation lines joined, output left out. A trailing
    ``# needs the hub`` comment marks a command that needs the internet."""
    commands = []
    for block in _blocks(""):
        lines, current = [], ""
        for raw in block.splitlines():
            current += raw.rstrip("\\").strip() + " " if raw.rstrip().endswith("\\") else raw.strip()
            if not raw.rstrip().endswith("\\"):
                lines.append(current)
                current = ""
        for line in lines:
            if line.startswith(("python ", "tensorboard ", "optuna-dashboard ", "tlkit-")) and "[--" not in line:
                commands.append(line)  # not the usage synopsis (python -m tlkit.sweep EXPERIMENT [--trials N] ...)
    return commands


COMMANDS = shell_commands()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's experiments with a tiny real study at results/digits, the shared data folder at
    ../shared/datasets, and a folder of images to predict on."""
    root = tmp_path_factory.mktemp("readme") / "repo"
    shutil.copytree(ROOT / "experiments", root / "experiments")
    data = shared_data_folder()  # skips without the shared data folder (fails in CI)
    (root.parent / "shared").mkdir()
    (root.parent / "shared" / "datasets").symlink_to(Path(data).resolve())
    run_tiny_sweep(root / "tiny", tmp_path_factory.getbasetemp() / "tlkit-cache", name="digits",
                   strategies=["linear_probe", "last_n"], repeats=1)
    (root / "results").mkdir()
    shutil.move(str(root / "tiny" / "results"), str(root / "results" / "digits"))
    # Sweep commands are checked in a second copy with no results yet: the tiny results/digits above is a real study
    # of a smaller experiment, which a sweep of experiments/digits.py would rightly refuse to continue.
    shutil.copytree(ROOT / "experiments", root.parent / "fresh" / "experiments")
    (root.parent / "fresh" / "r18.safetensors").symlink_to(root / "r18.safetensors")  # made by a README command
    # ... which, under pytest-xdist, may run in the other worker: the same file here, so no command depends on the
    # order the workers take them in (the README command itself still runs as its own test and overwrites it).
    save_file(timm.create_model("resnet18").state_dict(), str(root / "r18.safetensors"))
    images = root / "my_images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(images / f"{i}.png")
    return root


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TLKIT_CACHE": str(cwd.parent / "cache")}
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] in ("tensorboard", "optuna-dashboard") or argv[0].startswith("tlkit-"):
        argv[0] = str(Path(sys.executable).parent / argv[0])
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_every_console_script_is_in_the_readme():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert len(scripts) >= 4 and [s for s in scripts if f"`{s}`" not in README] == []


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 10 and any("tlkit.sweep experiments/digits.py" in c for c in COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in COMMANDS if not c.startswith(SKIPPED)])
def test_every_readme_command_runs_as_written(command: str, workspace: Path) -> None:
    """Install, test and benchmark commands (SKIPPED) are not run here: CI runs them, or they are measurements."""
    if command.startswith("tensorboard "):
        folder = workspace / shlex.split(command.partition("  #")[0])[-1]
        assert any(folder.rglob("events.out.tfevents.*")), f"{folder} has no TensorBoard runs"
        return
    if command.startswith("optuna-dashboard "):
        url = shlex.split(command.partition("  #")[0])[1]
        assert (workspace / url.removeprefix("sqlite:///")).is_file()  # the server itself: test_report.py
        return
    command, _, comment = command.partition("  #")
    needs_hub = "needs the hub" in comment
    cwd = workspace
    if " -m tlkit.sweep " in f" {command} ":
        command, cwd = command.strip() + " --check", workspace.parent / "fresh"
    proc = _run(command, cwd)
    if needs_hub:
        assert proc.returncode == 2 and "No pretrained weights" in proc.stderr, proc.stderr[-2000:]
    else:
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


@pytest.mark.slow
def test_every_readme_python_block_runs(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace)
    from tlkit.strategies import STRATEGIES
    from tlkit.data.datasets.base import DATASETS

    for block in _blocks("python"):
        try:
            exec(compile(block.replace("...", "raise NotImplementedError"), "README.md", "exec"), {})
        finally:
            for registry in (STRATEGIES, DATASETS):
                for name in ("head_and_stem", "my_scans"):
                    registry._entries.pop(name, None)


def test_the_sweep_synopsis_names_every_flag():
    from tlkit.sweep import build_parser

    start = README.index("python -m tlkit.sweep EXPERIMENT [")
    synopsis = README[start:README.index("```", start)]
    flags = [o for a in build_parser()._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    assert len(flags) >= 15 and [f for f in flags if f"[{f}" not in synopsis] == []

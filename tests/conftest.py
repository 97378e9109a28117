from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable, Iterator

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n 2``) each worker computes with one thread, and so do the sweeps it starts: two
    workers with two threads each on two cores is the oversubscription benchmarks/shared_machine.py measures."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        os.environ.setdefault("TLKIT_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded datasets and source weights go to a per-session temp cache, never the user's ~/.cache."""
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path_factory.getbasetemp() / "tlkit-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _checkpoint_every_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny test epochs take milliseconds, far below the 10 s between a real trial's checkpoints; the tests that
    kill and resume aim at particular epochs, so every epoch is checkpointed (experiment files from
    ``tlkit.testing`` say the same with ``checkpoint_every_s=0``). tests/test_runner.py tests the real default."""
    import tlkit.engine.runner

    monkeypatch.setattr(tlkit.engine.runner, "CHECKPOINT_EVERY_S", 0.0)


REQUIRE_DATA = "TLKIT_REQUIRE_TEST_DATA"
"""Set (to 1) by .ci/run, which has the data: there a missing data folder fails, and so does any skipped test."""


def shared_data_folder() -> Path:
    """The shared data folder named by TLKIT_TEST_DATA; without it (a fresh clone) the test is skipped with the
    reason and how to get the data, unless TLKIT_REQUIRE_TEST_DATA is set (CI), where it fails."""
    root = os.environ.get("TLKIT_TEST_DATA")
    path = Path(root) / "cifar10-jpeg.zip" if root else None
    if path is not None and path.is_file():
        return Path(root)
    reason = (f"{path} does not exist" if path else "TLKIT_TEST_DATA is not set") + (
        ": this test needs the folder holding cifar10-jpeg.zip (CIFAR-10 as JPEGs; `python tests/make_cifar10_zip.py "
        "DIR` writes one when online); pass it as TLKIT_TEST_DATA=DIR.")
    if os.environ.get(REQUIRE_DATA):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def cifar_zip() -> Path:
    """The CIFAR-10 JPEG zip from the shared data folder, passed in by TLKIT_TEST_DATA (CI sets it)."""
    return shared_data_folder() / "cifar10-jpeg.zip"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under TLKIT_REQUIRE_TEST_DATA (CI) a skipped test fails the run: CI has everything, so a skip hides a test."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get(REQUIRE_DATA) and skipped and session.exitstatus == 0:
        session.exitstatus = 1
        if reporter:
            reporter.write_line(f"{REQUIRE_DATA} is set and {skipped} tests were skipped: failing the run.", red=True)


@pytest.fixture
def make_read_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """``make_read_only(folder)``: the folder refuses new files and renames from now on (chmod 0o555; where that
    does not stop the user, as for root, ``os.replace`` into or out of it fails as a read-only folder makes it
    fail). Made writable again afterwards, so the temp folder can be cleaned up."""
    folders: list[Path] = []

    def make(folder: Path) -> None:
        folder = Path(folder).absolute()
        folder.chmod(0o555)
        folders.append(folder)
        probe = folder / ".probe"
        try:
            probe.touch()
        except PermissionError:
            return
        probe.unlink()
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if any(f in (Path(src).absolute().parent, Path(dst).absolute().parent) for f in folders):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src))
            return real_replace(src, dst, *args, **kwargs)
        monkeypatch.setattr(os, "replace", replace)

    yield make
    for folder in folders:
        folder.chmod(0o755)

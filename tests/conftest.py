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


@pytest.fixture
def cifar_zip() -> Path:
    """The CIFAR-10 JPEG zip from the shared data folder, passed in by TLKIT_TEST_DATA (CI sets it)."""
    root = os.environ.get("TLKIT_TEST_DATA")
    if not root:
        pytest.fail("TLKIT_TEST_DATA is not set: point it at the folder holding cifar10-jpeg.zip (CI does).")
    path = Path(root) / "cifar10-jpeg.zip"
    if not path.is_file():
        pytest.fail(f"{path} does not exist (TLKIT_TEST_DATA={root}).")
    return path


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

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded datasets and source weights go to a per-session temp cache, never the user's ~/.cache."""
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path_factory.getbasetemp() / "tlkit-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


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

"""tlkit.utils.files: the one atomic write and the one "set a damaged file aside", whose failure never crashes."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tlkit.utils.files import atomic_write, rebuild_folder, set_aside, write_cache


@pytest.fixture
def read_only(tmp_path, make_read_only):
    """A folder holding a damaged ``data.pt``, read-only from now on."""
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "data.pt").write_bytes(b"damaged")
    make_read_only(folder)
    return folder


def test_set_aside_renames_the_file_and_its_companions_and_says_so(tmp_path, caplog):
    state, weights = tmp_path / "epoch_0001.pt", tmp_path / "epoch_0001.safetensors"
    state.write_bytes(b"torn")
    weights.write_bytes(b"w")
    with caplog.at_level(logging.WARNING, logger="tlkit"):
        aside = set_aside(state, f"{state} cannot be read (EOFError)", "an earlier one is used", weights,
                          tmp_path / "absent")
    assert aside == tmp_path / "epoch_0001.pt.bad" and aside.read_bytes() == b"torn"
    assert (tmp_path / "epoch_0001.safetensors.bad").is_file() and not state.exists() and not weights.exists()
    assert f"{state} cannot be read (EOFError); set aside as epoch_0001.pt.bad; an earlier one is used" in caplog.text


def test_set_aside_in_a_read_only_folder_warns_and_leaves_the_file(read_only, caplog):
    damaged = read_only / "data.pt"
    with caplog.at_level(logging.WARNING, logger="tlkit"):
        assert set_aside(damaged, "data.pt cannot be read", "rebuilt") is None
    assert damaged.read_bytes() == b"damaged" and not (read_only / "data.pt.bad").exists()
    assert "cannot be set aside as data.pt.bad (PermissionError" in caplog.text and "stays where it is" in caplog.text


def test_set_aside_of_a_file_another_worker_moved_first_does_not_crash(tmp_path, caplog):
    assert set_aside(tmp_path / "gone.pt", "gone.pt cannot be read", "computed again") is None
    assert "FileNotFoundError" in caplog.text


def test_a_cache_that_cannot_be_written_is_a_warning(read_only, caplog):
    with caplog.at_level(logging.WARNING, logger="tlkit"):
        assert not write_cache(read_only / "features.pt", lambda tmp: Path(tmp).write_bytes(b"x"), "features")
        assert not write_cache(read_only / "data.pt" / "x.pt", lambda tmp: Path(tmp).write_bytes(b"x"), "data")
    assert "features cannot be cached in" in caplog.text and "computed again next time" in caplog.text
    assert sorted(p.name for p in read_only.iterdir()) == ["data.pt"], "no temporary file left behind"


def test_atomic_write_makes_the_folder_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "a" / "b.txt"
    atomic_write(target, lambda tmp: Path(tmp).write_text("new"))
    atomic_write(target, lambda tmp: Path(tmp).write_text("newer"))
    assert target.read_text() == "newer" and [p.name for p in target.parent.iterdir()] == ["b.txt"]


def test_rebuild_folder_swaps_a_whole_folder_in_and_a_failed_build_changes_nothing(tmp_path):
    board = tmp_path / "tb"
    rebuild_folder(board, lambda folder: (folder / "old.txt").write_text("old"))
    rebuild_folder(board, lambda folder: (folder / "new.txt").write_text("new"))
    assert [p.name for p in board.iterdir()] == ["new.txt"]

    def fails(folder: Path) -> None:
        (folder / "half.txt").write_text("half")
        raise RuntimeError("the build failed")
    with pytest.raises(RuntimeError, match="the build failed"):
        rebuild_folder(board, fails)
    assert [p.name for p in board.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["tb"]

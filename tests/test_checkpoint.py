"""Checkpoint files: atomic writes (even under SIGKILL), plain-data state, and bad files detected, never trusted."""
from __future__ import annotations

import errno
import io
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tlkit.engine.checkpoint import load_latest, prune_epochs, rng_state, save_epoch, set_rng_state
from tlkit.utils.files import atomic_write, check_writable, read_json, torch_save
import tlkit.utils.files
from tlkit.errors import TlkitError, environment_fault


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))


def _state(model: torch.nn.Module, epoch: int) -> dict:
    """A trainer-like state: a real optimizer and scheduler after one step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    sched.step()
    return {"epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "best_metric": 0.5,
            "best_epoch": epoch - 1, "history": [], "strategy": {"name": "gradual", "params": {"lr_factor": 0.5}}}


def _save_epochs(folder: Path, epochs: range) -> dict[int, dict[str, torch.Tensor]]:
    weights = {}
    for epoch in epochs:
        model = _model(seed=epoch)
        save_epoch(folder, epoch, model, _state(model, epoch + 1))
        weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
    return weights


class _Evil:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a pickle could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "state.bin"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"old"))

    def half_then_fail(tmp: Path) -> None:
        Path(tmp).write_bytes(b"new but torn")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"], "no temp file is left behind"


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    """A real SIGKILL while the new weights are half written: the previous epoch still loads, nothing is torn."""
    _save_epochs(tmp_path, range(2))
    script = textwrap.dedent(f"""
        import os, signal, torch
        from pathlib import Path
        import tlkit.engine.checkpoint as ckpt
        real_save_file = ckpt.save_file
        def save_half_then_die(tensors, path, metadata=None):
            real_save_file(tensors, path, metadata=metadata)
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        ckpt.save_file = save_half_then_die
        torch.manual_seed(99)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
        ckpt.save_epoch(Path({str(tmp_path)!r}), 2, model, {{"epoch": 3}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (tmp_path / "epoch_0002.safetensors").exists() and not (tmp_path / "epoch_0002.pt").exists()
    latest = load_latest(tmp_path)
    assert latest is not None and latest[1]["epoch"] == 2, "the checkpoint of epoch 1 is intact"
    assert len(list(tmp_path.glob(".epoch_0002.safetensors.tmp*"))) == 1, "the torn write went to a temp file"
    _save_epochs(tmp_path, range(2, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch_0001.pt", "epoch_0001.safetensors", "epoch_0002.pt", "epoch_0002.safetensors"], \
        "the next save replaces the epoch and clears the dead process's temp file"


def test_state_is_plain_data_and_round_trips(tmp_path):
    weights = _save_epochs(tmp_path, range(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch_0001.pt", "epoch_0001.safetensors", "epoch_0002.pt", "epoch_0002.safetensors"], \
        "only the newest two epochs are kept while a trial runs"
    state = torch.load(tmp_path / "epoch_0002.pt", weights_only=True)
    assert {"epoch", "optimizer", "scheduler", "best_metric", "best_epoch", "strategy", "rng",
            "weights_sha256"} <= set(state)
    assert set(state["rng"]) >= {"python", "numpy", "torch"}

    loaded_weights, loaded_state = load_latest(tmp_path)
    assert loaded_state["epoch"] == 3 and loaded_state["strategy"]["name"] == "gradual"
    assert set(loaded_weights) == set(weights[2])
    assert all(torch.equal(loaded_weights[k], weights[2][k]) for k in weights[2])
    opt = torch.optim.AdamW(_model().parameters(), lr=1e-3)
    opt.load_state_dict(loaded_state["optimizer"])
    assert opt.state_dict()["state"][0]["step"] == 1


def test_rng_state_restores_python_numpy_and_torch():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    saved = rng_state()
    before = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    set_rng_state(saved)
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == before


def test_prune_epochs_keeps_best_weights(tmp_path):
    _save_epochs(tmp_path, range(2))
    (tmp_path / "best.safetensors").write_bytes(b"kept")
    prune_epochs(tmp_path, keep=0)
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]


@pytest.mark.parametrize("damage", ["truncate_weights", "flip_weight_byte", "garble_state", "truncate_state",
                                    "delete_weights", "empty_state"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    weights = _save_epochs(tmp_path, range(2))
    st, pt = tmp_path / "epoch_0001.safetensors", tmp_path / "epoch_0001.pt"
    if damage == "truncate_weights":
        st.write_bytes(st.read_bytes()[:100])
    elif damage == "flip_weight_byte":
        data = bytearray(st.read_bytes())
        data[-5] ^= 0xFF  # inside a tensor: the header still parses, only the checksum can tell
        st.write_bytes(bytes(data))
    elif damage == "garble_state":
        pt.write_bytes(os.urandom(pt.stat().st_size))
    elif damage == "truncate_state":
        pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    elif damage == "empty_state":
        pt.write_bytes(b"")  # torch.load raises with an empty message: the warning must still be written
    else:
        st.unlink()
    named = pt if "state" in damage else st
    loaded_weights, state = load_latest(tmp_path)
    assert re.search(rf"{named} .*set aside as epoch_0001\.pt\.bad", caplog.text), caplog.text
    assert state["epoch"] == 1
    assert all(torch.equal(loaded_weights[k], weights[0][k]) for k in weights[0])
    assert (tmp_path / "epoch_0001.pt.bad").is_file() and not pt.exists()  # set aside, not deleted
    assert load_latest(tmp_path)[1]["epoch"] == 1  # and not tried again


def test_a_pickle_that_would_run_code_is_refused(tmp_path, caplog):
    marker = tmp_path / "code_ran"
    evil_path = tmp_path / "evil.pt"
    torch.save({"epoch": 9, "payload": _Evil(marker)}, evil_path)
    torch.load(evil_path, weights_only=False)  # proves the file is dangerous: an unsafe load runs its code
    assert marker.exists()
    marker.unlink()

    folder = tmp_path / "trial"
    _save_epochs(folder, range(2))
    (folder / "epoch_0001.pt").write_bytes(evil_path.read_bytes())
    latest = load_latest(folder)
    assert str(folder / "epoch_0001.pt") in caplog.text
    assert not marker.exists(), "the pickle's code must never run"
    assert latest is not None and latest[1]["epoch"] == 1


def test_no_good_checkpoint_means_start_over(tmp_path, caplog):
    _save_epochs(tmp_path, range(2))
    for pt in tmp_path.glob("*.pt"):
        pt.write_bytes(b"not a checkpoint")
    assert load_latest(tmp_path) is None
    assert caplog.text.count("set aside") == 2
    assert load_latest(tmp_path / "missing") is None


def test_a_failed_write_is_an_os_error_naming_the_file_whatever_the_writer_raised(tmp_path):
    """safetensors reports a full disk as ``SafetensorError: ... (os error 28)``; tlkit must still see a full disk,
    and name the file it was writing (not its temporary twin)."""
    from safetensors import SafetensorError

    target = tmp_path / "epoch_0003.safetensors"

    def full(tmp: Path) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(OSError) as caught:
        atomic_write(target, full)
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(target))
    assert "The disk is full" in str(environment_fault(caught.value)) and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="not a disk problem"):  # anything else is left as it is
        atomic_write(target, lambda tmp: (_ for _ in ()).throw(ValueError("not a disk problem")))
    assert environment_fault(ValueError("not a disk problem")) is None


def test_a_state_written_through_a_full_disk_raises_an_os_error(tmp_path, monkeypatch):
    """torch.save to a path turns ENOSPC into a bare RuntimeError; through a Python file it stays an OSError."""
    class FullDisk(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tlkit.utils.files, "open", lambda path, mode: FullDisk(), raising=False)
    with pytest.raises(OSError) as caught:
        torch_save({"x": torch.zeros(3)}, tmp_path / "state.pt")
    assert caught.value.errno == errno.ENOSPC


def test_a_damaged_json_file_names_itself_and_the_fix(tmp_path):
    path = tmp_path / "model.json"
    for damage, said in (('{"backbone": "test_', "cannot be read (JSONDecodeError"), ("[1, 2]", "holds a JSON list"),
                         (b"\xff\xfe\x00", "cannot be read (UnicodeDecodeError")):
        path.write_bytes(damage if isinstance(damage, bytes) else damage.encode())
        with pytest.raises(TlkitError, match=rf"model\.json {re.escape(said)}.*HINT: export it again\."):
            read_json(path, "export it again.")
    with pytest.raises(TlkitError, match=r"model\.json cannot be read \(FileNotFoundError"):
        read_json(tmp_path / "missing" / "model.json", "export it again.")


def test_a_results_folder_must_be_a_writable_folder(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TlkitError, match=r"'.*file/results' cannot be made: '.*file' is a file, not a folder"):
        check_writable(tmp_path / "file" / "results")
    check_writable(tmp_path / "new" / "results")  # made later, in a writable folder
    assert not (tmp_path / "new").exists(), "checking writes nothing"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "study.db").write_bytes(b"")
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).endswith("study.db"))  # root ignores chmod
    with pytest.raises(TlkitError, match=r"study\.db' is read-only"):
        check_writable(tmp_path / "old")

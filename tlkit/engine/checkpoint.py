"""Atomic checkpoints: safetensors weights plus a plain-data state, written so a kill never leaves a torn file.

A trial folder holds ``epoch_NNNN.safetensors`` + ``epoch_NNNN.pt`` for the last two checkpointed epochs (how often
is ``tlkit.engine.runner``'s choice) and ``best.safetensors`` for its best epoch. The ``.pt`` file records the
SHA-256 of its
weights file, so a truncated or corrupted pair is detected and the previous pair is used instead. States are read
with ``weights_only=True``: a pickle that would run code on load is refused.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tlkit.errors import describe_error
from tlkit.utils.files import atomic_write, set_aside, sha256, torch_save

__all__ = ["save_weights", "save_tensors", "load_weights", "save_epoch", "load_latest", "rng_state", "set_rng_state",
           "prune_epochs"]

KEEP_EPOCHS = 2


def save_weights(path: Path, model: torch.nn.Module, metadata: dict[str, str] | None = None) -> None:
    save_tensors(path, model.state_dict(), metadata)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A state dict as safetensors, atomically (copies: safetensors refuses tensors that share memory)."""
    copies = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(copies, str(tmp), metadata=metadata))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a plain ``torch.save`` state dict (read with ``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain data (NumPy's key array as a tensor)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     cached], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _epoch_paths(folder: Path, epoch: int) -> tuple[Path, Path]:
    return folder / f"epoch_{epoch:04d}.safetensors", folder / f"epoch_{epoch:04d}.pt"


def save_epoch(folder: Path, epoch: int, model: torch.nn.Module, state: dict[str, Any],
               also_best: Path | None = None) -> None:
    """Save the checkpoint after finished ``epoch``; the ``.pt`` state (written last) commits it. ``also_best``:
    the same weights are the trial's best so far, so that file becomes a second name for the epoch's weights (a
    hard link: one write instead of two; where the file system has none, a second write)."""
    weights, state_path = _epoch_paths(folder, epoch)
    save_weights(weights, model, metadata={"epoch": str(epoch)})
    if also_best is not None:
        link_or_copy(weights, also_best)
    payload = {**state, "weights_sha256": sha256(weights), "rng": rng_state()}
    atomic_write(state_path, lambda tmp: torch_save(payload, tmp))
    prune_epochs(folder, keep=KEEP_EPOCHS)


def link_or_copy(source: Path, path: Path) -> None:
    """Make ``path`` name the same content as ``source``, atomically (readers see the old file or the new one)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:  # no hard links here (some network and FAT file systems): write a copy
        tmp.unlink(missing_ok=True)
        atomic_write(path, lambda t: shutil.copyfile(source, t))


def prune_epochs(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` epoch checkpoints (``keep=0``: all of them), and temp files left by a
    process killed mid-write."""
    states = sorted(folder.glob("epoch_*.pt"))
    for state_path in states[: max(0, len(states) - keep)]:
        state_path.with_suffix(".safetensors").unlink(missing_ok=True)
        state_path.unlink(missing_ok=True)
    for tmp in folder.glob(".*.tmp*"):
        if not tmp.name.endswith(f".tmp{os.getpid()}"):
            tmp.unlink(missing_ok=True)


def load_latest(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The newest checkpoint that loads and verifies, or None. A bad pair is reported by name and set aside
    (renamed ``*.bad``, never deleted, never trusted); the previous pair is used instead."""
    for state_path in sorted(Path(folder).glob("epoch_*.pt"), reverse=True):
        weights_path = state_path.with_suffix(".safetensors")
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("weights_sha256") is None:
                raise ValueError("not a tlkit checkpoint state")
        except Exception as err:  # noqa: BLE001 - truncated, corrupt, or a pickle that would run code
            _set_aside(state_path, weights_path, f"Checkpoint state {state_path} cannot be loaded safely "
                                                 f"({describe_error(err)})")
            continue
        if not weights_path.is_file() or sha256(weights_path) != state.get("weights_sha256"):
            _set_aside(state_path, weights_path, f"Checkpoint weights {weights_path} are missing or do not match "
                                                 f"their checksum")
            continue
        try:
            return load_file(str(weights_path)), state
        except Exception as err:  # noqa: BLE001
            _set_aside(state_path, weights_path, f"Checkpoint weights {weights_path} cannot be read "
                                                 f"({describe_error(err)})")
    return None


def _set_aside(state_path: Path, weights_path: Path, what: str) -> None:
    """A bad checkpoint pair is set aside together (kept for a post-mortem, never tried again)."""
    set_aside(state_path, what, "an earlier checkpoint is used instead, if there is one", weights_path)

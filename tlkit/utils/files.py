"""Files tlkit writes and reads back: atomic writes, checksums, its JSON files, whether a folder can be written, and
setting a damaged file aside.

Every layer writes files (decoded-data and feature caches, checkpoints, tables, plots), and each must see the same
rules: a reader finds the old file or the new one, never half of one; a file that cannot be read is renamed
``*.bad`` (kept for a post-mortem, never trusted again) with one warning; and neither a cache that cannot be written
nor a damaged file that cannot be moved stops anything, since a cache only buys speed.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from tlkit.errors import TlkitError, describe_error

__all__ = ["atomic_write", "write_cache", "torch_save", "sha256", "set_aside", "rebuild_folder", "check_writable",
           "read_json", "write_json", "check_out_file", "BAD_SUFFIX"]

log = logging.getLogger("tlkit")

BAD_SUFFIX = ".bad"


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``: readers see the old file or the new one.

    A failed write is raised as an ``OSError`` naming ``path`` whenever it carries an OS error code (safetensors
    reports a full disk as ``SafetensorError: ... (os error 28)``), so a full or read-only disk is recognised as such.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except Exception as err:
        fault = _as_os_error(err, path)
        if fault is err:
            raise
        raise fault from err
    finally:
        with contextlib.suppress(OSError):  # on a read-only disk even this fails; the error above is the news
            tmp.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable: a crash right after it must not bring the old file back."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _as_os_error(err: Exception, path: Path) -> Exception:
    """A failed write as an ``OSError`` naming ``path``; any error without an OS error code is returned as it is."""
    code = err.errno if isinstance(err, OSError) else None
    match = re.search(r"os error (\d+)", str(err)) if code is None else None
    code = int(match.group(1)) if match else code
    if code is None:
        return err
    return OSError(code, os.strerror(code), str(path))


def write_cache(path: Path, write: Callable[[Path], Any], what: str) -> bool:
    """``atomic_write`` for a cache file: one that cannot be written (read-only folder, full disk) only costs speed,
    so it is a warning, not an error. Returns whether the file was written."""
    try:
        atomic_write(path, write)
    except OSError as err:
        log.warning("%s cannot be cached in %s (%s); it will be computed again next time", what, path,
                    describe_error(err))
        return False
    return True


def torch_save(payload: Any, path: Path) -> None:
    """``torch.save`` through a Python file, so a full disk raises ``OSError`` (not a bare ``RuntimeError``)."""
    import torch  # here, not at the top: the bottom layer stays cheap to import

    with open(path, "wb") as fh:
        torch.save(payload, fh)


def sha256(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB chunks (weights files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def set_aside(path: Path, problem: str, then: str, *companions: Path) -> Path | None:
    """Rename the damaged file ``path`` (and ``companions``, files that only make sense with it) to ``*.bad`` and
    warn once: ``"<problem>; set aside as <name>.bad; <then>"``. Returns the new path, or None when it could not be
    moved.

    Never raises: the caller is already on its way to recovering (recomputing a cache, resuming from an earlier
    checkpoint), and a read-only folder or a concurrent worker that moved the file first must not turn that into a
    crash. A file left in place is only read, and set aside, again next time.
    """
    path = Path(path)
    aside = path.with_name(path.name + BAD_SUFFIX)
    try:
        os.replace(path, aside)
        for other in companions:
            if Path(other).exists():
                os.replace(other, Path(other).with_name(Path(other).name + BAD_SUFFIX))
    except OSError as err:
        log.warning("%s; it cannot be set aside as %s (%s), so it stays where it is; %s", problem, aside.name,
                    describe_error(err), then)
        return None
    log.warning("%s; set aside as %s; %s", problem, aside.name, then)
    return aside


def rebuild_folder(path: Path, build: Callable[[Path], Any], attempts: int = 3) -> None:
    """Build a derived folder anew (``build(tmp_folder)``) in a temporary sibling, then swap it in by renames.

    Readers see the old folder or the new one whole (for an instant, none), never one half deleted; two processes
    rebuilding at once (two reports of one results folder) each swap in a whole folder, the last one wins, and
    neither fails on a file the other deleted. A build that raises leaves ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{path.name}.new", dir=path.parent))
    try:
        build(built)
        for _ in range(attempts):
            if _swap_in(built, path):
                return
    finally:
        shutil.rmtree(built, ignore_errors=True)  # gone once swapped in; else a failed build or a lost race


def _swap_in(built: Path, path: Path) -> bool:
    """Move ``path`` aside and ``built`` into its place; False when another rebuild put its folder there between
    the two renames (the caller tries again)."""
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old", dir=path.parent))
    try:
        with contextlib.suppress(FileNotFoundError):  # none yet, or another rebuild moved it aside first
            os.replace(path, old)  # onto the empty temp folder: a rename, atomic
        try:
            os.rename(built, path)
        except OSError as err:  # ENOTEMPTY/EEXIST: the other rebuild's folder is there now
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            return False
        return True
    finally:
        shutil.rmtree(old, ignore_errors=True)


def check_writable(folder: Path, what: str = "The results folder") -> None:
    """Fail before anything is written when ``folder`` cannot hold files: it is a file, or it (or, while it does
    not exist, the folder it would be made in) is read-only; an existing ``study.db`` in it must be writable too."""
    folder = Path(folder).absolute()
    hint = "HINT: pass --out with a folder you can write (a new one, or this study's results folder)."
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise TlkitError(f"{what} {str(folder)!r} cannot be made: {str(existing)!r} is a file, not a folder. {hint}")
    for path in (existing, folder / "study.db"):
        if path.exists() and not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
            raise TlkitError(f"{what} {str(folder)!r} cannot be written: {str(path)!r} is read-only (or not "
                             f"yours). {hint}")


def read_json(path: Path, fix: str) -> dict[str, Any]:
    """A JSON object tlkit wrote (``experiment.json``, ``model.json``); one that cannot be read, or is not an
    object, is a TlkitError that names the file and ends with ``fix``."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TlkitError(f"{path} cannot be read ({describe_error(err)}). HINT: {fix}") from None
    if not isinstance(payload, dict):
        raise TlkitError(f"{path} holds a JSON {type(payload).__name__}, not the object tlkit writes: it is damaged. "
                         f"HINT: {fix}")
    return payload


def write_json(path: Path, payload: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str)))


def check_out_file(path: Path, example: str) -> None:
    """Refuse an ``--out`` file that cannot be written (a folder, in a missing or read-only folder, a read-only
    file) before any work is done, not after it; ``example`` is a file name to suggest instead of a folder."""
    folder = path.absolute().parent
    if path.is_dir():
        raise TlkitError(f"--out {str(path)!r} is a folder, not a file. HINT: name the file to write, e.g. --out "
                         f"{example!r}.")
    if not folder.is_dir():
        raise TlkitError(f"--out {str(path)!r} cannot be written: the folder {str(folder)!r} does not exist (or is "
                         f"a file). HINT: create it first (mkdir -p), or pass --out in an existing folder.")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TlkitError(f"--out {str(path)!r} cannot be written: it or its folder is read-only. HINT: pass --out in "
                         f"a folder you can write.")

"""A checkpoint store every worker reaches: a shared folder or an object store, through fsspec.

With ``--store URL`` (``/mnt/nfs/tlkit``, ``s3://bucket/prefix``, any fsspec URL), each trial still runs in its local
folder under the results folder, and its files are mirrored to ``URL/<study>/<folder>``: pushed after every
checkpoint and when the trial ends (retention applied there too), pulled before it starts. So a worker on another
machine that takes over a dead worker's trial resumes it from its last checkpoint, and the report of any worker can
score a best trial that ran elsewhere. Each file is written whole to its final name (an object store's put is
atomic; a shared folder gets a temporary name and a rename), so a reader never sees half a checkpoint.

S3 needs ``s3fs`` (``pip install 'tlkit[s3]'``); credentials and a custom endpoint come from the usual AWS
environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...).
"""
from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path
from tlkit.config.experiment import check_study_name
from tlkit.errors import TlkitError, describe_error, mask_secrets, url_password
from tlkit.utils.files import atomic_write

__all__ = ["Store", "open_store"]

log = logging.getLogger("tlkit")
MARKER = ".tlkit-store"


class Store:
    """Mirrors local trial folders (relative to the results folder ``local_root``) under ``url/<study>``."""

    def __init__(self, url: str, study: str, local_root: Path) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.url)
        self.root = posixpath.join(root, study)
        self.local_root = Path(local_root)

    def _remote(self, local: Path) -> str:
        return posixpath.join(self.root, local.relative_to(self.local_root).as_posix())

    def push(self, folder: Path, names: list[str] | None = None) -> None:
        """Upload the folder's files (or just ``names``), each whole; remove remote files the folder no longer has
        (retention) when pushing it all."""
        folder = Path(folder)
        remote = self._remote(folder)
        files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) \
            if names is None else names
        self.fs.makedirs(remote, exist_ok=True)
        for name in files:
            self._put(folder / name, posixpath.join(remote, name))
        if names is None:
            self.fs.invalidate_cache(remote)
            for path in self.fs.ls(remote, detail=False):
                if posixpath.basename(path) not in files:
                    self.fs.rm(path)

    def _put(self, local: Path, remote: str) -> None:
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        if "file" in protocols:  # a shared folder: a temporary name, then a rename
            tmp = f"{remote}.tmp{os.getpid()}"
            self.fs.put_file(str(local), tmp)
            self.fs.mv(tmp, remote)
        else:
            self.fs.put_file(str(local), remote)

    def pull(self, folder: Path) -> int:
        """Download the remote copy of ``folder`` into it (files it lacks or that differ in size); returns how many
        files came."""
        folder = Path(folder)
        remote = self._remote(folder)
        self.fs.invalidate_cache(remote)  # s3fs caches listings; another worker may have pushed since
        if not self.fs.exists(remote):
            return 0
        folder.mkdir(parents=True, exist_ok=True)
        came = 0
        for info in self.fs.ls(remote, detail=True):
            name = posixpath.basename(info["name"])
            if info.get("type") == "directory" or ".tmp" in name:
                continue
            local = folder / name
            if local.is_file() and local.stat().st_size == info.get("size"):
                continue
            atomic_write(local, lambda tmp, remote=info["name"]: self.fs.get_file(remote, str(tmp)))
            came += 1
        return came


def open_store(url: str | None, study: str, local_root: Path, create: bool = True) -> Store | None:
    """The store for ``--store URL`` (None without one); an unreachable or unknown store fails before any trial.
    ``create=False`` only checks that it can be reached (``--check`` writes nothing)."""
    if not url:
        return None
    check_study_name(study)  # <store>/<study>/ is pushed with deletes: it must be one folder inside the store
    try:
        store = Store(url, study, local_root)
        if create:  # write a marker: an object store has no folders, so only a write proves it can be written
            store.fs.makedirs(store.root, exist_ok=True)
            store.fs.pipe_file(posixpath.join(store.root, MARKER), b"tlkit checkpoint store\n")
        else:
            store.fs.exists(store.root)
    except ImportError as err:
        raise TlkitError(mask_secrets(
            f"The store {url!r} needs a package that is not installed ({describe_error(err)}). HINT: for S3, pip "
            f"install 'tlkit[s3]' (s3fs).", [url_password(url)])) from None
    except Exception as err:  # noqa: BLE001 - fsspec backends raise many types for the same problem
        raise TlkitError(mask_secrets(
            f"The store {url!r} cannot be reached or written ({describe_error(err)}). HINT: check the URL, the "
            f"credentials (AWS_* environment variables for S3) and that the folder or bucket exists.",
            [url_password(url)])) from None
    return store

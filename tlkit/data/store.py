"""The decoded-data store: a dataset decoded once per machine into ``.npy`` files that are memory-mapped, not loaded.

One folder per (dataset, decode size, options) under ``$TLKIT_CACHE/datasets``::

    train.npy, test.npy   uint8 (N, 3, H, W) in numpy's own format, written chunk by chunk (``open_memmap``)
    labels.json           the classes and each split's labels
    progress.json         while decoding: the plan and how many chunks of each split are on disk (a restart resumes)
    complete.json         written last: the shapes a reader checks before it trusts the files

Reading maps the files (``np.load(mmap_mode="r")``): pages come from the page cache, so resident memory does not
grow with the dataset and every worker process on the machine shares one copy. Data that fits comfortably (at most
``IN_MEMORY_SHARE`` of the available memory, see ``in_memory_limit``) is read into memory instead, the fast path.
The first process to need a store builds it under a file lock; the others wait and map the result. A damaged store
is set aside and rebuilt.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from tlkit.data.datasets.base import Dataset, EncodedImages, decode_image
from tlkit.data.tensors import ImageSet
from tlkit.errors import TlkitError, describe_error
from tlkit.utils.files import BAD_SUFFIX, atomic_write, set_aside

__all__ = ["load_stored", "save_sets", "decode_all", "check_loaded", "in_memory_limit", "available_memory",
           "NoRoom", "too_big_error", "CHUNK", "IN_MEMORY_SHARE"]

log = logging.getLogger("tlkit")

SPLITS = ("train", "test")
CHUNK = 1024
"""Images decoded, written and recorded as done at a time: what a killed decode loses at most, per split."""
IN_MEMORY_SHARE = 0.25
"""Decoded data at most this share of the available memory is read into memory; bigger data is mapped."""
LOG_EVERY_S = 10.0

OnChunk = Callable[[str, int], None]
"""Called with (split, chunks done) each time a chunk is safely on disk; a test raises from it to simulate a kill."""


class NoRoom(Exception):
    """The cache's disk cannot hold the store: ``need`` bytes more, ``free`` free."""

    def __init__(self, need: int, free: int, folder: Path, shapes: dict[str, list[int]]) -> None:
        super().__init__(f"{need} bytes needed, {free} free in {folder}")
        self.need, self.free, self.folder, self.shapes = need, free, folder, shapes


# --- sizes -------------------------------------------------------------------------------------------------------

def cpu_count() -> int:
    """The CPUs this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_memory() -> int:
    """Bytes of memory available to new allocations without swapping (``MemAvailable``)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def in_memory_limit() -> int:
    """The most decoded bytes read into memory rather than mapped: ``IN_MEMORY_SHARE`` of the available memory,
    shared by the ``$TLKIT_LOCAL_WORKERS`` worker processes ``--workers N`` starts on the machine (each would hold
    its own copy), or ``$TLKIT_IN_MEMORY_LIMIT`` bytes when set (0 always maps)."""
    if os.environ.get("TLKIT_IN_MEMORY_LIMIT"):
        return int(float(os.environ["TLKIT_IN_MEMORY_LIMIT"]))
    workers = max(1, int(os.environ.get("TLKIT_LOCAL_WORKERS") or 1))
    return int(IN_MEMORY_SHARE * available_memory() / workers)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def too_big_error(name: str, need: int, shapes: dict[str, list[int]] | None, folder: Path | None,
                  free_disk: int | None, memory: int, cause: str = "") -> TlkitError:
    """The refusal, before any trial, of data that neither the cache's disk nor memory can hold."""
    count = sum(s[0] for s in shapes.values()) if shapes else None
    what = f" ({count} images at {shapes['train'][3]}x{shapes['train'][2]})" if shapes else ""
    disk = f"the cache {folder} has {_gib(free_disk)} free" if folder is not None and free_disk is not None else ""
    small = (f" (at 64 px it would be {_gib(count * 3 * 64 * 64)})" if count else "")
    return TlkitError(f"Dataset {name!r} decodes to {_gib(need)}{what}{cause}, but {disk + ' and ' if disk else ''}"
                      f"memory has {_gib(memory)} available. HINT: set a smaller data.decode_size{small}, a smaller "
                      f"train.image_size with data.decode_size to match, or point TLKIT_CACHE at a disk with room "
                      f"for the decoded data.")


# --- decoding ----------------------------------------------------------------------------------------------------

class _Progress:
    """A log line every ``LOG_EVERY_S`` seconds of a long decode: images done, images/s, time left."""

    def __init__(self, what: str, total: int, done: int = 0) -> None:
        self.what, self.total, self.done, self.start_done = what, total, done, done
        self.start = self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= LOG_EVERY_S and self.done < self.total:
            rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
            log.info("decoding %s: %d/%d images, %.0f images/s, about %.0f s left", self.what, self.done,
                     self.total, rate, (self.total - self.done) / max(rate, 1e-9))
            self.last = now


def _first_size(encoded: EncodedImages) -> tuple[int, int]:
    """``(width, height)`` every image is decoded to: the dataset's, or the first training image's own."""
    if encoded.size is not None:
        return encoded.size
    name = encoded.files["train"][0]
    arr = decode_image(_as_input(encoded.read(name)), None, encoded.where(name))
    return arr.shape[1], arr.shape[0]


def _as_input(raw: bytes | Path | str) -> bytes | Path:
    return raw if isinstance(raw, bytes) else Path(raw)


def _chunks(n: int, start_chunk: int) -> Iterator[tuple[int, int, int]]:
    for c in range(start_chunk, math.ceil(n / CHUNK)):
        yield c, c * CHUNK, min(n, (c + 1) * CHUNK)


def _fill(encoded: EncodedImages, split: str, out: np.ndarray, size: tuple[int, int], pool: ThreadPoolExecutor,
          progress: _Progress, start_chunk: int = 0, persist: Callable[[int], None] | None = None) -> None:
    """Decode ``split`` into ``out`` (N, 3, H, W) chunk by chunk, from chunk ``start_chunk`` on. The files are read
    in this thread (a zip is not shared between threads); the decoding runs on ``pool`` (Pillow releases the GIL)."""
    names = encoded.files[split]
    where = encoded.where

    def decode(item: tuple[bytes | Path, str]) -> np.ndarray:
        return decode_image(item[0], size, where(item[1]))

    for c, i, j in _chunks(len(names), start_chunk):
        raws = [_as_input(encoded.read(name)) for name in names[i:j]]
        out[i:j] = np.stack(list(pool.map(decode, zip(raws, names[i:j])))).transpose(0, 3, 1, 2)
        if persist is not None:
            persist(c + 1)
        progress.add(j - i)


def decode_all(encoded: EncodedImages) -> tuple[ImageSet, ImageSet]:
    """Both splits decoded into memory, in parallel on every CPU of the process (one copy of the data, no store)."""
    try:
        width, height = _first_size(encoded)
        progress = _Progress("images", len(encoded))
        out = []
        with ThreadPoolExecutor(cpu_count()) as pool:
            for split in SPLITS:
                images = np.empty((len(encoded.files[split]), 3, height, width), dtype=np.uint8)
                _fill(encoded, split, images, (width, height), pool, progress)
                out.append(ImageSet(torch.from_numpy(images), torch.tensor(encoded.labels[split], dtype=torch.long),
                                    list(encoded.classes)))
        return out[0], out[1]
    finally:
        encoded.close()


def check_loaded(name: str, s: Any, split: str) -> None:
    """What a dataset plugin's ``load()`` returns is checked once, before it is stored or trained on."""
    ok = (isinstance(s, ImageSet) and isinstance(s.images, torch.Tensor) and s.images.dtype == torch.uint8
          and s.images.dim() == 4 and s.images.shape[1] == 3 and isinstance(s.labels, torch.Tensor)
          and s.labels.dtype == torch.long and s.labels.shape == (len(s.images),))
    if not ok:
        got = (f"images {tuple(s.images.shape)} {s.images.dtype}, labels {tuple(s.labels.shape)} {s.labels.dtype}"
               if isinstance(s, ImageSet) and all(isinstance(t, torch.Tensor) for t in (s.images, s.labels))
               else type(s).__name__)
        raise TlkitError(f"Dataset {name!r} returned a {split} split that is not uint8 images (N, 3, H, W) with int64 "
                         f"labels (N,): got {got}. HINT: its load() returns (train, test) ImageSets of that shape.")


# --- the store ---------------------------------------------------------------------------------------------------

def _write_json(path: Path, payload: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload)))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _open_checked(folder: Path, key: str) -> dict[str, Any]:
    """The store's maps and labels, checked against its completion marker; raises on anything amiss."""
    meta = _read_json(folder / "complete.json")
    labels = _read_json(folder / "labels.json")
    if meta.get("key") != key:
        raise ValueError("it belongs to other data")
    found: dict[str, Any] = {"classes": list(labels["classes"])}
    for split in SPLITS:
        arr = np.load(folder / f"{split}.npy", mmap_mode="r")
        want = tuple(meta["shapes"][split])
        if arr.dtype != np.uint8 or arr.shape != want or arr.ndim != 4 or arr.shape[1] != 3:
            raise ValueError(f"{split}.npy holds {arr.shape} {arr.dtype}, its marker says {want} uint8")
        lab = np.asarray(labels[split], dtype=np.int64)
        if lab.shape != (want[0],) or (len(lab) and not 0 <= lab.min() <= lab.max() < len(found["classes"])):
            raise ValueError(f"its {split} labels do not match its images")
        found[split] = (arr, lab)
    return found


def _find(folder: Path, key: str, repair: bool) -> dict[str, Any] | None:
    """A complete, sound store, or None. With ``repair`` (under the lock), a damaged one is set aside; a partial one
    with its progress marker stays, to be resumed."""
    if not folder.is_dir():
        return None
    if not (folder / "complete.json").is_file() and (not repair or (folder / "progress.json").is_file()):
        return None
    try:
        return _open_checked(folder, key)
    except Exception as err:  # noqa: BLE001 - a damaged store is rebuilt, never trusted
        if repair:
            problem = describe_error(err) if (folder / "complete.json").is_file() else "no completion marker"
            shutil.rmtree(folder.with_name(folder.name + BAD_SUFFIX), ignore_errors=True)
            set_aside(folder, f"decoded-data store {folder} cannot be used ({problem})", "rebuilt from the images")
            if folder.exists():  # could not be moved: build afresh in place
                shutil.rmtree(folder, ignore_errors=True)
        return None


def _check_room(folder: Path, need: int, shapes: dict[str, list[int]]) -> None:
    free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    if need > free:
        raise NoRoom(need, free, folder.parent, shapes)


def _build(dataset: Dataset, name: str, folder: Path, key: str, on_chunk: OnChunk | None) -> None:
    """Decode ``dataset`` into ``folder``, resuming a partial decode whose plan matches."""
    encoded = dataset.encoded()
    if encoded is None:
        train, test = dataset.load()
        check_loaded(name, train, "train")
        check_loaded(name, test, "test")
        save_sets(folder, key, train, test)
        return
    try:
        width, height = _first_size(encoded)
        shapes = {s: [len(encoded.files[s]), 3, height, width] for s in SPLITS}
        plan = {"key": key, "classes": list(encoded.classes), "shapes": shapes, "chunk": CHUNK}
        try:
            progress = _read_json(folder / "progress.json")
            done = {s: int(progress["done"][s]) for s in SPLITS} if progress["plan"] == plan else None
            for s in SPLITS if done else ():
                if np.load(folder / f"{s}.npy", mmap_mode="r").shape != tuple(shapes[s]):
                    done = None
        except Exception:  # noqa: BLE001 - no usable progress: decode from the start
            done = None
        per_image = 3 * height * width
        todo = sum(max(0, shapes[s][0] - (done[s] if done else 0) * CHUNK) for s in SPLITS) * per_image
        _check_room(folder, todo, shapes)
        if done is None:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            _write_json(folder / "labels.json", {"classes": list(encoded.classes), **encoded.labels})
            done = {s: 0 for s in SPLITS}
            _write_json(folder / "progress.json", {"plan": plan, "done": done})
            for s in SPLITS:
                # allocates the file at its full size (sparse until written); the map is closed at once
                np.lib.format.open_memmap(folder / f"{s}.npy", mode="w+", dtype=np.uint8, shape=tuple(shapes[s]))
        else:
            log.info("resuming the decode of %s into %s (%s)", name, folder, done)
        progress_log = _Progress(name, len(encoded), sum(min(done[s] * CHUNK, shapes[s][0]) for s in SPLITS))
        with ThreadPoolExecutor(cpu_count()) as pool:
            for s in SPLITS:
                out = np.lib.format.open_memmap(folder / f"{s}.npy", mode="r+")

                def persist(chunks: int, s: str = s, out: np.ndarray = out) -> None:
                    out.flush()
                    done[s] = chunks
                    _write_json(folder / "progress.json", {"plan": plan, "done": done})
                    if on_chunk is not None:
                        on_chunk(s, chunks)

                _fill(encoded, s, out, (width, height), pool, progress_log, done[s], persist)
                out.flush()
                del out
                _fsync(folder / f"{s}.npy")
        _write_json(folder / "complete.json", {"key": key, "shapes": shapes, "dtype": "uint8"})
        (folder / "progress.json").unlink(missing_ok=True)
        seconds = time.monotonic() - progress_log.start
        log.info("decoded %d images of %s into %s in %.1f s (%.0f images/s, %d threads)", len(encoded), name, folder,
                 seconds, (progress_log.done - progress_log.start_done) / max(seconds, 1e-9), cpu_count())
    finally:
        encoded.close()


def save_sets(folder: Path, key: str, train: ImageSet, test: ImageSet) -> None:
    """Write splits already in memory (what a plugin's ``load()`` returned) as a store, chunk by chunk."""
    shutil.rmtree(folder, ignore_errors=True)
    shapes = {s: list(part.images.shape) for s, part in zip(SPLITS, (train, test))}
    _check_room(folder, sum(math.prod(v) for v in shapes.values()), shapes)
    folder.mkdir(parents=True)
    _write_json(folder / "labels.json", {"classes": list(train.classes), "train": train.labels.tolist(),
                                         "test": test.labels.tolist()})
    for s, part in zip(SPLITS, (train, test)):
        out = np.lib.format.open_memmap(folder / f"{s}.npy", mode="w+", dtype=np.uint8, shape=tuple(shapes[s]))
        for _, i, j in _chunks(len(part.images), 0):
            out[i:j] = part.images[i:j].cpu().numpy()
        out.flush()
        del out
        _fsync(folder / f"{s}.npy")
    _write_json(folder / "complete.json", {"key": key, "shapes": shapes, "dtype": "uint8"})


def _serve(found: dict[str, Any], folder: Path) -> tuple[ImageSet, ImageSet]:
    """In memory when it fits comfortably (``in_memory_limit``), else the read-only maps themselves."""
    classes = found["classes"]
    in_memory = sum(found[s][0].nbytes for s in SPLITS) <= in_memory_limit()
    out = []
    for s in SPLITS:
        arr, labels = found[s]
        labels = torch.from_numpy(labels)
        if in_memory:
            out.append(ImageSet(torch.from_numpy(np.load(folder / f"{s}.npy")), labels, classes))
        else:
            out.append(ImageSet(arr, labels, classes, source=f"{folder.name}/{s}"))
    return out[0], out[1]


def load_stored(dataset: Dataset, name: str, folder: Path, key: str, on_chunk: OnChunk | None = None
                ) -> tuple[ImageSet, ImageSet]:
    """Both splits from the store at ``folder``, decoding it first when it is missing, partial or damaged.

    Raises ``NoRoom`` when the disk cannot hold it and ``OSError`` when the cache cannot be written.
    """
    from filelock import FileLock

    found = _find(folder, key, repair=False)
    if found is None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):
            found = _find(folder, key, repair=True)
            if found is None:
                _build(dataset, name, folder, key, on_chunk)
                found = _open_checked(folder, key)
    return _serve(found, folder)

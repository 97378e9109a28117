"""Datasets as plugins: ``@register_dataset`` on a small class, one file each (see ``base.Dataset``).

``load_dataset`` decodes a dataset once per machine into a memory-mapped store under ``$TLKIT_CACHE/datasets``
(``tlkit.engine.splits.splits_for`` turns an experiment's ``Data`` section into the splits every cell shares).
Third-party packages add datasets through the ``tlkit.data.datasets`` entry-point group; an experiment file can
register its own.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from tlkit.data import store
from tlkit.data.tensors import ImageSet, cache_dir
from tlkit.data.datasets.base import (DATASETS, Dataset, EncodedImages, decode_image,  # noqa: F401
                                      get_dataset, list_datasets, register_dataset)
from tlkit.errors import describe_error

# Built-ins, imported explicitly so `ls tlkit/datasets` is the list.
from tlkit.data.datasets import cifar10, cifar100, digits, imagefolder, table, torchvision_sets  # noqa: F401, E402

log = logging.getLogger("tlkit")

__all__ = ["Dataset", "EncodedImages", "DATASETS", "register_dataset", "list_datasets", "get_dataset",
           "create_dataset", "load_dataset"]


def create_dataset(name: str, root: Any = None, download: bool = True, decode_size: int | None = None,
                   options: dict[str, Any] | None = None) -> Dataset:
    return get_dataset(name)(root, download=download, decode_size=decode_size, options=options)


def load_dataset(name: str, root: Any = None, download: bool = True, decode_size: int | None = None,
                 options: dict[str, Any] | None = None, on_chunk: Any = None) -> tuple[ImageSet, ImageSet]:
    """Both splits of a dataset as uint8 images, from its decoded-data store (``tlkit.data.store``), which is built
    the first time, once per machine.

    Data at most a quarter of the available memory comes back in memory; bigger data comes back memory-mapped, so
    it never has to fit. A damaged store is set aside (renamed ``*.bad``) with a warning and rebuilt; missing data
    raises a TlkitError that says where it looked and how to supply the data; data that fits neither the cache's disk
    nor memory is refused, naming the sizes and the options. ``on_chunk(split, chunks_done)`` is called as each
    chunk of a decode is on disk.
    """
    dataset = create_dataset(name, root, download, decode_size, options)
    dataset.check()
    try:
        return _load(dataset, name, decode_size, options, on_chunk)
    except MemoryError as err:
        raise store.too_big_error(name, 0, None, None, None, store.available_memory(),
                                  f" more than memory holds ({describe_error(err)})") from None


def _load(dataset: Dataset, name: str, decode_size: int | None, options: dict[str, Any] | None, on_chunk: Any
          ) -> tuple[ImageSet, ImageSet]:
    key = dataset.cache_key()
    if key is None:  # not worth storing, or not there yet (a download)
        train, test = dataset.load()
        store.check_loaded(name, train, "train")
        store.check_loaded(name, test, "test")
        key = dataset.cache_key()  # after a download the files are there
        if key is not None:
            try:
                store.save_sets(_store_path(name, key, decode_size, options), key, train, test)
            except (OSError, store.NoRoom) as err:
                log.warning("the decoded data of %s cannot be stored (%s); it will be decoded again next time", name,
                            describe_error(err))
        return train, test
    folder = _store_path(name, key, decode_size, options)
    try:
        return store.load_stored(dataset, name, folder, key, on_chunk)
    except store.NoRoom as short:
        memory = store.available_memory()
        if short.need > store.in_memory_limit():
            raise store.too_big_error(name, short.need, short.shapes, short.folder, short.free, memory) from None
        log.warning("the decoded data of %s (%d MiB) does not fit the cache's disk (%d MiB free in %s); decoding it "
                    "into memory, again next time", name, short.need >> 20, short.free >> 20, short.folder)
    except OSError as err:
        log.warning("the decoded data of %s cannot be stored in %s (%s); decoding it into memory, again next time",
                    name, folder, describe_error(err))
    train, test = dataset.load()
    store.check_loaded(name, train, "train")
    store.check_loaded(name, test, "test")
    return train, test


def _store_path(name: str, key: str, decode_size: int | None, options: dict[str, Any] | None) -> Path:
    digest = hashlib.sha256(f"{name}:{key}:{decode_size}:{sorted((options or {}).items())}".encode()).hexdigest()
    return cache_dir() / "datasets" / f"{name}-{digest[:16]}"

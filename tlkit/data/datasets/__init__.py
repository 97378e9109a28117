"""Datasets as plugins: ``@register_dataset`` on a small class, one file each (see ``base.Dataset``).

``load_dataset`` decodes a dataset once and caches the uint8 tensors under ``$TLKIT_CACHE/datasets``
(``tlkit.engine.splits.splits_for`` turns an experiment's ``Data`` section into the splits every cell shares). Third-party packages add
datasets through the ``tlkit.data.datasets`` entry-point group; an experiment file can register its own.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch

from tlkit.data.tensors import ImageSet, cache_dir
from tlkit.data.datasets.base import (DATASETS, Dataset, decode_image, get_dataset, list_datasets,  # noqa: F401
                                 register_dataset)
from tlkit.errors import TlkitError, describe_error
from tlkit.utils.files import set_aside, torch_save, write_cache

# Built-ins, imported explicitly so `ls tlkit/datasets` is the list.
from tlkit.data.datasets import cifar10, cifar100, digits, imagefolder, table, torchvision_sets  # noqa: F401, E402

__all__ = ["Dataset", "DATASETS", "register_dataset", "list_datasets", "get_dataset", "create_dataset",
           "load_dataset"]


def create_dataset(name: str, root: Any = None, download: bool = True, decode_size: int | None = None,
                   options: dict[str, Any] | None = None) -> Dataset:
    return get_dataset(name)(root, download=download, decode_size=decode_size, options=options)


def load_dataset(name: str, root: Any = None, download: bool = True, decode_size: int | None = None,
                 options: dict[str, Any] | None = None) -> tuple[ImageSet, ImageSet]:
    """Decode a whole dataset (train and test splits) into uint8 tensors, cached on disk by the dataset's key.

    A cache file that cannot be read is set aside (renamed ``*.bad``) with a warning and rebuilt; missing data
    raises a TlkitError that says where it looked and how to supply the data.
    """
    dataset = create_dataset(name, root, download, decode_size, options)
    dataset.check()
    key = dataset.cache_key()
    cached = _cache_path(name, key, decode_size, options) if key is not None else None
    if cached is not None and cached.is_file():
        try:
            blob = torch.load(cached, weights_only=True)
            return (ImageSet(blob["train_images"], blob["train_labels"], blob["classes"]),
                    ImageSet(blob["test_images"], blob["test_labels"], blob["classes"]))
        except Exception as err:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
            set_aside(cached, f"decoded-data cache {cached} cannot be read ({describe_error(err)})",
                      "rebuilt from the images")
    train, test = dataset.load()
    _check_loaded(name, train, "train")
    _check_loaded(name, test, "test")
    key = dataset.cache_key()  # after a download the files are there
    if key is not None:
        _save(_cache_path(name, key, decode_size, options), train, test)
    return train, test


def _check_loaded(name: str, s: Any, split: str) -> None:
    """What a dataset plugin's ``load()`` returns is checked once, before it is cached or trained on."""
    ok = (isinstance(s, ImageSet) and isinstance(s.images, torch.Tensor) and s.images.dtype == torch.uint8
          and s.images.dim() == 4 and s.images.shape[1] == 3 and isinstance(s.labels, torch.Tensor)
          and s.labels.dtype == torch.long and s.labels.shape == (len(s.images),))
    if not ok:
        got = (f"images {tuple(s.images.shape)} {s.images.dtype}, labels {tuple(s.labels.shape)} {s.labels.dtype}"
               if isinstance(s, ImageSet) and all(isinstance(t, torch.Tensor) for t in (s.images, s.labels))
               else type(s).__name__)
        raise TlkitError(f"Dataset {name!r} returned a {split} split that is not uint8 images (N, 3, H, W) with int64 "
                         f"labels (N,): got {got}. HINT: its load() returns (train, test) ImageSets of that shape.")


def _cache_path(name: str, key: str, decode_size: int | None, options: dict[str, Any] | None) -> Any:
    digest = hashlib.sha256(f"{name}:{key}:{decode_size}:{sorted((options or {}).items())}".encode()).hexdigest()
    return cache_dir() / "datasets" / f"{name}-{digest[:16]}.pt"


def _save(path: Any, train: ImageSet, test: ImageSet) -> None:
    """Write the cache atomically; a cache that cannot be written (read-only or full disk) only costs speed."""
    blob = {"train_images": train.images, "train_labels": train.labels, "test_images": test.images,
            "test_labels": test.labels, "classes": train.classes}
    write_cache(path, lambda tmp: torch_save(blob, tmp), "the decoded data")

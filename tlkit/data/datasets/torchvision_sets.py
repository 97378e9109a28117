"""The classification datasets torchvision ships, by name: downloaded when online, read from the data dir when not.

Each is registered from one row of ``TORCHVISION_DATASETS``: torchvision's class, the splits that make up tlkit's
train and test splits (a dataset's own validation split joins train: tlkit carves its validation split itself),
and the folder torchvision keeps it in under the data dir. Images of mixed sizes are stored at
``data.decode_size`` (default 256 px, shorter side resized, centre crop); the experiment's ``train.image_size``
then resizes them once more when the splits are made.

An ImageFolder copy (``train/<class>/``, ``test/<class>/``, as a folder or a zip) under the data dir is used when
torchvision's own folder is not there, so a dataset prepared elsewhere works offline.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import numpy as np
import torch

from tlkit.data.tensors import ImageSet, cache_dir
from tlkit.data.datasets.base import (DEFAULT_DECODE_SIZE, Dataset, EncodedImages, files_key, fit_image,
                                      register_dataset)
from tlkit.data.datasets.imagefolder import find_imagefolder, list_imagefolder, read_imagefolder, stack_images
from tlkit.errors import TlkitError, describe_error

__all__ = ["TorchvisionDataset", "TORCHVISION_DATASETS"]

TORCHVISION_DATASETS: dict[str, dict[str, Any]] = {
    # name: torchvision class, folder under the data dir, train splits, test splits
    "flowers102": {"cls": "Flowers102", "folder": "flowers-102",
                   "train": [{"split": "train"}, {"split": "val"}], "test": [{"split": "test"}]},
    "oxford_iiit_pet": {"cls": "OxfordIIITPet", "folder": "oxford-iiit-pet",
                        "train": [{"split": "trainval"}], "test": [{"split": "test"}]},
    "dtd": {"cls": "DTD", "folder": "dtd", "train": [{"split": "train"}, {"split": "val"}],
            "test": [{"split": "test"}]},
    "food101": {"cls": "Food101", "folder": "food-101", "train": [{"split": "train"}], "test": [{"split": "test"}]},
    "fgvc_aircraft": {"cls": "FGVCAircraft", "folder": "fgvc-aircraft-2013b",
                      "train": [{"split": "trainval"}], "test": [{"split": "test"}]},
    "stanford_cars": {"cls": "StanfordCars", "folder": "stanford_cars",
                      "train": [{"split": "train"}], "test": [{"split": "test"}]},
    "gtsrb": {"cls": "GTSRB", "folder": "gtsrb", "train": [{"split": "train"}], "test": [{"split": "test"}]},
    "country211": {"cls": "Country211", "folder": "country211",
                   "train": [{"split": "train"}, {"split": "valid"}], "test": [{"split": "test"}]},
    "stl10": {"cls": "STL10", "folder": "stl10_binary", "train": [{"split": "train"}], "test": [{"split": "test"}]},
}


class TorchvisionDataset(Dataset):
    """A torchvision classification dataset under the data dir (default ``$TLKIT_CACHE/data``)."""

    torchvision_class: ClassVar[str] = ""
    folder: ClassVar[str] = ""
    train_splits: ClassVar[list[dict[str, Any]]] = [{"train": True}]
    test_splits: ClassVar[list[dict[str, Any]]] = [{"train": False}]
    native_size: ClassVar[int | None] = None
    """The size every image has (CIFAR: 32), kept when ``decode_size`` is not set."""

    @property
    def data_dir(self) -> Path:
        return self.root if self.root is not None else cache_dir() / "data"

    def _copy(self) -> Path | None:
        """An ImageFolder copy under the data dir, used when torchvision's own folder is not there."""
        if (self.data_dir / self.folder).exists() or not self.data_dir.exists():
            return None
        return find_imagefolder(self.data_dir)

    def cache_key(self) -> str | None:
        size = f":{self.decode_size}" if self.decode_size else ""
        own = self.data_dir / self.folder
        if own.exists():
            return files_key(own) + size
        copy = self._copy()
        return files_key(copy) + size if copy is not None else None

    def encoded(self) -> EncodedImages | None:
        copy = self._copy()
        return list_imagefolder(copy, self.decode_size or self.native_size) if copy is not None else None

    def load(self) -> tuple[ImageSet, ImageSet]:
        copy = self._copy()
        if copy is not None:
            return read_imagefolder(copy, self.decode_size or self.native_size)
        present = (self.data_dir / self.folder).exists()
        if not present and not self.download:
            raise TlkitError(f"{self.name} is not under {self.data_dir} (looked for torchvision's '{self.folder}/' "
                             f"folder and for an ImageFolder copy, a folder or .zip with train/<class>/ and "
                             f"test/<class>/) and data.download is off. HINT: pass --data-dir DIR pointing at a copy, "
                             f"or allow the download.")
        if not present:
            self._check_online()
        train_parts = [self._read_split(kwargs, download=not present and i == 0)
                       for i, kwargs in enumerate(self.train_splits)]
        test_parts = [self._read_split(kwargs, download=False) for kwargs in self.test_splits]
        classes = list(dict.fromkeys(c for p in train_parts for c in p.classes))
        return _join(train_parts, classes, self.name), _join(test_parts, classes, self.name)

    def _torchvision(self, kwargs: dict[str, Any], download: bool) -> Any:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, self.torchvision_class)
        try:
            return cls(str(self.data_dir), download=download, **kwargs)
        except Exception as err:  # noqa: BLE001 - a failed download or a damaged copy has the same remedies
            raise TlkitError(f"{self.name} could not be read from {self.data_dir / self.folder}"
                             f"{' or downloaded' if download else ''} ({describe_error(err)}). HINT: pass --data-dir "
                             f"DIR where DIR holds torchvision's '{self.folder}/' folder or an ImageFolder copy "
                             f"(train/<class>/, test/<class>/ as a folder or a .zip); delete a partial download "
                             f"first.") from None

    def _check_online(self) -> None:
        """Fail at once, naming the dataset and where to put it, when the download host is unreachable."""
        import torchvision.datasets

        cls = getattr(torchvision.datasets, self.torchvision_class)
        url = next((getattr(cls, a) for a in ("url", "_URL", "_download_url_prefix")
                    if isinstance(getattr(cls, a, None), str)), None)
        host = urlparse(url).hostname if isinstance(url, str) else None
        if host is None:
            return  # no single URL to probe: let torchvision try
        try:
            socket.create_connection((host, 443), timeout=3.0).close()
        except OSError as err:
            raise TlkitError(f"{self.name} is not under {self.data_dir} and cannot be downloaded: {host} is "
                             f"unreachable ({describe_error(err)}). HINT: pass --data-dir DIR where DIR holds "
                             f"torchvision's '{self.folder}/' folder or an ImageFolder copy (train/<class>/, "
                             f"test/<class>/ as a folder or a .zip).") from None

    def _read_split(self, kwargs: dict[str, Any], download: bool) -> ImageSet:
        ds = self._torchvision(kwargs, download)
        classes = [str(c) for c in getattr(ds, "classes", [])]
        data = getattr(ds, "data", None)
        if isinstance(data, np.ndarray) and data.ndim == 4 and self.decode_size is None:  # CIFAR, STL-10: arrays
            images = torch.from_numpy(data if data.shape[1] == 3 else data.transpose(0, 3, 1, 2)).contiguous()
            labels = torch.as_tensor(np.asarray(getattr(ds, "targets", getattr(ds, "labels", None))),
                                     dtype=torch.long)
        else:
            size = self.decode_size or self.native_size or DEFAULT_DECODE_SIZE
            arrays, targets = [], []
            for i in range(len(ds)):
                img, label = ds[i]
                arrays.append(fit_image(img, (size, size)))
                targets.append(int(label))
            images, labels = stack_images(arrays), torch.tensor(targets, dtype=torch.long)
        if not classes:
            classes = [str(i) for i in range(int(labels.max()) + 1)]
        return ImageSet(images, labels, classes)


def _join(parts: list[ImageSet], classes: list[str], name: str) -> ImageSet:
    """Splits read separately (train + val) as one ImageSet, labels mapped by class name onto ``classes``: a
    torchvision split may list only the classes it holds."""
    labels = []
    for part in parts:
        missing = sorted(set(part.classes) - set(classes))
        if missing:
            raise TlkitError(f"{name}: class {missing[0]!r} has test images but no training images. HINT: check the "
                             f"copy under the data dir; it may be incomplete.")
        remap = torch.tensor([classes.index(c) for c in part.classes], dtype=torch.long)
        labels.append(remap[part.labels])
    return ImageSet(torch.cat([p.images for p in parts]), torch.cat(labels), classes)


def _register(name: str, row: dict[str, Any]) -> None:
    cls = type(row["cls"], (TorchvisionDataset,), {
        "__doc__": f"torchvision's {row['cls']}.", "__module__": __name__, "torchvision_class": row["cls"],
        "folder": row["folder"], "train_splits": row["train"], "test_splits": row["test"]})
    register_dataset(name)(cls)


for _name, _row in TORCHVISION_DATASETS.items():
    _register(_name, _row)

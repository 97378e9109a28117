"""The Dataset contract: a labelled image collection with a train and a test split, decoded once to uint8 tensors.

A dataset plugin is one small class in one file, registered like a strategy:

    @register_dataset("my_scans")
    class MyScans(Dataset):
        '''Scans from our archive.'''

        def load(self) -> tuple[ImageSet, ImageSet]:
            ...  # read self.root, return (train, test)

``tlkit.data.datasets.load_dataset`` caches what ``load`` returns on disk, keyed by ``cache_key()``.
"""
from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import numpy as np

from tlkit.data.tensors import ImageSet
from tlkit.errors import TlkitError, describe_error
from tlkit.registry import Registry

__all__ = ["Dataset", "EncodedImages", "DATASETS", "register_dataset", "list_datasets", "get_dataset", "decode_image",
           "fit_image", "files_key", "DEFAULT_DECODE_SIZE"]

DEFAULT_DECODE_SIZE = 256
"""Square size that images of mixed sizes are decoded to when ``data.decode_size`` is not set."""

T = TypeVar("T", bound=type)


@dataclass
class EncodedImages:
    """A dataset as encoded image files, listed but not decoded: what the decoded-data store (``tlkit.data.store``)
    decodes in parallel, chunk by chunk, straight into its memory-mapped files.

    Args:
        classes: the class names; ``labels`` index them.
        files: per split (``train``, ``test``), the names of its images, in order.
        labels: per split, one label per name.
        read: the encoded image of a name (bytes, or a file's path), called from one thread at a time.
        where: how a name is shown in an error (``/data/pets.zip/train/cat/001.jpg``).
        size: ``(width, height)`` every image is decoded to; None: the first training image's size.
        close: called once the decoding is over (an open zip file is closed).
    """

    classes: list[str]
    files: dict[str, list[str]]
    labels: dict[str, list[int]]
    read: Callable[[str], bytes | Path]
    where: Callable[[str], str]
    size: tuple[int, int] | None = None
    close: Callable[[], None] = field(default=lambda: None)

    def __len__(self) -> int:
        return sum(len(names) for names in self.files.values())


class Dataset(ABC):
    """Where the images of one dataset come from.

    Args:
        root: the folder or file the user pointed at (``data.root`` or ``--data-dir``); None when not given.
        download: whether the dataset may be downloaded when it is not under ``root``.
        decode_size: images are stored at this square size (shorter side resized, centre crop); None keeps each
            dataset's own choice (its native size when all images share one).
        options: dataset-specific settings from ``data.options``.
    """

    name: ClassVar[str] = ""
    needs_root: ClassVar[bool] = False
    """True when there is no default location: the user must say where the data is."""

    def __init__(self, root: Path | None, download: bool = True, decode_size: int | None = None,
                 options: dict[str, Any] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.download = download
        self.decode_size = decode_size
        self.options = dict(options or {})

    @abstractmethod
    def load(self) -> tuple[ImageSet, ImageSet]:
        """Decode the whole dataset: ``(train, test)``, with the same class list in both."""

    def encoded(self) -> EncodedImages | None:
        """The dataset as image files to decode, when it is one (ImageFolder, a table of paths): the store then
        decodes them in parallel, chunk by chunk, never holding the whole set in memory. None (the default): the
        store is written from what ``load()`` returns."""
        return None

    def cache_key(self) -> str | None:
        """What the decoded cache is keyed by (None: not worth caching, or not there yet). The default keys a
        dataset under ``root`` by every file's size and modification time, so a replaced image is seen."""
        if self.root is None or not self.root.exists():
            return None
        return files_key(self.root)

    def check(self) -> None:
        """Fail early, before anything is written, when the data cannot be where it should be."""
        if self.needs_root and self.root is None:
            raise TlkitError(f"data.name={self.name!r} needs data.root (or --data-dir): the folder or file that holds "
                             f"the images.")
        if self.needs_root and not self.root.exists():
            raise TlkitError(f"Data {str(self.root)!r} for dataset {self.name!r} does not exist. HINT: pass "
                             f"--data-dir with the folder or file that holds the images.")


def _check_dataset(name: str, obj: object) -> None:
    if not (isinstance(obj, type) and issubclass(obj, Dataset)):
        raise TlkitError(f"dataset {name!r} must be a subclass of tlkit.data.datasets.Dataset but got {obj!r}.")


DATASETS: Registry[type[Dataset]] = Registry("dataset", "tlkit.datasets", check=_check_dataset,
                                             name_attribute="name",
                                             hint="HINT: register your own with @register_dataset('name').")


def register_dataset(name: str) -> Callable[[T], T]:
    """Class decorator: make a Dataset subclass available as ``Data(name)``."""
    return DATASETS.register(name)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern)


def get_dataset(name: str) -> type[Dataset]:
    return DATASETS.get(name)


def files_key(source: Path) -> str:
    """A digest of a file's or a folder's files (relative path, size, mtime): changes when any image does."""
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    stats = [(p.relative_to(source).as_posix() if p != source else p.name, p.stat().st_size, p.stat().st_mtime_ns)
             for p in files]
    return f"{source.resolve()}:{hashlib.sha256(repr(stats).encode()).hexdigest()}"


def fit_image(img: Any, size: tuple[int, int] | None) -> np.ndarray:
    """A PIL image as an RGB uint8 array ``(H, W, 3)``; at ``size`` (width, height) if given: resized so it covers
    the size, then centre-cropped (no stretching)."""
    from PIL import Image

    if size is not None and getattr(img, "format", None) == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
        # JPEG decodes at 1/2, 1/4 or 1/8 scale for far less work; draft keeps at least the size that covers `size`
        scale = max(size[0] / img.width, size[1] / img.height)
        if scale <= 0.5:
            img.draft(img.mode, (max(size[0], round(img.width * scale)), max(size[1], round(img.height * scale))))
    img = img.convert("RGB")
    if size is not None and img.size != size:
        scale = max(size[0] / img.width, size[1] / img.height)
        w, h = max(size[0], round(img.width * scale)), max(size[1], round(img.height * scale))
        img = img.resize((w, h), Image.BILINEAR)
        left, top = (w - size[0]) // 2, (h - size[1]) // 2
        img = img.crop((left, top, left + size[0], top + size[1]))
    return np.asarray(img, dtype=np.uint8)


def decode_image(data: bytes | Path, size: tuple[int, int] | None, name: str) -> np.ndarray:
    """An encoded image (bytes or a file) as :func:`fit_image` gives it; a file that is not an image, or is
    truncated, names itself in the error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            return fit_image(img, size)
    except UnidentifiedImageError:
        raise TlkitError(f"Image {name} cannot be decoded: it is not in an image format Pillow reads (a truncated "
                         f"file, or not an image at all). HINT: replace or remove the file and run again.") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise TlkitError(f"Image {name} cannot be decoded ({describe_error(err)}): it is truncated or damaged. "
                         f"HINT: replace or remove the file and run again.") from None

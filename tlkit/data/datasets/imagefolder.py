"""ImageFolder layout, from a folder or a ``.zip``: ``<root>/{train,test}/<class>/<image>``.

The zip may hold the layout under a top-level folder (``cifar10/train/cat/0001.jpg``), as the CIFAR-10 JPEG copy
does. Classes sort by name, as torchvision's ``ImageFolder`` sorts them.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from tlkit.data.tensors import ImageSet
from tlkit.data.datasets.base import Dataset, EncodedImages, register_dataset
from tlkit.errors import TlkitError, describe_error

__all__ = ["ImageFolder", "read_imagefolder", "list_imagefolder", "find_imagefolder", "stack_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@register_dataset("imagefolder")
class ImageFolder(Dataset):
    """``train/<class>/*`` and ``test/<class>/*`` images in a folder or a zip (``data.root``)."""

    needs_root = True

    def load(self) -> tuple[ImageSet, ImageSet]:
        self.check()
        return read_imagefolder(self.root, self.decode_size)

    def encoded(self) -> EncodedImages:
        self.check()
        return list_imagefolder(self.root, self.decode_size)


def find_imagefolder(root: Path) -> Path | None:
    """``root`` itself, or one folder or zip inside it, in ImageFolder layout (the shared ``cifar10-jpeg.zip`` in
    a data folder, say)."""
    if root.suffix == ".zip" and root.is_file():
        return root
    if (root / "train").is_dir():
        return root
    if root.is_dir():
        for candidate in sorted(root.iterdir()):
            if candidate.suffix == ".zip" or (candidate / "train").is_dir():
                return candidate
    return None


def _base(names: Sequence[str]) -> str | None:
    """The prefix under which ``train/<class>/<file>`` lives, e.g. ``cifar10/`` inside a zip."""
    bases = set()
    for name in names:
        parts = name.split("/")
        for i, part in enumerate(parts[:3]):
            if part == "train" and len(parts) > i + 2:
                bases.add("".join(p + "/" for p in parts[:i]))
    return min(bases, key=len) if bases else None


def stack_images(arrays: list[np.ndarray]) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 from ``N`` arrays ``(H, W, 3)`` of one size."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def read_imagefolder(root: Path, decode_size: int | None = None) -> tuple[ImageSet, ImageSet]:
    """Both splits of an ImageFolder folder or zip, decoded into memory. Images are stored at ``decode_size``
    (square) or, when it is None, at the first image's size (others resized to cover it and centre-cropped)."""
    from tlkit.data.store import decode_all

    return decode_all(list_imagefolder(root, decode_size))


def list_imagefolder(root: Path, decode_size: int | None = None) -> EncodedImages:
    """The image files of an ImageFolder folder or zip, listed and checked (not decoded): see ``EncodedImages``.
    A zip stays open until its ``close()``."""
    archive = None
    if root.suffix == ".zip":
        try:
            archive = zipfile.ZipFile(root)
        except (zipfile.BadZipFile, OSError) as err:
            raise TlkitError(f"{root} is not a readable zip file ({describe_error(err)}). HINT: check the download "
                             f"(it may be truncated), or unpack it and pass the folder.") from None
        names = archive.namelist()
        read: Callable[[str], bytes | Path] = archive.read
    else:
        names = [p.relative_to(root).as_posix() + ("/" if p.is_dir() else "") for p in root.rglob("*")]
        read = lambda name: root / name  # noqa: E731
    try:
        listed = _list(root, names, read, decode_size)
    except BaseException:
        if archive is not None:
            archive.close()
        raise
    if archive is not None:
        listed.close = archive.close
    return listed


def _check_no_empty_class(root: Path, base: str, names: list[str], files: list[str]) -> None:
    """A class folder without images would silently drop the class (and shift every label after it)."""
    for split in ("train", "test"):
        prefix = f"{base}{split}/"
        folders = {n[len(prefix):].split("/")[0] for n in names if n.startswith(prefix) and "/" in n[len(prefix):]}
        full = {n[len(prefix):].split("/")[0] for n in files if n.startswith(prefix)}
        empty = sorted(folders - full)
        if empty:
            raise TlkitError(f"{root}: the class folder {prefix}{empty[0]}/ holds no images (looked for "
                             f"{', '.join(IMAGE_SUFFIXES)}). HINT: add its images, or remove the folder to leave the "
                             f"class out.")


def _list(root: Path, names: list[str], read: Callable[[str], bytes | Path], decode_size: int | None
          ) -> EncodedImages:
    base = _base(names)
    if base is None:
        raise TlkitError(f"{root} is not in ImageFolder layout: no 'train/<class>/' folder found. HINT: arrange "
                         f"images as <root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg (a folder or a zip).")
    files = sorted(n for n in names if n.startswith(base) and n.lower().endswith(IMAGE_SUFFIXES))
    stray = [n for n in files if n[len(base):].count("/") < 2 and n[len(base):].split("/")[0] in ("train", "test")]
    if stray:
        raise TlkitError(f"{root}: {stray[0]!r} lies beside the class folders, so it has no class. HINT: move it "
                         f"into train/<class>/ or test/<class>/, or delete it.")
    classes = sorted({n[len(base):].split("/")[1] for n in files if n[len(base):].startswith("train/")})
    _check_no_empty_class(root, base, names, files)
    index = {c: i for i, c in enumerate(classes)}
    split_files, split_labels = {}, {}
    for split in ("train", "test"):
        split_files[split] = [n for n in files if n[len(base):].startswith(split + "/")]
        if not split_files[split]:
            raise TlkitError(f"{root} has no images under '{base}{split}/'. HINT: ImageFolder data needs both "
                             f"train/ and test/ folders of <class>/ subfolders.")
        labels = []
        for name in split_files[split]:
            cls = name[len(base):].split("/")[1]
            if cls not in index:
                raise TlkitError(f"{root}: class {cls!r} has test images ({name}) but no training images. HINT: add "
                                 f"training images to train/{cls}/ or remove test/{cls}/.")
            labels.append(index[cls])
        split_labels[split] = labels

    def read_checked(name: str) -> bytes | Path:
        try:
            return read(name)
        except (OSError, zipfile.BadZipFile) as err:
            raise TlkitError(f"Image {root}/{name} cannot be read ({describe_error(err)}). HINT: check the "
                             f"file (a zip may be truncated).") from None

    size = (decode_size, decode_size) if decode_size else None
    return EncodedImages(classes, split_files, split_labels, read_checked, lambda name: f"{root}/{name}", size)

"""Datasets decoded once into uint8 tensors, split honestly, and served as whole-batch tensors.

Why not ImageFolder + DataLoader: per-image PIL decoding and per-image transforms dominate an epoch on small images.
Here a dataset is decoded once (and cached on disk), batches are slices of one uint8 tensor, and augmentation (random
crop with padding, horizontal flip) is applied to the whole batch at once.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tlkit.errors import TlkitError

if TYPE_CHECKING:
    from tlkit.experiment import Data

__all__ = ["ImageSet", "Splits", "load_dataset", "make_splits", "iterate_batches", "augment_batch", "cache_dir",
           "to_device", "splits_for"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RESIZE_IN_MEMORY_BYTES = 2 << 30


@dataclass
class ImageSet:
    """Images as one uint8 tensor ``(N, 3, H, W)`` and labels as int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor | np.ndarray) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index], self.classes)


@dataclass
class Splits:
    """Train (for fitting), val (for model selection) and test (reported, never used to select)."""

    train: ImageSet
    val: ImageSet
    test: ImageSet

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)


def cache_dir() -> Path:
    """Where decoded datasets and trained source weights are cached: ``$TLKIT_CACHE`` or ``~/.cache/tlkit``."""
    return Path(os.environ.get("TLKIT_CACHE", Path.home() / ".cache" / "tlkit"))


# --- readers -----------------------------------------------------------------------------------------------------

def _digits() -> tuple[ImageSet, ImageSet]:
    """scikit-learn's 8x8 digits, split 80/20 (stratified, fixed seed: the split is part of the dataset)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8))
    images = images[:, None].expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0,
                                           stratify=bunch.target)
    classes = [str(i) for i in range(10)]
    whole = ImageSet(images, labels, classes)
    return whole.subset(train_idx), whole.subset(test_idx)


def _find_imagefolder_base(names: Sequence[str]) -> str | None:
    """The prefix under which ``train/<class>/<file>`` lives, e.g. ``cifar10/`` inside a zip."""
    bases = set()
    for name in names:
        parts = name.split("/")
        for i, part in enumerate(parts[:3]):
            if part == "train" and len(parts) > i + 2:
                bases.add("".join(p + "/" for p in parts[:i]))
    return min(bases, key=len) if bases else None


def _decode(data: bytes, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        if size is not None and img.size != size:
            img = img.resize(size, Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _imagefolder(root: Path) -> tuple[ImageSet, ImageSet]:
    """``<root>/{train,test}/<class>/*.jpg``, from a folder or a ``.zip`` of one. Classes sort by name."""
    if root.suffix == ".zip":
        archive = zipfile.ZipFile(root)
        names = archive.namelist()
        read = archive.read
    else:
        archive = None
        names = [p.relative_to(root).as_posix() + ("/" if p.is_dir() else "") for p in root.rglob("*")]
        read = lambda name: (root / name).read_bytes()  # noqa: E731
    base = _find_imagefolder_base(names)
    if base is None:
        raise TlkitError(f"{root} is not in ImageFolder layout: no 'train/<class>/' folder found. HINT: arrange "
                         f"images as <root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg (a folder or a zip).")
    files = sorted(n for n in names if n.startswith(base) and n.lower().endswith(IMAGE_SUFFIXES))
    classes = sorted({n[len(base):].split("/")[1] for n in files if n[len(base):].startswith("train/")})
    out = []
    for split in ("train", "test"):
        split_files = [n for n in files if n[len(base):].startswith(split + "/")]
        if not split_files:
            raise TlkitError(f"{root} has no images under '{base}{split}/'. HINT: ImageFolder data needs both "
                             f"train/ and test/ folders of <class>/ subfolders.")
        size = None
        images, labels = [], []
        for name in split_files:
            arr = _decode(read(name), size)
            size = size or (arr.shape[1], arr.shape[0])
            images.append(arr)
            labels.append(classes.index(name[len(base):].split("/")[1]))
        tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        out.append(ImageSet(tensor, torch.tensor(labels, dtype=torch.long), classes))
    if archive is not None:
        archive.close()
    return out[0], out[1]


def _cifar10(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10 from torchvision's batches under ``root``, an ImageFolder copy there, or a download."""
    import torchvision

    if (root / "cifar-10-batches-py").is_dir() or download:
        try:
            sets = [torchvision.datasets.CIFAR10(str(root), train=train, download=download) for train in (True, False)]
        except Exception as err:  # noqa: BLE001 - any download failure means the same thing to the user
            local = _local_imagefolder(root)
            if local is not None:
                return _imagefolder(local)
            raise TlkitError(
                f"CIFAR-10 is not under {root} and could not be downloaded ({type(err).__name__}: {err}). HINT: "
                f"pass --data-dir DIR where DIR holds torchvision's 'cifar-10-batches-py' folder, or an ImageFolder "
                f"copy (train/<class>/*.jpg, test/<class>/*.jpg) as a folder or a .zip.") from None
        return tuple(ImageSet(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(),
                              torch.tensor(s.targets, dtype=torch.long), list(CIFAR10_CLASSES)) for s in sets)
    local = _local_imagefolder(root)
    if local is None:
        raise TlkitError(
            f"CIFAR-10 is not under {root} (looked for 'cifar-10-batches-py/', an ImageFolder folder, or a .zip of "
            f"one) and data.download is off. HINT: pass --data-dir DIR pointing at a copy, or allow the download.")
    return _imagefolder(local)


def _local_imagefolder(root: Path) -> Path | None:
    """``root`` itself, or one folder or zip inside it, in ImageFolder layout."""
    if root.suffix == ".zip" and root.is_file():
        return root
    if (root / "train").is_dir():
        return root
    if root.is_dir():
        for candidate in sorted(root.iterdir()):
            if candidate.suffix == ".zip" or (candidate / "train").is_dir():
                return candidate
    return None


def _source_files(name: str, path: Path) -> Path | None:
    """The file or folder a dataset is decoded from (None: CIFAR-10 is not there yet and will be downloaded)."""
    if name != "cifar10":
        return path
    if (path / "cifar-10-batches-py").is_dir():
        return path / "cifar-10-batches-py"
    return _local_imagefolder(path) if path.exists() else None


def _source_key(source: Path) -> str:
    """What the decoded cache is keyed by: a file's size and mtime, or those of every file in a folder (adding or
    replacing an image changes the key, though the folder's own mtime may not change)."""
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    stats = [(p.relative_to(source).as_posix() if p != source else p.name, p.stat().st_size, p.stat().st_mtime_ns)
             for p in files]
    return f"{source.resolve()}:{hashlib.sha256(repr(stats).encode()).hexdigest()}"


def _cache_path(name: str, source: Path) -> Path:
    key = hashlib.sha256(f"{name}:{_source_key(source)}".encode()).hexdigest()[:16]
    return cache_dir() / "datasets" / f"{name}-{key}.pt"


def load_dataset(name: str, root: str | Path | None = None, download: bool = True) -> tuple[ImageSet, ImageSet]:
    """Decode a whole dataset (train and test splits) into uint8 tensors, caching the result on disk.

    Missing data raises a TlkitError that says where it looked and how to supply the data.
    """
    if name == "digits":
        return _digits()
    path = Path(root).expanduser() if root else (cache_dir() / "data" if name == "cifar10" else None)
    if path is None:
        raise TlkitError("data.name='imagefolder' needs data.root (or --data-dir): a folder or .zip laid out as "
                         "train/<class>/*.jpg and test/<class>/*.jpg.")
    if not path.exists() and not (name == "cifar10" and download):
        raise TlkitError(f"Data folder {str(path)!r} does not exist. HINT: pass --data-dir with the folder or .zip "
                         f"that holds the {name} images.")
    source = _source_files(name, path)
    cached = _cache_path(name, source) if source is not None else None
    if cached is not None and cached.is_file():
        try:
            blob = torch.load(cached, weights_only=True)
            return (ImageSet(blob["train_images"], blob["train_labels"], blob["classes"]),
                    ImageSet(blob["test_images"], blob["test_labels"], blob["classes"]))
        except Exception:  # noqa: BLE001 - a broken cache is rebuilt, never trusted
            cached.unlink(missing_ok=True)
    if name == "cifar10":
        path.mkdir(parents=True, exist_ok=True)
        train, test = _cifar10(path, download)
        cached = _cache_path(name, _source_files(name, path))  # after a download the files are there
    else:
        train, test = _imagefolder(path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    torch.save({"train_images": train.images, "train_labels": train.labels, "test_images": test.images,
                "test_labels": test.labels, "classes": train.classes}, tmp)
    os.replace(tmp, cached)
    return train, test


# --- splitting ---------------------------------------------------------------------------------------------------

def _select_classes(s: ImageSet, classes: list[int] | None) -> ImageSet:
    if classes is None:
        return s
    bad = [c for c in classes if not 0 <= c < len(s.classes)]
    if bad:
        raise TlkitError(f"data.classes has {bad}, but the dataset has classes 0..{len(s.classes) - 1} "
                         f"({', '.join(s.classes)}).")
    keep = torch.isin(s.labels, torch.tensor(classes))
    remap = torch.full((len(s.classes),), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    return ImageSet(s.images[keep], remap[s.labels[keep]], [s.classes[c] for c in classes])


def _cap_per_class(s: ImageSet, cap: int | None, seed: int) -> ImageSet:
    """At most ``cap`` images of each class, chosen at random with ``seed``."""
    if cap is None:
        return s
    rng = np.random.default_rng(seed)
    labels = s.labels.numpy()
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:cap] for c in np.unique(labels)])
    return s.subset(np.sort(keep))


def resize_images(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize a uint8 image tensor once (bilinear, antialiased) so epochs never pay for it."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    parts = [F.interpolate(images[i:i + chunk].float(), size=(size, size), mode="bilinear", antialias=True,
                           align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
             for i in range(0, len(images), chunk)]
    return torch.cat(parts)


def make_splits(train: ImageSet, test: ImageSet, *, classes: list[int] | None, val_fraction: float, seed: int,
                image_size: int, train_per_class: int | None = None, test_per_class: int | None = None) -> Splits:
    """Class subset, per-class caps, then a stratified seeded validation split carved from the training set."""
    from sklearn.model_selection import train_test_split

    train = _cap_per_class(_select_classes(train, classes), train_per_class, seed)
    test = _cap_per_class(_select_classes(test, classes), test_per_class, seed)
    if len(train) < 2 * len(train.classes):
        raise TlkitError(f"Only {len(train)} training images for {len(train.classes)} classes: too few to carve a "
                         f"validation split. HINT: raise data.train_per_class or use more data.")
    fit_idx, val_idx = train_test_split(np.arange(len(train)), test_size=val_fraction, random_state=seed,
                                        stratify=train.labels.numpy())
    splits = Splits(train.subset(np.sort(fit_idx)), train.subset(np.sort(val_idx)), test)
    for s in (splits.train, splits.val, splits.test):
        if len(s) * 3 * image_size * image_size <= RESIZE_IN_MEMORY_BYTES:
            s.images = resize_images(s.images, image_size)
        # else: too big to hold resized (e.g. CIFAR-10 at 224 px); batches are resized on the device instead.
    return splits


def splits_for(data: Data, image_size: int, seed: int) -> Splits:
    """The splits an experiment's ``Data`` section describes (decoded once, then cached)."""
    train, test = load_dataset(data.name, data.root, data.download)
    return make_splits(train, test, classes=data.classes, val_fraction=data.val_fraction, seed=seed,
                       image_size=image_size, train_per_class=data.train_per_class,
                       test_per_class=data.test_per_class)


# --- batches -----------------------------------------------------------------------------------------------------

def augment_batch(images: torch.Tensor, augment: Sequence[str], padding: int, generator: torch.Generator
                  ) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole uint8 batch at once.

    The random draws come from ``generator`` (on the CPU) wherever the images are, so a batch is augmented the
    same on a GPU as on the CPU.
    """
    n, _, h, w = images.shape
    dev = images.device
    if "crop" in augment and padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        images = padded[torch.arange(n, device=dev)[:, None, None, None],
                        torch.arange(3, device=dev)[None, :, None, None], rows, cols]
    if "hflip" in augment:
        flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


def to_device(splits: Splits, device: torch.device, max_share: float = 0.25) -> Splits:
    """Splits held on ``device`` when they take at most ``max_share`` of its free memory.

    On a GPU this takes indexing, augmentation and the host-to-device copy off the per-step path (the images of
    CIFAR-10 are 150 MB as uint8). On the CPU, or when the data is too big, the splits are returned as they are.
    """
    if device.type != "cuda":
        return splits
    parts = (splits.train, splits.val, splits.test)
    size = sum(s.images.numel() + s.labels.numel() * 8 for s in parts)
    if size > max_share * torch.cuda.mem_get_info(device)[0]:
        return splits
    moved = [ImageSet(s.images.to(device), s.labels.to(device), s.classes) for s in parts]
    return Splits(*moved)


def iterate_batches(data: ImageSet | tuple[torch.Tensor, torch.Tensor], batch_size: int, *,
                    shuffle_seed: int | None = None, augment: Sequence[str] = (), padding: int = 4,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    device: torch.device | str = "cpu", max_batches: int | None = None,
                    drop_last: bool = False, image_size: int | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(inputs, labels)`` batches on ``device``.

    ``data`` is an ImageSet (uint8 images: augmented, then scaled to [0, 1] and normalised with ``mean``/``std``)
    or a ``(features, labels)`` pair of float tensors passed through as they are. A given ``shuffle_seed`` gives the
    same order and the same augmentation every time, which is what makes resumed trials repeat exactly.
    Images not already at ``image_size`` are resized per batch, on the device.
    """
    inputs, labels = (data.images, data.labels) if isinstance(data, ImageSet) else data
    n = len(labels)
    gen = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    order = (torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)).to(inputs.device)
    stop = n - n % batch_size if drop_last and n > batch_size else n
    if isinstance(data, ImageSet):
        mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0
    for i, start in enumerate(range(0, stop, batch_size)):
        if max_batches is not None and i >= max_batches:
            return
        idx = order[start:start + batch_size]
        x, y = inputs[idx], labels[idx]
        if isinstance(data, ImageSet):
            if augment and gen is not None:
                x = augment_batch(x, augment, padding, gen)
            x = x.to(device, non_blocking=True).float()
            if image_size is not None and x.shape[-1] != image_size:
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
            x = (x - mean_t) / std_t
        else:
            x = x.to(device, non_blocking=True)
        yield x, y.to(device, non_blocking=True)

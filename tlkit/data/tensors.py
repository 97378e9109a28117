"""The fast tensor pipeline: images as one uint8 tensor, split honestly, served as whole-batch slices.

Why not ImageFolder + DataLoader: per-image PIL decoding and per-image transforms dominate an epoch on small images.
Here a dataset is decoded once (``tlkit.data.datasets``, cached on disk), batches are slices of one uint8 tensor, and
augmentation (random crop with padding, horizontal flip) is applied to the whole batch at once (``augment.py``;
the per-image policies from torchvision cost more, see README).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tlkit.data.augment import augment_batch
from tlkit.errors import TlkitError

__all__ = ["ImageSet", "Splits", "make_splits", "iterate_batches", "cache_dir", "to_device",
           "resize_images"]

RESIZE_IN_MEMORY_BYTES = 2 << 30
CHUNK_BYTES = 256 << 20
"""About how many bytes of floats a whole-set resize or gather works on at a time."""


def _chunk_for(images: torch.Tensor | np.ndarray) -> int:
    return max(1, CHUNK_BYTES // (4 * math.prod(images.shape[1:])))


@dataclass
class ImageSet:
    """Images as uint8 ``(N, 3, H, W)`` and labels as int64 ``(N,)``.

    ``images`` is either one tensor in memory or, for data too big for memory, a read-only ``np.memmap`` of the
    decoded-data store (``tlkit.data.store``) with ``index``, the rows of it this set is: a subset composes the index
    instead of copying, and a batch gathers its rows from the map (``rows``), resized to ``size`` when that is set.
    """

    images: torch.Tensor | np.ndarray
    labels: torch.Tensor
    classes: list[str]
    index: torch.Tensor | None = None
    size: int | None = None
    source: str | None = None
    """For a mapped set: what identifies the store (its folder name holds the dataset's key)."""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def mapped(self) -> bool:
        return not isinstance(self.images, torch.Tensor)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self.mapped else self.images.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(3, H, W)`` of the images this set serves."""
        c, h, w = self.images.shape[1:]
        return (c, self.size, self.size) if self.size is not None else (c, h, w)

    @property
    def nbytes(self) -> int:
        """Bytes of the images this set serves, held in memory."""
        return len(self) * math.prod(self.image_shape)

    def subset(self, index: torch.Tensor | np.ndarray) -> "ImageSet":
        """The images at ``index``: a copy for a plain tensor in memory, a view (the composed index) for a mapped
        set or a view made by ``view()``."""
        index = torch.as_tensor(index, dtype=torch.long)
        if not self.mapped and self.index is None:  # a copy keeps the tensor contiguous, the fast path on GPUs
            return ImageSet(self.images[index], self.labels[index], self.classes)
        rows = self.index[index] if self.index is not None else index
        return ImageSet(self.images, self.labels[index], self.classes, rows, self.size, self.source)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images at positions ``idx`` of this set, in that order (a batch)."""
        if not self.mapped:
            x = self.images[self.index[idx] if self.index is not None else idx]
            return resize_images(x, self.size) if self.size is not None else x
        base = (self.index[idx] if self.index is not None else torch.as_tensor(idx)).numpy()
        x = torch.from_numpy(np.ascontiguousarray(self.images[base]))
        return resize_images(x, self.size) if self.size is not None else x

    def in_memory(self, device: torch.device | str = "cpu", chunk: int | None = None) -> "ImageSet":
        """This set as one tensor on ``device``, gathered chunk by chunk (a mapped set never passes through a
        second full copy)."""
        whole = self.index is None or (len(self.index) == len(self.images)
                                       and torch.equal(self.index, torch.arange(len(self.images))))
        if not self.mapped and whole and self.size is None:  # nothing to gather: the tensor itself
            return ImageSet(self.images.to(device), self.labels.to(device), self.classes)
        out = torch.empty((len(self), *self.image_shape), dtype=torch.uint8, device=device)
        chunk = chunk or _chunk_for(self.images)
        for start in range(0, len(self), chunk):
            idx = torch.arange(start, min(start + chunk, len(self)))
            out[start:start + len(idx)] = self.rows(idx).to(device)
        return ImageSet(out, self.labels.to(device), self.classes)

    def view(self) -> "ImageSet":
        """This set as a view of its rows: later subsets compose the index instead of copying."""
        if self.index is not None or self.mapped:
            return self
        return ImageSet(self.images, self.labels, self.classes, torch.arange(len(self)), self.size, self.source)


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
    """Where decoded datasets and trained source weights are cached: ``$TLKIT_CACHE`` or ``~/.cache/tlkit``.

    A cache path that is a file, or lies under one, is a TlkitError naming the variable, raised by the first use
    (loading the data, before any trial), not a NotADirectoryError from whichever write comes first.
    """
    path = Path(os.environ.get("TLKIT_CACHE", Path.home() / ".cache" / "tlkit"))
    blocking = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        what = f"TLKIT_CACHE={str(path)!r}" if "TLKIT_CACHE" in os.environ else f"The cache folder {str(path)!r}"
        raise TlkitError(f"{what} cannot be tlkit's cache folder: {str(blocking)!r} is a file, not a folder. HINT: "
                         f"set TLKIT_CACHE to a folder (made if missing), e.g. export TLKIT_CACHE=~/.cache/tlkit.")
    return path


# --- splitting ---------------------------------------------------------------------------------------------------

def _select_classes(s: ImageSet, classes: list[int] | None, prefix: str = "data.") -> ImageSet:
    if classes is None:
        return s
    bad = [c for c in classes if not 0 <= c < len(s.classes)]
    if bad:
        shown = ", ".join(s.classes[:20]) + (" ..." if len(s.classes) > 20 else "")
        raise TlkitError(f"{prefix}classes has {bad}, but the dataset has classes 0..{len(s.classes) - 1} ({shown}). "
                         f"HINT: pick class indices from that range.")
    keep = torch.isin(s.labels, torch.tensor(classes))
    remap = torch.full((len(s.classes),), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    picked = s.subset(torch.nonzero(keep).flatten())
    picked.labels, picked.classes = remap[picked.labels], [s.classes[c] for c in classes]
    return picked


def _cap_per_class(s: ImageSet, cap: int | None, seed: int) -> ImageSet:
    """At most ``cap`` images of each class, chosen at random with ``seed``."""
    if cap is None:
        return s
    rng = np.random.default_rng(seed)
    labels = s.labels.numpy()
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:cap] for c in np.unique(labels)])
    return s.subset(np.sort(keep))


def resize_images(images: torch.Tensor, size: int, chunk: int | None = None) -> torch.Tensor:
    """Resize a uint8 image tensor once (bilinear, antialiased) so epochs never pay for it.

    Each image is resized on its own, so the result does not depend on ``chunk``; by default a chunk's float copy
    stays near ``CHUNK_BYTES`` (4,096 images at 256 px were 3 GiB of floats at once).
    """
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    chunk = chunk or _chunk_for(images)
    parts = [F.interpolate(images[i:i + chunk].float(), size=(size, size), mode="bilinear", antialias=True,
                           align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
             for i in range(0, len(images), chunk)]
    return torch.cat(parts)


def make_splits(train: ImageSet, test: ImageSet, *, classes: list[int] | None, val_fraction: float, seed: int,
                image_size: int, train_per_class: int | None = None, test_per_class: int | None = None,
                prefix: str = "data.") -> Splits:
    """Class subset, per-class caps, then a stratified seeded validation split carved from the training set.

    Every split must hold every class (at least 2): a class missing from validation cannot be selected for, one
    missing from test is never scored, and one class alone scores perfectly. Such data is refused here, before any
    trial, naming the class; ``prefix`` (``data.`` or ``source.data.``) names the section to fix.
    """
    from sklearn.model_selection import train_test_split

    # Views until the end: class subset, caps and the validation split copy nothing; in memory, each split is then
    # gathered (and resized) once, chunk by chunk, so the decoded data is never held twice at full size.
    train = _cap_per_class(_select_classes(train.view(), classes, prefix), train_per_class, seed)
    test = _cap_per_class(_select_classes(test.view(), classes, prefix), test_per_class, seed)
    _check_classes(train, test, prefix)
    _check_counts(train, "training", minimum=2, hint=f"add images of that class, raise {prefix}train_per_class, or "
                                                     f"leave the class out with {prefix}classes")
    _check_counts(test, "test", minimum=1, hint=f"add test images of that class, or leave it out with {prefix}classes")
    n_val = math.ceil(val_fraction * len(train))  # what train_test_split holds out
    for side, n in (("validation", n_val), ("training", len(train) - n_val)):
        if n < len(train.classes):  # too few for one image per class: train_test_split would refuse it
            raise _split_error(train, val_fraction, train.classes[0], side, prefix)
    fit_idx, val_idx = train_test_split(np.arange(len(train)), test_size=val_fraction, random_state=seed,
                                        stratify=train.labels.numpy())
    splits = Splits(train.subset(np.sort(fit_idx)), train.subset(np.sort(val_idx)), test)
    for part, side in ((splits.val, "validation"), (splits.train, "training")):
        short = _short_classes(part, 1)
        if short:
            raise _split_error(train, val_fraction, short[0], side, prefix)
    resize = tuple(train.images.shape[-2:]) != (image_size, image_size)
    parts = []
    for s in (splits.train, splits.val, splits.test):
        if s.mapped:  # never a whole-set resize of mapped data: each batch is resized as it is gathered
            s.size = image_size if resize else None
            parts.append(s)
            continue
        if resize and len(s) * 3 * image_size * image_size <= RESIZE_IN_MEMORY_BYTES:
            s.size = image_size
        # else: too big to hold resized (e.g. CIFAR-10 at 224 px); batches are resized on the device instead.
        parts.append(s.in_memory(s.device))
    return Splits(*parts)


def _check_classes(train: ImageSet, test: ImageSet, prefix: str) -> None:
    """At least two classes, one class list, and labels that index it."""
    if len(train.classes) < 2:
        raise TlkitError(f"The data has {len(train.classes)} class{'es' * (len(train.classes) != 1)} "
                         f"({', '.join(map(str, train.classes)) or 'none'}): a classifier needs at least 2 to score "
                         f"anything meaningful (with one, every prediction is right). HINT: use data with 2 or more "
                         f"classes, or widen {prefix}classes.")
    if list(test.classes) != list(train.classes):
        raise TlkitError(f"The data's training and test splits list different classes ({train.classes[:5]} vs "
                         f"{test.classes[:5]}). HINT: a dataset's load() returns one class list for both splits.")
    for s, name in ((train, "training"), (test, "test")):
        if len(s) and not 0 <= int(s.labels.min()) <= int(s.labels.max()) < len(s.classes):
            raise TlkitError(f"The data's {name} labels run from {int(s.labels.min())} to {int(s.labels.max())} but "
                             f"there are {len(s.classes)} classes. HINT: labels index the class list, 0..k-1.")


def _split_error(train: ImageSet, val_fraction: float, name: str, side: str, prefix: str) -> TlkitError:
    smallest = int(torch.bincount(train.labels, minlength=len(train.classes)).min())
    need = f"at least {1 / smallest:.2g}" if side == "validation" else f"at most {1 - 1 / smallest:.2g}"
    return TlkitError(f"{prefix}val_fraction={val_fraction} of {len(train)} training images leaves class {name!r} "
                      f"without a {side} image: every class needs at least one in each split. HINT: set "
                      f"{prefix}val_fraction to {need} (the smallest class has {smallest} training images), or use "
                      f"more images per class.")


def _short_classes(s: ImageSet, minimum: int) -> list[str]:
    counts = torch.bincount(s.labels.cpu(), minlength=len(s.classes)).tolist()
    return [f"{s.classes[c]}" for c, n in enumerate(counts) if n < minimum]


def _check_counts(s: ImageSet, name: str, minimum: int, hint: str) -> None:
    """Every class has ``minimum`` images in ``s``, or the error names the first that does not."""
    short = _short_classes(s, minimum)
    if short:
        count = int(torch.bincount(s.labels, minlength=len(s.classes))[s.classes.index(short[0])])
        others = f" (as do {len(short) - 1} other classes of {len(s.classes)})" if len(short) > 1 else ""
        purpose = "split into training and validation" if minimum > 1 else "scored"
        raise TlkitError(f"Class {short[0]!r} has {count} {name} image{'s' * (count != 1)}{others}: every class "
                         f"needs at least {minimum} to be {purpose}. HINT: {hint}.")


# --- batches -----------------------------------------------------------------------------------------------------

def to_device(splits: Splits, device: torch.device, max_share: float = 0.25) -> Splits:
    """Splits held on ``device`` when they take at most ``max_share`` of its free memory.

    On a GPU this takes indexing, augmentation and the host-to-device copy off the per-step path (the images of
    CIFAR-10 are 150 MB as uint8). On the CPU, or when the data is too big, the splits are returned as they are.
    """
    if device.type != "cuda":
        return splits
    parts = (splits.train, splits.val, splits.test)
    size = sum(s.nbytes + s.labels.numel() * 8 for s in parts)
    if size > max_share * torch.cuda.mem_get_info(device)[0]:
        return splits
    moved = [s.in_memory(device) for s in parts]
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
    images = data if isinstance(data, ImageSet) else None
    inputs, labels = (None, data.labels) if images is not None else data
    n = len(labels)
    gen = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    order = (torch.randperm(n, generator=gen) if gen is not None else torch.arange(n))
    order = order.to(images.device if images is not None else inputs.device)
    stop = n - n % batch_size if drop_last and n > batch_size else n
    if isinstance(data, ImageSet):
        mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0
    for i, start in enumerate(range(0, stop, batch_size)):
        if max_batches is not None and i >= max_batches:
            return
        idx = order[start:start + batch_size]
        x, y = (images.rows(idx) if images is not None else inputs[idx]), labels[idx]
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

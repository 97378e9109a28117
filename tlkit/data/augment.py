"""Training augmentation of uint8 batches: tlkit's whole-batch crop and flip, torchvision's per-image policies
(RandAugment, TrivialAugment, RandomResizedCrop) and timm's Mixup/CutMix on a batch's images and labels.

Every draw comes from a seed, never from the process's global RNG state: the crop and flip from the epoch's batch
generator (``iterate_batches``), each per-image policy from a seed drawn from that generator, Mixup from a seed made
of (trial seed, epoch, batch). An epoch therefore augments the same way whenever it runs, so a trial resumed from
an epoch checkpoint repeats the uninterrupted one exactly, with no random state of its own to save; and the global
RNGs of whoever imports tlkit are left as they were (``torch.random.fork_rng``, ``_numpy_seeded``).

torchvision.transforms.v2 draws a transform's parameters once per call, which on a batch means one crop or one
RandAugment operation for all of its images; users expect one draw per image, so the policies run image by image.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from torchvision.transforms import v2

from tlkit.config.augment_names import MIXERS, augment_args

__all__ = ["augment_batch", "per_image_policies", "make_mixer", "mix_batch"]

PER_IMAGE = ("random_resized_crop", "randaugment", "trivialaugment")
"""The names run image by image, in this order: after a random resized crop, before tlkit's crop and flip."""


def augment_batch(images: torch.Tensor, augment: Sequence[str], padding: int, generator: torch.Generator
                  ) -> torch.Tensor:
    """``augment``'s image augmentations of a uint8 batch; mixup and cutmix are the loop's (``mix_batch``).

    The random draws come from ``generator`` (on the CPU) wherever the images are, so a batch is augmented the same
    on a GPU as on the CPU. With only crop and flip the generator is used exactly as before the per-image policies
    existed, so such trials compute what they did.
    """
    args = augment_args(list(augment))
    wanted = tuple((name, value) for name, value in args.items() if name in PER_IMAGE)
    policy = per_image_policies(wanted, images.shape[-2], images.shape[-1]) if wanted else None
    if policy is not None:
        images = _per_image(images, policy, int(torch.randint(2**62, (), generator=generator)))
    return _crop_and_flip(images, "crop" in args, "hflip" in args, padding, generator)


@functools.lru_cache(maxsize=16)
def per_image_policies(args: tuple[tuple[str, float | None], ...], height: int, width: int) -> v2.Compose:
    """torchvision's transforms for the per-image names of ``args`` (``augment_args``'s items), in ``PER_IMAGE``'s
    order whatever the list's."""
    given = dict(args)
    steps = []
    if "random_resized_crop" in given:
        steps.append(v2.RandomResizedCrop((height, width), scale=(given["random_resized_crop"], 1.0), antialias=True))
    if "randaugment" in given:
        steps.append(v2.RandAugment(magnitude=int(given["randaugment"])))
    if "trivialaugment" in given:
        steps.append(v2.TrivialAugmentWide())
    return v2.Compose(steps)


def _per_image(images: torch.Tensor, policy: v2.Compose, seed: int) -> torch.Tensor:
    """``policy`` applied to each image on its own, its draws from ``seed`` (the global RNG is restored after).
    On the CPU with one intra-op thread: a 32 x 32 image is far too small to split, and the threads' hand-offs
    made RandAugment 5x slower on 2 cores (benchmarks/augment_cost.py)."""
    with torch.random.fork_rng(devices=[]), _one_thread(images.device.type == "cpu"):
        torch.manual_seed(seed)
        return torch.stack([policy(image) for image in images])


@contextlib.contextmanager
def _one_thread(on: bool) -> Iterator[None]:
    """torch's intra-op threads set to 1 for the block (when ``on``), then restored."""
    threads = torch.get_num_threads()
    if on:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if on:
            torch.set_num_threads(threads)


def _crop_and_flip(images: torch.Tensor, crop: bool, flip: bool, padding: int, generator: torch.Generator
                   ) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once (one gather)."""
    n, _, h, w = images.shape
    dev = images.device
    if crop and padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        images = padded[torch.arange(n, device=dev)[:, None, None, None],
                        torch.arange(images.shape[1], device=dev)[None, :, None, None], rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(dev)
        images = torch.where(mask[:, None, None, None], images.flip(3), images)
    return images


def make_mixer(augment: Sequence[str], num_classes: int, label_smoothing: float) -> Mixup | None:
    """timm's ``Mixup`` for ``augment``'s mixup and/or cutmix (both: one of the two per batch, at even odds), with
    the recipe's label smoothing in its soft targets; None when neither is asked for."""
    args = augment_args(list(augment))
    if not any(name in args for name in MIXERS):
        return None
    return Mixup(mixup_alpha=args.get("mixup", 0.0), cutmix_alpha=args.get("cutmix", 0.0),
                 label_smoothing=label_smoothing, num_classes=num_classes)


def mix_batch(mixer: Mixup, x: torch.Tensor, y: torch.Tensor, seed: Sequence[int]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mixed inputs, soft targets)`` of a normalised float batch, the draws seeded by ``seed`` (e.g. trial seed,
    epoch, batch). Mixup pairs each image with its mirror, so an odd batch (a split smaller than a batch) leaves
    out its last image."""
    if len(y) % 2:
        x, y = x[:-1], y[:-1]
    with _numpy_seeded(seed):
        return mixer(x, y)


@contextlib.contextmanager
def _numpy_seeded(seed: Sequence[int]) -> Iterator[None]:
    """NumPy's global RNG (what timm's Mixup draws from) seeded for the block, then restored."""
    saved = np.random.get_state()
    np.random.seed(np.random.SeedSequence(list(seed)).generate_state(4))
    try:
        yield
    finally:
        np.random.set_state(saved)

"""``train.augment``'s names: which exist, their ``name:value`` forms, and the checks an experiment's list passes
before any trial. What each name does to a batch is ``tlkit.data.augment``."""
from __future__ import annotations

import math
from typing import Callable

from tlkit.errors import did_you_mean

__all__ = ["AUGMENTATIONS", "MIXERS", "augment_list", "augment_args", "augment_problem", "odd_mixed_batch"]


AUGMENTATIONS: dict[str, tuple[float | None, Callable[[float], bool], str]] = {
    # name: (default value of ``name:value``, or None when it takes none; the check of a value; what it must be)
    "crop": (None, bool, ""),
    "hflip": (None, bool, ""),
    "random_resized_crop": (0.08, lambda v: 0 < v <= 1, "the smallest area kept, in (0, 1]"),
    "randaugment": (9, lambda v: v == int(v) and 0 <= v <= 30, "a magnitude, an int in [0, 30]"),
    "trivialaugment": (None, bool, ""),
    "mixup": (0.8, lambda v: 0 < v < math.inf, "Beta's alpha, a finite number > 0"),
    "cutmix": (1.0, lambda v: 0 < v < math.inf, "Beta's alpha, a finite number > 0"),
}


MIXERS = ("mixup", "cutmix")


def augment_list(augment: list[str] | str) -> list[str]:
    """``augment`` as a list: ``"crop+hflip"`` is ``["crop", "hflip"]``, ``"none"`` (or ``""``) is ``[]``."""
    if not isinstance(augment, str):
        return list(augment)
    return [] if augment.strip() in ("", "none") else [a.strip() for a in augment.split("+")]


def augment_args(augment: list[str]) -> dict[str, float | None]:
    """``{name: value}`` of a checked augment list, each value given (``name:value``) or the name's default (None
    for the names that take none): ``["crop", "mixup:0.2"]`` -> ``{"crop": None, "mixup": 0.2}``."""
    out = {}
    for item in augment:
        name, _, value = item.partition(":")
        default = AUGMENTATIONS[name][0]
        out[name] = float(value) if value else None if default is None else float(default)
    return out


def augment_problem(augment: list[str], path: str) -> str | None:
    """What is wrong with an augment list: an unknown name (with a did-you-mean), a repeated one, a value where
    none is taken or one out of its range."""
    names = [a.partition(":")[0] for a in augment]
    for item, name in zip(augment, names):
        if name not in AUGMENTATIONS:
            return did_you_mean(name, AUGMENTATIONS, f"augmentation in {path}")
        default, ok, what = AUGMENTATIONS[name]
        value = item.partition(":")[2]
        if value and default is None:
            return f"{path} gives {item!r} a value, but {name!r} takes none: write {name!r}."
        try:
            good = not value or ok(float(value))
        except ValueError:
            good = False
        if not good:
            return f"{path} gives {item!r}: the value of {name!r} must be {what}, e.g. '{name}:{default}'."
    repeated = sorted({n for n in names if names.count(n) > 1})
    return f"{path} names {repeated[0]!r} more than once; list each augmentation once." if repeated else None


def odd_mixed_batch(augment: list[str], batch_size: int, prefix: str) -> str | None:
    """timm's Mixup pairs each image with its mirror in the batch, so it needs an even batch size."""
    if batch_size % 2 and any(a.partition(":")[0] in MIXERS for a in augment):
        return (f"{prefix}augment {augment} mixes pairs of images, which needs an even {prefix}batch_size but got "
                f"{batch_size}. HINT: set {prefix}batch_size={batch_size + 1}.")
    return None


# What each recipe value must be. Fixed values and every value a search space can give pass the same test.

"""The exact preprocessing a model was trained with, for images it has never seen.

Training images went through three steps: decoded to RGB (at the dataset's decode size, shorter side resized and
centre-cropped, when it has one), resized once to ``train.image_size`` as uint8 (bilinear, antialiased), then scaled
and normalised with the backbone's mean and std on each batch. :class:`Preprocess` repeats those steps with the same
functions, so a prediction sees what validation and test images saw.

Example:
    model = tlkit.load_best("results/digits", backbone="test_resnet", strategy="last_n")
    x = model.tlkit_transform.batch(["five.png", "six.png"])   # (2, 3, 32, 32), normalised
    probabilities = model(x).softmax(1)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from tlkit.data.datasets.base import decode_image, fit_image
from tlkit.data.tensors import resize_images
from tlkit.errors import TlkitError

__all__ = ["Preprocess"]


@dataclass(frozen=True)
class Preprocess:
    """Image (a path, a PIL image or an RGB uint8 array ``(H, W, 3)``) -> normalised float tensor ``(3, S, S)``."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    decode_size: int | None = None

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> Preprocess:
        """From an exported model's ``model.json``."""
        return cls(int(info["image_size"]), tuple(info["mean"]), tuple(info["std"]), info.get("decode_size"))

    def pixels(self, image: Any) -> torch.Tensor:
        """Steps 1-2: the uint8 image ``(3, S, S)`` the model's training data would have held."""
        size = (self.decode_size, self.decode_size) if self.decode_size else None
        if isinstance(image, (str, Path)):
            array = decode_image(Path(image), size, str(image))
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise TlkitError(f"An image array must be RGB uint8 (H, W, 3) but got {image.dtype} "
                                 f"{tuple(image.shape)}.")
            array = image
        else:
            array = fit_image(image, size)
        tensor = torch.from_numpy(np.array(array)).permute(2, 0, 1)[None]  # np.array: a writable copy
        return resize_images(tensor, self.image_size)[0]

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Step 3, as the training batches had it (``tlkit.data.tensors.iterate_batches``)."""
        mean = torch.tensor(self.mean).view(-1, 1, 1) * 255.0
        std = torch.tensor(self.std).view(-1, 1, 1) * 255.0
        return (pixels.float() - mean) / std

    def __call__(self, image: Any) -> torch.Tensor:
        return self.normalise(self.pixels(image))

    def batch(self, images: Sequence[Any]) -> torch.Tensor:
        return torch.stack([self(image) for image in images])

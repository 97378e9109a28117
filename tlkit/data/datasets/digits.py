"""scikit-learn's 8x8 digits: ten classes, shipped with scikit-learn, so the quickstart and tests need no download."""
from __future__ import annotations

import numpy as np
import torch

from tlkit.data.tensors import ImageSet
from tlkit.data.datasets.base import Dataset, register_dataset


@register_dataset("digits")
class Digits(Dataset):
    """scikit-learn's digits (1,797 8x8 images), split 80/20 (stratified, fixed seed: the split is part of the
    dataset)."""

    def cache_key(self) -> None:
        return None  # built in milliseconds from scikit-learn's copy

    def load(self) -> tuple[ImageSet, ImageSet]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8))
        images = images[:, None].expand(-1, 3, -1, -1).contiguous()
        labels = torch.from_numpy(bunch.target.astype(np.int64))
        train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0,
                                               stratify=bunch.target)
        whole = ImageSet(images, labels, [str(i) for i in range(10)])
        return whole.subset(train_idx), whole.subset(test_idx)

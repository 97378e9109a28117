"""CIFAR-100: torchvision's copy (downloaded when online), or an ImageFolder copy as a folder or zip under the data
dir."""
from __future__ import annotations

from tlkit.data.datasets.base import register_dataset
from tlkit.data.datasets.torchvision_sets import TorchvisionDataset


@register_dataset("cifar100")
class CIFAR100(TorchvisionDataset):
    """CIFAR-100: 50,000 training and 10,000 test images, 32x32, 100 fine classes."""

    torchvision_class = "CIFAR100"
    folder = "cifar-100-python"
    native_size = 32

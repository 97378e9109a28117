"""CIFAR-10: torchvision's copy (downloaded when online), or an ImageFolder copy as a folder or zip under the data
dir (such as ``cifar10-jpeg.zip``: ``cifar10/{train,test}/<class>/NNNN.jpg``)."""
from __future__ import annotations

from tlkit.data.datasets.base import register_dataset
from tlkit.data.datasets.torchvision_sets import TorchvisionDataset


@register_dataset("cifar10")
class CIFAR10(TorchvisionDataset):
    """CIFAR-10: 50,000 training and 10,000 test images, 32x32, 10 classes."""

    torchvision_class = "CIFAR10"
    folder = "cifar-10-batches-py"
    native_size = 32

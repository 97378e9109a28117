"""Images as uint8 tensors: splits, batches and batch augmentation (tensors.py), preprocessing of new images
(preprocess.py), and one file per dataset (datasets/). A dataset plugin returns ``ImageSet``s."""
from tlkit.data.tensors import ImageSet, Splits

__all__ = ["ImageSet", "Splits"]

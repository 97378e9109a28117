"""Images as uint8 tensors: splits and batches (tensors.py), training augmentation (augment.py), preprocessing of
new images (preprocess.py), and one file per dataset (datasets/). A dataset plugin returns ``ImageSet``s."""
from tlkit.data.tensors import ImageSet, Splits

__all__ = ["ImageSet", "Splits"]

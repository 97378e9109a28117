"""The splits an experiment's ``Data`` section describes: its dataset decoded once (``tlkit.data.datasets``) and cut
into the train/val/test splits every cell of a study shares."""
from __future__ import annotations

from tlkit.config.experiment import Data
from tlkit.data.datasets import load_dataset
from tlkit.data.tensors import Splits, make_splits

__all__ = ["splits_for"]


def splits_for(data: Data, image_size: int, seed: int, prefix: str = "data.") -> Splits:
    """The splits an experiment's ``Data`` section describes (decoded once, then cached); ``prefix`` names the
    section in errors (``source.data.`` for a source task)."""
    train, test = load_dataset(data.name, data.root, data.download, data.decode_size, data.options)
    return make_splits(train, test, classes=data.classes, val_fraction=data.val_fraction, seed=seed,
                       image_size=image_size, train_per_class=data.train_per_class,
                       test_per_class=data.test_per_class, prefix=prefix)

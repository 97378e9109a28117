"""The tensor pipeline: the honest split, whole-batch augmentation, repeatable batches."""
from __future__ import annotations

import pytest
import torch

from tlkit.data.augment import augment_batch
from tlkit.data.tensors import ImageSet, iterate_batches, make_splits
from tlkit.data.datasets import load_dataset
from tlkit.errors import TlkitError


def test_class_subset_caps_and_a_stratified_seeded_split():
    train, test = load_dataset("digits")
    a = make_splits(train, test, classes=[7, 3], val_fraction=0.25, seed=1, image_size=16, train_per_class=40)
    b = make_splits(train, test, classes=[7, 3], val_fraction=0.25, seed=1, image_size=16, train_per_class=40)
    c = make_splits(train, test, classes=[7, 3], val_fraction=0.25, seed=2, image_size=16, train_per_class=40)
    assert a.train.classes == ["7", "3"]
    assert a.train.labels.bincount().tolist() == [30, 30] and a.val.labels.bincount().tolist() == [10, 10]
    assert set(a.test.labels.tolist()) == {0, 1}
    assert a.train.images.shape[-1] == 16
    assert torch.equal(a.val.images, b.val.images) and not torch.equal(a.val.images, c.val.images)
    with pytest.raises(TlkitError, match=r"data\.classes has \[12\]"):
        make_splits(train, test, classes=[1, 12], val_fraction=0.2, seed=0, image_size=8)


def test_every_split_holds_every_class_or_the_data_is_refused_naming_the_class():
    """A class missing from validation is never selected for, one missing from test is never scored, one class
    alone scores perfectly: each is refused before any trial, with the class and the fix."""
    train, test = load_dataset("digits")
    kwargs = {"val_fraction": 0.25, "seed": 0, "image_size": 8}
    one_class = ImageSet(train.images[train.labels == 3], torch.zeros(int((train.labels == 3).sum()), dtype=torch.long),
                         ["3"])
    with pytest.raises(TlkitError, match=r"The data has 1 class \(3\): a classifier needs at least 2"):
        make_splits(one_class, one_class, classes=None, **kwargs)
    no_test_sevens = test.subset(torch.nonzero(test.labels != 7).flatten())
    with pytest.raises(TlkitError, match=r"Class '7' has 0 test images: every class needs at least 1 .*HINT: add test"):
        make_splits(train, no_test_sevens, classes=[7, 3], **kwargs)
    with pytest.raises(TlkitError, match=r"Class '7' has 1 training image .*HINT: add images of that class"):
        make_splits(train, test, classes=[7, 3], train_per_class=1, **kwargs)
    with pytest.raises(TlkitError, match=r"data\.val_fraction=0\.05 of 20 training images leaves class '.' without a "
                                         r"validation image.*set data\.val_fraction to at least 0\.1"):
        make_splits(train, test, classes=[7, 3], train_per_class=10, **{**kwargs, "val_fraction": 0.05})
    with pytest.raises(TlkitError, match=r"source\.data\.val_fraction=0\.95 .* without a training image.*at most 0\.9"):
        make_splits(train, test, classes=[7, 3], train_per_class=10, prefix="source.data.",
                    **{**kwargs, "val_fraction": 0.95})
    splits = make_splits(train, test, classes=[7, 3], train_per_class=2, **{**kwargs, "val_fraction": 0.5})
    assert [sorted(s.labels.tolist()) for s in (splits.train, splits.val)] == [[0, 1], [0, 1]], "the least that works"


def test_augmentation_is_a_seeded_crop_and_flip_of_the_whole_batch():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    out1 = augment_batch(images, ["crop", "hflip"], 2, torch.Generator().manual_seed(0))
    out2 = augment_batch(images, ["crop", "hflip"], 2, torch.Generator().manual_seed(0))
    assert out1.shape == images.shape and torch.equal(out1, out2)
    flipped = augment_batch(images, ["hflip"], 0, torch.Generator().manual_seed(3))
    for i in range(2):
        assert torch.equal(flipped[i], images[i]) or torch.equal(flipped[i], images[i].flip(2))
    # A crop is a shifted window of the zero-padded image: every value comes from the image or the padding.
    cropped = augment_batch(images, ["crop"], 1, torch.Generator().manual_seed(5))
    assert set(cropped.unique().tolist()) <= set(images.unique().tolist()) | {0}


def test_batches_are_normalised_and_repeatable():
    train, _ = load_dataset("digits")
    kwargs = dict(shuffle_seed=4, augment=["crop"], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), drop_last=True)
    first = list(iterate_batches(train, 100, **kwargs))
    second = list(iterate_batches(train, 100, **kwargs))
    assert len(first) == 14 and all(len(y) == 100 for _, y in first)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    x = first[0][0]
    assert x.dtype == torch.float32 and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert len(list(iterate_batches(train, 100, max_batches=3, mean=(0, 0, 0), std=(1, 1, 1)))) == 3

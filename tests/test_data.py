"""Dataset readers on small real data, the honest split, and whole-batch augmentation."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from tlkit.data import augment_batch, iterate_batches, load_dataset, make_splits
from tlkit.errors import TlkitError


def _write_imagefolder(root, per_class=6, size=12):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, name in enumerate(["cat", "dog", "emu"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.full((size, size, 3), 40 * c, dtype=np.uint8) + rng.integers(0, 20, (size, size, 3),
                                                                                             dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def test_digits_are_shipped_and_split_80_20():
    train, test = load_dataset("digits")
    assert train.images.shape == (1437, 3, 8, 8) and test.images.shape == (360, 3, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert train.classes == [str(i) for i in range(10)]


def test_imagefolder_from_a_folder_and_from_a_zip(tmp_path):
    root = _write_imagefolder(tmp_path / "pets")
    train, test = load_dataset("imagefolder", root)
    assert train.classes == ["cat", "dog", "emu"]
    assert train.images.shape == (18, 3, 12, 12) and len(test) == 18
    assert train.labels.bincount().tolist() == [6, 6, 6]
    # The same images from a zip with an extra top-level folder, as the CIFAR-10 zip has.
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*.png")):
            zf.write(path, f"pets/{path.relative_to(root).as_posix()}")
    ztrain, ztest = load_dataset("imagefolder", archive)
    assert torch.equal(ztrain.images, train.images) and torch.equal(ztest.labels, test.labels)


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(TlkitError, match=r"'.*nowhere' does not exist\. HINT: pass --data-dir"):
        load_dataset("imagefolder", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TlkitError, match=r"CIFAR-10 is not under .*empty.*cifar-10-batches-py.*HINT"):
        load_dataset("cifar10", tmp_path / "empty", download=False)
    with pytest.raises(TlkitError, match="not in ImageFolder layout"):
        load_dataset("imagefolder", tmp_path / "empty")


def test_cifar10_zip_from_the_shared_data_folder(cifar_zip):
    train, test = load_dataset("cifar10", cifar_zip.parent, download=False)
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.classes[:3] == ["airplane", "automobile", "bird"]
    assert train.labels.bincount().tolist() == [5000] * 10
    # The second load comes from the decoded cache and is identical.
    again, _ = load_dataset("cifar10", cifar_zip.parent, download=False)
    assert torch.equal(again.images[:100], train.images[:100])
    splits = make_splits(train, test, classes=[5, 6, 7, 8, 9], val_fraction=0.2, seed=0, image_size=32,
                         train_per_class=100)
    assert splits.train.classes == ["dog", "frog", "horse", "ship", "truck"]
    assert len(splits.train) == 400 and len(splits.val) == 100 and len(splits.test) == 5000


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


def test_the_decoded_cache_sees_a_replaced_image(tmp_path):
    root = _write_imagefolder(tmp_path / "pets")
    first, _ = load_dataset("imagefolder", root)
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(root / "train" / "cat" / "000.png")
    second, _ = load_dataset("imagefolder", root)
    assert int(second.images[0].sum()) == 0 and int(first.images[0].sum()) > 0

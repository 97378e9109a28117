"""The decoded-data store: mapped batches equal in-memory ones bit for bit, a killed decode resumes, a damaged store
is rebuilt, two processes share one store, and data that fits nowhere is refused before any trial."""
from __future__ import annotations

import hashlib
import multiprocessing
from collections import namedtuple

import numpy as np
import pytest
import torch
from PIL import Image

from tlkit.data import store
from tlkit.data.datasets import Dataset, load_dataset, register_dataset
from tlkit.data.tensors import ImageSet, iterate_batches, make_splits
from tlkit.errors import TlkitError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _imagefolder(root, train=24, test=6, classes=("ant", "bee", "cat"), size=16):
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture
def pets(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(store, "CHUNK", 16)  # several chunks per split
    return _imagefolder(tmp_path / "pets")


def _stores(tmp_path):
    return sorted(p for p in (tmp_path / "cache" / "datasets").iterdir() if p.is_dir())


def _batches(splits, image_size):
    out = []
    for part, seed in ((splits.train, 7), (splits.val, None), (splits.test, None)):
        for x, y in iterate_batches(part, 10, shuffle_seed=seed, augment=("crop", "hflip") if seed else (),
                                    padding=2, mean=MEAN, std=STD, image_size=image_size):
            out.append((x, y))
    return out


@pytest.mark.parametrize("image_size", [16, 12])
def test_mapped_batches_equal_in_memory_batches_bit_for_bit(pets, monkeypatch, image_size):
    ram = load_dataset("imagefolder", pets)
    monkeypatch.setenv("TLKIT_IN_MEMORY_LIMIT", "0")
    mapped = load_dataset("imagefolder", pets)
    assert not ram[0].mapped and mapped[0].mapped and isinstance(mapped[0].images, np.memmap)
    kwargs = dict(classes=[2, 0], val_fraction=0.25, seed=3, image_size=image_size, train_per_class=20,
                  test_per_class=5)
    a, b = make_splits(*ram, **kwargs), make_splits(*mapped, **kwargs)
    for part in (b.train, b.val, b.test):  # class subset, caps and the validation split are views, not copies
        assert part.mapped and part.images is mapped[0 if part is not b.test else 1].images
    assert [len(p) for p in (a.train, a.val, a.test)] == [len(p) for p in (b.train, b.val, b.test)] == [30, 10, 10]
    for part_a, part_b in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        assert torch.equal(part_a.labels, part_b.labels)
        assert torch.equal(part_a.images, part_b.in_memory().images)
    got_a, got_b = _batches(a, image_size), _batches(b, image_size)
    assert len(got_a) == len(got_b) == 5
    for (xa, ya), (xb, yb) in zip(got_a, got_b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_killed_decode_resumes_and_gives_the_same_store(pets, tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="tlkit")
    decoded = []
    real = store.decode_image
    monkeypatch.setattr(store, "decode_image", lambda *a: decoded.append(1) or real(*a))

    def kill(split, chunks):
        if split == "train" and chunks == 3:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        load_dataset("imagefolder", pets, on_chunk=kill)
    (folder,) = _stores(tmp_path)
    assert not (folder / "complete.json").exists() and (folder / "progress.json").exists()
    first = len(decoded)
    train, test = load_dataset("imagefolder", pets)
    assert "resuming the decode" in caplog.text
    assert len(decoded) - first < 72 + 18  # the three finished chunks were not decoded again
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "fresh"))
    again, again_test = load_dataset("imagefolder", pets)
    (fresh,) = sorted(p for p in (tmp_path / "fresh" / "datasets").iterdir() if p.is_dir())
    for name in ("train.npy", "test.npy", "labels.json", "complete.json"):
        assert (folder / name).read_bytes() == (fresh / name).read_bytes()
    assert torch.equal(train.images, again.images) and torch.equal(test.labels, again_test.labels)
    assert not (folder / "progress.json").exists()


def _wrong_shape(folder):
    np.save(folder / "train.npy", np.zeros((2, 3, 4, 4), dtype=np.uint8))


def _truncated(folder):
    path = folder / "train.npy"
    path.write_bytes(path.read_bytes()[:500])


def _no_marker(folder):
    (folder / "complete.json").unlink()


@pytest.mark.parametrize("damage", [_wrong_shape, _truncated, _no_marker])
def test_a_damaged_store_is_set_aside_and_rebuilt(pets, tmp_path, monkeypatch, caplog, damage):
    monkeypatch.setenv("TLKIT_IN_MEMORY_LIMIT", "0")
    good, _ = load_dataset("imagefolder", pets)
    want = np.array(good.images)
    (folder,) = _stores(tmp_path)
    del good
    damage(folder)
    again, _ = load_dataset("imagefolder", pets)
    assert np.array_equal(np.asarray(again.images), want)
    assert "set aside" in caplog.text and folder.with_name(folder.name + ".bad").is_dir()
    assert (folder / "complete.json").is_file()


def _load_in_child(root, out):
    train, test = load_dataset("imagefolder", root)
    digest = hashlib.sha256(np.ascontiguousarray(train.images).tobytes() + np.asarray(test.images).tobytes())
    out.put((train.mapped, digest.hexdigest()))


def test_two_processes_decoding_at_once_make_one_store(pets, tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_IN_MEMORY_LIMIT", "0")
    builds = tmp_path / "builds.txt"
    real = store._build

    def counted(*args, **kwargs):
        with open(builds, "a") as fh:
            fh.write("build\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "_build", counted)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_load_in_child, args=(pets, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert builds.read_text() == "build\n"  # one decoded, the other waited for the lock and mapped the result
    assert results[0] == results[1] and results[0][0] is True
    (folder,) = _stores(tmp_path)
    assert not list(folder.parent.glob("*.bad"))


Usage = namedtuple("Usage", "total used free")


def test_data_that_fits_neither_disk_nor_memory_is_refused_naming_sizes_and_options(pets, monkeypatch):
    monkeypatch.setattr(store.shutil, "disk_usage", lambda path: Usage(10**12, 10**12, 1000))
    monkeypatch.setattr(store, "available_memory", lambda: 2000)
    with pytest.raises(TlkitError) as info:
        load_dataset("imagefolder", pets)
    message = str(info.value)
    for part in ("decodes to", "90 images at 16x16", "MiB free", "memory has 0 MiB available", "data.decode_size",
                 "train.image_size", "TLKIT_CACHE"):
        assert part in message, part


def test_a_short_disk_decodes_into_memory_when_the_data_fits_there(pets, monkeypatch, caplog):
    monkeypatch.setattr(store.shutil, "disk_usage", lambda path: Usage(10**12, 10**12, 1000))
    train, _ = load_dataset("imagefolder", pets)
    assert not train.mapped and len(train) == 72 and "does not fit the cache's disk" in caplog.text


def test_a_memory_error_while_loading_is_the_refusal_not_a_traceback(monkeypatch):
    @register_dataset("too_big_test")
    class TooBig(Dataset):
        def cache_key(self):
            return None

        def load(self):
            return np.empty((2**36, 3, 256, 256), dtype=np.uint8)  # numpy's _ArrayMemoryError, a MemoryError

    with pytest.raises(TlkitError, match=r"Dataset 'too_big_test' decodes to .*more than memory holds.*"
                                         r"data\.decode_size"):
        load_dataset("too_big_test")


def test_a_plugin_dataset_is_stored_from_what_load_returns(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TLKIT_IN_MEMORY_LIMIT", "0")
    calls = []

    @register_dataset("squares_store_test")
    class Squares(Dataset):
        def cache_key(self):
            return "squares-v1"

        def load(self):
            calls.append(1)
            images = torch.arange(8 * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).view(8, 3, 4, 4)
            split = ImageSet(images, torch.tensor([0, 1] * 4), ["a", "b"])
            return split, split

    first, _ = load_dataset("squares_store_test")
    second, _ = load_dataset("squares_store_test")
    assert calls == [1] and second.mapped
    assert np.array_equal(np.asarray(second.images), np.asarray(first.images))
    assert torch.equal(second.subset(torch.tensor([5, 1])).rows(torch.tensor([1, 0])),
                       torch.from_numpy(np.asarray(second.images)[[1, 5]]))


def test_a_long_decode_logs_its_rate_and_a_large_jpeg_decodes_in_draft_mode(tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="tlkit")
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(store, "CHUNK", 4)
    monkeypatch.setattr(store, "LOG_EVERY_S", 0.0)
    root = _imagefolder(tmp_path / "big", train=4, test=2, classes=("a", "b"), size=128)
    train, _ = load_dataset("imagefolder", root, decode_size=32)
    assert train.images.shape == (8, 3, 32, 32)
    assert "images/s" in caplog.text and "s left" in caplog.text and "decoded 12 images" in caplog.text
    from tlkit.data.datasets.base import fit_image

    path = next((root / "train" / "a").iterdir())
    with Image.open(path) as img:
        drafted = fit_image(img, (32, 32)).astype(int)
        assert img.size == (32, 32)  # the JPEG was decoded at 1/4 scale, not in full
    with Image.open(path) as img:
        img.load()  # decoded in full: draft mode no longer applies
        full = fit_image(img, (32, 32)).astype(int)
    assert drafted.shape == full.shape == (32, 32, 3) and np.abs(drafted - full).mean() < 20

"""Dataset plugins on small real files: the registry, every built-in reader, the decoded cache, bad files."""
from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tlkit.data.tensors import ImageSet
from tlkit.data.datasets import Dataset, list_datasets, load_dataset, register_dataset
from tlkit.data.datasets.base import DATASETS
from tlkit.errors import TlkitError

CLASSES = ["cat", "dog", "emu"]


def _image(value: int, size: tuple[int, int] = (12, 12), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.full((size[1], size[0], 3), value, dtype=np.uint8) + rng.integers(0, 20, (size[1], size[0], 3),
                                                                                   dtype=np.uint8)
    return Image.fromarray(pixels)


def _write_imagefolder(root, per_class=6, size=(12, 12)):
    for split in ("train", "test"):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                _image(40 * c, size, seed=i).save(folder / f"{i:03d}.png")
    return root


def test_the_registry_lists_every_builtin_and_suggests_close_names():
    assert {"digits", "cifar10", "cifar100", "imagefolder", "table", "flowers102", "oxford_iiit_pet", "dtd",
            "food101", "fgvc_aircraft", "stanford_cars"} <= set(list_datasets())
    assert list_datasets("cifar*") == ["cifar10", "cifar100"]
    with pytest.raises(TlkitError, match=r"Unknown dataset 'cifar_10'\. Did you mean 'cifar10'"):
        load_dataset("cifar_10")


def test_digits_are_shipped_and_split_80_20():
    train, test = load_dataset("digits")
    assert train.images.shape == (1437, 3, 8, 8) and test.images.shape == (360, 3, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert train.classes == [str(i) for i in range(10)]


def test_imagefolder_from_a_folder_and_from_a_zip(tmp_path):
    root = _write_imagefolder(tmp_path / "pets")
    train, test = load_dataset("imagefolder", root)
    assert train.classes == CLASSES
    assert train.images.shape == (18, 3, 12, 12) and len(test) == 18
    assert train.labels.bincount().tolist() == [6, 6, 6]
    # The same images from a zip with an extra top-level folder, as the CIFAR-10 zip has.
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*.png")):
            zf.write(path, f"pets/{path.relative_to(root).as_posix()}")
    ztrain, ztest = load_dataset("imagefolder", archive)
    assert torch.equal(ztrain.images, train.images) and torch.equal(ztest.labels, test.labels)


def test_images_of_mixed_sizes_are_centre_cropped_not_stretched(tmp_path):
    root = _write_imagefolder(tmp_path / "pets", per_class=2, size=(12, 12))
    wide = np.zeros((12, 36, 3), dtype=np.uint8)
    wide[:, 12:24] = 200  # the middle third is bright: a centre crop keeps only it, a stretch would mix in black
    Image.fromarray(wide).save(root / "train" / "cat" / "wide.png")
    train, _ = load_dataset("imagefolder", root)
    assert train.images.shape[1:] == (3, 12, 12)
    wide_row = int(np.flatnonzero(train.labels.numpy() == 0)[-1])
    assert int(train.images[wide_row].min()) == 200
    resized, _ = load_dataset("imagefolder", root, decode_size=8)
    assert resized.images.shape[1:] == (3, 8, 8)


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(TlkitError, match=r"'.*nowhere' for dataset 'imagefolder' does not exist\. HINT: pass --data"):
        load_dataset("imagefolder", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TlkitError, match=r"cifar10 is not under .*empty.*cifar-10-batches-py.*HINT"):
        load_dataset("cifar10", tmp_path / "empty", download=False)
    with pytest.raises(TlkitError, match="not in ImageFolder layout"):
        load_dataset("imagefolder", tmp_path / "empty")
    with pytest.raises(TlkitError, match="needs data.root"):
        load_dataset("table")


def test_bad_files_name_themselves(tmp_path):
    root = _write_imagefolder(tmp_path / "pets", per_class=2)
    (root / "train" / "dog" / "notes.jpg").write_text("not an image")
    with pytest.raises(TlkitError, match=r"Image .*notes\.jpg cannot be decoded: it is not in an image format .*"
                                         r"HINT: replace or remove"):
        load_dataset("imagefolder", root)
    (root / "train" / "dog" / "notes.jpg").unlink()
    whole = (root / "train" / "dog" / "001.png").read_bytes()
    (root / "train" / "dog" / "001.png").write_bytes(whole[: len(whole) // 2])  # a torn copy
    with pytest.raises(TlkitError, match=r"Image .*dog/001\.png cannot be decoded.*HINT: replace or remove"):
        load_dataset("imagefolder", root)
    (root / "train" / "dog" / "001.png").write_bytes(whole)
    (root / "train" / "fox").mkdir()
    (root / "train" / "fox" / "readme.txt").write_text("images to come")
    with pytest.raises(TlkitError, match=r"class folder train/fox/ holds no images .*HINT: add its images, or remove"):
        load_dataset("imagefolder", root)  # never silently a class fewer, with every later label shifted
    (root / "train" / "fox" / "readme.txt").unlink()
    (root / "train" / "fox").rmdir()
    (root / "train" / "stray.png").write_bytes((root / "train" / "dog" / "000.png").read_bytes())
    with pytest.raises(TlkitError, match=r"'train/stray\.png' lies beside the class folders"):
        load_dataset("imagefolder", root)
    fake_zip = tmp_path / "data.zip"
    fake_zip.write_text("PK but not really")
    with pytest.raises(TlkitError, match=r"data\.zip is not a readable zip file"):
        load_dataset("imagefolder", fake_zip)


def test_cifar10_zip_from_the_shared_data_folder(cifar_zip):
    train, test = load_dataset("cifar10", cifar_zip.parent, download=False)
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.classes[:3] == ["airplane", "automobile", "bird"]
    assert train.labels.bincount().tolist() == [5000] * 10
    # The second load comes from the decoded cache and is identical.
    again, _ = load_dataset("cifar10", cifar_zip.parent, download=False)
    assert torch.equal(again.images[:100], train.images[:100])


def test_the_decoded_cache_sees_a_replaced_image_and_sets_a_damaged_one_aside(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    root = _write_imagefolder(tmp_path / "pets")
    first, _ = load_dataset("imagefolder", root)
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(root / "train" / "cat" / "000.png")
    second, _ = load_dataset("imagefolder", root)
    assert int(second.images[0].sum()) == 0 and int(first.images[0].sum()) > 0
    stores = [p for p in (tmp_path / "cache" / "datasets").glob("imagefolder-*") if p.is_dir()]
    newest = max(stores, key=lambda p: p.stat().st_mtime_ns)
    npy = newest / "train.npy"
    npy.write_bytes(npy.read_bytes()[:100])  # truncated, as by a full disk
    third, _ = load_dataset("imagefolder", root)
    assert torch.equal(third.images, second.images)
    assert "cannot be used" in caplog.text and "set aside" in caplog.text
    assert newest.with_name(newest.name + ".bad").is_dir() and (newest / "complete.json").is_file()


def test_a_table_of_paths_and_labels_from_csv_and_parquet(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    rows = []
    for split in ("train", "test"):
        for c, name in enumerate(["benign", "malign"]):
            for i in range(3):
                path = folder / f"{split}_{name}_{i}.png"
                _image(100 * c, seed=i).save(path)
                rows.append({"file": path.name, "diagnosis": name, "split": split})
    pd.DataFrame(rows).to_csv(folder / "scans.csv", index=False)
    train, test = load_dataset("table", folder / "scans.csv", options={"path": "file", "label": "diagnosis"})
    assert train.classes == ["benign", "malign"] and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(test) == 6 and int(train.images[3].float().mean()) >= 100
    pd.DataFrame(rows).to_parquet(folder / "scans.parquet")
    ptrain, _ = load_dataset("table", folder / "scans.parquet", options={"path": "file", "label": "diagnosis"})
    assert torch.equal(ptrain.images, train.images)
    with pytest.raises(TlkitError, match=r"has no column 'path'.*data\.options"):
        load_dataset("table", folder / "scans.csv")


def _scan_rows(folder) -> list[dict]:
    folder.mkdir()
    rows = []
    for split in ("train", "test"):
        for c, name in enumerate(["benign", "malign"]):
            for i in range(3):
                _image(100 * c, seed=i).save(folder / f"{split}_{name}_{i}.png")
                rows.append({"path": f"{split}_{name}_{i}.png", "label": name, "split": split})
    return rows


@pytest.mark.parametrize("column, rows, said", [
    ("label", [1], "column 'label' is empty in row 2 "),
    ("label", [0, 4, 5, 6, 7, 8, 9], "column 'label' is empty in rows 1, 5, 6, 7, 8 and 2 more "),
    ("path", [3], "column 'path' is empty in row 4 "),
    ("split", [11], "column 'split' is empty in row 12 "),
])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_empty_cells_in_a_table_name_their_rows_and_column(tmp_path, column, rows, said, suffix):
    """An empty cell is NaN once read: it must not become a class 'nan', an image '.../nan' or a TypeError."""
    frame = pd.DataFrame(_scan_rows(tmp_path / "scans"))
    frame[column] = frame[column].astype(object)
    frame.loc[rows, column] = None if column != "path" else "  "
    table = tmp_path / "scans" / f"scans{suffix}"
    if suffix == ".csv":
        frame.to_csv(table, index=False)
    else:
        frame.to_parquet(table)
    with pytest.raises(TlkitError, match=rf"Table .*scans\{suffix}: {said}.*HINT: fill in those cells, or drop"):
        load_dataset("table", table)


def test_a_torchvision_dataset_read_offline_from_its_own_folder(tmp_path):
    """DTD in torchvision's on-disk layout: train + val make tlkit's train split, labels joined by class name."""
    base = tmp_path / "data" / "dtd" / "dtd"
    lines = {"train1": [], "val1": [], "test1": []}
    for c, name in enumerate(["banded", "dotted", "woven"]):
        (base / "images" / name).mkdir(parents=True)
        for i in range(4):
            _image(60 * c, size=(20, 14), seed=i).save(base / "images" / name / f"{name}_{i}.jpg")
            split = "train1" if i < 2 else "val1" if i == 2 else "test1"
            if not (split == "val1" and name == "banded"):  # val lists fewer classes than train
                lines[split].append(f"{name}/{name}_{i}.jpg")
    (base / "labels").mkdir()
    for split, entries in lines.items():
        (base / "labels" / f"{split}.txt").write_text("\n".join(entries) + "\n")
    train, test = load_dataset("dtd", tmp_path / "data", download=False, decode_size=16)
    assert train.classes == ["banded", "dotted", "woven"]
    assert train.images.shape == (8, 3, 16, 16) and len(test) == 3
    assert sorted(train.labels.tolist()) == [0, 0, 1, 1, 1, 2, 2, 2]
    assert int(train.images[train.labels == 2].float().mean()) >= 110 > int(train.images[train.labels == 0].max())


def test_an_offline_download_fails_at_once_naming_the_dataset(tmp_path, monkeypatch):
    import socket

    def unreachable(*args, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(TlkitError, match=r"flowers102 is not under .*cannot be downloaded: .* is unreachable"):
        load_dataset("flowers102", tmp_path / "data")
    assert not (tmp_path / "data").exists()  # nothing half-made


def test_a_user_dataset_registers_like_a_strategy():
    @register_dataset("two_squares_test")
    class TwoSquares(Dataset):
        """Black and white squares."""

        def cache_key(self):
            return None

        def load(self):
            images = torch.stack([torch.zeros(3, 4, 4, dtype=torch.uint8), torch.full((3, 4, 4), 255,
                                                                                      dtype=torch.uint8)] * 4)
            split = ImageSet(images, torch.tensor([0, 1] * 4), ["black", "white"])
            return split, split

    try:
        train, _ = load_dataset("two_squares_test")
        assert train.classes == ["black", "white"] and len(train) == 8
        with pytest.raises(TlkitError, match="already registered"):
            register_dataset("two_squares_test")(type("Other", (Dataset,), {"load": lambda self: None}))
        with pytest.raises(TlkitError, match="must be a subclass of tlkit.data.datasets.Dataset"):
            register_dataset("not_a_dataset_test")(lambda: None)
    finally:
        DATASETS._entries.pop("two_squares_test", None)

"""One epoch of batches: tlkit's uint8-tensor pipeline vs torchvision ImageFolder + DataLoader, on CIFAR-10 JPEGs.

Both produce the same thing (normalised float batches with random crop + flip); the model is left out so the ratio
is the data path alone. Prints seconds per epoch and the ratio, measured in one run:

    python benchmarks/data_pipeline.py --data-dir ../shared/datasets [--images 10000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
import zipfile
from pathlib import Path

import torch
import torchvision.transforms as T
from torchvision.datasets import ImageFolder

from tlkit.data.tensors import iterate_batches
from tlkit.data.datasets import load_dataset


def tlkit_epoch(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    from tlkit.data.tensors import ImageSet

    data = ImageSet(images, labels, [])
    start = time.perf_counter()
    for x, y in iterate_batches(data, batch_size, shuffle_seed=0, augment=["crop", "hflip"], padding=4,
                                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        pass
    return time.perf_counter() - start


def imagefolder_epoch(root: Path, batch_size: int, workers: int) -> float:
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    loader = torch.utils.data.DataLoader(ImageFolder(str(root), transform=transform), batch_size=batch_size,
                                         shuffle=True, num_workers=workers)
    start = time.perf_counter()
    for x, y in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding cifar10-jpeg.zip")
    parser.add_argument("--images", type=int, default=10000, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (the machine has 2 cores)")
    args = parser.parse_args()
    archive = Path(args.data_dir) / "cifar10-jpeg.zip"
    train, _ = load_dataset("imagefolder", archive)  # decoded once, then cached
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.startswith("cifar10/train/") and n.endswith(".jpg")]
            keep = names[:: max(1, len(names) // args.images)][: args.images]
            zf.extractall(tmp, members=keep)
        folder = imagefolder_epoch(Path(tmp) / "cifar10" / "train", args.batch_size, args.workers)
    n = len(keep)
    tensors = tlkit_epoch(train.images[:n], train.labels[:n], args.batch_size)
    print(f"images per epoch: {n}, batch size {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"ImageFolder + DataLoader ({args.workers} workers): {folder:7.2f} s/epoch  {n / folder:9.0f} img/s")
    print(f"tlkit uint8 tensors + batch augmentation:  {tensors:7.2f} s/epoch  {n / tensors:9.0f} img/s")
    print(f"speed-up: {folder / tensors:.1f}x")


if __name__ == "__main__":
    main()

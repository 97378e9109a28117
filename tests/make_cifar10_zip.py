"""Write ``DIR/cifar10-jpeg.zip`` (CIFAR-10 as JPEGs: ``cifar10/{train,test}/<class>/NNNN.jpg``), the data folder
the CIFAR tests read through ``TLKIT_TEST_DATA=DIR``. Needs the internet once (torchvision downloads CIFAR-10).

    python tests/make_cifar10_zip.py ../shared/datasets
"""
from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

from torchvision.datasets import CIFAR10


def main(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "cifar10-jpeg.zip"
    with zipfile.ZipFile(target.with_suffix(".tmp"), "w", zipfile.ZIP_STORED) as archive:
        for split, train in (("train", True), ("test", False)):
            data = CIFAR10(str(folder / "torchvision"), train=train, download=True)
            counts: dict[int, int] = {}
            for image, label in data:
                n = counts[label] = counts.get(label, 0) + 1
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG")  # PIL's default quality (75), as in the shared copy
                archive.writestr(f"cifar10/{split}/{data.classes[label]}/{n - 1:04d}.jpg", buffer.getvalue())
    target.with_suffix(".tmp").replace(target)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(main(Path(sys.argv[1])))

"""``python -m tlkit.predict RESULTS --backbone B --strategy S IMAGES...``: a cell's best model on new images.

Images are files, folders (every image below them) or glob patterns; each goes through the exact preprocessing the
model was trained with (``model.tlkit_transform``). The CSV has one row per image: its path, the predicted class,
that class's probability, and the probability of every class.

Example:
    python -m tlkit.predict results/digits --backbone test_resnet --strategy last_n photos/ --out predictions.csv
"""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from tlkit.utils.files import check_out_file
from tlkit.errors import TlkitError
from tlkit.search.best import MODELS, load_best

__all__ = ["predict", "find_images", "check_out", "main"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def find_images(items: Sequence[str]) -> list[Path]:
    """Files as given, folders searched recursively for images, globs expanded; in order, each path once."""
    found: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:  # as for a glob that matches nothing: an empty CSV would look like a result
                raise TlkitError(f"No image in the folder {item!r} or below it (looked for "
                                 f"{', '.join(IMAGE_SUFFIXES)}). HINT: check the path.")
            found += images
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise TlkitError(f"No image at {item!r}: not a file, a folder or a glob that matches a file. HINT: "
                                 f"check the path.")
            found += matches
    return list(dict.fromkeys(found))


def check_out(path: Path) -> None:
    """Refuse an ``--out`` the CSV cannot be written to before any inference, not after it."""
    check_out_file(path, str(path / "predictions.csv"))


@torch.no_grad()
def predict(model: torch.nn.Module, images: Sequence[Path], batch_size: int = 64) -> pd.DataFrame:
    """One row per image: path, predicted class and its probability, and ``p_<class>`` for every class."""
    classes = list(model.tlkit_info["classes"])
    rows = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        probabilities = model(model.tlkit_transform.batch(chunk)).float().softmax(1)
        for path, p in zip(chunk, probabilities):
            best = int(p.argmax())
            rows.append({"path": str(path), "predicted": classes[best], "probability": float(p[best]),
                         **{f"p_{c}": float(v) for c, v in zip(classes, p)}})
    return pd.DataFrame(rows, columns=["path", "predicted", "probability", *(f"p_{c}" for c in classes)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tlkit.predict", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the results folder of a sweep, e.g. results/digits")
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--model", choices=MODELS, default="best",
                        help="the cell's best trial (default) or its greedy soup of trials")
    parser.add_argument("--out", type=Path, help="CSV to write (default: print it)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise TlkitError(f"--batch-size must be >= 1 but got {args.batch_size}.")
        if args.out is not None:
            check_out(args.out)
        images = find_images(args.images)
        model = load_best(args.results, backbone=args.backbone, strategy=args.strategy, model=args.model)
        table = predict(model, images, args.batch_size)
    except TlkitError as err:
        print(f"tlkit: error: {err}", file=sys.stderr)
        return 2
    if args.out:
        table.to_csv(args.out, index=False, lineterminator="\n")
        print(f"{len(table)} predictions in {args.out}")
    else:
        print(table.to_csv(index=False, lineterminator="\n"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What freezing saves: seconds per training epoch of one backbone under several strategies, measured in one run.

- ``full_finetune``: forward + backward through everything (the reference);
- ``last_n`` (top group + head): no autograd graph below the trainable groups, so backward stops early;
- ``linear_probe`` uncached: forward through the frozen backbone every epoch, backward through the head only;
- ``linear_probe`` cached (tlkit's default): backbone features computed once per trial, later epochs train the
  head on stored features.

    python benchmarks/frozen_cost.py [--backbone resnet18] [--images 4096] [--image-size 64] [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import tempfile

import torch

from tlkit.backbones import create_backbone, layer_groups, preprocessing
from tlkit.data import ImageSet, Splits, to_device
from tlkit.experiment import Train
from tlkit.metrics import get_metric
from tlkit.strategies import create_strategy
from tlkit.train import Trainer


def epoch_seconds(backbone: str, strategy: str, splits: Splits, recipe: Train, device: torch.device,
                  **params: int) -> list[float]:
    torch.manual_seed(0)
    model = create_backbone(backbone, splits.num_classes, recipe.image_size)
    groups = layer_groups(model)
    plan = create_strategy(strategy, num_groups=len(groups), epochs=recipe.epochs, **params)
    trainer = Trainer(model, groups, plan, splits, recipe, get_metric("accuracy"), seed=0, device=device,
                      **preprocessing(model))
    return [r.seconds for r in trainer.fit()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    os.environ["TLKIT_CACHE"] = tempfile.mkdtemp(prefix="tlkit-bench-")  # cold: no features cached by a prior run
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    n = args.images
    images = torch.randint(0, 256, (n, 3, args.image_size, args.image_size), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % 10
    data = ImageSet(images, labels, [str(i) for i in range(10)])
    val = ImageSet(images[: n // 8], labels[: n // 8], data.classes)
    splits = to_device(Splits(data, val, val), device)
    recipe = Train(epochs=args.epochs, batch_size=128, image_size=args.image_size, augment=[])
    rows = [("full_finetune", {}, recipe), ("last_n", {"n_groups": 1}, recipe),
            ("linear_probe", {}, Train(**{**recipe.__dict__, "cache_features": False})),
            ("linear_probe", {}, recipe)]
    print(f"{args.backbone} at {args.image_size}px, {n} images/epoch, {args.epochs} epochs, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    reference = None
    for strategy, params, r in rows:
        seconds = epoch_seconds(args.backbone, strategy, splits, r, device, **params)
        steady = sum(seconds[1:]) / max(1, len(seconds) - 1)  # epoch 0 includes warm-up (and the feature pass)
        reference = reference or steady
        label = strategy + (" (cached)" if strategy == "linear_probe" and r.cache_features else
                            " (uncached)" if strategy == "linear_probe" else "")
        print(f"{label:26s} first epoch {seconds[0]:7.3f} s, later epochs {steady:7.3f} s  "
              f"-> {reference / steady:6.1f}x faster than full fine-tuning")


if __name__ == "__main__":
    main()

"""What freezing saves: seconds per training epoch of one backbone under several strategies, measured in one run.

- ``full_finetune``: forward + backward through everything (the reference);
- ``last_n`` (top group + head) uncached: no autograd graph below the trainable groups, so backward stops early;
- ``last_n`` cached (tlkit's default on un-augmented images): the frozen groups below run once per trial
  (``tlkit.engine.prefix``), later epochs train the top group and head on their stored output;
- ``linear_probe`` uncached: forward through the frozen backbone every epoch, backward through the head only;
- ``linear_probe`` cached (tlkit's default): backbone features computed once per trial, later epochs train the
  head on stored features.

    python benchmarks/frozen_cost.py [--backbone resnet18] [--images 4096] [--image-size 64] [--device cuda]
                                     [--repeats 3]

With ``--repeats`` every strategy runs once per round, rounds one after another, and the medians are printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch

from tlkit.models.backbones import create_backbone, layer_groups, preprocessing
from tlkit.data.tensors import ImageSet, Splits, to_device
from tlkit.config.experiment import Train
from tlkit.metrics import get_metric
from tlkit.strategies import create_strategy
from tlkit.engine.loop import Trainer


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
    parser.add_argument("--repeats", type=int, default=1, help="rounds; the medians are printed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    n = args.images
    images = torch.randint(0, 256, (n, 3, args.image_size, args.image_size), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % 10
    data = ImageSet(images, labels, [str(i) for i in range(10)])
    val = ImageSet(images[: n // 8], labels[: n // 8], data.classes)
    splits = to_device(Splits(data, val, val), device)
    recipe = Train(epochs=args.epochs, batch_size=128, image_size=args.image_size, augment=[])
    uncached = Train(**{**recipe.__dict__, "cache_features": False})
    rows = [("full_finetune", "full_finetune", {}, recipe),
            ("last_n (uncached)", "last_n", {"n_groups": 1}, uncached),
            ("last_n (cached prefix)", "last_n", {"n_groups": 1}, recipe),
            ("linear_probe (uncached)", "linear_probe", {}, uncached),
            ("linear_probe (cached)", "linear_probe", {}, recipe)]
    print(f"{args.backbone} at {args.image_size}px, {n} images/epoch, {args.epochs} epochs, device {device}, "
          f"torch threads {torch.get_num_threads()}, medians of {args.repeats} round(s)")
    runs: dict[str, list[list[float]]] = {label: [] for label, *_ in rows}
    for _ in range(args.repeats):
        os.environ["TLKIT_CACHE"] = tempfile.mkdtemp(prefix="tlkit-bench-")  # cold: nothing cached by a prior round
        for label, strategy, params, r in rows:
            runs[label].append(epoch_seconds(args.backbone, strategy, splits, r, device, **params))
    reference = None
    for label, *_ in rows:
        first = statistics.median(s[0] for s in runs[label])
        # epoch 0 includes warm-up (and the feature pass)
        steady = statistics.median(sum(s[1:]) / max(1, len(s) - 1) for s in runs[label])
        whole = statistics.median(sum(s) for s in runs[label])
        reference = reference or (steady, whole)
        print(f"{label:24s} first epoch {first:7.3f} s, later epochs {steady:7.3f} s "
              f"({reference[0] / steady:6.1f}x faster than full fine-tuning), whole trial {whole:7.2f} s "
              f"({reference[1] / whole:5.1f}x)")


if __name__ == "__main__":
    main()

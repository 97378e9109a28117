"""Training throughput on a GPU: bfloat16 autocast (``train.amp``, tlkit's default on CUDA) against float32.

Full fine-tuning of each backbone on random uint8 images through tlkit's own Trainer (channels_last, batches resized
on the device), so the numbers are what a sweep gets. Prints images/s of the last epoch and the AMP speed-up:

    python benchmarks/gpu_throughput.py [--backbones resnet18 convnext_atto] [--image-size 128]
"""
from __future__ import annotations

import argparse

import torch

from tlkit.models.backbones import create_backbone, layer_groups, preprocessing
from tlkit.data.tensors import ImageSet, Splits, to_device
from tlkit.config.experiment import Train
from tlkit.metrics import get_metric
from tlkit.strategies import create_strategy
from tlkit.engine.loop import Trainer


def images_per_second(backbone: str, splits: Splits, image_size: int, amp: bool, epochs: int) -> float:
    torch.manual_seed(0)
    model = create_backbone(backbone, splits.num_classes, image_size)
    groups = layer_groups(model)
    strategy = create_strategy("full_finetune", num_groups=len(groups), epochs=epochs)
    recipe = Train(epochs=epochs, batch_size=256, image_size=image_size, amp=amp, augment=["crop", "hflip"])
    trainer = Trainer(model, groups, strategy, splits, recipe, get_metric("accuracy"), seed=0,
                      device=torch.device("cuda"),
                      **preprocessing(model))
    return trainer.fit()[-1].images_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "convnext_atto", "efficientnet_b0",
                                                            "vit_tiny_patch16_224"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=16384)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    n = args.images
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ImageSet(images, torch.arange(n) % 10, [str(i) for i in range(10)])
    small = ImageSet(images[:1024], data.labels[:1024], data.classes)
    splits = to_device(Splits(data, small, small), torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {n} images/epoch at {args.image_size}px "
          f"(CIFAR-sized uint8 upscaled per batch on the GPU), batch 256, full fine-tuning")
    for backbone in args.backbones:
        fp32 = images_per_second(backbone, splits, args.image_size, amp=False, epochs=args.epochs)
        bf16 = images_per_second(backbone, splits, args.image_size, amp=True, epochs=args.epochs)
        print(f"{backbone:24s} fp32 {fp32:9.0f} img/s   bf16 autocast {bf16:9.0f} img/s   speed-up {bf16 / fp32:4.2f}x")


if __name__ == "__main__":
    main()

"""What each ``train.augment`` entry costs: images/s of the augmentation alone on a CIFAR-sized uint8 batch
(128 x 3 x 32 x 32), against today's default crop+hflip, medians over rounds. The model is left out, so the numbers
say how much of an epoch the augmentation can take, not how much slower a trial gets. The cases are
interleaved round by round, so a busy machine slows them alike.

    python benchmarks/augment_cost.py [--batch 128] [--rounds 5] [--device cpu]

Mixup and cutmix run on the normalised float batch (as in the loop); the per-image policies on uint8 images, one
torchvision call per image (v2 draws its parameters once per call).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from tlkit.config.experiment import augment_list
from tlkit.data.augment import augment_batch, make_mixer, mix_batch

CASES = ["crop+hflip", "random_resized_crop", "randaugment", "trivialaugment", "random_resized_crop+hflip+randaugment",
         "crop+hflip+mixup", "crop+hflip+cutmix"]


def one_round(augment: str, images: torch.Tensor, batches: int, seed: int) -> float:
    """Images/s of ``batches`` batches augmented as ``augment`` says."""
    names = augment_list(augment)
    mixer = make_mixer(names, num_classes=10, label_smoothing=0.1)
    labels = torch.arange(len(images), device=images.device) % 10
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for b in range(batches):
        x = augment_batch(images, names, 4, gen)
        if mixer is not None:
            mix_batch(mixer, x.float(), labels, (0, seed, b))
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return batches * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(args.device)
    host = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"
    print(f"{host}; batch {args.batch} x 3 x 32 x 32 uint8; median of {args.rounds} rounds of {args.batches} batches")
    rates: dict[str, list[float]] = {case: [] for case in CASES}
    for r in range(args.rounds):  # the cases interleaved, so a busy spell of the machine hits them alike
        for case in CASES:
            rates[case].append(one_round(case, images, args.batches, r))
    base = statistics.median(rates[CASES[0]])
    print(f"{'augment':<40} {'images/s':>10} {'vs crop+hflip':>14}")
    for case in CASES:
        rate = statistics.median(rates[case])
        print(f"{case:<40} {rate:>10,.0f} {rate / base:>13.3f}x")


if __name__ == "__main__":
    main()

"""Memory layout and precision on this CPU, per architecture: NCHW vs channels_last, fp32 vs bf16 autocast.

Each (architecture, variant) runs in its own process (fresh allocator and kernel caches), variants interleave round
by round, and the script prints median images/s for a training step (forward, backward, SGD step; batch 128, 32 px,
random init) and for a forward pass without gradients (what feature extraction and evaluation cost), each as a ratio
to NCHW fp32 of the same architecture. ``tlkit.engine.compute`` decides the layout per architecture from these numbers.

    python benchmarks/cpu_layout.py [--archs resnet18 efficientnet_b0 ...] [--repeats 3] [--steps 12]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

ARCHS = ["resnet18", "resnet50", "efficientnet_b0", "mobilenetv3_large_100", "convnext_atto", "regnety_002",
         "vit_tiny_patch16_224", "test_resnet", "test_efficientnet", "test_convnext", "test_vit"]
VARIANTS = ["nchw fp32", "channels_last fp32", "nchw bf16", "channels_last bf16"]


def run_one(arch: str, variant: str, steps: int, batch: int, size: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from tlkit.models.backbones import create_backbone

    torch.manual_seed(0)
    model = create_backbone(arch, 10, size)
    channels_last, bf16 = variant.startswith("channels_last"), variant.endswith("bf16")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.arange(batch) % 10
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def forward() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)

    out = {}
    for name, step, mode in (("train", train_step, model.train), ("forward", forward, model.eval)):
        mode()
        for _ in range(3):  # warm-up: oneDNN picks and caches its kernels
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        out[name] = steps * batch / (time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per measurement")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32, help="image size in pixels")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.steps, args.batch, args.size)))
        return
    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, batch {args.batch}, {args.size} px, {args.repeats} rounds")
    print("| architecture | variant | training img/s | vs NCHW fp32 | forward img/s | vs NCHW fp32 |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for arch in args.archs:
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in args.variants}
        for _ in range(args.repeats):
            for variant in args.variants:
                cmd = [sys.executable, __file__, "--one", arch, variant, "--steps", str(args.steps), "--batch",
                       str(args.batch), "--size", str(args.size)]
                line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                runs[variant].append(json.loads(line))
        med = {v: {k: statistics.median(r[k] for r in rs) for k in ("train", "forward")} for v, rs in runs.items()}
        ref = med[args.variants[0]]
        for v in args.variants:
            print(f"| {arch} | {v} | {med[v]['train']:.0f} | {med[v]['train'] / ref['train']:.2f}x | "
                  f"{med[v]['forward']:.0f} | {med[v]['forward'] / ref['forward']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

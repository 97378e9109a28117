"""Where tlkit cuts each architecture's frozen prefix (``tlkit/engine/prefix.py``), for every depth of ``last_n``.

For each backbone and each ``n_groups`` (top groups training), the model is set up as a ``last_n`` trial at epoch 0
and ``cut_frozen_prefix`` is asked for the cut; the script prints the graph node whose output would be cached (or
``-`` where no cut is taken) and whether prefix-then-suffix reproduces the model on fresh images, in eval mode.
It needs no data and no weights (random init):

    python benchmarks/prefix_cuts.py [--backbones resnet18 vit_tiny_patch16_224 ...] [--image-size 32]
"""
from __future__ import annotations

import argparse

import torch

from tlkit.models.backbones import create_backbone, layer_groups
from tlkit.engine.evaluate import eval_mode
from tlkit.engine.prefix import cut_frozen_prefix
from tlkit.strategies import create_strategy
from tlkit.engine.loop import apply_plan, set_train_mode

BACKBONES = ["test_resnet", "test_efficientnet", "test_convnext", "test_vit", "resnet18", "efficientnet_b0",
             "mobilenetv3_small_050", "regnetx_002", "convnext_atto", "vit_tiny_patch16_224",
             "swin_tiny_patch4_window7_224"]


def cuts(backbone: str, size: int) -> list[str]:
    model = create_backbone(backbone, 10, size)
    groups = layer_groups(model)
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    images = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    out = []
    for n in range(1, len(groups) - 1):
        plan = create_strategy("last_n", num_groups=len(groups), epochs=1, n_groups=n)
        scales = plan.lr_scales(0)
        apply_plan(model, groups, scales, plan)
        set_train_mode(model, groups, scales)
        cut = cut_frozen_prefix(model, groups, example, num_images=10_000, budget_bytes=2**34)
        if cut is None:
            out.append(f"{n}:-")
            continue
        with eval_mode(model), torch.no_grad():
            same = torch.equal(cut.suffix(cut.prefix(images)), model(images))
        out.append(f"{n}:{cut.boundary}{'' if same else ' (DIFFERS)'}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=BACKBONES)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    for backbone in args.backbones:
        print(f"{backbone}: " + "  ".join(cuts(backbone, args.image_size)))


if __name__ == "__main__":
    main()

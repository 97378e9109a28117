"""``python -m tlkit.strategies {list,show}``: what a strategy will do to a backbone, without training it.

    python -m tlkit.strategies list
    python -m tlkit.strategies show gradual --backbone resnet18 --epochs 6 --param unfreeze_every=2
"""
from __future__ import annotations

import argparse
import ast
import sys
from typing import Sequence

import torch

from tlkit.models.backbones import LayerGroup, create_backbone, layer_groups
from tlkit.errors import TlkitError
from tlkit.strategies import create_strategy, get_strategy, list_strategies
from tlkit.strategies.base import Strategy, prepare
from tlkit.utils.text import short_number


def plan_table(strategy: Strategy, model: torch.nn.Module, groups: list[LayerGroup]) -> str:
    """Rows: layer groups (stem first, head last); columns: epochs; cells: learning-rate multiplier, '-' frozen."""
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    epochs = range(strategy.epochs)
    header = f"{'#':>2} {'group':<28} {'params':>10}  " + " ".join(f"{'e' + str(e):>6}" for e in epochs)
    lines = [header, "-" * len(header)]
    trainable = [0] * strategy.epochs
    partial = False
    for g in groups:
        cells = []
        for e in epochs:
            scale = strategy.lr_scales(e)[g.index]
            on = [n for n in g.params if scale > 0 and strategy.trains_param(n, g.is_head)]
            trainable[e] += sum(sizes[n] for n in on)
            mark = "*" if on and len(on) < len(g.params) else ""
            partial |= bool(mark)
            cells.append(f"{scale:.3g}{mark}" if on else "-")
        name = g.name if len(g.name) <= 28 else g.name[:25] + "..."
        lines.append(f"{g.index:>2} {name:<28} {sum(sizes[n] for n in g.params):>10,}  "
                     + " ".join(f"{c:>6}" for c in cells))
    lines.append("-" * len(header))
    lines.append(f"{'':>2} {'trainable parameters':<28} {sum(sizes.values()):>10,}  "
                 + " ".join(f"{short_number(t):>6}" for t in trainable))
    if partial:
        lines.append("* only some of the group's parameters train (e.g. BitFit: biases only)")
    return "\n".join(lines)


def _parse_params(items: Sequence[str]) -> dict:
    params = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise TlkitError(f"Bad --param {item!r}: expected NAME=VALUE, e.g. --param n_groups=2.")
        try:
            params[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise TlkitError(f"Bad --param {item!r}: the value must be a number or a Python literal.") from None
    return params


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tlkit.strategies", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered strategies and what they search")
    show = sub.add_parser("show", help="a strategy's plan for a backbone: which groups train at which epoch/rate")
    show.add_argument("strategy")
    show.add_argument("--backbone", default="resnet18", help="any timm model name (default: resnet18)")
    show.add_argument("--epochs", type=int, default=6)
    show.add_argument("--coarse", action="store_true", help="timm's coarse layer grouping")
    show.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                      help="a strategy parameter (default: the strategy's defaults)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for name in list_strategies():
                cls = get_strategy(name)
                space = cls.search_space(num_groups=6, epochs=6)
                doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
                print(f"{name:<14} {doc}")
                if space:
                    print(f"{'':<14} searches: {', '.join(space)}")
            return 0
        model = create_backbone(args.backbone, num_classes=10)
        groups = layer_groups(model, coarse=args.coarse)
        strategy = create_strategy(args.strategy, num_groups=len(groups), epochs=args.epochs,
                                   **_parse_params(args.param))
        model, groups = prepare(strategy, model, coarse=args.coarse)  # LoRA's adapters count in the plan
        space = strategy.search_space(len(groups), args.epochs)
        print(f"{strategy.describe()} on {args.backbone}: {len(groups)} layer groups "
              f"({'coarse' if args.coarse else 'fine'}), {args.epochs} epochs")
        if space:
            print("searched by Optuna: " + "; ".join(f"{k} in {_range(d)}" for k, d in space.items()))
        print("cells: learning-rate multiplier of each group per epoch ('-' = frozen)\n")
        print(plan_table(strategy, model, groups))
        return 0
    except TlkitError as err:
        print(f"tlkit: error: {err}", file=sys.stderr)
        return 2


def _range(dist: object) -> str:
    low, high = getattr(dist, "low", None), getattr(dist, "high", None)
    if low is None:
        return str(getattr(dist, "choices", dist))
    return f"[{low:g}, {high:g}]" + (" (log)" if getattr(dist, "log", False) else "")


if __name__ == "__main__":
    sys.exit(main())

"""The from-scratch control: the same backbone from random initialisation, everything training.

It is what transfer is measured against: a cell's gain over this one is what the pretrained weights bought.
"""
from __future__ import annotations

from tlkit.strategies._registry import register_strategy
from tlkit.strategies.base import Strategy


@register_strategy("from_scratch")
class FromScratch(Strategy):
    pretrained = False

    def lr_scales(self, epoch: int) -> list[float]:
        return [1.0] * self.num_groups

"""BitFit (Ben Zaken et al. 2022): only the bias terms of the backbone and the whole head train.

Frozen weights mean BatchNorm scales are frozen too, so BatchNorm layers keep their running statistics.
"""
from __future__ import annotations

from tlkit.strategies._registry import register_strategy
from tlkit.strategies.base import Strategy


@register_strategy("bitfit")
class BitFit(Strategy):
    def lr_scales(self, epoch: int) -> list[float]:
        return [1.0] * self.num_groups

    def trains_param(self, name: str, is_head: bool) -> bool:
        return is_head or name.endswith("bias")

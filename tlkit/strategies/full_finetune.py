"""Full fine-tuning: every group trains at the base learning rate from the first epoch."""
from __future__ import annotations

from tlkit.strategies._registry import register_strategy
from tlkit.strategies.base import Strategy


@register_strategy("full_finetune")
class FullFinetune(Strategy):
    def lr_scales(self, epoch: int) -> list[float]:
        return [1.0] * self.num_groups

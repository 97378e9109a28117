"""Linear probe: the backbone is frozen and only the new head trains."""
from __future__ import annotations

from tlkit.strategies._registry import register_strategy
from tlkit.strategies.base import Strategy


@register_strategy("linear_probe")
class LinearProbe(Strategy):
    """The cheapest baseline: with only the head training, features are computed once per trial, not per epoch."""

    def lr_scales(self, epoch: int) -> list[float]:
        return self._frozen_below(self.num_groups - 1)

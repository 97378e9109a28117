"""Surgical fine-tuning (Lee et al. 2023): train one chosen layer group of the body, plus the head.

Which group is best depends on the shift between source and target: the first for input-level shifts (image
corruptions), the last for output-level ones (new labels). ``block`` is searched among the body's ``first`` group (the
stem in timm's grouping), its ``middle`` one and its ``last`` one; everything else stays frozen.
"""
from __future__ import annotations

from optuna.distributions import BaseDistribution, CategoricalDistribution

from tlkit.errors import TlkitError, did_you_mean
from tlkit.strategies._registry import register_strategy
from tlkit.strategies.base import Strategy

BLOCKS = ("first", "middle", "last")


@register_strategy("surgical")
class Surgical(Strategy):
    """Train one layer group of the body (first, middle or last: searched) and the head; freeze the rest."""

    defaults = {"block": "last"}

    def __init__(self, num_groups: int, epochs: int, **params: object) -> None:
        super().__init__(num_groups, epochs, **params)
        if self.params["block"] not in BLOCKS:
            raise TlkitError("surgical: " + did_you_mean(str(self.params["block"]), BLOCKS, "block"))

    @classmethod
    def search_space(cls, num_groups: int, epochs: int) -> dict[str, BaseDistribution]:
        return {"block": CategoricalDistribution(list(BLOCKS))}

    @property
    def chosen_group(self) -> int:
        """The trained body group's index: 0, the middle of ``0..num_groups-2``, or ``num_groups-2``."""
        last = self.num_groups - 2
        return {"first": 0, "middle": last // 2, "last": last}[self.params["block"]]

    def lr_scales(self, epoch: int) -> list[float]:
        on = (self.chosen_group, self.num_groups - 1)
        return [1.0 if i in on else 0.0 for i in range(self.num_groups)]

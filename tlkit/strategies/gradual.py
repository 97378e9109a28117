"""Gradual unfreezing (ULMFiT, Howard & Ruder 2018) with discriminative learning rates.

Epochs ``0..k-1`` train the head, then one more group from the top joins every ``unfreeze_every`` epochs.
A group ``d`` groups below the head trains at ``lr_factor ** d`` times the base rate.
"""
from __future__ import annotations

from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from tlkit.errors import TlkitError
from tlkit.strategies._registry import register_strategy
from tlkit.strategies.base import Strategy


@register_strategy("gradual")
class Gradual(Strategy):
    defaults = {"unfreeze_every": 1, "lr_factor": 0.5}

    def __init__(self, num_groups: int, epochs: int, **params: object) -> None:
        super().__init__(num_groups, epochs, **params)
        if self.params["unfreeze_every"] < 1:
            raise TlkitError(f"gradual: unfreeze_every must be >= 1 but got {self.params['unfreeze_every']}.")
        if not 0.0 < self.params["lr_factor"] <= 1.0:
            raise TlkitError(f"gradual: lr_factor must be in (0, 1] but got {self.params['lr_factor']}.")

    @classmethod
    def search_space(cls, num_groups: int, epochs: int) -> dict[str, BaseDistribution]:
        return {"unfreeze_every": IntDistribution(1, max(1, epochs // 2)),
                "lr_factor": FloatDistribution(0.3, 1.0)}

    def lr_scales(self, epoch: int) -> list[float]:
        unfrozen_body = epoch // self.params["unfreeze_every"]
        scales = []
        for i in range(self.num_groups):
            depth = self.num_groups - 1 - i
            scales.append(self.params["lr_factor"] ** depth if depth <= unfrozen_body else 0.0)
        return scales

"""Layer-wise learning-rate decay: everything trains, group ``d`` below the head at ``layer_decay ** d``.

The same idea as timm's ``--layer-decay``, expressed as per-group multipliers so it composes with any scheduler.
"""
from __future__ import annotations

from optuna.distributions import BaseDistribution, FloatDistribution

from tlkit.errors import TlkitError
from tlkit.strategies._registry import register_strategy
from tlkit.strategies.base import Strategy


@register_strategy("layer_decay")
class LayerDecay(Strategy):
    defaults = {"layer_decay": 0.75}

    def __init__(self, num_groups: int, epochs: int, **params: object) -> None:
        super().__init__(num_groups, epochs, **params)
        if not 0.0 < self.params["layer_decay"] <= 1.0:
            raise TlkitError(f"layer_decay: layer_decay must be in (0, 1] but got {self.params['layer_decay']}.")

    @classmethod
    def search_space(cls, num_groups: int, epochs: int) -> dict[str, BaseDistribution]:
        return {"layer_decay": FloatDistribution(0.5, 0.95)}

    def lr_scales(self, epoch: int) -> list[float]:
        return [self.params["layer_decay"] ** (self.num_groups - 1 - i) for i in range(self.num_groups)]

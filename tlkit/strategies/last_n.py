"""Last N: the top ``n_groups`` layer groups and the head train, everything below stays frozen."""
from __future__ import annotations

from optuna.distributions import BaseDistribution, IntDistribution

from tlkit.errors import TlkitError
from tlkit.strategies._registry import register_strategy
from tlkit.strategies.base import Strategy


@register_strategy("last_n")
class LastN(Strategy):
    defaults = {"n_groups": 1}

    def __init__(self, num_groups: int, epochs: int, **params: object) -> None:
        super().__init__(num_groups, epochs, **params)
        n = self.params["n_groups"]
        if not 0 <= n <= num_groups - 1:
            raise TlkitError(f"last_n: n_groups must be in [0, {num_groups - 1}] (the backbone's body groups) "
                             f"but got {n}.")

    @classmethod
    def search_space(cls, num_groups: int, epochs: int) -> dict[str, BaseDistribution]:
        return {"n_groups": IntDistribution(1, num_groups - 1)}

    def lr_scales(self, epoch: int) -> list[float]:
        return self._frozen_below(self.num_groups - 1 - self.params["n_groups"])

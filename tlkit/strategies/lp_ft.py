"""LP-FT (Kumar et al. 2022): linear-probe first, then fine-tune everything at a lower rate.

Training the head first keeps a random head from distorting the pretrained features once the body unfreezes.
"""
from __future__ import annotations

from optuna.distributions import BaseDistribution, FloatDistribution

from tlkit.errors import TlkitError
from tlkit.strategies._registry import register_strategy
from tlkit.strategies.base import Strategy


@register_strategy("lp_ft")
class LinearProbeThenFinetune(Strategy):
    defaults = {"probe_fraction": 0.5, "ft_lr_scale": 0.1}

    def __init__(self, num_groups: int, epochs: int, **params: object) -> None:
        super().__init__(num_groups, epochs, **params)
        if not 0.0 < self.params["probe_fraction"] < 1.0:
            raise TlkitError(f"lp_ft: probe_fraction must be in (0, 1) but got {self.params['probe_fraction']}.")
        if not 0.0 < self.params["ft_lr_scale"] <= 1.0:
            raise TlkitError(f"lp_ft: ft_lr_scale must be in (0, 1] but got {self.params['ft_lr_scale']}.")

    @classmethod
    def search_space(cls, num_groups: int, epochs: int) -> dict[str, BaseDistribution]:
        return {"probe_fraction": FloatDistribution(0.2, 0.6), "ft_lr_scale": FloatDistribution(0.01, 1.0, log=True)}

    @property
    def probe_epochs(self) -> int:
        """At least one probe epoch and, when there is room, at least one fine-tuning epoch."""
        return min(max(1, round(self.params["probe_fraction"] * self.epochs)), max(1, self.epochs - 1))

    def lr_scales(self, epoch: int) -> list[float]:
        if epoch < self.probe_epochs:
            return self._frozen_below(self.num_groups - 1)
        return [self.params["ft_lr_scale"]] * self.num_groups

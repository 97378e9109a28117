"""The Strategy contract: which layer groups train at each epoch, and at what learning-rate multiplier."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

from optuna.distributions import BaseDistribution

from tlkit.errors import TlkitError

__all__ = ["Strategy", "check_plan"]


class Strategy(ABC):
    """Decides, per epoch, the learning-rate multiplier of every layer group; 0 freezes the group.

    Groups are timm's layer groups, stem first, with the classifier head always last (see ``tlkit.backbones``).
    One method is required, ``lr_scales``; the rest are hooks with do-nothing defaults.

    Subclasses list their hyperparameters in ``defaults`` and what Optuna may search in ``search_space``.
    The trainer turns the plan into ``requires_grad`` flags and per-group learning rates at the start of each
    epoch; every parameter is in the optimizer from the start, so unfreezing rebuilds nothing.

    Example:
        @register_strategy("head_and_stem")
        class HeadAndStem(Strategy):
            def lr_scales(self, epoch):
                return [1.0] + [0.0] * (self.num_groups - 2) + [1.0]
    """

    name: ClassVar[str] = ""
    pretrained: ClassVar[bool] = True
    """False for a control that trains from random initialisation."""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, num_groups: int, epochs: int, **params: Any) -> None:
        if num_groups < 2:
            raise TlkitError(f"num_groups must be >= 2 (a body and a head) but got {num_groups}.")
        if epochs < 1:
            raise TlkitError(f"epochs must be >= 1 but got {epochs}.")
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise TlkitError(f"Strategy {self.name!r} takes {sorted(self.defaults) or 'no parameters'} but got "
                             f"{sorted(unknown)}.")
        self.num_groups = num_groups
        self.epochs = epochs
        self.params = {**self.defaults, **params}

    @classmethod
    def search_space(cls, num_groups: int, epochs: int) -> dict[str, BaseDistribution]:
        """Hyperparameters Optuna searches for this strategy (added to the experiment's shared ones)."""
        return {}

    @abstractmethod
    def lr_scales(self, epoch: int) -> list[float]:
        """Learning-rate multiplier of each layer group at ``epoch`` (0-based); 0 means frozen, the head is last."""

    def trains_param(self, name: str, is_head: bool) -> bool:
        """Whether a parameter of a group with a non-zero multiplier trains. Hook for parameter-level rules."""
        return True

    def describe(self) -> str:
        """One line for plans and logs."""
        args = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({args})"

    def _frozen_below(self, first_trained: int) -> list[float]:
        """Groups ``first_trained..`` at multiplier 1, the rest frozen."""
        return [0.0 if i < first_trained else 1.0 for i in range(self.num_groups)]


def check_plan(strategy: Strategy, epoch: int) -> list[float]:
    """``strategy.lr_scales(epoch)``, checked: one finite, non-negative number per layer group.

    A plan with a NaN or a negative multiplier would train with a nonsense learning rate and produce a number
    that looks like a result; it is refused with the strategy, the epoch and the values it gave.
    """
    scales: Sequence[Any] = strategy.lr_scales(epoch)
    where = f"Strategy {strategy.name or type(strategy).__name__!r} at epoch {epoch}"
    try:
        values = [float(s) for s in scales]
    except (TypeError, ValueError):
        raise TlkitError(f"{where}: lr_scales must return numbers, one per layer group, but got {scales!r}.") from None
    if len(values) != strategy.num_groups:
        raise TlkitError(f"{where}: lr_scales must return {strategy.num_groups} multipliers (one per layer group, "
                         f"head last) but got {len(values)}: {values}.")
    bad = [v for v in values if not math.isfinite(v) or v < 0]
    if bad:
        raise TlkitError(f"{where}: lr_scales must be finite and >= 0 (0 freezes a group) but got {values}.")
    return values

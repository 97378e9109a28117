"""The Strategy contract: which layer groups train at each epoch, and at what learning-rate multiplier.

Most strategies are nothing more. Three optional hooks reach further, each with a do-nothing default so a strategy
that does not need them is unchanged: ``prepare_model`` changes the model before training (inserts adapters,
remembers the starting weights), ``loss_term`` adds a penalty to every step's loss, and ``export_model`` turns the
trained model back into the plain timm model that is saved, scored and returned by ``tlkit.load_best``.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import torch
from optuna.distributions import BaseDistribution

from tlkit.models.backbones import LayerGroup, layer_groups
from tlkit.errors import TlkitError

__all__ = ["Strategy", "check_plan", "prepare"]


class Strategy(ABC):
    """Decides, per epoch, the learning-rate multiplier of every layer group; 0 freezes the group.

    Groups are timm's layer groups, stem first, with the classifier head always last (see ``tlkit.models.backbones``).
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

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Change the model before training and return the model to train (the same object or a new one).

        Called once per trial, after the starting weights are loaded and before the optimizer is built or a
        checkpoint is loaded on resume, so a checkpoint holds the prepared model's parameters and loads back into
        it. The layer groups are computed again afterwards; their number must not change. Default: unchanged.
        """
        return model

    def loss_term(self, model: torch.nn.Module) -> torch.Tensor | None:
        """A term added to the training loss at every step (e.g. a penalty towards the starting weights), or None.

        The training loss reported per epoch includes it; validation and test scores never do."""
        return None

    def export_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The plain timm model the trained ``model`` stands for, without changing ``model`` (training goes on).

        This is what a trial saves as its best weights, so test scoring, ``tlkit.load_best`` and prediction need
        nothing of the strategy. Default: ``model`` itself; an adapter strategy returns a merged copy."""
        return model

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


def prepare(strategy: Strategy, model: torch.nn.Module, coarse: bool = False
            ) -> tuple[torch.nn.Module, list[LayerGroup]]:
    """``strategy.prepare_model(model)`` and the prepared model's layer groups, checked to be as many as before.

    Why the check: the strategy's plan was made for that many groups; a model change that added or removed one
    would silently shift every multiplier onto the wrong layers.
    """
    before = len(layer_groups(model, coarse=coarse))
    prepared = strategy.prepare_model(model)
    if not isinstance(prepared, torch.nn.Module):
        raise TlkitError(f"Strategy {strategy.name!r}: prepare_model must return the model to train (a torch "
                         f"module) but returned {type(prepared).__name__}. HINT: end prepare_model with "
                         f"`return model`.")
    groups = layer_groups(prepared, coarse=coarse)
    if len(groups) != before:
        raise TlkitError(f"Strategy {strategy.name!r}: prepare_model changed the model's layer groups from {before} "
                         f"to {len(groups)}, so its plan no longer fits. HINT: keep new modules inside existing "
                         f"layers (adapters beside a layer's weights keep its group).")
    return prepared, groups

"""L2-SP (Li et al. 2018): fine-tune everything, pulled back towards the starting weights instead of towards zero.

The loss gains ``alpha / 2 * ||w - w0||^2`` over the body's parameters, ``w0`` their pretrained values: the model
may move where the target needs it but is held near what the source taught it. ``alpha`` is searched. The new head
has no starting point, so it keeps the recipe's ordinary weight decay. Unlike the paper, the recipe's weight decay
(towards zero) still applies to the body too; search it low (the shared ``weight_decay`` range) for pure L2-SP.
"""
from __future__ import annotations

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from tlkit.models.backbones import layer_groups
from tlkit.errors import TlkitError
from tlkit.strategies._registry import register_strategy
from tlkit.strategies.base import Strategy


@register_strategy("l2_sp")
class L2SP(Strategy):
    """Fine-tune everything with a penalty alpha/2 * ||w - w0||^2 towards the starting weights (searched alpha)."""

    defaults = {"alpha": 0.01}

    def __init__(self, num_groups: int, epochs: int, **params: object) -> None:
        super().__init__(num_groups, epochs, **params)
        alpha = self.params["alpha"]
        if not isinstance(alpha, (int, float)) or not 0.0 <= alpha < float("inf"):
            raise TlkitError(f"l2_sp: alpha must be a finite number >= 0 but got {alpha!r}. HINT: 1e-3 to 1 is "
                             f"usual; 0 is plain full fine-tuning.")
        self._start: dict[str, torch.Tensor] = {}

    @classmethod
    def search_space(cls, num_groups: int, epochs: int) -> dict[str, BaseDistribution]:
        return {"alpha": FloatDistribution(1e-4, 1.0, log=True)}

    def lr_scales(self, epoch: int) -> list[float]:
        return [1.0] * self.num_groups

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Remember the body's starting weights: called before a checkpoint is loaded, so a resumed trial pulls
        towards the same point as an uninterrupted one."""
        head = set(layer_groups(model)[-1].params)
        self._start = {n: p.detach().clone() for n, p in model.named_parameters() if n not in head}
        return model

    def loss_term(self, model: torch.nn.Module) -> torch.Tensor | None:
        if not self._start:
            raise TlkitError("l2_sp: loss_term called before prepare_model, so there are no starting weights to "
                             "pull towards. HINT: prepare the model with tlkit.strategies.base.prepare first.")
        params = dict(model.named_parameters())
        total = None
        for name, start in self._start.items():
            param = params[name]
            if start.device != param.device:  # the trainer moves the model after preparing it
                start = self._start[name] = start.to(param.device)
            term = (param - start).pow(2).sum()
            total = term if total is None else total + term
        return None if total is None else 0.5 * self.params["alpha"] * total

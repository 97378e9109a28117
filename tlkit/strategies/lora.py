"""LoRA (Hu et al. 2021): the body stays frozen and learns a low-rank update ``B @ A`` beside each adapted layer.

Adapters come from Hugging Face's ``peft`` (``inject_adapter_in_model``, which edits the timm model in place, so
its methods and layer groups stay as they were). They go on every ``nn.Linear`` and every ungrouped ``nn.Conv2d``
of the body's blocks: a ViT's attention and MLP linears, a CNN's convolutions (depthwise convolutions and the stem
are left alone, the head trains in full). ``rank`` is searched; ``lora_alpha`` is fixed, as Hu et al. advise (the
update is scaled by ``lora_alpha / rank``, so a larger rank does not simply mean a larger learning rate).

A trial saves its best weights merged (``W + B @ A``, peft's own merge per layer) into the plain timm model, so
``tlkit.load_best`` returns an ordinary timm model with no adapters and no inference cost.
"""
from __future__ import annotations

import copy

import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution

from tlkit.models.backbones import layer_groups
from tlkit.errors import TlkitError
from tlkit.strategies._registry import register_strategy
from tlkit.strategies.base import Strategy

ADAPTER_NAME = "default"


def _peft():
    try:
        import peft
        from peft.tuners.lora import LoraLayer
    except ImportError as err:
        raise TlkitError(f"The lora strategy needs the peft package, which cannot be imported ({err}). HINT: pip "
                         f"install peft (it is one of tlkit's dependencies: pip install -e . installs it).") from None
    return peft, LoraLayer


def adapter_targets(model: torch.nn.Module) -> list[str]:
    """Names of the layers LoRA adapts: linears and ungrouped convolutions of the body, neither stem nor head."""
    groups = layer_groups(model)
    inner = {n for g in groups[1:-1] for n in g.params}
    return [name for name, module in model.named_modules()
            if f"{name}.weight" in inner and (isinstance(module, torch.nn.Linear)
                                               or (isinstance(module, torch.nn.Conv2d) and module.groups == 1))]


@register_strategy("lora")
class LoRA(Strategy):
    """Low-rank adapters (peft) on the body's linears and convolutions, plus the head; rank searched."""

    defaults = {"rank": 8, "lora_alpha": 8}

    def __init__(self, num_groups: int, epochs: int, **params: object) -> None:
        super().__init__(num_groups, epochs, **params)
        for key in ("rank", "lora_alpha"):
            value = self.params[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TlkitError(f"lora: {key} must be an int >= 1 but got {value!r}. HINT: ranks of 2 to 16 are "
                                 f"usual.")

    @classmethod
    def search_space(cls, num_groups: int, epochs: int) -> dict[str, BaseDistribution]:
        return {"rank": CategoricalDistribution([2, 4, 8, 16])}

    def lr_scales(self, epoch: int) -> list[float]:
        return [1.0] * self.num_groups

    def trains_param(self, name: str, is_head: bool) -> bool:
        return is_head or ".lora_" in name

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        peft, _ = _peft()
        targets = adapter_targets(model)
        if not targets:
            raise TlkitError(f"lora: {type(model).__name__} has no linear or ungrouped convolution layer between "
                             f"its stem and its head to adapt. HINT: choose another strategy for this backbone.")
        config = peft.LoraConfig(r=self.params["rank"], lora_alpha=self.params["lora_alpha"], lora_dropout=0.0,
                                 bias="none", target_modules=targets)
        return peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)

    def export_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """A merged copy: each adapted layer's weight becomes ``W + scale * B @ A`` and the layer its plain self."""
        _, lora_layer = _peft()
        plain = copy.deepcopy(model)
        for name, module in list(plain.named_modules()):
            if isinstance(module, lora_layer):
                module.merge(adapter_names=[ADAPTER_NAME])
                parent, _, child = name.rpartition(".")
                setattr(plain.get_submodule(parent), child, module.get_base_layer())
        if hasattr(plain, "peft_config"):  # what inject_adapter_in_model noted on the model
            del plain.peft_config
        return plain

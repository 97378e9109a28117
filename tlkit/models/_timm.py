"""Every use of timm beyond its documented API, in one place, behind a few functions.

tlkit calls timm's public surface where it needs it (``timm.create_model``, ``timm.list_models``,
``timm.data.resolve_data_config``, and the methods every timm model has: ``group_matcher``, ``get_classifier``,
``forward_features``/``forward_head``, ``no_weight_decay``). Four things it needs have no public, stable API. They
are here, each with why tlkit needs it and exactly what it relies on; ``tests/test_timm_contract.py`` checks that
against the installed timm (and the public methods above with it), and ``pyproject.toml`` keeps timm below the next
minor release until that test has passed on it.

``group_names``
    timm's ``group_with_matcher`` (``timm.models._manipulate``), the function its public ``group_parameters``
    calls. Why: tlkit groups *names*, among them the names the weights of affine-free BatchNorm layers would have
    (they have no parameter, yet their running statistics must follow their group's plan); ``group_parameters``
    only takes a module's own parameters. Relied on: groups in order, stem first, numbered 0, 1, ...; every name in
    exactly one group, in input order within it; a name the matcher does not match goes in a group after all the
    others; an entry whose suffix is ``(99999,)`` (timm's ``MATCH_PREV_GROUP``) joins the group before it.
``notrace_modules`` / ``notrace_functions``
    timm's registry of modules and functions torch.fx must not trace into (``register_notrace_module``), which
    ``tlkit.engine.prefix`` needs to cut a model where its frozen layer groups end. Undocumented; read from
    ``timm.models._features_fx``, where every timm 1.0 has it (newer ones define it in ``timm.layers._fx`` and
    re-export it there). Relied on: lists of module classes and of functions that ``torch.fx.Tracer`` takes as
    leaves and ``autowrap_functions``.
``create_from_state_dict``
    A model built through timm's pretrained-loading path from a state dict in memory, through the
    ``pretrained_cfg_overlay`` keys that timm's private ``_resolve_pretrained_source`` reads. Why: the
    architecture's own checkpoint filter then converts keys and resamples what depends on the input size (a ViT's
    position embeddings, saved at 224 px, for a 32 px model), exactly as for hub weights. Relied on: ``state_dict``
    is the source when ``source``, ``file``, ``url`` and ``hf_hub_id`` are empty; the load is strict (a state dict
    that does not fit raises); ``num_classes`` is the classes the state dict's head was saved with.
``fixed_input_size`` / ``classifier_names``
    Fields of an architecture's default ``PretrainedCfg`` (``get_pretrained_cfg`` is public; its fields are timm's
    configuration internals). Relied on: ``fixed_input_size`` is true for the models built for one input size
    (ViTs), whose constructor takes ``img_size``; ``classifier`` names the head's module (a string or a tuple of
    them) as it is prefixed in a saved state dict.
"""
from __future__ import annotations

from typing import Any, Iterable

import timm
import torch
from timm.models._features_fx import get_notrace_functions, get_notrace_modules
from timm.models._manipulate import group_with_matcher

__all__ = ["group_names", "notrace_modules", "notrace_functions", "create_from_state_dict", "fixed_input_size",
           "classifier_names"]

HUB_PREFIXES = ("hf-hub:", "hf_hub:")
"""Names of a model on the Hugging Face hub: their configuration is on the hub, not in timm's registry."""


def group_names(names: Iterable[str], matcher: dict | Any) -> list[list[str]]:
    """``names`` in the layer groups of ``matcher`` (``model.group_matcher(coarse=...)``), stem first."""
    grouped = group_with_matcher(((n, None) for n in names), matcher)
    return [list(grouped[i]) for i in sorted(grouped)]


def notrace_modules() -> tuple[type[torch.nn.Module], ...]:
    """Module classes timm registers as untraceable by torch.fx (they stay leaves of a trace)."""
    return tuple(get_notrace_modules())


def notrace_functions() -> tuple[Any, ...]:
    """Functions timm registers as untraceable by torch.fx (a tracer wraps their calls whole)."""
    return tuple(get_notrace_functions())


def create_from_state_dict(name: str, state_dict: dict[str, torch.Tensor], num_classes: int,
                           **kwargs: Any) -> torch.nn.Module:
    """``timm.create_model(name, pretrained=True, ...)`` with ``state_dict`` as the pretrained weights."""
    overlay = {"source": "", "state_dict": state_dict, "file": None, "url": None, "hf_hub_id": None,
               "num_classes": num_classes}
    return timm.create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay, **kwargs)


def _default_cfg(name: str) -> Any:
    return None if name.startswith(HUB_PREFIXES) else timm.models.get_pretrained_cfg(name)


def fixed_input_size(name: str) -> bool:
    """Whether the architecture is built for one input size (a ViT), so its ``img_size`` must be passed."""
    cfg = _default_cfg(name)
    return bool(cfg is not None and cfg.fixed_input_size)


def classifier_names(name: str) -> tuple[str, ...]:
    """Module names of the head in the architecture's saved state dicts (``("fc",)`` for a ResNet)."""
    classifier = getattr(_default_cfg(name), "classifier", None) or "head"
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)

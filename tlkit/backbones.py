"""timm backbones: creating them for a target, their layer groups, and their preprocessing.

Depth is measured in timm's own layer groups (``model.group_matcher()``), so "the last 2 groups" means the same on a
ResNet, an EfficientNet, a ConvNeXt and a ViT. tlkit adds one rule on top: the classifier is always its own, last
group (the *head*), so "only the head trains" is exactly a linear probe on every architecture.
"""
from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from timm.models import group_parameters

from tlkit.errors import TlkitError, did_you_mean

__all__ = ["LayerGroup", "check_backbone", "create_backbone", "layer_groups", "preprocessing"]


@dataclass(frozen=True)
class LayerGroup:
    """A run of parameters that train (or freeze) together; ``index`` counts from the stem (0) to the head."""

    index: int
    name: str
    params: tuple[str, ...]
    is_head: bool = False


def check_backbone(name: str) -> None:
    """Fail early, with close matches, for a name timm does not know (a pretrained tag is allowed)."""
    if name.startswith(("hf-hub:", "hf_hub:")):
        return
    arch, tag = timm.models.split_model_name_tag(name)
    if timm.is_model(arch):
        if not tag or name in timm.list_pretrained(f"{arch}.*"):
            return
        raise TlkitError(f"Backbone {name!r}: timm knows the architecture {arch!r} but not the pretrained tag "
                         f"{tag!r}. " + did_you_mean(name, timm.list_pretrained(f"{arch}.*"), "pretrained tag"))
    raise TlkitError(did_you_mean(name, timm.list_models(), "backbone", list_available=False)
                     + " HINT: any name from timm.list_models() works, with or without a pretrained tag.")


def model_kwargs(name: str, image_size: int | None) -> dict:
    """timm arguments for the image size: models with a fixed input size (ViTs) are built for it, and timm
    resamples pretrained position embeddings to match when it loads hub weights."""
    cfg = timm.models.get_pretrained_cfg(name) if not name.startswith(("hf-hub:", "hf_hub:")) else None
    return {"img_size": image_size} if image_size and cfg is not None and cfg.fixed_input_size else {}


def create_backbone(name: str, num_classes: int, image_size: int | None = None) -> torch.nn.Module:
    """A randomly initialised timm model with a fresh head for ``num_classes``; weights come from tlkit.weights."""
    check_backbone(name)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **model_kwargs(name, image_size))


def _head_param_names(model: torch.nn.Module) -> list[str]:
    head = model.get_classifier()
    ids = {id(p) for p in head.parameters()}
    names = [n for n, p in model.named_parameters() if id(p) in ids]
    if not names:
        raise TlkitError(f"{type(model).__name__} has no classifier parameters (num_classes=0?). HINT: tlkit needs "
                         f"a timm model with a classifier head.")
    return names


def _group_name(params: tuple[str, ...]) -> str:
    """``layer2`` for params that share a module prefix, else the joined top-level names (``conv1+bn1``)."""
    split = [p.split(".")[:-1] for p in params]
    common = []
    for parts in zip(*split):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    if common:
        return ".".join(common)
    return "+".join(dict.fromkeys(p.split(".")[0] for p in params))


def layer_groups(model: torch.nn.Module, coarse: bool = False) -> list[LayerGroup]:
    """The model's layer groups from timm's ``group_matcher``, stem first, with the classifier as the last group."""
    head = _head_param_names(model)
    grouped = group_parameters(model, model.group_matcher(coarse=coarse))
    groups: list[LayerGroup] = []
    for names in grouped.values():
        body = tuple(n for n in names if n not in head)
        if body:
            groups.append(LayerGroup(len(groups), _group_name(body), body))
    groups.append(LayerGroup(len(groups), "head", tuple(head), is_head=True))
    covered = {n for g in groups for n in g.params}
    missing = [n for n, _ in model.named_parameters() if n not in covered]
    if missing:  # a matcher that skips parameters would silently freeze them forever
        raise TlkitError(f"{type(model).__name__}.group_matcher() leaves {missing[:3]} in no group.")
    return groups


def preprocessing(model: torch.nn.Module) -> dict[str, tuple[float, ...]]:
    """Normalisation of the backbone's timm data config (its pretrained weights expect these)."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return {"mean": tuple(float(v) for v in cfg["mean"]), "std": tuple(float(v) for v in cfg["std"])}

"""timm backbones: building one for a target, its layer groups, its starting weights and its preprocessing.

Depth is measured in timm's own layer groups (``model.group_matcher()``), so "the last 2 groups" means the same on a
ResNet, an EfficientNet, a ConvNeXt and a ViT. tlkit adds one rule on top: the classifier is always its own, last
group (the *head*), so "only the head trains" is exactly a linear probe on every architecture.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import timm
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tlkit.errors import TlkitError, describe_error, did_you_mean
from tlkit.models import _timm

__all__ = ["LayerGroup", "check_backbone", "check_runs", "create_backbone", "build_model", "layer_groups",
           "preprocessing", "load_into", "adapt_weights", "hub_offline"]


@dataclass(frozen=True)
class LayerGroup:
    """A run of parameters that train (or freeze) together; ``index`` counts from the stem (0) to the head.

    ``norms`` names the BatchNorm layers without weights (``affine=False``) that belong to the group: they have no
    parameter to freeze, so their running statistics follow the group's plan.
    """

    index: int
    name: str
    params: tuple[str, ...]
    is_head: bool = False
    norms: tuple[str, ...] = ()


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


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """The Hugging Face hub in cache-only mode for the block, then as it was. huggingface_hub reads
    ``HF_HUB_OFFLINE`` once, on import, so both the variable and its constant are set."""
    import huggingface_hub.constants as hf_constants

    saved = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[0]
        hf_constants.HF_HUB_OFFLINE = saved[1]


def model_kwargs(name: str, image_size: int | None) -> dict:
    """timm arguments for the image size: models with a fixed input size (ViTs) are built for it, and timm
    resamples pretrained position embeddings to match when it loads hub weights."""
    return {"img_size": image_size} if image_size and _timm.fixed_input_size(name) else {}


def create_backbone(name: str, num_classes: int, image_size: int | None = None) -> torch.nn.Module:
    """A randomly initialised timm model with a fresh head for ``num_classes``; weights come from
    tlkit.engine.source.resolve_pretrained."""
    check_backbone(name)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **model_kwargs(name, image_size))


def check_runs(name: str, num_classes: int, image_sizes: Iterable[int], batch: int, prefix: str = "train.") -> None:
    """Fail before any trial when the architecture cannot train at an image size or on batches as small as ``batch``
    (a ViT whose patch size does not divide the image, BatchNorm over a single 1x1 value): one forward pass in train
    mode on random images at each size, the way the first training step would run it. Two images stand for any
    larger batch: only a batch of one behaves differently."""
    model = None
    for size in sorted(set(image_sizes)):
        if model is None or model_kwargs(name, size):  # a ViT is built for its input size
            model = create_backbone(name, num_classes, size)
        problem = _forward_problem(model, size, min(batch, 2))
        if problem is None:
            continue
        if batch < 2 and _forward_problem(model, size, 2) is None:
            raise TlkitError(f"Backbone {name!r} cannot train on batches of {batch} image at {size} px ({problem}). "
                             f"HINT: keep {prefix}batch_size, and every batch size searched, at 2 or more.")
        raise TlkitError(f"Backbone {name!r} cannot run at image size {size} ({problem}). HINT: choose a "
                         f"{prefix}image_size the architecture supports (a ViT's must be a multiple of its patch "
                         f"size; 32 or more is safe for most).")


def _forward_problem(model: torch.nn.Module, size: int, batch: int) -> str | None:
    model.train()
    try:
        with torch.no_grad():
            model(torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)))
    except Exception as err:  # noqa: BLE001 - whatever the architecture raises, the trial would raise too
        return describe_error(err).rstrip(".")
    return None


def build_model(backbone: str, num_classes: int, weights: dict[str, torch.Tensor] | None, seed: int,
                image_size: int | None = None, origin: str = "pretrained weights") -> torch.nn.Module:
    """A fresh model for a trial: ``weights`` in the body (None: random init), a new head whose random
    initialisation depends only on ``seed`` (so seed s gives every strategy of a backbone the same head)."""
    torch.manual_seed(seed)
    model = create_backbone(backbone, num_classes, image_size)
    if weights is not None:
        load_into(model, weights, origin)
    return model


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], origin: str) -> None:
    """Load a backbone's pretrained weights, replacing only the classifier head.

    Any other missing, unexpected or mis-shaped key is an error: a half-loaded model is not a pretrained model.
    """
    head = set(layer_groups(model)[-1].params)
    own = model.state_dict()
    body = {k: v for k, v in state_dict.items() if k not in head}
    mismatched = [k for k, v in body.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(body) - head)
    unexpected = sorted(set(body) - set(own))
    if mismatched or missing or unexpected:
        parts = [f"{label} {keys[:5]}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", mismatched)) if keys]
        raise TlkitError(f"Pretrained weights from {origin} do not fit {type(model).__name__}: {'; '.join(parts)}. "
                         f"HINT: the weights must come from the same timm architecture.")
    model.load_state_dict(body, strict=False)


def _classifier_size(name: str, state_dict: dict[str, torch.Tensor]) -> int:
    """Classes of the head a weights file was saved with (0: saved without a head)."""
    for prefix in _timm.classifier_names(name):
        weight = state_dict.get(f"{prefix}.weight")
        if isinstance(weight, torch.Tensor) and weight.dim() >= 1:
            return int(weight.shape[0])
    return 0


def adapt_weights(name: str, state_dict: dict[str, torch.Tensor], image_size: int | None, origin: str
                  ) -> dict[str, torch.Tensor]:
    """A weights file's state dict as the model at ``image_size`` needs it, through timm's own pretrained-loading
    path: the architecture's checkpoint filter converts keys and resamples what depends on the input size (a ViT's
    position embeddings, saved at 224 px, for a 128 px model), exactly as for hub weights; the load is strict."""
    classes = _classifier_size(name, state_dict)
    try:
        model = _timm.create_from_state_dict(name, state_dict, classes, **model_kwargs(name, image_size))
    except Exception as err:  # noqa: BLE001 - timm and torch raise several types for weights that do not fit
        load_into(create_backbone(name, max(classes, 1), image_size), state_dict, origin)  # names the keys if it can
        raise TlkitError(f"Pretrained weights from {origin} do not fit {name!r} ({describe_error(err)}). HINT: the "
                         f"weights must come from the same timm architecture.") from None
    return model.state_dict()


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


def _weightless_norms(model: torch.nn.Module) -> dict[str, str]:
    """``{"layer1.0.bn1.weight": "layer1.0.bn1"}`` for BatchNorm layers without weights: the name their weight
    would have, so timm's matcher can place them in a group like any parameter."""
    return {f"{name}.weight": name for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and next(m.parameters(recurse=False), None) is None}


def layer_groups(model: torch.nn.Module, coarse: bool = False) -> list[LayerGroup]:
    """The model's layer groups from timm's ``group_matcher``, stem first, with the classifier as the last group."""
    head = _head_param_names(model)
    norms = _weightless_norms(model)
    names = [n for n, _ in model.named_parameters()] + list(norms)
    groups: list[LayerGroup] = []
    orphans: list[str] = []  # weightless norms in a group with no parameters: they join the group below
    for members in _timm.group_names(names, model.group_matcher(coarse=coarse)):
        body = tuple(n for n in members if n not in head and n not in norms)
        group_norms = tuple(norms[n] for n in members if n in norms)
        if body:
            groups.append(LayerGroup(len(groups), _group_name(body), body, norms=tuple(orphans) + group_norms))
            orphans = []
        else:
            orphans += group_norms
    if orphans and groups:
        last = groups[-1]
        groups[-1] = LayerGroup(last.index, last.name, last.params, norms=last.norms + tuple(orphans))
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

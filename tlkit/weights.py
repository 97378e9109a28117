"""Where a backbone's pretrained weights come from: a local file, a source task tlkit trains, or the timm/HF hub.

Weights are resolved for every backbone before the first trial, so a missing file or an offline machine stops the
sweep with a message instead of failing (or, worse, silently training from random weights) hours in.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
import torch

from tlkit.backbones import create_backbone, layer_groups, model_kwargs
from tlkit.checkpoint import load_weights, save_weights, write_json
from tlkit.data import cache_dir
from tlkit.errors import TlkitError
from tlkit.experiment import Experiment, experiment_to_dict, file_digest, fingerprint

__all__ = ["Pretrained", "resolve_pretrained", "load_into", "hub_reachable", "source_weights_path",
           "read_weights_file"]

HUB_HOST = ("huggingface.co", 443)


@dataclass
class Pretrained:
    """A backbone's starting weights and a one-line account of where they came from."""

    state_dict: dict[str, torch.Tensor] | None
    origin: str


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or the hub cannot be reached (no DNS, no route): fail fast, not after
    a minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cache_hint() -> str:
    try:
        from huggingface_hub import constants
        return f"the Hugging Face cache ({constants.HF_HUB_CACHE}) and torch hub ({torch.hub.get_dir()})"
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm
        return f"the torch hub cache ({torch.hub.get_dir()})"


def _from_hub(backbone: str, online: bool, image_size: int) -> dict[str, torch.Tensor]:
    """timm's own loader (so its key conversions apply), offline-only when the hub is unreachable."""
    import huggingface_hub.constants as hf_constants

    saved = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    if not online:  # cache only: fail at once instead of retrying an unreachable hub for a minute
        os.environ["HF_HUB_OFFLINE"] = "1"
        hf_constants.HF_HUB_OFFLINE = True
    try:
        return timm.create_model(backbone, pretrained=True, **model_kwargs(backbone, image_size)).state_dict()
    except Exception as err:  # noqa: BLE001 - every failure here has the same remedies
        where = "the hub is unreachable and nothing is cached" if not online else f"loading failed ({err})"
        raise TlkitError(
            f"No pretrained weights for backbone {backbone!r}: {where}; looked in {_hub_cache_hint()}. "
            f"HINT: put the weights in a file and pass --weights {backbone}=PATH (or weights={{...}} in the "
            f"experiment), declare a source task tlkit trains itself (Experiment(source=...)), run once online to "
            f"fill the cache, or set pretrained=False to train from random initialisation.") from None
    finally:
        if saved[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[0]
        hf_constants.HF_HUB_OFFLINE = saved[1]


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


def source_weights_path(exp: Experiment, backbone: str) -> Path:
    """Cache path keyed by a hash of backbone + source data + source recipe + seed: later sweeps reuse it.

    The architecture's parameter shapes are part of the key, so weights cached by a build of a model that no longer
    matches (another timm version, another image size for a ViT) are never offered to it.
    """
    assert exp.source is not None
    src = experiment_to_dict(exp)["source"]
    src["data"].pop("root", None)
    src["train"].pop("device", None)
    model = create_backbone(backbone, 1, exp.source.train.image_size)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    key = fingerprint({"backbone": backbone, "source": src, "seed": exp.seed, "base": _base_origin(exp, backbone),
                       "shapes": shapes})
    return cache_dir() / "source" / f"{backbone.replace('/', '_')}-{key}.safetensors"


def _base_origin(exp: Experiment, backbone: str) -> str:
    return file_digest(exp.weights[backbone]) if backbone in exp.weights else "random init"


def read_weights_file(backbone: str, path: str) -> dict[str, torch.Tensor]:
    """A weights file given for ``backbone``, read safely; a missing or unreadable file is a TlkitError."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise TlkitError(f"Weights file {str(file)!r} for backbone {backbone!r} does not exist. HINT: fix the path "
                         f"in --weights {backbone}=PATH or the experiment's weights={{...}}.")
    try:
        return load_weights(file)
    except Exception as err:  # noqa: BLE001
        raise TlkitError(f"Weights file {str(file)!r} for backbone {backbone!r} cannot be read safely "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). HINT: use safetensors or a "
                         f"plain state dict saved with torch.save(model.state_dict(), path).") from None


def resolve_pretrained(exp: Experiment, backbone: str, num_classes: int,
                       train_source: Callable[[Experiment, str, Path], None] | None = None) -> Pretrained:
    """The starting weights of ``backbone`` for this experiment, checked against the architecture.

    With ``exp.pretrained=False`` every cell starts from random weights. Otherwise: a source task (trained once via
    ``train_source``, starting from ``exp.weights[backbone]`` if given, and cached), else an explicit file
    (``exp.weights``), else the timm hub by pretrained tag.
    """
    if not exp.pretrained:
        return Pretrained(None, "random init (pretrained=False)")
    if exp.source is not None:
        path = source_weights_path(exp, backbone)
        if not path.is_file():
            if train_source is None:
                raise TlkitError(f"Source weights for {backbone!r} are not trained yet ({path}).")
            train_source(exp, backbone, path)
        pretrained = Pretrained(load_weights(path), f"source task {_source_label(exp)} ({path.name})")
    elif backbone in exp.weights:
        pretrained = Pretrained(read_weights_file(backbone, exp.weights[backbone]), f"file {exp.weights[backbone]}")
    else:
        pretrained = Pretrained(_from_hub(backbone, hub_reachable(), exp.train.image_size), f"timm hub ({backbone})")
    model = create_backbone(backbone, num_classes, exp.train.image_size)
    load_into(model, pretrained.state_dict, pretrained.origin)  # fail early, before any trial
    return pretrained


def _source_label(exp: Experiment) -> str:
    assert exp.source is not None
    classes = exp.source.data.classes
    return f"{exp.source.data.name}" + (f"[classes {classes}]" if classes else "")


def save_source(path: Path, model: torch.nn.Module, meta: dict) -> None:
    save_weights(path, model)
    write_json(path.with_suffix(".json"), meta)


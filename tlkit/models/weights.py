"""Where a backbone's pretrained weights come from: a local file, a source task tlkit trains, or the timm/HF hub.

Weights are resolved for every backbone before the first trial, so a missing file or an offline machine stops the
sweep with a message instead of failing (or, worse, silently training from random weights) hours in.
"""
from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
import torch

from tlkit.models.backbones import adapt_weights, create_backbone, hub_offline, load_into, model_kwargs
from tlkit.engine.checkpoint import load_weights, save_weights, write_json
from tlkit.data.tensors import cache_dir
from tlkit.errors import TlkitError, describe_error
from tlkit.config.experiment import Experiment
from tlkit.config.identity import experiment_to_dict, file_digest, fingerprint
from tlkit.utils.files import set_aside

__all__ = ["Pretrained", "resolve_pretrained", "hub_reachable", "source_weights_path", "read_weights_file",
           "save_source"]

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
    """timm's own loader (so its key conversions apply), offline-only when the hub is unreachable (cache only: fail
    at once instead of retrying an unreachable hub for a minute)."""
    try:
        with contextlib.nullcontext() if online else hub_offline():
            return timm.create_model(backbone, pretrained=True, **model_kwargs(backbone, image_size)).state_dict()
    except Exception as err:  # noqa: BLE001 - every failure here has the same remedies
        where = "the hub is unreachable and nothing is cached" if not online else \
            f"loading failed ({describe_error(err)})"
        raise TlkitError(
            f"No pretrained weights for backbone {backbone!r}: {where}; looked in {_hub_cache_hint()}. "
            f"HINT: put the weights in a file and pass --weights {backbone}=PATH (or weights={{...}} in the "
            f"experiment), declare a source task tlkit trains itself (Experiment(source=...)), run once online to "
            f"fill the cache, or set pretrained=False to train from random initialisation.") from None


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
                       "shapes": shapes, "metric": exp.metric})
    return cache_dir() / "source" / f"{backbone.replace('/', '_')}-{key}.safetensors"


def _base_origin(exp: Experiment, backbone: str) -> str:
    return file_digest(exp.weights[backbone]) if backbone in exp.weights else "random init"


def read_weights_file(backbone: str, path: str) -> dict[str, torch.Tensor]:
    """A weights file given for ``backbone``, read safely; a missing or unreadable file is a TlkitError."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise TlkitError(f"Weights file {str(file)!r} for backbone {backbone!r} does not exist. HINT: fix the path "
                         f"in --weights {backbone}=PATH or the experiment's weights={{...}}.")
    hint = "HINT: use safetensors or a plain state dict saved with torch.save(model.state_dict(), path)."
    try:
        state = load_weights(file)
    except Exception as err:  # noqa: BLE001
        raise TlkitError(f"Weights file {str(file)!r} for backbone {backbone!r} cannot be read safely "
                         f"({describe_error(err)}). {hint}") from None
    if not isinstance(state, dict) or not state:
        raise TlkitError(f"Weights file {str(file)!r} for backbone {backbone!r} holds "
                         f"{'an empty dict' if isinstance(state, dict) else type(state).__name__}, not a state dict "
                         f"of named tensors. {hint}")
    odd = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise TlkitError(f"Weights file {str(file)!r} for backbone {backbone!r} is not a state dict of named tensors "
                         f"(e.g. {odd[0]!r} -> {type(state[odd[0]]).__name__}). {hint}")
    return state


def resolve_pretrained(exp: Experiment, backbone: str, num_classes: int,
                       train_source: Callable[[Experiment, str, Path], None] | None = None) -> Pretrained:
    """The starting weights of ``backbone`` for this experiment, checked against the architecture.

    With ``exp.pretrained=False`` every cell starts from random weights. Otherwise: a source task (trained once via
    ``train_source``, starting from ``exp.weights[backbone]`` if given, and cached), else an explicit file
    (``exp.weights``), else the timm hub by pretrained tag.
    """
    if not exp.pretrained:
        return Pretrained(None, "random init (pretrained=False)")
    size = exp.train.image_size
    if exp.source is not None:
        origin = f"source task {_source_label(exp)}"
        state = adapt_weights(backbone, _source_state(exp, backbone, train_source), size, origin)
    elif backbone in exp.weights:
        origin = f"file {exp.weights[backbone]}"
        state = adapt_weights(backbone, read_weights_file(backbone, exp.weights[backbone]), size, origin)
    else:
        origin = f"timm hub ({backbone})"
        state = _from_hub(backbone, hub_reachable(), size)
    model = create_backbone(backbone, num_classes, size)
    load_into(model, state, origin)  # fail early, before any trial
    return Pretrained(state, origin)


def _source_state(exp: Experiment, backbone: str, train_source: Callable[[Experiment, str, Path], None] | None
                  ) -> dict[str, torch.Tensor]:
    """The cached source-task weights, trained first if missing; a cached file that cannot be read is set aside
    (renamed ``*.bad``) and trained again, so a damaged cache never blocks a study."""
    path = source_weights_path(exp, backbone)
    if path.is_file():
        try:
            return load_weights(path)
        except Exception as err:  # noqa: BLE001 - truncated or corrupt: retrain rather than trust it
            set_aside(path, f"cached source weights {path} cannot be read ({describe_error(err)})", "trained again")
    if train_source is None:
        raise TlkitError(f"Source weights for {backbone!r} are not trained yet ({path}).")
    train_source(exp, backbone, path)
    return load_weights(path)


def _source_label(exp: Experiment) -> str:
    assert exp.source is not None
    classes = exp.source.data.classes
    return f"{exp.source.data.name}" + (f"[classes {classes}]" if classes else "")


def save_source(path: Path, model: torch.nn.Module, meta: dict) -> None:
    save_weights(path, model)
    write_json(path.with_suffix(".json"), meta)


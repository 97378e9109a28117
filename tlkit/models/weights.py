"""Pretrained weights from the timm/HF hub.

``tlkit.engine.source.resolve_pretrained`` picks each backbone's starting weights (a local file, a source task tlkit
trains, or the hub) before the first trial, so a missing file or an offline machine stops the sweep with a message
instead of failing (or, worse, silently training from random weights) hours in.
"""
from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
import timm
import torch

from tlkit.models.backbones import hub_offline, model_kwargs
from tlkit.errors import TlkitError, describe_error

__all__ = ["Pretrained", "hub_reachable", "from_hub"]

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


def from_hub(backbone: str, online: bool, image_size: int) -> dict[str, torch.Tensor]:
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

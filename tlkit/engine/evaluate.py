"""Evaluation: a model (or the part of it that runs on cached features) over a split in eval mode, without
augmentation. The one evaluation loop: validation scores, test predictions and cached features all go through
``predict``; the training loop (``tlkit.engine.loop``), the feature cache (``tlkit.engine.features``) and the frozen
prefix (``tlkit.engine.prefix``) sit above it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from tlkit.data.tensors import ImageSet, iterate_batches
from tlkit.metrics import Metric

__all__ = ["Scores", "predict", "evaluate", "eval_mode"]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Every module in eval mode, then each back in its own mode (``train(True)`` would also switch the frozen
    BatchNorm layers inside a training module back to training)."""
    training = [m for m in model.modules() if m.training]
    model.eval()
    try:
        yield
    finally:
        for m in training:
            m.training = True


@dataclass
class Scores:
    """A model's predictions on a split, and what the metric and the loss make of them."""

    loss: float
    metric: float
    logits: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def predict(forward: Callable[[torch.Tensor], torch.Tensor], data: ImageSet | tuple[torch.Tensor, torch.Tensor], *,
            batch_size: int, mean: Sequence[float], std: Sequence[float], device: torch.device,
            amp: bool = False, image_size: int | None = None, channels_last: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``forward`` over ``data`` in order, without augmentation: ``(outputs, labels)`` as float32 / int64 on
    ``device``. The one evaluation loop: scores, test predictions and cached features all go through it."""
    outputs, labels = [], []
    for x, y in iterate_batches(data, batch_size, mean=mean, std=std, device=device, image_size=image_size):
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs.append(forward(x).float())
        labels.append(y)
    return torch.cat(outputs), torch.cat(labels)


def evaluate(model: torch.nn.Module, data: ImageSet | tuple[torch.Tensor, torch.Tensor], *, metric: Metric,
             batch_size: int, mean: Sequence[float], std: Sequence[float], device: torch.device,
             forward: Callable[[torch.Tensor], torch.Tensor] | None = None, amp: bool = False,
             image_size: int | None = None, channels_last: bool = False) -> Scores:
    """Mean loss, ``metric`` and logits of ``model`` on ``data``: images, or cached features (what a frozen part of
    the model computes from them) with ``forward`` the part of the model that runs on them."""
    with eval_mode(model):
        logits, labels = predict(forward or model, data, batch_size=batch_size * 2, mean=mean, std=std,
                                 device=device, amp=amp, image_size=image_size, channels_last=channels_last)
    loss = F.cross_entropy(logits, labels, reduction="mean").item()
    logits, labels = logits.cpu(), labels.cpu()
    return Scores(loss, metric(labels.numpy(), logits.numpy()), logits, labels)

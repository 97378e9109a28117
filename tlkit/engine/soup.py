"""Model soups (Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time"): the weights of models fine-tuned from the same start, averaged.

A uniform soup averages every ingredient; a greedy soup adds ingredients in order of their validation score and keeps
each only if the soup's validation score does not drop. Averaged weights give averaged BatchNorm statistics that
belong to no network, so each soup's are recomputed on the training images (Wortsman et al.'s appendix; timm's and
torchvision's ``update_bn`` do the same for SWA). Sums are kept as one running state dict, so a soup of N ingredients
holds two models' weights in memory, not N.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file

from tlkit.data.tensors import ImageSet
from tlkit.engine.evaluate import predict

__all__ = ["WeightSum", "recompute_batchnorm", "greedy_order", "greedy_soup"]


class WeightSum:
    """A running sum of state dicts of one architecture; ``mean()`` is their uniform soup. Integer buffers (e.g.
    BatchNorm's ``num_batches_tracked``) are not averaged: the first ingredient's are kept."""

    def __init__(self) -> None:
        self.total: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, state: dict[str, torch.Tensor]) -> None:
        if self.count and state.keys() != self.total.keys():
            raise ValueError("the ingredients are not one architecture: their state dicts have different keys")
        for key, value in state.items():
            if not value.is_floating_point():
                self.total.setdefault(key, value.clone())
            elif key in self.total:
                self.total[key] += value.double()
            else:
                self.total[key] = value.double().clone()
        self.count += 1

    def plus(self, state: dict[str, torch.Tensor]) -> WeightSum:
        """This sum with ``state`` added, leaving this one as it is (a greedy soup's candidate)."""
        other = WeightSum()
        other.total = {k: v.clone() for k, v in self.total.items()}
        other.count = self.count
        other.add(state)
        return other

    def mean(self, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The average, in the dtypes of ``like`` (an ingredient)."""
        return {k: (v / self.count).to(like[k].dtype) if v.is_floating_point() else v.clone()
                for k, v in self.total.items()}


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, train: ImageSet, *, batch_size: int, mean: Sequence[float],
                        std: Sequence[float], device: torch.device, image_size: int | None = None) -> bool:
    """Reset the running statistics of every BatchNorm layer and estimate them again with one pass over the
    un-augmented training images (a cumulative average: ``momentum=None``). Only the BatchNorm layers run in
    training mode, so dropout stays off. False when the model has no BatchNorm layer (nothing to do)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    training = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        predict(model, train, batch_size=batch_size, mean=mean, std=std, device=device, image_size=image_size)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for m, was in training.items():
            m.training = was
    return True


def greedy_order(values: Sequence[float], maximize: bool) -> list[int]:
    """Indices of the ingredients from best to worst validation score (ties: the earlier first), the order a
    greedy soup tries them in."""
    return sorted(range(len(values)), key=lambda i: (-values[i] if maximize else values[i], i))


def greedy_soup(paths: Sequence[Path], score: Callable[[dict[str, torch.Tensor], int], float], maximize: bool
                ) -> tuple[list[int], dict[str, torch.Tensor], float]:
    """Wortsman et al.'s greedy soup over ``paths`` (already in ``greedy_order``): start from the first, add each
    next ingredient when the soup's validation score with it is not worse than without. ``score(weights, n)`` scores
    a soup of ``n`` ingredients (n = 1: the first as it is). Returns the kept indices, the soup's weights and its
    score, which is never worse than the first ingredient's by construction."""
    first = load_file(str(paths[0]))
    soup = WeightSum()
    soup.add(first)
    kept, best = [0], score(first, 1)
    for i, path in enumerate(paths[1:], start=1):
        candidate = soup.plus(load_file(str(path)))
        value = score(candidate.mean(first), candidate.count)
        if (value >= best) if maximize else (value <= best):
            soup, best = candidate, value
            kept.append(i)
    return kept, soup.mean(first), best

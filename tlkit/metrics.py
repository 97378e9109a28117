"""Validation metrics, each with its direction: what a study selects on and what "best" means.

A metric is a function of the labels and the model's logits (so top-k and log-loss need nothing more), registered
with its direction. Optuna's studies, the best epoch of a trial, the best trial of a cell and the report's winners
all follow the direction, so a lower-is-better metric works end to end.

Example:
    @register_metric("error_rate", direction="minimize")
    def error_rate(labels: np.ndarray, logits: np.ndarray) -> float:
        return float((logits.argmax(1) != labels).mean())
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tlkit.errors import TlkitError
from tlkit.registry import Registry, qualname

__all__ = ["Metric", "register_metric", "list_metrics", "get_metric", "METRICS"]

DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class Metric:
    """A named score of predictions, with the direction that makes it better."""

    name: str
    direction: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    min_classes: int = 2
    """The fewest classes for which the metric means something (top-5 accuracy is 1.0 with 5 classes)."""

    def __call__(self, labels: np.ndarray, logits: np.ndarray) -> float:
        return float(self.fn(np.asarray(labels), np.asarray(logits, dtype=np.float64)))

    @property
    def worst(self) -> float:
        """The value every real score beats: where a search for the best starts."""
        return -math.inf if self.direction == "maximize" else math.inf

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return a > b if self.direction == "maximize" else a < b


def _check_metric(name: str, obj: object) -> None:
    if not isinstance(obj, Metric):
        raise TlkitError(f"metric {name!r} must be registered with @register_metric(name, direction=...) on a "
                         f"function (labels, logits) -> float, but got {obj!r}.")


METRICS: Registry[Metric] = Registry("metric", "tlkit.metrics", check=_check_metric,
                                     hint="HINT: register your own with @register_metric('name', direction=...).",
                                     identity=lambda m: f"{qualname(m.fn)} ({m.direction})")


def register_metric(name: str, direction: str = "maximize", min_classes: int = 2
                    ) -> Callable[[Callable[[np.ndarray, np.ndarray], float]], Callable[[np.ndarray, np.ndarray],
                                                                                       float]]:
    """Register ``fn(labels, logits) -> float`` as metric ``name``; returns the function unchanged."""
    if direction not in DIRECTIONS:
        raise TlkitError(f"direction of metric {name!r} must be 'maximize' or 'minimize' but got {direction!r}.")

    def decorator(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray, np.ndarray], float]:
        METRICS.register(name)(Metric(name, direction, fn, min_classes))
        return fn

    return decorator


def list_metrics(pattern: str = "*") -> list[str]:
    return METRICS.list(pattern)


def get_metric(name: str) -> Metric:
    return METRICS.get(name)


# --- built-ins (scikit-learn where it has the metric) -----------------------------------------------------------

@register_metric("accuracy")
def accuracy(labels: np.ndarray, logits: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


@register_metric("balanced_accuracy")
def balanced_accuracy(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean per-class recall: accuracy that a majority class cannot inflate."""
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(labels, logits.argmax(1)))


@register_metric("macro_f1")
def macro_f1(labels: np.ndarray, logits: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes in the labels or the predictions."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, logits.argmax(1), average="macro", zero_division=0))


@register_metric("top5_accuracy", min_classes=6)
def top5_accuracy(labels: np.ndarray, logits: np.ndarray) -> float:
    """The label is among the five highest logits (ties broken by class index, as ``argsort`` does)."""
    top = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    return float((top == labels[:, None]).any(axis=1).mean())


@register_metric("error_rate", direction="minimize")
def error_rate(labels: np.ndarray, logits: np.ndarray) -> float:
    return float((logits.argmax(1) != labels).mean())


@register_metric("log_loss", direction="minimize")
def log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean negative log-likelihood of the label under the softmax: rewards calibrated confidence."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())

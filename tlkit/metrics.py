"""Validation metrics, each with its direction: what a study selects on and what "best" means.

A metric is a function of the labels and the model's logits (so top-k and log-loss need nothing more), registered
with its direction. Optuna's studies, the best epoch of a trial, the best trial of a cell and the report's winners
all follow the direction, so a lower-is-better metric works end to end.

Every scored model also keeps compact per-example :class:`Predictions` (predicted class, log-probability and rank of
the label), and each built-in metric can be computed from them, so paired tests and bootstrap intervals over test
examples need no retraining and no stored logits.

Example:
    @register_metric("error_rate", direction="minimize", proportion=lambda p: p.pred != p.labels)
    def error_rate(labels: np.ndarray, logits: np.ndarray) -> float:
        return float((logits.argmax(1) != labels).mean())
"""
from __future__ import annotations

import base64
import math
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tlkit.errors import TlkitError
from tlkit.registry import Registry, qualname

__all__ = ["Metric", "Predictions", "register_metric", "list_metrics", "get_metric", "METRICS"]

DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class Predictions:
    """What a scored model keeps of each test example: enough to recompute every built-in metric on any subset."""

    labels: np.ndarray
    pred: np.ndarray
    """The predicted class (argmax of the logits)."""
    log_p_label: np.ndarray
    """The log-probability the model gives the true label (softmax)."""
    label_rank: np.ndarray
    """How many classes rank above the true label (ties go to the lower class index, as for argmax and a stable
    argsort): 0 means it is the top prediction."""

    @classmethod
    def from_logits(cls, labels: np.ndarray, logits: np.ndarray) -> Predictions:
        logits = np.asarray(logits, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        rows = np.arange(len(labels))
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        label_logit = logits[rows, labels][:, None]
        columns = np.arange(logits.shape[1])[None, :]
        above = (logits > label_logit) | ((logits == label_logit) & (columns < labels[:, None]))  # argsort's order
        return cls(labels, logits.argmax(1), log_probs[rows, labels], above.sum(1))

    def to_json(self) -> dict[str, str]:
        """Compact, JSON-ready: each array little-endian, zlib-compressed, base64 (about 5 bytes per example), so
        every scored model's predictions fit in the study storage beside its scores."""
        arrays = {"labels": self.labels.astype("<u2"), "pred": self.pred.astype("<u2"),
                  "log_p_label": self.log_p_label.astype("<f4"), "label_rank": self.label_rank.astype("<u2")}
        return {k: base64.b64encode(zlib.compress(a.tobytes(), 9)).decode("ascii") for k, a in arrays.items()}

    @classmethod
    def from_json(cls, payload: dict[str, str]) -> Predictions:
        def read(key: str, dtype: str) -> np.ndarray:
            return np.frombuffer(zlib.decompress(base64.b64decode(payload[key])), dtype=dtype)

        return cls(read("labels", "<u2").astype(np.int64), read("pred", "<u2").astype(np.int64),
                   read("log_p_label", "<f4").astype(np.float64), read("label_rank", "<u2").astype(np.int64))

    def subset(self, index: np.ndarray) -> Predictions:
        return Predictions(self.labels[index], self.pred[index], self.log_p_label[index], self.label_rank[index])

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Metric:
    """A named score of predictions, with the direction that makes it better."""

    name: str
    direction: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    min_classes: int = 2
    """The fewest classes for which the metric means something (top-5 accuracy is 1.0 with 5 classes)."""
    from_predictions: Callable[[Predictions], float] | None = None
    """The same metric from kept predictions (None: a custom metric that needs the logits)."""
    bounds: tuple[float, float] | None = (0.0, 1.0)
    """The values the metric can take (None: unbounded, like log-loss); intervals are kept inside them."""
    proportion: Callable[[Predictions], np.ndarray] | None = None
    """For a metric that is the share of examples meeting a condition (accuracy): that condition per example, so
    one model gets Wilson's interval and two get McNemar's exact test."""

    def __call__(self, labels: np.ndarray, logits: np.ndarray) -> float:
        return float(self.fn(np.asarray(labels), np.asarray(logits, dtype=np.float64)))

    def on(self, predictions: Predictions) -> float:
        """The metric from kept predictions; a TlkitError for a metric that cannot be computed from them."""
        if self.from_predictions is None:
            raise TlkitError(f"metric {self.name!r} cannot be computed from kept predictions (it was registered "
                             f"without from_predictions), so tests over test examples are not available for it. "
                             f"HINT: use repeats >= 3 (tests over seeds), or register it with from_predictions.")
        return float(self.from_predictions(predictions))

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


MetricFn = Callable[[np.ndarray, np.ndarray], float]


def register_metric(name: str, direction: str = "maximize", min_classes: int = 2,
                    from_predictions: Callable[[Predictions], float] | None = None,
                    bounds: tuple[float, float] | None = (0.0, 1.0),
                    proportion: Callable[[Predictions], np.ndarray] | None = None) -> Callable[[MetricFn], MetricFn]:
    """Register ``fn(labels, logits) -> float`` as metric ``name``; returns the function unchanged.

    ``from_predictions(p)`` computes the same value from kept :class:`Predictions`; without it the metric works for
    selection and seed-level statistics, but not for intervals and tests over test examples.
    """
    if direction not in DIRECTIONS:
        raise TlkitError(f"direction of metric {name!r} must be 'maximize' or 'minimize' but got {direction!r}.")

    def decorator(fn: MetricFn) -> MetricFn:
        if proportion is not None and from_predictions is None:
            scored = Metric(name, direction, fn, min_classes, lambda p: float(proportion(p).mean()), bounds, proportion)
        else:
            scored = Metric(name, direction, fn, min_classes, from_predictions, bounds, proportion)
        METRICS.register(name)(scored)
        return fn

    return decorator


def list_metrics(pattern: str = "*") -> list[str]:
    return METRICS.list(pattern)


def get_metric(name: str) -> Metric:
    return METRICS.get(name)


# --- built-ins (scikit-learn where it has the metric) -----------------------------------------------------------

def _balanced(labels: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(labels, pred))


def _macro_f1(labels: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, pred, average="macro", zero_division=0))


@register_metric("accuracy", proportion=lambda p: p.pred == p.labels)
def accuracy(labels: np.ndarray, logits: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


@register_metric("balanced_accuracy", from_predictions=lambda p: _balanced(p.labels, p.pred))
def balanced_accuracy(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean per-class recall: accuracy that a majority class cannot inflate."""
    return _balanced(labels, logits.argmax(1))


@register_metric("macro_f1", from_predictions=lambda p: _macro_f1(p.labels, p.pred))
def macro_f1(labels: np.ndarray, logits: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes in the labels or the predictions."""
    return _macro_f1(labels, logits.argmax(1))


@register_metric("top5_accuracy", min_classes=6, proportion=lambda p: p.label_rank < 5)
def top5_accuracy(labels: np.ndarray, logits: np.ndarray) -> float:
    """The label is among the five highest logits (ties broken by class index, as ``argsort`` does)."""
    top = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    return float((top == labels[:, None]).any(axis=1).mean())


@register_metric("error_rate", direction="minimize", proportion=lambda p: p.pred != p.labels)
def error_rate(labels: np.ndarray, logits: np.ndarray) -> float:
    return float((logits.argmax(1) != labels).mean())


@register_metric("log_loss", direction="minimize", from_predictions=lambda p: float(-p.log_p_label.mean()),
                 bounds=(0.0, math.inf))
def log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean negative log-likelihood of the label under the softmax: rewards calibrated confidence."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())

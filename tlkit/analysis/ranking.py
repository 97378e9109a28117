"""Ranking backbones before training: transferability estimates from frozen features, and how well they predicted
the fine-tuned order.

Each backbone's pre-logit features of the target's training split (its starting weights, eval mode, un-augmented
images: exactly what the linear probe's feature cache computes) are scored three ways, each higher-is-better:

- ``logme``: LogME (You et al. 2021), the log evidence of a Bayesian linear model from the features to each class
  (one-vs-rest), maximised over its two precisions by MacKay's fixed point as in the authors' code, per example and
  averaged over classes. No hyperparameter, no training.
- ``knn_accuracy``: the accuracy on the validation split of a k-nearest-neighbour vote (k = 5, cosine similarity:
  features L2-normalised) over the training split's features, with scikit-learn. A small k follows the data's local
  structure, which is what fine-tuning refines; 5 is the usual small odd choice and needs no tuning.
- ``h_score``: the H-score (Bao et al. 2019), how much of the features' variance lies between the classes, with the
  Ledoit-Wolf shrinkage of Ibrahim et al. (2023) so it stays stable when features outnumber examples.

``agreement`` is Kendall's tau over backbones between each estimate and the fine-tuned test scores; it, the rank
table and the file and column names live in ``agreement.py`` (no torch, for the report).
The command is ``python -m tlkit.rank`` (``tlkit/rank.py``); the sweep's ranking step is ``tlkit.sweep.rank_in_sweep``
and the report's section ``tlkit.report.report_ranking``.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from tlkit.analysis.agreement import KNN_K, rank_table
from tlkit.models.backbones import build_model, preprocessing
from tlkit.engine.compute import set_memory_format, use_amp
from tlkit.data.tensors import Splits
from tlkit.config.experiment import Experiment, Train
from tlkit.engine.features import FeatureCache

__all__ = ["logme", "logme_evidence", "knn_accuracy", "h_score", "score_features", "frozen_features", "rank_backbones",
           "keep_top"]

log = logging.getLogger("tlkit")

_TINY = 1e-300


# --- LogME ----------------------------------------------------------------------------------------------------------

def _spectrum(features: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The non-zero eigenvalues ``sigma`` of ``F^T F`` and a map ``y -> U^T y`` (``F = U S V^T``), from the smaller of
    the two Gram matrices: ``N x D`` features cost ``N * min(N, D)^2``, not a full SVD."""
    n, d = features.shape
    if n > d:
        sigma, v = np.linalg.eigh(features.T @ features)
    else:
        sigma, u = np.linalg.eigh(features @ features.T)
    keep = sigma > max(float(sigma.max(initial=0.0)), _TINY) * max(n, d) * np.finfo(np.float64).eps
    sigma = sigma[keep]
    if n > d:
        v_kept = v[:, keep] / np.sqrt(sigma)
        return sigma, lambda y: v_kept.T @ (features.T @ y)
    u_kept = u[:, keep]
    return sigma, lambda y: u_kept.T @ y


def _evidence(alpha: float, beta: float, sigma: np.ndarray, x2: np.ndarray, yy: float, n: int) -> float:
    """Log evidence / N of ``y = F m + noise``, ``m ~ N(0, I/alpha)``, noise ``~ N(0, I/beta)``: the log density of
    ``y`` under ``N(0, I/beta + F F^T / alpha)``, written with the spectrum (the ``D - k`` zero eigenvalues of
    ``F^T F`` contribute ``log(alpha)`` each to ``log|A|``, cancelling all but ``k/2 log(alpha)``)."""
    t = alpha / beta
    m2 = float((sigma * x2 / (sigma + t) ** 2).sum())
    res2 = float((x2 * (t / (sigma + t)) ** 2).sum()) + max(yy - float(x2.sum()), 0.0)
    evidence = (len(sigma) / 2.0 * math.log(alpha) + n / 2.0 * math.log(beta)
                - 0.5 * float(np.log(alpha + beta * sigma).sum()) - beta / 2.0 * res2 - alpha / 2.0 * m2
                - n / 2.0 * math.log(2 * math.pi))
    return evidence / n


def _maximise(sigma: np.ndarray, x: np.ndarray, yy: float, n: int, tol: float = 1e-8,
              max_iter: int = 1000) -> tuple[float, float, float]:
    """MacKay's fixed point for ``(alpha, beta)`` (the thuml/LogME update), run until ``alpha / beta`` moves by less
    than ``tol`` (the official code stops at 1% after at most 11 steps; running on makes the returned pair the
    maximiser, which the tests check). Returns ``(evidence / N, alpha, beta)``."""
    x2 = x ** 2
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())
        m2 = float((sigma * x2 / (sigma + t) ** 2).sum())
        res2 = float((x2 * (t / (sigma + t)) ** 2).sum()) + max(yy - float(x2.sum()), 0.0)
        alpha, beta = max(gamma, _TINY) / max(m2, _TINY), max(n - gamma, _TINY) / max(res2, _TINY)
        if abs(alpha / beta - t) <= tol * t:
            break
    return _evidence(alpha, beta, sigma, x2, yy, n), alpha, beta


def logme_evidence(features: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    """LogME for one real-valued target: ``(maximum log evidence / N, alpha, beta)``."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    sigma, project = _spectrum(f)
    return _maximise(sigma, project(y), float(y @ y), len(y))


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of features for class labels (You et al. 2021): the mean over classes of the maximum log evidence / N
    of each class's one-vs-rest indicator. Higher: a linear model on these features explains the labels better."""
    f = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    sigma, project = _spectrum(f)
    evidences = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        evidences.append(_maximise(sigma, project(y), float(y @ y), len(y))[0])
    return float(np.mean(evidences))


# --- kNN and H-score --------------------------------------------------------------------------------------------------

def _unit(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), _TINY)


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                 val_labels: np.ndarray, k: int = KNN_K) -> float:
    """Validation accuracy of a k-nearest-neighbour vote over the training features by cosine similarity
    (L2-normalised features, Euclidean distance: the same neighbours). Ties go to the lower class index."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_labels)))
    knn.fit(_unit(train_features), np.asarray(train_labels))
    return float(np.mean(knn.predict(_unit(val_features)) == np.asarray(val_labels)))


def h_score(features: np.ndarray, labels: np.ndarray, shrinkage: bool = True) -> float:
    """The H-score ``tr(cov(f)^-1 cov(E[f|y]))`` (Bao et al. 2019): the share of the features' variance that lies
    between classes, in the features' own metric. With ``shrinkage`` (the default), ``cov(f)`` is the Ledoit-Wolf
    estimate ``(1 - a) S + a mu I`` and the between-class covariance is scaled by ``1 - a`` too (Ibrahim et al.
    2023): without it, more feature dimensions than examples make ``cov(f)`` singular and the score noise."""
    from sklearn.covariance import LedoitWolf

    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(axis=0)
    labels = np.asarray(labels)
    if shrinkage:
        fitted = LedoitWolf(assume_centered=True).fit(f)
        cov, a = fitted.covariance_, float(fitted.shrinkage_)
    else:
        cov, a = f.T @ f / len(f), 0.0
    class_means = np.zeros_like(f)
    for c in np.unique(labels):
        class_means[labels == c] = f[labels == c].mean(axis=0)
    between = (1.0 - a) * (class_means.T @ class_means / len(f))
    return float(np.trace(np.linalg.pinv(cov, hermitian=True) @ between))


def score_features(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                   val_labels: np.ndarray) -> dict[str, float]:
    """Every estimator of one feature set, with the seconds each took (``<name>_s``)."""
    estimators: dict[str, Callable[[], float]] = {
        "logme": lambda: logme(train_features, train_labels),
        "knn_accuracy": lambda: knn_accuracy(train_features, train_labels, val_features, val_labels),
        "h_score": lambda: h_score(train_features, train_labels),
    }
    scores: dict[str, float] = {}
    for name, estimate in estimators.items():
        started = time.perf_counter()
        scores[name] = estimate()
        scores[f"{name}_s"] = round(time.perf_counter() - started, 3)
    return scores


# --- features of the backbones --------------------------------------------------------------------------------------

def frozen_features(model: torch.nn.Module, splits: Splits, recipe: Train, device: torch.device
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train features, train labels, val features, val labels)`` of ``model`` as it is: through the trainer's own
    ``FeatureCache`` (eval mode, un-augmented images, the recipe's image size and batch size), so the ranking
    scores exactly what a linear probe of these weights would see."""
    model.to(device)
    channels_last = set_memory_format(model, device, recipe)
    cache = FeatureCache(model, splits, on_disk=recipe.cache_features, batch_size=recipe.batch_size * 2,
                         device=device, amp=use_amp(recipe, device), image_size=recipe.image_size,
                         channels_last=channels_last, **preprocessing(model))
    (train_f, train_y), (val_f, val_y) = cache.get("train"), cache.get("val")
    return (train_f.double().cpu().numpy(), train_y.cpu().numpy(), val_f.double().cpu().numpy(),
            val_y.cpu().numpy())


def rank_backbones(exp: Experiment, splits: Splits, pretrained: dict[str, Any], device: torch.device
                   ) -> pd.DataFrame:
    """The ranking table of ``exp.backbones`` from their starting weights (``pretrained``: backbone ->
    ``tlkit.models.weights.Pretrained``), with the seconds each backbone's features and estimators took."""
    rows = []
    for backbone in exp.backbones:
        weights = pretrained[backbone]
        started = time.perf_counter()
        model = build_model(backbone, splits.num_classes, weights.state_dict, exp.seed, exp.train.image_size,
                            weights.origin)
        train_f, train_y, val_f, val_y = frozen_features(model, splits, exp.train, device)
        features_s = time.perf_counter() - started
        scores = score_features(train_f, train_y, val_f, val_y)
        seconds = time.perf_counter() - started
        rows.append({"backbone": backbone, **scores, "feature_dim": train_f.shape[1], "train_images": len(train_y),
                     "val_images": len(val_y), "features_s": round(features_s, 3), "seconds": round(seconds, 3),
                     "weights": weights.origin})
        log.info("ranked %s in %.1f s: LogME %.4f, kNN accuracy %.4f, H-score %.4f", backbone, seconds,
                 scores["logme"], scores["knn_accuracy"], scores["h_score"])
    return rank_table(rows)


def keep_top(exp: Experiment, ranking: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """The backbones to search (the experiment's order) and, for each dropped one, why: with
    ``exp.keep_top_backbones = k``, only the k best by LogME are searched."""
    k = exp.keep_top_backbones
    if k is None or k >= len(exp.backbones):
        return list(exp.backbones), {}
    ordered = ranking.sort_values(["logme_rank", "backbone"], kind="stable")
    kept = set(ordered["backbone"].head(k))
    dropped = {r.backbone: f"LogME rank {r.logme_rank} of {len(ordered)} ({r.logme:.4f}), below the top "
                           f"{k} (keep_top_backbones={k})" for r in ordered.itertuples() if r.backbone not in kept}
    return [b for b in exp.backbones if b in kept], dropped

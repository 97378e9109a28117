"""The fit loop: a strategy's plan turned into frozen flags and per-group learning rates, epoch by epoch.

Everything around the loop (checkpoints, TensorBoard, Optuna reporting and pruning, progress) is a Callback with
do-nothing hooks, so ``Trainer.fit`` stays readable top to bottom.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from tlkit.backbones import LayerGroup
from tlkit.data import ImageSet, Splits, iterate_batches
from tlkit.experiment import Train

__all__ = ["Callback", "EpochResult", "NonFiniteError", "Trainer", "evaluate", "apply_plan", "BN_POLICY"]

BN_POLICY = "BatchNorm layers with frozen weights run in eval mode (running statistics kept)"


class NonFiniteError(RuntimeError):
    """A NaN or infinite loss or metric: the trial cannot produce a trustworthy number."""


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_metric: float
    lrs: list[float]
    trainable_params: int
    images_per_s: float
    """Training throughput of the epoch's optimisation loop."""
    seconds: float
    """The whole epoch: feature caching, training and validation."""
    features_cached: bool = False

    def as_row(self) -> dict[str, Any]:
        row = {k: v for k, v in self.__dict__.items() if k != "lrs"}
        row.update({f"lr_group{i}": lr for i, lr in enumerate(self.lrs)})
        return row


class Callback:
    """Hooks around the loop; each does nothing unless overridden."""

    def on_fit_start(self, trainer: "Trainer") -> None:
        """Before the first epoch run by this process (after a resume, that is the resumed epoch)."""

    def on_batch_end(self, trainer: "Trainer", batch: int, num_batches: int) -> None:
        """After each optimizer step."""

    def on_epoch_end(self, trainer: "Trainer", result: EpochResult) -> None:
        """After validation; raise ``optuna.TrialPruned`` here to stop the trial."""

    def on_fit_end(self, trainer: "Trainer") -> None:
        """After the last epoch (not called when the trial is pruned or fails)."""


def apply_plan(model: torch.nn.Module, groups: Sequence[LayerGroup], scales: Sequence[float], strategy: Any) -> int:
    """Set ``requires_grad`` from the plan's per-group multipliers; returns the trainable parameter count."""
    params = dict(model.named_parameters())
    trainable = 0
    for group, scale in zip(groups, scales):
        for name in group.params:
            on = scale > 0 and strategy.trains_param(name, group.is_head)
            params[name].requires_grad_(on)
            trainable += params[name].numel() if on else 0
    return trainable


def set_train_mode(model: torch.nn.Module) -> None:
    """Train mode, except BatchNorm layers whose weights are frozen: they keep their running statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            weight = module.weight
            if weight is None or not weight.requires_grad:
                module.eval()


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up, then cosine decay to zero (or constant)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _metric(name: str, labels: np.ndarray, preds: np.ndarray) -> float:
    if name == "balanced_accuracy":
        from sklearn.metrics import balanced_accuracy_score
        return float(balanced_accuracy_score(labels, preds))
    return float((labels == preds).mean())


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: ImageSet | tuple[torch.Tensor, torch.Tensor], *, metric: str,
             batch_size: int, mean: Sequence[float], std: Sequence[float], device: torch.device,
             head_only: bool = False, amp: bool = False, image_size: int | None = None) -> tuple[float, float]:
    """Mean loss and ``metric`` of ``model`` on ``data`` (images, or cached features when ``head_only``)."""
    was_training = model.training
    model.eval()
    forward = model.get_classifier() if head_only else model
    losses, preds, labels = [], [], []
    for x, y in iterate_batches(data, batch_size * 2, mean=mean, std=std, device=device, image_size=image_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = forward(x).float()
        losses.append(F.cross_entropy(logits, y, reduction="sum").item())
        preds.append(logits.argmax(1).cpu())
        labels.append(y.cpu())
    model.train(was_training)
    y_all = torch.cat(labels).numpy()
    return sum(losses) / len(y_all), _metric(metric, y_all, torch.cat(preds).numpy())


@torch.no_grad()
def _features(model: torch.nn.Module, data: ImageSet, batch_size: int, mean: Sequence[float], std: Sequence[float],
              device: torch.device, amp: bool, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logit features of the (frozen, eval-mode) backbone: what the head sees."""
    was_training = model.training
    model.eval()
    feats = []
    for x, _ in iterate_batches(data, batch_size * 2, mean=mean, std=std, device=device, image_size=image_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float())
    model.train(was_training)
    return torch.cat(feats), data.labels.to(device)


@dataclass
class Trainer:
    """One training run of one backbone under one strategy with one set of hyperparameters.

    ``state_dict``/``load_state_dict`` hold everything but the weights, so a checkpoint resumes mid-trial and the
    resumed run computes exactly what an uninterrupted one would (on CPU, with fixed seeds).
    """

    model: torch.nn.Module
    groups: list[LayerGroup]
    strategy: Any
    splits: Splits
    recipe: Train
    metric: str
    mean: Sequence[float]
    std: Sequence[float]
    seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    callbacks: list[Callback] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.amp = self.recipe.amp and self.device.type == "cuda"
        self.epoch = 0  # the next epoch to run
        self.history: list[EpochResult] = []
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.scales = [0.0] * len(self.groups)
        self.optimizer = self._build_optimizer()
        n = len(self.splits.train)
        batches = n // self.recipe.batch_size if n > self.recipe.batch_size else 1
        self.steps_per_epoch = min(batches, self.recipe.max_batches or batches)
        total = self.steps_per_epoch * self.recipe.epochs
        warmup = self.steps_per_epoch * self.recipe.warmup_epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [
            (lambda step, i=i: lr_factor(step, total, warmup, self.recipe.scheduler) * self.scales[i])
            for i in range(len(self.groups))])
        self._feature_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """Every parameter goes in once, one param group per layer group; frozen ones simply have no grad."""
        params = dict(self.model.named_parameters())
        groups = [{"params": [params[n] for n in g.params], "name": g.name} for g in self.groups]
        r = self.recipe
        if r.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay, nesterov=True)
        return torch.optim.AdamW(groups, lr=r.lr, weight_decay=r.weight_decay)

    def _enter_epoch(self, epoch: int) -> int:
        """Apply the strategy's plan for ``epoch``; newly unfrozen groups join the schedule where it stands."""
        self.scales = list(self.strategy.lr_scales(epoch))
        if not self.head_only:
            self._feature_cache.clear()  # the body trains: features cached before are stale from now on
        trainable = apply_plan(self.model, self.groups, self.scales, self.strategy)
        for group, base, lam in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * lam(self.scheduler.last_epoch)
        return trainable

    @property
    def head_only(self) -> bool:
        """Only the head trains, so the backbone's output is a fixed function of the image."""
        return all(s == 0 for s in self.scales[:-1])

    def fit(self) -> list[EpochResult]:
        for cb in self.callbacks:
            cb.on_fit_start(self)
        while self.epoch < self.recipe.epochs:
            result = self._run_epoch(self.epoch)
            self.history.append(result)
            if result.val_metric > self.best_metric:
                self.best_metric, self.best_epoch = result.val_metric, result.epoch
            self.epoch += 1
            for cb in self.callbacks:
                cb.on_epoch_end(self, result)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.history

    def _run_epoch(self, epoch: int) -> EpochResult:
        epoch_start = time.perf_counter()
        trainable = self._enter_epoch(epoch)
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        set_train_mode(self.model)
        cached = self.head_only and self.recipe.cache_features
        if cached and "train" not in self._feature_cache:
            for split in ("train", "val"):
                self._feature_cache[split] = _features(self.model, getattr(self.splits, split),
                                                       self.recipe.batch_size, self.mean, self.std, self.device,
                                                       self.amp, self.recipe.image_size)
        forward = self.model.get_classifier() if cached else self.model
        data = self._feature_cache["train"] if cached else self.splits.train
        start, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=self.device)
        batches = iterate_batches(data, self.recipe.batch_size, shuffle_seed=self.seed * 100_003 + epoch,
                                  augment=self.recipe.augment, padding=self.recipe.crop_padding, mean=self.mean,
                                  std=self.std, device=self.device, max_batches=self.recipe.max_batches,
                                  drop_last=True, image_size=self.recipe.image_size)
        for i, (x, y) in enumerate(batches):
            if self.device.type == "cuda" and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = F.cross_entropy(forward(x).float(), y, label_smoothing=self.recipe.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * len(y)  # summed on the device: no host sync per step
            seen += len(y)
            for cb in self.callbacks:
                cb.on_batch_end(self, i, self.steps_per_epoch)
        train_loss = loss_sum.item() / max(seen, 1)
        train_seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise NonFiniteError(f"non-finite training loss ({train_loss}) in epoch {epoch}")
        val = self._feature_cache["val"] if cached else self.splits.val
        val_loss, val_metric = evaluate(self.model, val, metric=self.metric, batch_size=self.recipe.batch_size,
                                        mean=self.mean, std=self.std, device=self.device, head_only=cached,
                                        amp=self.amp, image_size=self.recipe.image_size)
        if not (math.isfinite(val_loss) and math.isfinite(val_metric)):
            raise NonFiniteError(f"non-finite validation loss or metric at epoch {epoch}")
        return EpochResult(epoch, train_loss, val_loss, val_metric, lrs, trainable,
                           seen / train_seconds if train_seconds > 0 else 0.0, time.perf_counter() - epoch_start,
                           cached)

    def state_dict(self) -> dict[str, Any]:
        """The resumable state, as plain data (weights are saved separately, as safetensors)."""
        return {"epoch": self.epoch, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "history": [r.__dict__ for r in self.history],
                "strategy": {"name": self.strategy.name, "params": dict(self.strategy.params)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        # The plan of the last finished epoch decides which params have optimizer state, so restore flags first.
        self._enter_epoch(max(0, self.epoch - 1))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_metric, self.best_epoch = state["best_metric"], state["best_epoch"]
        self.history = [EpochResult(**r) for r in state["history"]]

"""The fit loop: a strategy's plan turned into frozen flags and per-group learning rates, epoch by epoch.

Everything around the loop (checkpoints, TensorBoard, Optuna reporting and pruning, progress) is a Callback with
do-nothing hooks, so ``Trainer.fit`` stays readable top to bottom. The learning rate of every parameter group is
set in one place, once per step (``set_learning_rates``), from the schedule and the strategy's plan: nothing else
touches it, so a resumed trial needs only the step counter to continue the schedule exactly.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch.nn.modules.batchnorm import _BatchNorm

from tlkit.models.backbones import LayerGroup
from tlkit.engine.compute import set_memory_format, use_amp
from tlkit.data.augment import make_mixer, mix_batch
from tlkit.data.tensors import Splits, iterate_batches
from tlkit.config.experiment import Train
from tlkit.engine.evaluate import evaluate
from tlkit.engine.features import FeatureCache
from tlkit.metrics import Metric
from tlkit.engine.prefix import cut_frozen_prefix, memory_budget
from tlkit.strategies.base import Strategy, check_plan

__all__ = ["Callback", "EpochResult", "PruneTrial", "NonFiniteError", "Trainer", "apply_plan", "set_train_mode",
           "lr_factor", "param_groups", "set_learning_rates", "BN_POLICY", "OUTCOMES"]

BN_POLICY = "BatchNorm layers run in eval mode (running statistics kept) when their weights or layer group are frozen"
OUTCOMES = ("completed", "pruned", "failed", "interrupted")


class PruneTrial(Exception):
    """Raised by a callback's ``on_epoch_end`` to stop the trial after this epoch; the message is the reason."""


class NonFiniteError(PruneTrial):
    """A NaN or infinite loss or metric: the trial cannot produce a trustworthy number, so it is pruned."""


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_metric: float
    lrs: list[float]
    """The learning rate of each layer group at the epoch's first step (0 while frozen)."""
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

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch run by this process (after a resume, that is the resumed epoch)."""

    def on_batch_end(self, trainer: Trainer, batch: int, num_batches: int) -> None:
        """After each optimizer step."""

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        """After validation. Raise ``PruneTrial`` to stop the trial; the other callbacks still see this epoch."""

    def on_fit_end(self, trainer: Trainer, outcome: str) -> None:
        """Always, in a ``finally``: ``outcome`` is one of completed, pruned, failed, interrupted."""


# --- the plan: frozen flags, BatchNorm modes, learning rates -------------------------------------------------------

def apply_plan(model: torch.nn.Module, groups: Sequence[LayerGroup], scales: Sequence[float],
               strategy: Strategy) -> int:
    """Set ``requires_grad`` from the plan's per-group multipliers; returns the trainable parameter count."""
    params = dict(model.named_parameters())
    trainable = 0
    for group, scale in zip(groups, scales):
        for name in group.params:
            on = scale > 0 and strategy.trains_param(name, group.is_head)
            params[name].requires_grad_(on)
            trainable += params[name].numel() if on else 0
    return trainable


def set_train_mode(model: torch.nn.Module, groups: Sequence[LayerGroup], scales: Sequence[float]) -> None:
    """Train mode, except BatchNorm layers that are frozen, which keep their running statistics: those whose
    weight does not train, and weightless ones (``affine=False``) whose layer group the plan freezes."""
    model.train()
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.weight is not None and not module.weight.requires_grad:
            module.eval()
    modules = dict(model.named_modules())
    for group, scale in zip(groups, scales):
        for name in group.norms:
            modules[name].train(scale > 0)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The schedule's multiplier at ``step``: linear warm-up, then cosine decay to zero (or constant)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_learning_rates(optimizer: torch.optim.Optimizer, lr: float, scales: Sequence[float]) -> None:
    """The one place learning rates are set: each param group at ``lr`` x its layer group's multiplier."""
    for group in optimizer.param_groups:
        group["lr"] = lr * scales[group["layer_group"]]


def _decays(name: str, param: torch.Tensor, no_decay: set[str]) -> bool:
    """timm's rule (``param_groups_weight_decay``): no weight decay for biases, norm weights and other 1-d
    parameters, nor for what the model lists in ``no_weight_decay()`` (a ViT's position embedding)."""
    return not (param.ndim <= 1 or name.endswith(".bias") or name in no_decay)


def param_groups(model: torch.nn.Module, groups: Sequence[LayerGroup], weight_decay: float) -> list[dict[str, Any]]:
    """Every parameter once: per layer group, one param group with weight decay and one without (empty ones left
    out), each tagged with its ``layer_group`` so the plan's multiplier reaches it."""
    params = dict(model.named_parameters())
    no_decay = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    out = []
    for g in groups:
        for decay in (True, False):
            names = [n for n in g.params if _decays(n, params[n], no_decay) == decay]
            if names:
                out.append({"params": [params[n] for n in names], "layer_group": g.index,
                            "weight_decay": weight_decay if decay else 0.0, "name": f"{g.name}/{'decay' * decay}"})
    return out


# --- the loop -------------------------------------------------------------------------------------------------------

@dataclass
class Trainer:
    """One training run of one backbone under one strategy with one set of hyperparameters.

    ``state_dict``/``load_state_dict`` hold everything but the weights (the EMA weights included), so a checkpoint
    resumes mid-trial and the resumed run computes exactly what an uninterrupted one would (on CPU, with fixed
    seeds). With ``recipe.ema_decay`` the averaged weights (``kept_model``) are validated and kept as the best.
    """

    model: torch.nn.Module
    groups: list[LayerGroup]
    strategy: Strategy
    splits: Splits
    recipe: Train
    metric: Metric
    mean: Sequence[float]
    std: Sequence[float]
    seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    callbacks: list[Callback] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model.to(self.device)
        self.channels_last = set_memory_format(self.model, self.device, self.recipe)
        self.amp = use_amp(self.recipe, self.device)
        self.epoch = 0  # the next epoch to run
        self.step = 0  # optimizer steps taken: the schedule's position
        self.elapsed = 0.0  # seconds spent in fit(), over every process that ran this trial
        self.stop_reason = ""  # why a pruned trial stopped
        self.history: list[EpochResult] = []
        self.best_metric = self.metric.worst
        self.best_epoch = -1
        self.scales = [0.0] * len(self.groups)
        self.optimizer = self._build_optimizer()
        n = len(self.splits.train)
        batches = n // self.recipe.batch_size if n > self.recipe.batch_size else 1
        self.steps_per_epoch = min(batches, self.recipe.max_batches or batches)
        self.total_steps = self.steps_per_epoch * self.recipe.epochs
        self.warmup_steps = self.steps_per_epoch * self.recipe.warmup_epochs
        self.features = self._feature_cache()
        self.mixer = make_mixer(self.recipe.augment, self.splits.num_classes, self.recipe.label_smoothing)
        self.ema = ModelEmaV3(self.model, decay=self.recipe.ema_decay) if self.recipe.ema_decay else None
        self._prefix: tuple[Any, Callable | None, FeatureCache | None] = (None, None, None)  # (plan, suffix, cache)

    def _feature_cache(self, prefix: torch.fx.GraphModule | None = None) -> FeatureCache:
        return FeatureCache(self.model, self.splits, on_disk=self.recipe.cache_features, prefix=prefix,
                            batch_size=self.recipe.batch_size * 2, mean=self.mean, std=self.std, device=self.device,
                            amp=self.amp, image_size=self.recipe.image_size, channels_last=self.channels_last)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """Every parameter goes in once (see ``param_groups``); frozen ones simply have no grad."""
        groups = param_groups(self.model, self.groups, self.recipe.weight_decay)
        r = self.recipe
        if r.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, nesterov=r.momentum > 0)
        return torch.optim.AdamW(groups, lr=r.lr)

    def lr_now(self) -> float:
        return self.recipe.lr * lr_factor(self.step, self.total_steps, self.warmup_steps, self.recipe.scheduler)

    def _enter_epoch(self, epoch: int) -> int:
        """Apply the strategy's (checked) plan for ``epoch``; returns the trainable parameter count."""
        self.scales = check_plan(self.strategy, epoch)
        if not self.head_only:
            self.features.clear()  # the body trains: features cached before are stale from now on
        trainable = apply_plan(self.model, self.groups, self.scales, self.strategy)
        set_learning_rates(self.optimizer, self.lr_now(), self.scales)
        return trainable

    @property
    def kept_model(self) -> torch.nn.Module:
        """The weights that are validated and kept as the trial's best: the moving average when ``ema_decay`` is
        set, else the trained model."""
        return self.model if self.ema is None else self.ema.module

    @property
    def head_only(self) -> bool:
        """Only the head trains, so the backbone's output is a fixed function of the image."""
        return all(s == 0 for s in self.scales[:-1])

    def _frozen_prefix(self) -> tuple[Callable | None, FeatureCache | None]:
        """``(suffix, cache)`` when the plan keeps a frozen prefix whose output can be cached (``tlkit.engine.prefix``):
        only with un-augmented images, since augmentation would change that output every epoch. The cut is made
        again only when the plan changes (gradual unfreezing moves it)."""
        if not self.recipe.cache_features or self.recipe.augment or self.head_only:
            return None, None
        plan = (tuple(self.scales), tuple(p.requires_grad for p in self.model.parameters()))
        if self._prefix[0] != plan:
            size = self.recipe.image_size
            example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(self.device)
            if self.channels_last:
                example = example.contiguous(memory_format=torch.channels_last)
            cut = cut_frozen_prefix(self.model, self.groups, example, len(self.splits.train) + len(self.splits.val),
                                    memory_budget(self.device))
            self._prefix = (plan, None, None) if cut is None else (plan, cut.suffix, self._feature_cache(cut.prefix))
        return self._prefix[1], self._prefix[2]

    def fit(self) -> list[EpochResult]:
        """Run the remaining epochs. Every callback's ``on_fit_end`` runs, with the outcome, however it ends."""
        outcome = "failed"
        started = time.perf_counter()
        try:
            for cb in self.callbacks:
                cb.on_fit_start(self)
            while self.epoch < self.recipe.epochs:
                result = self._run_epoch(self.epoch)
                self.history.append(result)
                if self.metric.better(result.val_metric, self.best_metric):
                    self.best_metric, self.best_epoch = result.val_metric, result.epoch
                self.epoch += 1
                self.elapsed += time.perf_counter() - started
                started = time.perf_counter()
                self._epoch_end(result)
            outcome = "completed"
        except PruneTrial as err:
            outcome, self.stop_reason = "pruned", str(err) or type(err).__name__
            raise
        except KeyboardInterrupt:
            outcome = "interrupted"
            raise
        finally:
            for cb in self.callbacks:
                cb.on_fit_end(self, outcome)
        return self.history

    def _epoch_end(self, result: EpochResult) -> None:
        """Every callback sees the epoch; the first ``PruneTrial`` raised is raised once they all have."""
        stop: PruneTrial | None = None
        for cb in self.callbacks:
            try:
                cb.on_epoch_end(self, result)
            except PruneTrial as err:
                stop = stop or err
        if stop is not None:
            raise stop

    def _run_epoch(self, epoch: int) -> EpochResult:
        epoch_start = time.perf_counter()
        trainable = self._enter_epoch(epoch)
        lrs = [self.lr_now() * s for s in self.scales]
        set_train_mode(self.model, self.groups, self.scales)
        forward, cache = (self.model.get_classifier(), self.features) if self.head_only and \
            self.recipe.cache_features else self._frozen_prefix()
        cached = cache is not None
        forward = forward if cached else self.model
        data = cache.get("train") if cached else self.splits.train
        start, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=self.device)
        batches = iterate_batches(data, self.recipe.batch_size, shuffle_seed=self.seed * 100_003 + epoch,
                                  augment=self.recipe.augment, padding=self.recipe.crop_padding, mean=self.mean,
                                  std=self.std, device=self.device, max_batches=self.recipe.max_batches,
                                  drop_last=True, image_size=self.recipe.image_size)
        for i, (x, y) in enumerate(batches):
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            set_learning_rates(self.optimizer, self.lr_now(), self.scales)
            loss, count = self._loss(forward, x, y, mixed=not cached, seed=(self.seed, epoch, i))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.step += 1
            loss_sum += loss.detach() * count  # summed on the device: no host sync per step
            seen += count
            for cb in self.callbacks:
                cb.on_batch_end(self, i, self.steps_per_epoch)
        train_loss = loss_sum.item() / max(seen, 1)
        train_seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise NonFiniteError(f"non-finite training loss ({train_loss}) in epoch {epoch}")
        val = self._validate(forward, cache)
        if not (math.isfinite(val.loss) and math.isfinite(val.metric)):
            raise NonFiniteError(f"non-finite validation loss or metric at epoch {epoch}")
        return EpochResult(epoch, train_loss, val.loss, val.metric, lrs, trainable,
                           seen / train_seconds if train_seconds > 0 else 0.0, time.perf_counter() - epoch_start,
                           cached)

    def _loss(self, forward: Callable, x: torch.Tensor, y: torch.Tensor, mixed: bool, seed: tuple[int, ...]
              ) -> tuple[torch.Tensor, int]:
        """``(loss, images)`` of one batch: on soft targets when mixup/cutmix mix it (never cached inputs, which
        are the un-augmented images' by design), else cross-entropy with the recipe's label smoothing."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if self.mixer is not None and mixed:
                x, target = mix_batch(self.mixer, x, y, seed)
                loss = SoftTargetCrossEntropy()(forward(x).float(), target)
            else:
                loss = F.cross_entropy(forward(x).float(), y, label_smoothing=self.recipe.label_smoothing)
        extra = self.strategy.loss_term(self.model)  # e.g. L2-SP's penalty; None for most strategies
        return (loss if extra is None else loss + extra), len(x)

    def _validate(self, forward: Callable, cache: FeatureCache | None) -> Any:
        """Scores of ``kept_model`` on the validation split. The EMA model reads cached features when only the head
        trains (its frozen backbone equals the trained one: an average of a constant is that constant); the
        frozen-prefix cache was cut from the trained model, so there the EMA model runs on the images."""
        model, data = self.model, cache.get("val") if cache is not None else self.splits.val
        if self.ema is not None:
            model = self.ema.module
            on_features = cache is not None and self.head_only and self.recipe.cache_features
            forward, data = (model.get_classifier(), data) if on_features else (model, self.splits.val)
        return evaluate(model, data, metric=self.metric, batch_size=self.recipe.batch_size, mean=self.mean,
                        std=self.std, device=self.device, forward=forward, amp=self.amp,
                        image_size=self.recipe.image_size, channels_last=self.channels_last)

    def state_dict(self) -> dict[str, Any]:
        """The resumable state, as plain data (weights are saved separately, as safetensors)."""
        return {"epoch": self.epoch, "step": self.step, "elapsed": self.elapsed,
                "optimizer": self.optimizer.state_dict(), "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "history": [r.__dict__ for r in self.history],
                "strategy": {"name": self.strategy.name, "params": dict(self.strategy.params)},
                **({} if self.ema is None else {"ema": self.ema.module.state_dict()})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step, self.elapsed = state["epoch"], state["step"], state["elapsed"]
        # The plan of the last finished epoch decides which params have optimizer state, so restore flags first.
        self._enter_epoch(max(0, self.epoch - 1))
        self.optimizer.load_state_dict(state["optimizer"])
        self.best_metric, self.best_epoch = state["best_metric"], state["best_epoch"]
        self.history = [EpochResult(**r) for r in state["history"]]
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])

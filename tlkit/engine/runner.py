"""One trial, from a plain spec to a result: build the model, resume from its checkpoint, fit, record the outcome.

This is the only code that runs a trial. The Optuna adapter (``tlkit.search.objective``), source pretraining
(``tlkit.engine.source``) and repeat runs all call :func:`run_trial`; none of them has its own copy of the logic, and
this module knows nothing of Optuna (a callback raises ``PruneTrial`` to stop a trial early).

A trial's folder holds, while it runs, its last two epoch checkpoints (one every ``CHECKPOINT_EVERY_S`` seconds of
training, see ``_Checkpointer``); once it has ended, ``best.safetensors`` (its best epoch's weights), ``trial.json``
(what it ran) and ``outcome.json`` (how it ended). A trial whose folder already has an outcome is not trained again:
its recorded result is returned.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from tlkit.models.backbones import build_model, layer_groups, preprocessing
from tlkit.engine.checkpoint import load_latest, prune_epochs, save_epoch, save_tensors, set_rng_state
from tlkit.data.tensors import Splits
from tlkit.errors import describe_error
from tlkit.config.experiment import Runtime, Train
from tlkit.metrics import get_metric
from tlkit.strategies import get_strategy
from tlkit.strategies.base import Strategy, prepare
from tlkit.engine.loop import BN_POLICY, Callback, EpochResult, PruneTrial, Trainer
from tlkit.utils.files import set_aside, write_json

__all__ = ["TrialSpec", "TrialResult", "TimeUp", "run_trial", "read_outcome", "OUTCOME", "COMPLETE", "PRUNED",
           "STATES"]

OUTCOME = "outcome.json"
COMPLETE, PRUNED = "COMPLETE", "PRUNED"
STATES = (COMPLETE, PRUNED)
"""How a finished trial ended (``TrialResult.state``, ``outcome.json``): Optuna's ``TrialState`` names, since that
is the state the trial takes in its study. Spelled out because this module knows nothing of Optuna;
tests/test_package.py checks them against Optuna. A fit's own outcome (``Callback.on_fit_end``) is tlkit's
vocabulary, ``tlkit.engine.loop.OUTCOMES``; docs/results.md ("Outcome vocabulary") maps one to the other."""
log = logging.getLogger("tlkit")


@dataclass(frozen=True)
class TrialSpec:
    """Everything one trial computes from; the same spec in the same folder gives the same result."""

    backbone: str
    strategy: str | type[Strategy]
    """A registered strategy's name, or the class itself (one not registered works too)."""
    params: dict[str, Any]
    """The strategy's hyperparameters (the recipe's searched values are already in ``recipe``)."""
    recipe: Train
    metric: str
    seed: int
    """Seeds the head's initialisation, the batch order and the augmentation."""
    folder: Path
    weights: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    """The backbone's starting weights (None: random initialisation)."""
    weights_origin: str = "random init"
    store: Any = field(default=None, repr=False, compare=False)
    """A ``tlkit.engine.store.Store`` the folder is mirrored to (None: local only)."""
    runtime: Runtime = field(default_factory=Runtime, compare=False)
    """How the trial runs here (checkpoint cadence and retention), not what it computes."""


@dataclass
class TrialResult:
    """How a trial ended. ``value`` is the best validation metric over its epochs (None when pruned early)."""

    state: str
    """One of ``STATES``: ``COMPLETE`` or ``PRUNED`` (Optuna's names)."""
    value: float | None
    reason: str = ""
    best_epoch: int = -1
    epochs_run: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    num_groups: int = 0
    wall_time: float = 0.0
    resumed_from_epoch: int | None = None
    """The epoch this process started from when a checkpoint was found (None: it started fresh)."""
    replayed: bool = False
    """True when the result was read from the folder's ``outcome.json`` instead of trained."""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "replayed"}


CHECKPOINT_EVERY_S = 10.0
"""Seconds of training between a trial's epoch checkpoints, unless ``Runtime.checkpoint_every_s`` says otherwise."""


class _Checkpointer(Callback):
    """Keeps a trial resumable at a bounded cost: an epoch checkpoint once ``every_s`` seconds of training have
    passed since the last one (and always before a ``--timeout`` stop), the best weights whenever a checkpoint is
    written and when the trial ends.

    Why not every epoch: a kill re-runs the epochs after the last checkpoint to the same numbers (on CPU bit for
    bit: training is deterministic from a checkpoint), so an epoch that is cheaper to compute than to save is better
    re-run. A probe on cached features trains an epoch in a fraction of a second, while saving resnet18 takes
    ~0.13 s. Improved weights wait in memory (a copy on the CPU) until the next write. The checkpointer runs last,
    after every other callback has seen the epoch, so what they log is never behind the checkpoint a resume starts
    from (a resumed TensorBoard writer purges the steps it re-runs)."""

    def __init__(self, folder: Path, runtime: Runtime, store: Any = None, deadline: float | None = None) -> None:
        self.folder = folder
        self.store = store
        self.deadline = deadline
        self.keep = runtime.keep_checkpoints
        self.every_s = CHECKPOINT_EVERY_S if runtime.checkpoint_every_s is None else runtime.checkpoint_every_s
        self.saved_at = 0.0  # the trainer's elapsed training time at the last checkpoint (or at the resume)
        self.pending: tuple[int, dict[str, torch.Tensor]] | None = None  # (epoch, weights) of a best not yet saved

    def on_fit_start(self, trainer: Trainer) -> None:
        self.saved_at = trainer.elapsed

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        improved = trainer.best_epoch == result.epoch
        exported = trainer.strategy.export_model(trainer.kept_model) if improved else None  # plain timm
        last = trainer.epoch >= trainer.recipe.epochs
        stopping = not last and self.deadline is not None and time.monotonic() >= self.deadline
        # A trial's last epoch under keep_checkpoints='best' gets no checkpoint: its outcome, written next, ends the
        # trial, and retention would delete the checkpoint at once.
        due = self.keep == "last" if last else (
            stopping or trainer.elapsed - self.saved_at >= self.every_s)
        if not due:
            if improved:
                self.pending = (result.epoch, _cpu_copy(exported))
            return
        same = improved and exported is trainer.model  # then the best is a hard link to this checkpoint's weights
        if improved:
            self.pending = None if same else (result.epoch, exported.state_dict())
        self._save_pending()  # a best not on disk yet goes with this checkpoint
        save_epoch(self.folder, result.epoch, trainer.model, trainer.state_dict(),
                   also_best=self.folder / "best.safetensors" if same else None)
        self.saved_at = trainer.elapsed
        if self.store is not None:
            self.store.push(self.folder)
        if stopping:
            raise TimeUp(f"time budget spent after epoch {result.epoch}")

    def on_fit_end(self, trainer: Trainer, outcome: str) -> None:
        """A trial that ended (completed or pruned) saves its best weights before its outcome is written; one that
        was interrupted or failed re-runs the epochs since its checkpoint, which find the same best again."""
        if outcome in ("completed", "pruned") and self.pending is not None:
            self._save_pending()
            if self.store is not None:
                self.store.push(self.folder)

    def _save_pending(self) -> None:
        """Write the best weights held back since their epoch (save_tensors copies them, so they may be live)."""
        if self.pending is not None:
            epoch, weights = self.pending
            save_tensors(self.folder / "best.safetensors", weights, metadata={"epoch": str(epoch)})
            self.pending = None


def _cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class TimeUp(Exception):
    """The sweep's time budget (``--timeout``) is spent: stop after the epoch just checkpointed; the trial resumes
    from there on the next run."""


def run_trial(spec: TrialSpec, splits: Splits, device: torch.device | str, callbacks: Sequence[Callback] = (),
              deadline: float | None = None) -> TrialResult:
    """Run (or resume, or replay) the trial ``spec`` describes, and record its outcome in ``spec.folder``.

    ``device`` is a torch.device or its name (``"cpu"``, ``"cuda:0"``). ``deadline`` (``time.monotonic()``
    seconds) stops the trial with :class:`TimeUp` after the first epoch that ends past it, once that epoch is
    checkpointed."""
    device = torch.device(device)
    if spec.store is not None:
        spec.store.pull(spec.folder)  # another worker may have started (or finished) this trial
    done = read_outcome(spec.folder)
    if done is not None:
        return done
    strategy_cls = get_strategy(spec.strategy) if isinstance(spec.strategy, str) else spec.strategy
    model = build_model(spec.backbone, splits.num_classes, spec.weights, spec.seed, spec.recipe.image_size,
                        spec.weights_origin)
    groups = layer_groups(model, coarse=spec.recipe.coarse_groups)
    strategy = strategy_cls(num_groups=len(groups), epochs=spec.recipe.epochs, **spec.params)
    model, groups = prepare(strategy, model, coarse=spec.recipe.coarse_groups)  # before optimizer and resume
    write_json(spec.folder / "trial.json", {
        "backbone": spec.backbone, "strategy": strategy.describe(), "params": spec.params,
        "recipe": dataclasses.asdict(spec.recipe), "metric": spec.metric, "seed": spec.seed,
        "groups": [g.name for g in groups], "weights": spec.weights_origin, "bn_policy": BN_POLICY})
    trainer = Trainer(model, groups, strategy, splits, spec.recipe, get_metric(spec.metric), seed=spec.seed,
                      device=device, callbacks=[*callbacks, _Checkpointer(spec.folder, spec.runtime, spec.store,
                                                                          deadline)],
                      **preprocessing(model))
    resumed_from = None
    latest = load_latest(spec.folder)
    if latest is not None:
        weights, state = latest
        model.load_state_dict(weights)
        trainer.load_state_dict(state)
        set_rng_state(state["rng"])
        resumed_from = trainer.epoch
    state, reason = COMPLETE, ""
    try:
        trainer.fit()
    except PruneTrial as err:
        state, reason = PRUNED, describe_error(err).removeprefix(f"{type(err).__name__}: ")
    if state == COMPLETE and not math.isfinite(trainer.best_metric):
        state, reason = PRUNED, "no finite validation metric"
    history = [r.as_row() for r in trainer.history]
    result = TrialResult(
        state=state, value=trainer.best_metric if state == COMPLETE else None, reason=reason,
        best_epoch=trainer.best_epoch, epochs_run=trainer.epoch, history=history,
        trainable_params=max((r.trainable_params for r in trainer.history), default=0),
        total_params=sum(p.numel() for p in model.parameters()), num_groups=len(groups),
        wall_time=round(trainer.elapsed, 3), resumed_from_epoch=resumed_from)
    _finish(spec, result)
    return result


def _finish(spec: TrialSpec, result: TrialResult) -> None:
    """Record the outcome, then apply retention (only ``best.safetensors`` stays unless
    ``train.keep_checkpoints='last'``). The outcome is written first: if the process dies before whoever runs the
    trial hears of it, the next attempt reads it instead of training the trial again."""
    write_json(spec.folder / OUTCOME, result.to_json())
    if spec.runtime.keep_checkpoints == "best":
        prune_epochs(spec.folder, keep=0)
    if spec.store is not None:
        spec.store.push(spec.folder)


def read_outcome(folder: Path) -> TrialResult | None:
    """The recorded result of a finished trial, or None. An ``outcome.json`` that cannot be read is set aside
    (renamed ``*.bad``) with a warning, and the trial runs again from its checkpoints."""
    path = Path(folder) / OUTCOME
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
        fields = {f.name for f in dataclasses.fields(TrialResult)}
        result = TrialResult(**{k: v for k, v in payload.items() if k in fields})
        if result.state not in STATES:
            raise ValueError(f"unknown state {result.state!r}")
    except (OSError, ValueError, TypeError, AttributeError) as err:  # AttributeError: JSON that is not an object
        set_aside(path, f"{path} cannot be read ({describe_error(err)})", "the trial runs again from its checkpoints")
        return None
    result.replayed = True
    return result

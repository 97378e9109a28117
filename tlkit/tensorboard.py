"""TensorBoard for a sweep: one run per trial, its per-epoch scalars, and its hyperparameters for the HParams tab.

Runs are ``<tb>/<backbone>/<strategy>/trial_NNNN`` (NNNN the trial's folder number, as under ``trials/``), so
TensorBoard's run filter selects a backbone, a strategy or one trial. Everything is written with torch's
``SummaryWriter`` and TensorBoard's own hparams summaries, without TensorFlow.

Each scalar is written once per epoch, even when a trial resumes after a crash: the epochs a dead process already
wrote are read back from the run's event files and skipped, and those it never got to are filled in from the
trainer's history.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tlkit.study import Cell
from tlkit.train import Callback, EpochResult, Trainer

__all__ = ["TensorBoardLogger", "TrialBoards", "run_dir", "written_steps"]

SESSION_START = "_hparams_/session_start_info"
SESSION_END = "_hparams_/session_end_info"


def run_dir(root: Path, cell: Cell, run: int) -> Path:
    """``<root>/<backbone>/<strategy>/trial_NNNN``, with hub names made path-safe as for ``trials/``."""
    return Path(root) / cell.folder / f"trial_{run:04d}"


def written_steps(folder: Path) -> set[tuple[str, int]]:
    """``(tag, step)`` of every scalar already in ``folder``, plus ``(tag, -1)`` for hparams summaries."""
    if not folder.is_dir() or not any(folder.glob("events.out.tfevents.*")):
        return set()
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, TENSORS, EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0, TENSORS: 0})
    acc.Reload()
    seen = {(tag, e.step) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    try:
        return seen | {(tag, -1) for tag in acc.PluginTagToContent("hparams")}
    except KeyError:  # the process died before writing its hyperparameters
        return seen


def _hparam(value: Any) -> Any:
    """HParams takes numbers, strings and bools; anything else (a list choice) is shown as its repr."""
    return value if isinstance(value, (bool, int, float, str)) else repr(value)


class TensorBoardLogger(Callback):
    """Scalars of one trial each epoch, and its hyperparameters for the HParams dashboard.

    Scalars (step = epoch): ``loss/train``, ``loss/val``, ``val/<metric>``, ``lr/<NN>_<group>`` (one per layer
    group; 0 while frozen), ``params/trainable``, ``throughput/images_per_s``, and ``hparams/best_val_<metric>`` and
    ``hparams/epochs_run`` (the HParams table shows the last value of every scalar; these two are its summary).
    """

    def __init__(self, root: Path, cell: Cell, run: int, params: dict[str, Any], metric: str) -> None:
        self.folder = run_dir(root, cell, run)
        self.hparams = {"backbone": cell.backbone, "strategy": cell.strategy,
                        **{k: _hparam(v) for k, v in sorted(params.items())}}
        self.metric = metric
        self.trainer: Trainer | None = None
        self.writer: Any = None
        self.seen: set[tuple[str, int]] = set()

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.trainer = trainer
        self.seen = written_steps(self.folder)
        self.writer = SummaryWriter(str(self.folder))
        if (SESSION_START, -1) not in self.seen:
            self._write_hparams(end=False)
        for result in trainer.history:  # epochs a dead process finished but may not have logged
            self._write_epoch(trainer, result)
        self.writer.flush()

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        self._write_epoch(trainer, result)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        self._write_hparams(end=True)
        self.close()

    def close(self) -> None:
        """Log what the trainer ran but no hook saw (the epoch at which a trial was pruned), then close the file.

        Safe to call more than once, and after a trial that never started.
        """
        if self.writer is None:
            return
        for result in self.trainer.history:
            self._write_epoch(self.trainer, result)
        self.writer.close()
        self.writer = None

    def _write_epoch(self, trainer: Trainer, r: EpochResult) -> None:
        best = max(h.val_metric for h in trainer.history if h.epoch <= r.epoch)
        scalars = {"loss/train": r.train_loss, "loss/val": r.val_loss, f"val/{self.metric}": r.val_metric,
                   **{f"lr/{i:02d}_{g.name}": lr for i, (g, lr) in enumerate(zip(trainer.groups, r.lrs))},
                   "params/trainable": r.trainable_params, "throughput/images_per_s": r.images_per_s,
                   f"hparams/best_val_{self.metric}": best, "hparams/epochs_run": r.epoch + 1}
        for tag, value in scalars.items():
            if (tag, r.epoch) not in self.seen and math.isfinite(value):
                self.writer.add_scalar(tag, value, r.epoch)
                self.seen.add((tag, r.epoch))

    def _write_hparams(self, end: bool) -> None:
        """The session start (hyperparameters) or end (status) summary, in this trial's own run.

        ``add_hparams`` would put them in a new timestamped sub-run; and the ``Experiment`` summary is left out on
        purpose: TensorBoard uses the first one it finds, which would hide the hyperparameters other strategies
        search. Without it TensorBoard lists the union of every trial's hyperparameters.
        """
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"hparams/best_val_{self.metric}": None, "hparams/epochs_run": None}
        _, start, stop = hparams(self.hparams, metrics)
        tag = SESSION_END if end else SESSION_START
        if (tag, -1) not in self.seen:
            self.writer.file_writer.add_summary(stop if end else start)
            self.seen.add((tag, -1))


class TrialBoards:
    """Makes each trial's :class:`TensorBoardLogger` and closes them when the trial is over, however it ended.

    A pruned trial never reaches ``on_fit_end`` (and its last epoch stops at the pruning callback), so the sweep
    calls :meth:`close` after every trial.
    """

    def __init__(self, root: Path, metric: str) -> None:
        self.root = Path(root)
        self.metric = metric
        self.open: list[TensorBoardLogger] = []

    def __call__(self, cell: Cell, run: int, params: dict[str, Any]) -> TensorBoardLogger:
        logger = TensorBoardLogger(self.root, cell, run, params, self.metric)
        self.open.append(logger)
        return logger

    def close(self) -> None:
        while self.open:
            self.open.pop().close()

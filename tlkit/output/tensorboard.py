"""TensorBoard for a sweep: the comparison (one run per cell) and every trial as it trains.

Two log folders, because TensorBoard ticks no run at all once a folder holds more than 40, and a quickstart alone
makes 96 trials:

- ``tb/`` — the comparison, one run per cell (``<strategy>/<backbone>``), rebuilt with the report: the epochs of the
  cell's best search trial, and in the HParams tab its configuration with the cell's mean test score and interval;
- ``tb_trials/`` — every trial (``<strategy>/<backbone>/t3``) and repeat (``.../t3-seed1``) live, while it trains.

In both, HParams lists ``Backbone`` and ``Strategy`` first (TensorBoard sorts names, capitals first, and shows the
first few) and the validation and test metrics as its metric columns; learning rates are tagged by depth from the
head (``lr/head``, ``lr/head-1``, ...), so a tag means the same layer position on every backbone. Everything is
written with torch's ``SummaryWriter`` and TensorBoard's own hparams summaries, without TensorFlow.

This module holds the trial boards (a fit-loop callback); ``tb/`` and the names both use are in ``boards.py``,
which the report imports without torch, and are re-exported here.

A trial's scalars appear once per epoch even when it resumes after a crash: the logger writes an epoch before the
trial's checkpoint for it is saved, and a resumed trial opens its writer with ``purge_step`` at the epoch it resumes
from, so TensorBoard hides whatever the dead process wrote from there on.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tlkit.search.study import Cell
from tlkit.engine.loop import Callback, EpochResult, Trainer
from tlkit.output.boards import hparam_value, lr_tag, run_dir, trial_metrics

__all__ = ["TensorBoardLogger", "TrialBoards", "log_test_score"]


class TensorBoardLogger(Callback):
    """Scalars of one trial each epoch, and its hyperparameters for the HParams dashboard.

    Scalars (step = epoch): ``loss/train``, ``loss/val``, ``val/<metric>``, ``lr/head``, ``lr/head-1``, ... (0 while
    frozen), ``params/trainable``, ``throughput/images_per_s``, and the HParams metrics ``hparams/best_val_<metric>``,
    ``hparams/epochs_run`` and, once the trial is scored on the test split, ``hparams/test_<metric>``.
    """

    def __init__(self, root: Path, cell: Cell, name: str, params: dict[str, Any], metric: str) -> None:
        self.folder = run_dir(root, cell, name)
        self.hparams = {"Backbone": cell.backbone, "Strategy": cell.strategy,
                        **{k: hparam_value(v) for k, v in sorted(params.items())}}
        self.metric = metric
        self.writer: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # Epochs before trainer.epoch were written before their checkpoint; anything later is a dead process's.
        self.writer = SummaryWriter(str(self.folder), purge_step=trainer.epoch)
        if trainer.epoch == 0:
            self._write_hparams(end=None)
        self.writer.flush()

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        r = result
        n = len(trainer.groups)
        scalars = {"loss/train": r.train_loss, "loss/val": r.val_loss, f"val/{self.metric}": r.val_metric,
                   **{lr_tag(i, n): lr for i, lr in enumerate(r.lrs)},
                   "params/trainable": r.trainable_params, "throughput/images_per_s": r.images_per_s,
                   f"hparams/best_val_{self.metric}": trainer.best_metric, "hparams/epochs_run": r.epoch + 1}
        for tag, value in scalars.items():
            if math.isfinite(value):
                self.writer.add_scalar(tag, value, r.epoch)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer, outcome: str) -> None:
        """A trial that ended (completed or pruned) gets its HParams status; one that will resume does not."""
        if self.writer is None:
            return
        if outcome in ("completed", "pruned"):
            self._write_hparams(end=outcome)
        self.writer.close()
        self.writer = None

    def _write_hparams(self, end: str | None) -> None:
        """The session start (hyperparameters) or end (status) summary, in this trial's own run (``add_hparams``
        would put them in a new timestamped sub-run)."""
        from torch.utils.tensorboard.summary import hparams

        _, start, stop = hparams(self.hparams, trial_metrics(self.metric))
        self.writer.file_writer.add_summary(start if end is None else stop)


def log_test_score(root: Path, cell: Cell, name: str, metric: str, value: float, step: int) -> None:
    """Add a scored trial's test metric to its run (the HParams tab shows the last value of each metric)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir(root, cell, name))) as writer:
        writer.add_scalar(f"hparams/test_{metric}", value, step)


class TrialBoards:
    """Makes each trial's :class:`TensorBoardLogger` (a callback that closes itself when the trial ends)."""

    def __init__(self, root: Path, metric: str) -> None:
        self.root = Path(root)
        self.metric = metric

    def __call__(self, cell: Cell, name: str, params: dict[str, Any]) -> TensorBoardLogger:
        return TensorBoardLogger(self.root, cell, name, params, self.metric)

    def on_test_score(self, cell: Cell, name: str, value: float, epoch: int) -> None:
        """``SweepRun.on_test_score``: the trial's test score in its run."""
        log_test_score(self.root, cell, name, self.metric, value, epoch)

"""TensorBoard for a sweep: one run per trial, its per-epoch scalars, and its hyperparameters for the HParams tab.

Runs are ``<tb>/<backbone>/<strategy>/trial_NNNN`` (NNNN the trial's folder number, as under ``trials/``), so
TensorBoard's run filter selects a backbone, a strategy or one trial. Everything is written with torch's
``SummaryWriter`` and TensorBoard's own hparams summaries, without TensorFlow.

Each scalar appears once per epoch, even when a trial resumes after a crash: the logger writes an epoch before the
trial's checkpoint for it is saved, and a resumed trial opens its writer with ``purge_step`` at the epoch it resumes
from, so TensorBoard hides whatever the dead process wrote from there on.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tlkit.study import Cell
from tlkit.train import Callback, EpochResult, Trainer

__all__ = ["TensorBoardLogger", "TrialBoards", "run_dir"]


def run_dir(root: Path, cell: Cell, name: str) -> Path:
    """``<root>/<backbone>/<strategy>/<name>`` (``trial_NNNN``, or ``run_NNNN_seed_S`` for a repeat), with hub
    names made path-safe as for ``trials/``."""
    return Path(root) / cell.folder / name


def _hparam(value: Any) -> Any:
    """HParams takes numbers, strings and bools; anything else (a list choice) is shown as its repr."""
    return value if isinstance(value, (bool, int, float, str)) else repr(value)


class TensorBoardLogger(Callback):
    """Scalars of one trial each epoch, and its hyperparameters for the HParams dashboard.

    Scalars (step = epoch): ``loss/train``, ``loss/val``, ``val/<metric>``, ``lr/<NN>_<group>`` (one per layer
    group; 0 while frozen), ``params/trainable``, ``throughput/images_per_s``, and ``hparams/best_val_<metric>`` and
    ``hparams/epochs_run`` (the HParams table shows the last value of every scalar; these two are its summary).
    """

    def __init__(self, root: Path, cell: Cell, name: str, params: dict[str, Any], metric: str) -> None:
        self.folder = run_dir(root, cell, name)
        self.hparams = {"backbone": cell.backbone, "strategy": cell.strategy,
                        **{k: _hparam(v) for k, v in sorted(params.items())}}
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
        best = trainer.best_metric
        scalars = {"loss/train": r.train_loss, "loss/val": r.val_loss, f"val/{self.metric}": r.val_metric,
                   **{f"lr/{i:02d}_{g.name}": lr for i, (g, lr) in enumerate(zip(trainer.groups, r.lrs))},
                   "params/trainable": r.trainable_params, "throughput/images_per_s": r.images_per_s,
                   f"hparams/best_val_{self.metric}": best, "hparams/epochs_run": r.epoch + 1}
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
        """The session start (hyperparameters) or end (status) summary, in this trial's own run.

        ``add_hparams`` would put them in a new timestamped sub-run; and the ``Experiment`` summary is left out on
        purpose: TensorBoard uses the first one it finds, which would hide the hyperparameters other strategies
        search. Without it TensorBoard lists the union of every trial's hyperparameters.
        """
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"hparams/best_val_{self.metric}": None, "hparams/epochs_run": None}
        _, start, stop = hparams(self.hparams, metrics)
        self.writer.file_writer.add_summary(start if end is None else stop)


class TrialBoards:
    """Makes each trial's :class:`TensorBoardLogger` (a callback that closes itself when the trial ends)."""

    def __init__(self, root: Path, metric: str) -> None:
        self.root = Path(root)
        self.metric = metric

    def __call__(self, cell: Cell, name: str, params: dict[str, Any]) -> TensorBoardLogger:
        return TensorBoardLogger(self.root, cell, name, params, self.metric)

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

A trial's scalars appear once per epoch even when it resumes after a crash: the logger writes an epoch before the
trial's checkpoint for it is saved, and a resumed trial opens its writer with ``purge_step`` at the epoch it resumes
from, so TensorBoard hides whatever the dead process wrote from there on.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from tlkit.search.study import Cell
from tlkit.engine.loop import Callback, EpochResult, Trainer
from tlkit.utils.files import rebuild_folder

__all__ = ["TensorBoardLogger", "TrialBoards", "run_dir", "lr_tag", "write_hparams_config", "log_test_score",
           "write_cell_boards", "TRIALS_DIR", "CELLS_DIR"]

TRIALS_DIR, CELLS_DIR = "tb_trials", "tb"


def run_dir(root: Path, cell: Cell, name: str) -> Path:
    """``<root>/<strategy>/<backbone>/<name>``: strategy first, so a run name cut short still tells strategies
    apart; hub names made path-safe as for ``trials/``."""
    return Path(root) / cell.strategy / cell.folder.parent / name


def lr_tag(index: int, num_groups: int) -> str:
    """``lr/head`` for the classifier, ``lr/head-1`` for the group below it, ...: the same depth from the head
    means the same tag on every backbone."""
    depth = num_groups - 1 - index
    return "lr/head" if depth == 0 else f"lr/head-{depth}"


def _hparam(value: Any) -> Any:
    """HParams takes numbers, strings and bools; anything else (a list choice) is shown as its repr."""
    return value if isinstance(value, (bool, int, float, str)) else repr(value)


def _metrics(metric: str) -> dict[str, None]:
    return {f"hparams/best_val_{metric}": None, f"hparams/test_{metric}": None, "hparams/epochs_run": None}


def write_hparams_config(root: Path, hparams: Iterable[str], metric: str, domains: dict[str, list[str]],
                         cells: bool = False) -> None:
    """The HParams tab's columns, once, in the log folder's own run: ``Backbone`` and ``Strategy`` (with their
    values, for filtering), every searched hyperparameter, and the metric columns. Without it TensorBoard takes the
    first trial's hyperparameters only, hiding what the other strategies search."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    names = {"Backbone": "", "Strategy": "", **{k: 0.0 for k in sorted(set(hparams))}}
    metrics = ({f"hparams/val_{metric}_mean": None, f"hparams/test_{metric}_mean": None,
                f"hparams/test_{metric}_ci_low": None, f"hparams/test_{metric}_ci_high": None} if cells
               else _metrics(metric))
    experiment, _, _ = hparams_summaries(names, metrics, hparam_domain_discrete=domains)
    for old in Path(root).glob("events.out.tfevents.*"):
        old.unlink()  # one experiment summary: a rerun replaces it (a study may have grown)
    with SummaryWriter(str(root)) as writer:
        writer.file_writer.add_summary(experiment)


class TensorBoardLogger(Callback):
    """Scalars of one trial each epoch, and its hyperparameters for the HParams dashboard.

    Scalars (step = epoch): ``loss/train``, ``loss/val``, ``val/<metric>``, ``lr/head``, ``lr/head-1``, ... (0 while
    frozen), ``params/trainable``, ``throughput/images_per_s``, and the HParams metrics ``hparams/best_val_<metric>``,
    ``hparams/epochs_run`` and, once the trial is scored on the test split, ``hparams/test_<metric>``.
    """

    def __init__(self, root: Path, cell: Cell, name: str, params: dict[str, Any], metric: str) -> None:
        self.folder = run_dir(root, cell, name)
        self.hparams = {"Backbone": cell.backbone, "Strategy": cell.strategy,
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

        _, start, stop = hparams(self.hparams, _metrics(self.metric))
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


def write_cell_boards(root: Path, summary: pd.DataFrame, history: pd.DataFrame, metric: str) -> None:
    """``tb/``: one run per cell, rebuilt from the report's tables: the epochs of its best search trial, and in
    HParams its configuration with the mean test score over its repeats and the interval's ends.

    Derived from the storage, like the tables, so it is rebuilt whole: in a temporary sibling swapped in by renames,
    so TensorBoard never reads a half-deleted folder and two reports at once (two sweeps of one results folder) do
    not delete each other's event files."""
    rebuild_folder(Path(root), lambda folder: _write_cell_boards(folder, summary, history, metric))


def _write_cell_boards(root: Path, summary: pd.DataFrame, history: pd.DataFrame, metric: str) -> None:
    import json

    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    searched = {k for p in summary.get("best_params", pd.Series(dtype=str)).dropna() if p for k in json.loads(p)}
    domains = {"Backbone": sorted(set(summary["backbone"])), "Strategy": sorted(set(summary["strategy"]))}
    write_hparams_config(root, searched, metric, domains, cells=True)
    for row in summary.to_dict("records"):
        if pd.isna(row.get("best_trial")):
            continue
        cell = Cell(row["backbone"], row["strategy"])
        params = {k: _hparam(v) for k, v in sorted(json.loads(row["best_params"] or "{}").items())}
        values = {f"hparams/val_{metric}_mean": row.get(f"val_{metric}_mean"),
                  f"hparams/test_{metric}_mean": row.get(f"test_{metric}_mean"),
                  f"hparams/test_{metric}_ci_low": row.get(f"test_{metric}_ci_low"),
                  f"hparams/test_{metric}_ci_high": row.get(f"test_{metric}_ci_high")}
        epochs = history[(history["backbone"] == cell.backbone) & (history["strategy"] == cell.strategy)
                         & (history["trial"] == row["best_trial"])]
        lrs = sorted((c for c in epochs.columns if c.startswith("lr_group") and epochs[c].notna().any()),
                     key=lambda c: int(c[len("lr_group"):]))
        with SummaryWriter(str(root / cell.strategy / cell.folder.parent)) as writer:
            _, start, stop = hparams({"Backbone": cell.backbone, "Strategy": cell.strategy, **params},
                                     dict.fromkeys(values))
            writer.file_writer.add_summary(start)
            for e in epochs.to_dict("records"):
                step = int(e["epoch"])
                for tag, column in (("loss/train", "train_loss"), ("loss/val", "val_loss"),
                                    (f"val/{metric}", f"val_{metric}")):
                    writer.add_scalar(tag, float(e[column]), step)
                for i, column in enumerate(lrs):
                    writer.add_scalar(lr_tag(i, len(lrs)), float(e[column]), step)
            last = int(epochs["epoch"].max()) if not epochs.empty else 0
            for tag, value in values.items():
                if value is not None and pd.notna(value):
                    writer.add_scalar(tag, float(value), last)
            writer.file_writer.add_summary(stop)

"""Progress of a sweep while it runs: cells and trials done, the current trial's epoch and batch, the best metric
so far, and an estimate of the time left.

On a terminal it is a live rich display; when stderr is not a terminal (CI, ``nohup``, a log file) it is one plain
log line per epoch, so logs stay readable; ``--quiet`` turns it off.

Example:
    progress = SweepProgress.for_stderr(quiet=args.quiet)
    try:
        run_sweep(exp, out, progress=progress)
    finally:
        progress.close()
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import optuna

from tlkit.metrics import get_metric
from tlkit.study import Cell, finished_count
from tlkit.train import Callback, EpochResult, Trainer

__all__ = ["SweepProgress", "format_duration"]

log = logging.getLogger("tlkit")
MODES = ("rich", "log", "off")


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``, ``2 h 07 min``: what a person reads at a glance."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class _TrialHooks(Callback):
    """Forwards the fit loop's hooks of the current trial to the progress display."""

    def __init__(self, progress: SweepProgress) -> None:
        self.progress = progress

    def on_fit_start(self, trainer: Trainer) -> None:
        self.progress.fit_started(trainer)

    def on_batch_end(self, trainer: Trainer, batch: int, num_batches: int) -> None:
        self.progress.batch_done(trainer, batch, num_batches)

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        self.progress.epoch_done(trainer, result)


class SweepProgress:
    """Where a sweep stands. ``run_sweep`` calls :meth:`start` once, :meth:`update` whenever it looks at a cell's
    study (before each trial, and when the cell is done), and adds :meth:`callbacks` to every trial's fit loop.

    The time left is (mean wall time of the epochs run so far in this process) x (epochs left, counting every
    remaining trial as a full one), so it errs long when the pruner stops trials early.

    Args:
        mode: ``rich`` (live display), ``log`` (one log line per epoch) or ``off``.
        console: the rich console to draw on (default: stderr).
    """

    def __init__(self, mode: str = "log", console: Any = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)} but got {mode!r}.")
        self.mode = mode
        self.console = console
        self.metric = "accuracy"
        self._metric = get_metric("accuracy")
        self.total_cells = self.trials_per_cell = self.epochs = 0
        self.cell_index = 0
        self.cell: Cell | None = None
        self.done = 0  # finished trials of all cells, as far as this process knows
        self.best: tuple[float, str] | None = None  # best completed trial so far: (value, "backbone/strategy")
        self.epoch_seconds: list[float] = []
        self.mark = time.perf_counter()
        self.epoch = self.batch = 0  # where the current trial is: epoch index, batches done in it
        self.batches = 1
        self._live: Any = None

    @classmethod
    def for_stderr(cls, quiet: bool = False) -> SweepProgress:
        """A live display on a terminal, log lines otherwise, nothing with ``quiet``."""
        if quiet:
            return cls("off")
        return cls("rich" if sys.stderr.isatty() else "log")

    def log_handler(self) -> logging.Handler:
        """A handler for the ``tlkit`` log that prints above the live display instead of through it."""
        if self.mode == "rich":
            from rich.logging import RichHandler

            return RichHandler(console=self._console(), show_time=False, show_path=False, show_level=False,
                               markup=False)
        return logging.StreamHandler(sys.stderr)

    def _console(self) -> Any:
        if self.console is None:
            from rich.console import Console

            self.console = Console(stderr=True)
        return self.console

    # -- what the sweep calls ---------------------------------------------------------------------------------

    def start(self, total_cells: int, trials_per_cell: int, epochs: int, metric: str) -> None:
        self.total_cells, self.trials_per_cell, self.epochs = total_cells, trials_per_cell, epochs
        self.metric, self._metric = metric, get_metric(metric)
        if self.mode == "rich" and self._live is None:
            from rich.progress import BarColumn, Progress, TextColumn
            from rich.table import Column

            # Fixed label and bar, then the text, least useful last: a narrow terminal cuts only its end.
            self._live = Progress(TextColumn("{task.description}", table_column=Column(min_width=5, no_wrap=True)),
                                  BarColumn(bar_width=20, table_column=Column(min_width=20, no_wrap=True)),
                                  TextColumn("{task.fields[info]}", table_column=Column(ratio=1, no_wrap=True)),
                                  console=self._console(), transient=False, expand=True)
            self._sweep_task = self._live.add_task("sweep", total=self.total_trials, info="")
            self._trial_task = self._live.add_task("trial", total=1, info="")
            self._live.start()

    def update(self, cell_index: int, cell: Cell, study: optuna.Study) -> None:
        """The sweep looked at ``cell``'s study: count its finished trials (other workers' included), take its best."""
        self.cell_index, self.cell = cell_index, cell
        finished = min(finished_count(study), self.trials_per_cell)
        self.done = cell_index * self.trials_per_cell + finished
        try:
            value = study.best_value
        except ValueError:
            value = math.nan  # no completed trial yet
        if math.isfinite(value) and (self.best is None or self._metric.better(value, self.best[0])):
            self.best = (value, f"{cell.backbone}/{cell.strategy}")
        self.epoch, self.batch = (self.epochs if finished == self.trials_per_cell else 0), 0
        self._refresh()

    def callbacks(self) -> list[Callback]:
        """Hooks for the current trial's fit loop (none when off)."""
        return [] if self.mode == "off" else [_TrialHooks(self)]

    def close(self) -> None:
        """Stop the live display (the terminal gets its cursor back); safe to call twice."""
        if self._live is not None:
            self._refresh()
            self._live.stop()
            self._live = None

    # -- what the trial's hooks call ----------------------------------------------------------------------------

    def fit_started(self, trainer: Trainer) -> None:
        self.mark = time.perf_counter()
        self.epoch, self.batch, self.batches = trainer.epoch, 0, trainer.steps_per_epoch
        self._refresh()

    def batch_done(self, trainer: Trainer, batch: int, num_batches: int) -> None:
        self.batch, self.batches = batch + 1, num_batches
        self._refresh()

    def epoch_done(self, trainer: Trainer, result: EpochResult) -> None:
        now = time.perf_counter()
        self.epoch_seconds.append(now - self.mark)
        self.mark = now
        self.epoch, self.batch = result.epoch + 1, 0
        if self.mode == "log" and self.cell is not None:
            log.info("  %s/%s trial %d/%d epoch %d/%d: train loss %.4f, val loss %.4f, val %s %.4f | %d/%d trials "
                     "done, best %s | ~%s left", self.cell.backbone, self.cell.strategy, self.trial,
                     self.trials_per_cell, self.epoch, self.epochs, result.train_loss, result.val_loss, self.metric,
                     result.val_metric, self.done, self.total_trials, self._best_text(),
                     format_duration(self.seconds_left()))
        self._refresh()

    # -- helpers ------------------------------------------------------------------------------------------------

    @property
    def total_trials(self) -> int:
        return self.total_cells * self.trials_per_cell

    @property
    def trial(self) -> int:
        """1-based number of the running (or next) trial in its cell."""
        return min(self.done - self.cell_index * self.trials_per_cell + 1, self.trials_per_cell)

    def seconds_left(self) -> float:
        """Estimated seconds to finish the sweep; ``inf`` until an epoch has given a rate."""
        if not self.epoch_seconds:
            return math.inf
        per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
        if self.done >= self.total_trials:
            return 0.0
        later_trials = self.total_trials - self.done - 1
        return per_epoch * (max(0, self.epochs - self.epoch) + later_trials * self.epochs)

    def _best_text(self) -> str:
        return "-" if self.best is None else f"{self.best[0]:.4f} ({self.best[1]})"

    def status(self) -> tuple[str, str]:
        """The two lines of the display: the sweep, then the current trial."""
        sweep = (f"{self.done}/{self.total_trials} trials · cell {self.cell_index + 1}/{self.total_cells} · "
                 f"~{format_duration(self.seconds_left())} left · best {self.metric} {self._best_text()}")
        where = "done" if self.epoch >= self.epochs else \
            f"epoch {self.epoch + 1}/{self.epochs} · batch {self.batch}/{self.batches}"
        cell = f"{self.cell.backbone}/{self.cell.strategy}" if self.cell else "-"
        return sweep, f"{where} · {cell} trial {self.trial}/{self.trials_per_cell}"

    def _refresh(self) -> None:
        if self._live is None or self.cell is None:
            return
        sweep, trial = self.status()
        self._live.update(self._sweep_task, completed=self.done, info=sweep)
        self._live.update(self._trial_task, total=self.epochs * self.batches,
                          completed=min(self.epochs, self.epoch) * self.batches + self.batch, info=trial)

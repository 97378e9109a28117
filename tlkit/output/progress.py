"""Progress of a sweep while it runs: what each trial is doing and how it ended, the best score so far, and the
time left.

On a terminal it is a live rich display; when stderr is not a terminal (CI, ``nohup``, a log file) it is plain log
lines; ``--quiet`` turns it off (the final table and the results folder are still printed). Every trial gets a line
when it starts (its parameters), when it resumes (from which epoch), when it is pruned (at which epoch, by what) and
when it ends; in log mode each epoch gets one too.

Numbers are the files' numbers: ``trial 3`` is ``trials/.../trial_0003`` (``t3`` in TensorBoard), epochs count from
0 as in ``history.csv``; ``3/96 trials`` is a count.

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
from collections import defaultdict
from typing import Any

import optuna
from optuna.trial import TrialState

from tlkit.metrics import get_metric
from tlkit.search.queue import finished_count
from tlkit.search.study import Cell
from tlkit.engine.loop import Callback, EpochResult, Trainer

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


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items())
                     if k != "repeat")


class _TrialHooks(Callback):
    """Forwards the fit loop's hooks of one trial to the progress display."""

    def __init__(self, progress: SweepProgress, cell: Cell, name: str, params: dict[str, Any]) -> None:
        self.progress, self.cell, self.name, self.params = progress, cell, name, params

    def on_fit_start(self, trainer: Trainer) -> None:
        self.progress.fit_started(self, trainer)

    def on_batch_end(self, trainer: Trainer, batch: int, num_batches: int) -> None:
        self.progress.batch_done(batch, num_batches)

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        self.progress.epoch_done(self, trainer, result)

    def on_fit_end(self, trainer: Trainer, outcome: str) -> None:
        self.progress.fit_ended(self, trainer, outcome)


class SweepProgress:
    """Where a sweep stands. ``run_sweep`` calls :meth:`start` once, :meth:`update` whenever it looks at a cell's
    study (before each trial, and when the cell is done), and adds :meth:`callbacks` to every trial's fit loop.

    The time left is, for every trial still to run, the mean wall time of the finished trials of its backbone (of
    any strategy, pruned ones included, from the storage and from this process), or of all backbones while its own
    has none; it follows what trials really cost, so it does not jump with the cost of one epoch.

    Args:
        mode: ``rich`` (live display), ``log`` (log lines) or ``off``.
        console: the rich console to draw on (default: stderr).
    """

    def __init__(self, mode: str = "log", console: Any = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)} but got {mode!r}.")
        self.mode = mode
        self.console = console
        self.metric = "accuracy"
        self._metric = get_metric("accuracy")
        self.cells: list[Cell] = []
        self.trials_per_cell = self.repeats = self.epochs = 0
        self.cell_index = 0
        self.cell: Cell | None = None
        self.finished: dict[Cell, int] = {}  # finished search trials of each cell (other workers' included)
        self.durations: dict[str, list[float]] = defaultdict(list)  # finished trials' wall times by backbone
        self._seen: dict[Cell, list[float]] = {}  # ... as read from each cell's storage
        self.best: tuple[float, str] | None = None  # best completed trial so far: (value, "backbone/strategy tN")
        self.current = ""  # "test_resnet/last_n trial 3", or a repeat's name
        self.started = time.perf_counter()
        self.epoch = self.batch = 0  # where the current trial is: next epoch index, batches done in it
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

    def start(self, cells: list[Cell], trials_per_cell: int, epochs: int, metric: str, repeats: int = 0) -> None:
        self.cells, self.trials_per_cell, self.epochs, self.repeats = list(cells), trials_per_cell, epochs, repeats
        self.metric, self._metric = metric, get_metric(metric)
        if self._live is not None:  # started again with more cells (``--replicates auto`` adds a replicate)
            self._live.update(self._sweep_task, total=self.total_trials)
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
        """The sweep looked at ``cell``'s study: count its finished trials (other workers' included), learn what
        they cost, take its best."""
        self.cell_index, self.cell = cell_index, cell
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        self.finished[cell] = min(finished_count(study), self.trials_per_cell)
        self._learn(cell, [t.user_attrs.get("wall_time") for t in trials])
        try:
            value, number = study.best_value, study.best_trial.user_attrs.get("run", study.best_trial.number)
        except ValueError:
            value, number = math.nan, -1  # no completed trial yet
        if math.isfinite(value) and (self.best is None or self._metric.better(value, self.best[0])):
            self.best = (value, f"{cell.backbone}/{cell.strategy} trial {number}")
        self._refresh()  # the trial line keeps the last trial's position until the next one starts

    def _learn(self, cell: Cell, durations: list[Any]) -> None:
        """Trial durations seen in a cell's storage (replacing what was known of that cell)."""
        self._seen[cell] = [float(d) for d in durations if d is not None and math.isfinite(float(d))]
        self.durations = defaultdict(list)
        for c, values in self._seen.items():
            self.durations[c.backbone] += values

    def callbacks(self, cell: Cell, name: str, params: dict[str, Any]) -> list[Callback]:
        """Hooks for one trial's fit loop (none when off)."""
        return [] if self.mode == "off" else [_TrialHooks(self, cell, name, params)]

    def note(self, message: str, *args: Any) -> None:
        """A line of the sweep's story (a repeat starting, a cell done), above the live display."""
        if self.mode != "off":
            log.info(message, *args)

    def close(self) -> None:
        """Stop the live display (the terminal gets its cursor back); safe to call twice."""
        if self._live is not None:
            self._refresh()
            self._live.stop()
            self._live = None

    # -- what the trial's hooks call ----------------------------------------------------------------------------

    def _label(self, hooks: _TrialHooks) -> str:
        name = hooks.name
        what = f"trial {name[1:]}" if "-" not in name else f"repeat {name.split('-seed')[1]} of trial " \
                                                           f"{name[1:].split('-')[0]}'s configuration"
        return f"{hooks.cell.backbone}/{hooks.cell.strategy} {what}"

    def fit_started(self, hooks: _TrialHooks, trainer: Trainer) -> None:
        self.current = self._label(hooks)
        self.trial_started = time.perf_counter() - trainer.elapsed
        self.epoch, self.batch, self.batches = trainer.epoch, 0, trainer.steps_per_epoch
        if trainer.epoch > 0:
            self.note("%s resumes at epoch %d (its checkpoint of epoch %d)", self.current, trainer.epoch,
                      trainer.epoch - 1)
        else:
            self.note("%s starts: %s", self.current, _params_text(hooks.params) or "no searched parameters")
        self._refresh()

    def batch_done(self, batch: int, num_batches: int) -> None:
        self.batch, self.batches = batch + 1, num_batches
        self._refresh()

    def epoch_done(self, hooks: _TrialHooks, trainer: Trainer, result: EpochResult) -> None:
        self.epoch, self.batch = result.epoch + 1, 0
        if self.mode == "log":
            log.info("  %s epoch %d: train loss %.4f, val loss %.4f, val %s %.4f | %s", self.current, result.epoch,
                     result.train_loss, result.val_loss, self.metric, result.val_metric, self.status()[0])
        self._refresh()

    def fit_ended(self, hooks: _TrialHooks, trainer: Trainer, outcome: str) -> None:
        if outcome == "pruned":
            self.note("%s pruned after epoch %d: %s", self.current, trainer.epoch - 1, trainer.stop_reason)
        elif outcome == "completed":
            self.note("%s done: best val %s %.4f at epoch %d (%s)", self.current, self.metric, trainer.best_metric,
                      trainer.best_epoch, format_duration(trainer.elapsed))
        elif outcome == "interrupted":
            self.note("%s interrupted at epoch %d: it resumes from its last checkpoint on the next run",
                      self.current, trainer.epoch)
        if outcome in ("completed", "pruned") and "repeat" not in self.current:
            self._seen.setdefault(hooks.cell, []).append(trainer.elapsed)
            self.durations[hooks.cell.backbone].append(trainer.elapsed)
            self.finished[hooks.cell] = self.finished.get(hooks.cell, 0) + 1
            if outcome == "completed" and (self.best is None or self._metric.better(trainer.best_metric,
                                                                                    self.best[0])):
                self.best = (trainer.best_metric, self.current)
        self._refresh()

    # -- helpers ------------------------------------------------------------------------------------------------

    @property
    def total_trials(self) -> int:
        return len(self.cells) * self.trials_per_cell

    @property
    def done(self) -> int:
        return sum(min(n, self.trials_per_cell) for n in self.finished.values())

    def _trial_seconds(self, backbone: str) -> float:
        own = self.durations.get(backbone) or []
        every = [d for values in self.durations.values() for d in values]
        values = own or every
        return sum(values) / len(values) if values else math.nan

    def seconds_left(self) -> float:
        """Estimated seconds to finish the sweep (``inf`` until a trial has finished): every trial and repeat still
        to run at its backbone's mean trial time."""
        left = 0.0
        for cell in self.cells:
            to_run = max(0, self.trials_per_cell - self.finished.get(cell, 0)) + \
                (self.repeats if self.cells.index(cell) >= self.cell_index else 0)
            left += to_run * self._trial_seconds(cell.backbone) if to_run else 0.0
        if math.isnan(left):
            return math.inf
        return left

    def _best_text(self) -> str:
        return "-" if self.best is None else f"{self.best[0]:.4f} ({self.best[1]})"

    def status(self) -> tuple[str, str]:
        """The two lines of the display: the sweep, then the current trial."""
        sweep = (f"{self.done}/{self.total_trials} trials · cell {self.cell_index + 1}/{len(self.cells)} · "
                 f"~{format_duration(self.seconds_left())} left · best val {self.metric} {self._best_text()}")
        where = f"epoch {self.epoch} of {self.epochs} · batch {self.batch}/{self.batches}"
        return sweep, f"{self.current or '-'} · {where}"

    def _refresh(self) -> None:
        if self._live is None or self.cell is None:
            return
        sweep, trial = self.status()
        self._live.update(self._sweep_task, completed=self.done, info=sweep)
        self._live.update(self._trial_task, total=self.epochs * self.batches,
                          completed=min(self.epochs, self.epoch) * self.batches + self.batch, info=trial)

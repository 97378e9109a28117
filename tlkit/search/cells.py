"""Running a sweep's cells: each cell's search (``run_cell``), then its repeats, its best model scored on test and
its soups (``finish_cell``); every cell of every replicate in turn (``run_cells``), or replicates added until every
comparison is decided (``run_auto``, ``--replicates auto``).

With several workers on one storage, a cell whose last trials another worker holds is left for later in the same
pass and visited again once the pass is over; nothing here schedules work across machines: Optuna's queue of waiting
trials and its heartbeat do (``tlkit.search.queue``, ``tlkit.search.workers``).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Protocol

import optuna
import torch
from optuna.trial import TrialState

from tlkit.config.experiment import Experiment
from tlkit.data.tensors import Splits, to_device
from tlkit.engine.splits import splits_for
from tlkit.search import queue as queue_module
from tlkit.search.best import evaluate_best
from tlkit.search.objective import SweepRun, make_objective
from tlkit.search.queue import ensure_runs, finished_count, optimize_one, retries_first
from tlkit.search.repeats import open_repeats_study, run_repeats
from tlkit.search.soups import make_soups
from tlkit.search.study import Cell, cells, open_cell_study, replicate_seed
from tlkit.search.workers import take_up_lost_trials

__all__ = ["run_cells", "run_auto", "run_cell", "finish_cell", "replicate_splits", "AUTO_MIN_REPLICATES"]

log = logging.getLogger("tlkit")


class Progress(Protocol):
    """What the sweep's progress display (``tlkit.output.progress.SweepProgress``) is told."""

    def start(self, cells: list[Cell], trials_per_cell: int, epochs: int, metric: str, repeats: int = 0) -> None: ...

    def update(self, cell_index: int, cell: Cell, study: optuna.Study) -> None: ...


AUTO_MIN_REPLICATES = 4


def run_cells(run: SweepRun, storage: Any, todo: list[Cell], progress: Progress,
              splits_of: Callable[[int], Splits], first: int = 0) -> None:
    """Search, repeat and score ``todo`` (``first`` is the index of its first cell in the progress display); cells
    whose last trials other workers hold are visited again once a pass is over."""
    exp = run.exp
    total = first + len(todo)
    waiting = list(enumerate(todo, start=first))
    while waiting:
        held = []
        for i, cell in waiting:
            run.splits = splits_of(cell.replicate)
            study = open_cell_study(storage, exp.name, exp, cell)
            label = f"cell {i + 1}/{total}" + (f" (replicate {cell.replicate})" if exp.replicates != 1 else "")
            if run_cell(run, study, cell, label, before_trial=lambda: progress.update(i, cell, study)):
                finish_cell(run, storage, study, cell, label)
            else:
                held.append((i, cell))
        if held:
            pause = queue_module.POLL_S  # a live worker finishes them; a dead one's go stale by heartbeat
            log.info("%d cell%s wait%s for trials other workers hold; checking again in %d s", len(held),
                     "s" * (len(held) != 1), "" if len(held) != 1 else "s", pause)
            run.check_time()
            time.sleep(pause)
        waiting = held


def run_auto(run: SweepRun, storage: Any, progress: Progress, splits_of: Callable[[int], Splits],
             verdicts: Callable[[Any, Experiment, int], dict[Cell, str]]) -> dict[str, Any]:
    """``replicates="auto"``: add replicates until every comparison against a backbone's reference is decided
    (``better``, ``worse`` or ``equivalent``) or ``max_replicates`` are run, racing: a cell decided ``worse`` gets
    no more replicates. Decisions start at ``AUTO_MIN_REPLICATES`` (2 to choose the reference on, 2 to test it on).
    ``verdicts(storage, exp, r)`` gives each cell's verdict on replicates 0 to r (the sweep reads them with the
    report's tables). Returns what it did (recorded in experiment.json; the report says it)."""
    exp = run.exp
    racing, done, stopped = cells(exp), [], {}
    decided, reason = {}, f"max_replicates={exp.max_replicates} reached"
    for r in range(exp.max_replicates):
        todo = [Cell(c.backbone, c.strategy, r) for c in racing]
        progress.start(done + todo, exp.trials, exp.train.epochs, exp.metric, exp.repeats)
        run_cells(run, storage, todo, progress, splits_of, first=len(done))
        done += todo
        if r + 1 < AUTO_MIN_REPLICATES:
            continue
        decided = verdicts(storage, exp, r)
        for cell in [c for c in racing if decided.get(c) == "worse"]:
            racing.remove(cell)
            stopped[f"{cell.backbone}/{cell.strategy}"] = r + 1
        if not [c for c in racing if decided.get(c) in ("undecided", "untested")]:
            reason = "every comparison decided"
            break
    grid = len(cells(exp)) * exp.max_replicates
    log.info("--replicates auto: %d replicates (%s); trained %d of the %d cell-replicates of the full grid of %d "
             "replicates (%.0f%% saved)%s", r + 1, reason, len(done), grid, exp.max_replicates,
             100 * (1 - len(done) / grid), "; stopped early as worse: " + ", ".join(
                 f"{k} after {v}" for k, v in stopped.items()) if stopped else "")
    return {"replicates": r + 1, "reason": reason, "cell_replicates": len(done), "full_grid": grid,
            "max_replicates": exp.max_replicates, "stopped_as_worse": stopped}


def replicate_splits(exp: Experiment, first: Splits, device: torch.device) -> Callable[[int], Splits]:
    """``splits_of(r)``: replicate r's splits (its own seeded train/validation split and per-class subsets of the
    same decoded data), built when first needed. Only replicate 0's and the latest other one are held, so memory
    does not grow with the number of replicates."""
    kept: dict[int, Splits] = {0: first}

    def splits_of(replicate: int) -> Splits:
        nonlocal kept
        if replicate not in kept:
            seed = replicate_seed(exp.seed, replicate)
            kept = {0: first, replicate: to_device(splits_for(exp.data, exp.train.image_size, seed), device)}
        return kept[replicate]

    return splits_of


def finish_cell(run: SweepRun, storage: Any, study: optuna.Study, cell: Cell, label: str) -> None:
    """After a cell's search: its repeats, then its best model scored on test and exported."""
    exp = run.exp
    if exp.repeats:
        run_repeats(run, study, open_repeats_study(storage, exp.name, exp, cell), cell, label)
    result = evaluate_best(run, study, cell)
    if result and exp.soups:
        make_soups(run, study, cell)
    if result:
        log.info("%s %s/%s done: best trial %d (val %s %.4f, test %.4f)", label, cell.backbone, cell.strategy,
                 study.best_trial.user_attrs.get("run", result["trial"]), exp.metric, result["val_metric"],
                 result["test_metric"])


def run_cell(run: SweepRun, study: optuna.Study, cell: Cell, label: str, before_trial: Callable[[], None]) -> bool:
    """Run the waiting trials of one cell until none is left; True when the cell's search is finished.

    The cell's budget is queued first (``ensure_runs``); each ``optimize(n_trials=1)`` takes one waiting trial from
    the shared storage, so with several workers every run is trained once. When the other runs are held by other
    workers this one moves on (and its report shows the cell as running).
    """
    exp = run.exp
    objective = make_objective(run, cell)
    ensure_runs(study, exp.trials)
    told = False
    while True:
        take_up_lost_trials(study)
        if retries_first(study):
            ensure_runs(study, exp.trials)
        before_trial()
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return finished_count(study) >= exp.trials
        if not told:
            log.info("%s %s/%s: %d of %d trials finished", label, cell.backbone, cell.strategy,
                     finished_count(study), exp.trials)
            told = True
        run.check_time()
        optimize_one(study, objective)

"""``python -m tlkit.sweep EXPERIMENT``: run every (backbone, strategy) cell of a study, resumably.

Everything that can be wrong with the input (the experiment file, a ``--set``, a backbone or strategy name, the
data, the pretrained weights, a changed experiment on an existing study) is checked before anything is written
to the study, so bad input never leaves a half-made study or touches finished work.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import torch

from tlkit.backbones import check_backbone, check_runs, create_backbone, layer_groups
from tlkit.checkpoint import write_json
from tlkit.data import Splits, to_device
from tlkit.datasets import splits_for
from tlkit.errors import TlkitError, environment_fault
from tlkit.experiment import Experiment, apply_overrides, experiment_to_dict, load_experiment, recipe_values, validate
from tlkit.metrics import get_metric
from tlkit.progress import SweepProgress
from tlkit.strategies import get_strategy
from tlkit.study import (Cell, cells, check_identity, check_results_folder, default_storage, finished_count,
                         open_cell_study, open_storage, reseed_sampler, take_up_dead_local_trials)
from tlkit.train import BN_POLICY, Callback
from tlkit.trial import SweepRun, make_objective, search_space

__all__ = ["main", "prepare", "run_sweep"]

log = logging.getLogger("tlkit")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tlkit.sweep",
        description="Run a transfer-learning study: every (backbone, strategy) cell of EXPERIMENT gets its own "
                    "Optuna study with the same trial budget, data split and sampler seed. Re-running the same "
                    "command continues the study (finished trials are kept, an interrupted one resumes).")
    p.add_argument("experiment", help="path of an experiment file (Python defining `experiment = Experiment(...)`)")
    p.add_argument("--trials", type=int, help="finished trials per cell (overrides the experiment's `trials`)")
    p.add_argument("--repeats", type=int, help="seeds each cell's best configuration is trained with again "
                                               "(overrides the experiment's `repeats`)")
    p.add_argument("--out", type=Path, help="results folder (default: results/<study>)")
    p.add_argument("--study", help="study name (default: the experiment's name, i.e. its file name)")
    p.add_argument("--storage", help="Optuna storage URL, e.g. postgresql://user@host/db for many workers "
                                     "(default: a SQLite file study.db in the results folder)")
    p.add_argument("--data-dir", help="where the dataset is (a folder or .zip; overrides data.root)")
    p.add_argument("--weights", action="append", default=[], metavar="BACKBONE=PATH",
                   help="pretrained weights file for a backbone (safetensors or a state dict); repeatable")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override an experiment field with a Python literal, e.g. --set train.lr=3e-4 "
                        "--set backbones='[\"test_resnet\"]'; repeatable")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the experiment's train.device)")
    p.add_argument("--quiet", action="store_true", help="no progress display, only errors")
    return p


def resolve_experiment(args: argparse.Namespace) -> Experiment:
    """The experiment file with command-line overrides applied and re-checked."""
    exp = load_experiment(args.experiment)
    overrides = list(args.overrides)
    if args.trials is not None:
        overrides.append(f"trials={args.trials}")
    if args.repeats is not None:
        overrides.append(f"repeats={args.repeats}")
    if args.device:
        overrides.append(f"train.device={args.device!r}")
    exp = apply_overrides(exp, overrides)
    if args.data_dir:
        exp.data.root = args.data_dir
        if exp.source is not None and exp.source.data.root is None:
            exp.source.data.root = args.data_dir
    for item in args.weights:
        backbone, sep, path = item.partition("=")
        if not sep or not path:
            raise TlkitError(f"Bad --weights {item!r}: expected BACKBONE=PATH, e.g. --weights resnet18=r18.pth.")
        exp.weights[backbone] = path
    if args.study:
        exp.name = args.study
    return validate(exp)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TlkitError(f"Unknown device {name!r}. HINT: use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TlkitError(f"Device {name!r} asked for, but no CUDA GPU is available. HINT: --device cpu.")
    return device


def prepare(exp: Experiment) -> tuple[Splits, dict[str, int]]:
    """Check names, load the data and count each backbone's layer groups: everything that can fail on bad input,
    before the study is touched. Returns the splits and ``{backbone: number of layer groups}``."""
    for backbone in exp.backbones:
        check_backbone(backbone)
    strategies = [get_strategy(s) for s in exp.strategies]
    splits = splits_for(exp.data, exp.train.image_size, exp.seed)
    metric = get_metric(exp.metric)
    if splits.num_classes < metric.min_classes:
        raise TlkitError(f"metric {exp.metric!r} needs at least {metric.min_classes} classes but the data has "
                         f"{splits.num_classes}. HINT: choose another metric, e.g. accuracy.")
    num_groups = {b: len(layer_groups(create_backbone(b, splits.num_classes, exp.train.image_size),
                                      coarse=exp.train.coarse_groups)) for b in exp.backbones}
    for backbone in exp.backbones:
        check_runs(backbone, splits.num_classes, recipe_values(exp.search, exp.train, "image_size"),
                   min([*recipe_values(exp.search, exp.train, "batch_size"), len(splits.train)]))
        for strategy in strategies:
            search_space(exp, strategy, num_groups[backbone])
    return splits, num_groups


def run_sweep(exp: Experiment, out: Path, storage_url: str | None = None,
              callbacks: Callable[[Cell, str, dict[str, Any]], list[Callback]] | None = None,
              progress: SweepProgress | None = None) -> Path:
    """Run (or continue) every cell of ``exp``; returns the results folder.

    Every trial logs to TensorBoard (``out/tb``); ``progress`` shows where the sweep stands (default: nothing).
    """
    from tlkit.export import evaluate_best
    from tlkit.repeats import open_repeats_study, run_repeats
    from tlkit.report import write_report
    from tlkit.tensorboard import TrialBoards
    from tlkit.source import train_source
    from tlkit.weights import resolve_pretrained

    device = pick_device(exp.train.device)
    splits, num_groups = prepare(exp)
    splits = to_device(splits, device)
    check_results_folder(out, exp.name)
    sqlite_file = out / "study.db"
    url = storage_url or default_storage(out)
    # An existing study is checked before source pretraining, which can take long; a new SQLite file has none.
    storage = open_storage(url) if storage_url or sqlite_file.exists() else None
    if storage is not None:
        check_identity(storage, exp.name, exp)
    pretrained = {b: resolve_pretrained(exp, b, splits.num_classes,
                                        lambda e, bb, p: train_source(e, bb, p, device=device))
                  for b in exp.backbones}
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or open_storage(url)
    write_json(out / "experiment.json", {**experiment_to_dict(exp), "bn_policy": BN_POLICY,
                                         "metric_direction": get_metric(exp.metric).direction})
    run = SweepRun(exp, out, splits, pretrained, device, num_groups)
    extra = callbacks if callbacks is not None else run.callbacks
    boards = TrialBoards(out / "tb", exp.metric)
    progress = progress or SweepProgress("off")
    run.callbacks = lambda cell, n, params: [boards(cell, n, params), *progress.callbacks(), *extra(cell, n, params)]
    all_cells = cells(exp)
    progress.start(len(all_cells), exp.trials, exp.train.epochs, exp.metric)
    for i, cell in enumerate(all_cells):
        study = open_cell_study(storage, exp.name, exp, cell)
        label = f"cell {i + 1}/{len(all_cells)}"
        run_cell(run, study, cell, label, before_trial=lambda: progress.update(i, cell, study))
        if exp.repeats:
            run_repeats(run, study, open_repeats_study(storage, exp.name, exp, cell), cell, label)
        result = evaluate_best(run, study, cell)
        if result:
            log.info("cell %s/%s: best val %s %.4f (trial %d), test %.4f", cell.backbone, cell.strategy,
                     exp.metric, result["val_metric"], result["trial"], result["test_metric"])
    write_report(out, storage, exp.name, exp.metric)
    return out


def run_cell(run: SweepRun, study: optuna.Study, cell: Cell, label: str, before_trial: Callable[[], None]) -> None:
    """Run trials of one cell until it has ``exp.trials`` finished ones (another worker's count too).

    One ``optimize(n_trials=1)`` at a time, so the budget is re-read from the shared storage before every trial
    and trials that a dead or interrupted worker left behind are re-queued first.
    """
    exp = run.exp
    objective = make_objective(run, cell)
    while True:
        take_up_dead_local_trials(study)
        done = finished_count(study)
        before_trial()
        if done >= exp.trials:
            return
        log.info("%s %s/%s: trial %d of %d", label, cell.backbone, cell.strategy, done + 1, exp.trials)
        reseed_sampler(study, exp.seed, exp.trials)
        study.optimize(objective, n_trials=1, catch=())


def print_summary(out: Path, metric: str) -> None:
    """The comparison at a glance, one line per cell: the test metric's mean and 95% interval, and whether the
    cell is its backbone's best (on validation), tied with it, or significantly worse (all in summary.csv and
    comparisons.csv)."""
    import pandas as pd

    summary = pd.read_csv(out / "summary.csv")
    comparisons = pd.read_csv(out / "comparisons.csv")
    verdict = {(r.backbone, r.strategy): r.verdict for r in comparisons.itertuples()}
    verdict.update({(r.backbone, r.best): "best" for r in comparisons.itertuples()})
    low, high = summary[f"test_{metric}_ci_low"], summary[f"test_{metric}_ci_high"]
    table = pd.DataFrame({
        "backbone": summary["backbone"], "strategy": summary["strategy"],
        "done": summary["trials_complete"], "pruned": summary["trials_pruned"], "seeds": summary["repeats"],
        f"val_{metric}": summary[f"val_{metric}_mean"],
        f"test_{metric}": summary[f"test_{metric}_mean"],
        "95% CI": [f"[{a:.4f}, {b:.4f}]" if pd.notna(a) else "-" for a, b in zip(low, high)],
        "vs best": [verdict.get((b, s), "-") for b, s in zip(summary["backbone"], summary["strategy"])]})
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def _log_to(handler: logging.Handler, level: int) -> None:
    """tlkit's own log (not the root logger: timm's and Optuna's info lines stay out of the user's terminal)."""
    handler.setFormatter(logging.Formatter("[tlkit] %(message)s"))
    for old in list(log.handlers):
        log.removeHandler(old)
    log.addHandler(handler)
    log.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = SweepProgress.for_stderr(quiet=args.quiet)
    _log_to(progress.log_handler(), logging.WARNING if args.quiet else logging.INFO)
    started = time.perf_counter()
    try:
        exp = resolve_experiment(args)
        out = args.out or Path("results") / exp.name
        run_sweep(exp, out, args.storage, progress=progress)
    except TlkitError as err:
        print(f"tlkit: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a full disk, a locked database: say so; anything else is a bug, with its traceback
        fault = environment_fault(err)
        if fault is None:
            raise
        print(f"tlkit: error: {fault}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tlkit: interrupted. Finished trials are saved; run the same command again to resume.",
              file=sys.stderr)
        return 130
    finally:
        progress.close()
    if not args.quiet:
        print_summary(out, exp.metric)
        print(f"\nResults in {out}/ ({time.perf_counter() - started:.0f} s): summary.csv, trials.csv, history.csv, "
              f"report.md. TensorBoard: tensorboard --logdir {out}/tb")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m tlkit.sweep EXPERIMENT``: run every (backbone, strategy) cell of a study, resumably.

Everything that can be wrong with the input (the experiment file, a ``--set``, a backbone or strategy name, the
data, the pretrained weights, a changed experiment on an existing study) is checked before anything is written
to the study, so bad input never leaves a half-made study or touches finished work.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from tlkit.utils.files import write_json
from tlkit.analysis.agreement import RANKING
from tlkit.analysis.ranking import keep_top, rank_backbones
from tlkit.cli import add_experiment_arguments, log_to, pick_device, prepare, resolve_experiment
from tlkit.data.tensors import Splits, to_device
from tlkit.engine.splits import splits_for
from tlkit.errors import TlkitError, environment_fault
from tlkit.config.experiment import Experiment
from tlkit.config.loading import apply_overrides
from tlkit.config.identity import experiment_to_dict
from tlkit.metrics import get_metric
from tlkit.output.progress import SweepProgress
from tlkit.output.boards import TRIALS_DIR, write_hparams_config
from tlkit.output.tensorboard import TrialBoards
from tlkit.engine.runner import TimeUp
from tlkit.engine.source import resolve_pretrained, source_weights_path
from tlkit.engine.store import open_store
from tlkit.search.storage import default_storage, open_storage, quiet_optuna
from tlkit.search.cells import replicate_splits, run_auto, run_cells
from tlkit.search.study import Cell, cells, check_identity, check_results_folder
from tlkit.engine.threads import choose_threads, configure_threads
from tlkit.engine.loop import BN_POLICY, Callback
from tlkit.search.objective import SweepRun
from tlkit.analysis import compare
from tlkit.output.tables import load_cells

__all__ = ["main", "check_sweep", "rank_in_sweep", "run_sweep", "write_sweep_report"]

log = logging.getLogger("tlkit")
"""``--replicates auto`` decides from here on: 2 replicates to choose each backbone's reference on, 2 to test it."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tlkit.sweep",
        description="Run a transfer-learning study: every (backbone, strategy) cell of EXPERIMENT gets its own "
                    "Optuna study with the same trial budget, data split and sampler seed. Re-running the same "
                    "command continues the study (finished trials are kept, an interrupted one resumes).")
    add_experiment_arguments(p)
    p.add_argument("--trials", type=int, help="finished trials per cell (overrides the experiment's `trials`)")
    p.add_argument("--repeats", type=int, help="seeds each cell's best configuration is trained with again "
                                               "(overrides the experiment's `repeats`)")
    p.add_argument("--replicates", metavar="R", help="reruns of the whole study, each with its own train/validation "
                   "split, search and seeds, or `auto`: until every comparison is decided (overrides the experiment's "
                   "`replicates`)")
    p.add_argument("--max-replicates", type=int, metavar="N", help="the most replicates `--replicates auto` runs "
                   "(overrides the experiment's `max_replicates`, default 10)")
    p.add_argument("--out", type=Path, help="results folder (default: results/<study>)")
    p.add_argument("--study", help="study name (default: the experiment's name, i.e. its file name)")
    p.add_argument("--storage", help="Optuna storage URL, e.g. postgresql://user@host/db for many workers "
                                     "(default: a SQLite file study.db in the results folder)")
    p.add_argument("--store", help="where trial checkpoints and best models are mirrored for every worker to resume "
                                   "from: a shared folder or an fsspec URL such as s3://bucket/prefix")
    p.add_argument("--threads", type=int, help="compute threads (default: the CPUs available to this process; "
                                               "or set TLKIT_THREADS / OMP_NUM_THREADS)")
    p.add_argument("--timeout", type=float, metavar="MINUTES",
                   help="stop after this many minutes (the epoch in progress finishes and is checkpointed; the same "
                        "command continues the study)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine sharing the study "
                                                           "(compute threads are split between them)")
    p.add_argument("--devices", help="devices to spread the workers over, e.g. cuda:0,cuda:1 (worker i takes "
                                     "device i modulo their number); default: --device for all")
    p.add_argument("--check", action="store_true", help="check the experiment, the data, the weights and the study, "
                                                         "print the plan, and stop: nothing is trained or written")
    p.add_argument("--quiet", action="store_true", help="no progress display: only errors, the final table and "
                                                         "where the results are")
    return p


def check_sweep(exp: Experiment, out: Path, storage_url: str | None = None, store_url: str | None = None) -> str:
    """Everything ``run_sweep`` checks before its first trial, without training or writing anything; returns the
    plan in a few lines. A failed check raises the same TlkitError the sweep would."""
    pick_device(exp.runtime.device)
    splits, _ = prepare(exp)
    check_results_folder(out, exp.name)
    exists = storage_url is not None or (out / "study.db").exists()
    if exists:
        check_identity(open_storage(storage_url or default_storage(out)), exp.name, exp)
    open_store(store_url, exp.name, out, create=False)
    weights = []
    for backbone in exp.backbones:
        if exp.pretrained and exp.source is not None:
            cached = source_weights_path(exp, backbone).is_file()
            weights.append(f"{backbone}: source task ({'cached' if cached else 'trained first'})")
        else:
            weights.append(f"{backbone}: {resolve_pretrained(exp, backbone, splits.num_classes).origin}")
    if exp.pretrained and exp.source is not None:
        splits_for(exp.source.data, exp.source.train.image_size, exp.seed, "source.data.")
    cells_count = len(exp.backbones) * len(exp.strategies)
    return "\n".join([
        f"Experiment {exp.name!r} checked: nothing was trained or written.",
        f"  {len(exp.backbones)} backbones x {len(exp.strategies)} strategies = {cells_count} cells; per cell "
        f"{exp.trials} search trials of up to {exp.train.epochs} epochs, then {exp.repeats} repeats"
        + (f"; all of it in {exp.replicates} replicates (each its own split, search and seeds)"
           if isinstance(exp.replicates, int) and exp.replicates > 1 else
           f"; replicates added until every comparison is decided (4 to {exp.max_replicates})"
           if exp.replicates == "auto" else ""),
        f"  data: {len(splits.train)} training, {len(splits.val)} validation, {len(splits.test)} test images of "
        f"{splits.num_classes} classes at {exp.train.image_size} px",
        "  weights: " + "; ".join(weights),
        f"  results: {out} ({'continues the existing study' if exists else 'a new study'})"])


def rank_in_sweep(exp: Experiment, splits: Splits, pretrained: dict[str, Any], device: torch.device,
                  out: Path) -> Experiment:
    """The sweep's step before its first trial: rank the backbones, write ``ranking.csv`` to ``out``, and return the
    experiment with only the backbones to search (all of them unless ``keep_top_backbones`` is set). Nothing is
    ranked with ``pretrained=False`` (random initialisations have nothing to tell apart) or with one backbone (there
    is no order to predict, and its estimators cost a probe sweep about a tenth of its time: benchmarks/peers.py)."""
    from tlkit.output.tables import write_csv  # scipy, as for write_sweep_report

    if not exp.pretrained or len(exp.backbones) < 2:
        return exp
    ranking = rank_backbones(exp, splits, pretrained, device)
    kept, dropped = keep_top(exp, ranking)
    ranking["searched"] = ranking["backbone"].isin(kept)
    ranking["dropped_because"] = [dropped.get(b, "") for b in ranking["backbone"]]
    write_csv(ranking, Path(out) / RANKING)
    if not dropped:
        return exp
    log.info("keep_top_backbones=%d: searching %s; dropped without training: %s", exp.keep_top_backbones,
             ", ".join(kept), "; ".join(f"{b} ({why})" for b, why in dropped.items()))
    return dataclasses.replace(exp, backbones=kept, weights={b: w for b, w in exp.weights.items() if b in kept})


@quiet_optuna()
def run_sweep(exp: Experiment, out: Path, storage_url: str | None = None,
              callbacks: Callable[[Cell, str, dict[str, Any]], list[Callback]] | None = None,
              progress: SweepProgress | None = None, timeout: float | None = None, store_url: str | None = None
              ) -> Path:
    """Run (or continue) every cell of ``exp``; returns the results folder.

    Every trial logs to TensorBoard (``out/tb_trials``); ``progress`` shows where the sweep stands (default:
    nothing). With ``timeout`` (seconds from now) the sweep stops after the first epoch that ends past it, once that
    epoch is checkpointed: it records that in ``experiment.json`` (so the report says so) and raises
    :class:`tlkit.engine.runner.TimeUp`; the same command continues the study. The tables, plots and report.md are
    the caller's to write (``write_report``; ``python -m tlkit.sweep`` writes them when it stops).
    """
    deadline = time.monotonic() + timeout if timeout is not None else None
    device = pick_device(exp.runtime.device)
    splits, plans = prepare(exp)
    splits = to_device(splits, device)
    check_results_folder(out, exp.name)
    sqlite_file = out / "study.db"
    url = storage_url or default_storage(out)
    # An existing study is checked before source pretraining, which can take long; a new SQLite file has none.
    storage = open_storage(url) if storage_url or sqlite_file.exists() else None
    if storage is not None:
        check_identity(storage, exp.name, exp)
    store = open_store(store_url, exp.name, out)  # unreachable: say so before hours of source pretraining
    pretrained = {b: resolve_pretrained(exp, b, splits.num_classes, device) for b in exp.backbones}
    out.mkdir(parents=True, exist_ok=True)
    exp = rank_in_sweep(exp, splits, pretrained, device, out)  # ranking.csv; keep_top_backbones drops the rest
    storage = storage or open_storage(url)
    facts = {**experiment_to_dict(exp), "bn_policy": BN_POLICY, "metric_direction": get_metric(exp.metric).direction}
    write_json(out / "experiment.json", facts)
    run = SweepRun(exp, out, splits, pretrained, device, plans, deadline=deadline, store=store)
    extra = callbacks if callbacks is not None else run.callbacks
    boards = TrialBoards(out / TRIALS_DIR, exp.metric)
    run.on_test_score = boards.on_test_score
    searched = {name for cell in cells(exp) for name in plans[cell].space}
    write_hparams_config(out / TRIALS_DIR, searched, exp.metric,
                         {"Backbone": sorted(exp.backbones), "Strategy": sorted(exp.strategies)})
    progress = progress or SweepProgress("off")
    run.callbacks = lambda cell, n, params: [boards(cell, n, params), *progress.callbacks(cell, n, params),
                                             *extra(cell, n, params)]
    splits_of = replicate_splits(exp, splits, device)
    try:
        if exp.replicates == "auto":
            auto = run_auto(run, storage, progress, splits_of, _verdicts)
            facts["replicates_auto"] = auto
            write_json(out / "experiment.json", facts)
        else:
            everything = [cell for r in range(exp.replicates) for cell in cells(exp, r)]  # replicate by replicate
            progress.start(everything, exp.trials, exp.train.epochs, exp.metric, exp.repeats)
            run_cells(run, storage, everything, progress, splits_of)
    except TimeUp:
        write_json(out / "experiment.json", {**facts, "stopped_by_timeout_s": timeout})
        raise
    return out


def _verdicts(storage: Any, exp: Experiment, upto: int) -> dict[Cell, str]:
    """Each cell's verdict against its backbone's reference (the reference itself: ``best``), from replicates 0 to
    ``upto``: what auto has run so far, even where the storage holds more (from an earlier, larger run)."""
    metric = get_metric(exp.metric)
    scored = [dataclasses.replace(c, models=[m for m in c.models if m.replicate <= upto])
              for c in load_cells(storage, exp.name, metric)]
    table = compare.comparisons(scored, metric, exp.rope)
    verdicts = {Cell(row.backbone, row.strategy): row.verdict for row in table.itertuples()}
    verdicts.update({Cell(row.backbone, row.best): "best" for row in table.itertuples()})
    return verdicts


def print_summary(out: Path, metric: str) -> None:
    """The comparison at a glance, one line per cell: the test metric's mean and 95% interval, and whether the
    cell is its backbone's best (on validation), practically equivalent to it, undecided, significantly worse or
    better (all in summary.csv and comparisons.csv). The columns carry summary.csv's names (``val_accuracy_mean``
    is the repeats' mean, not the search's ``best_val_accuracy``), so a reader cannot take one for the other."""
    import pandas as pd

    summary = pd.read_csv(out / "summary.csv")
    comparisons = pd.read_csv(out / "comparisons.csv")
    verdict = {(r.backbone, r.strategy): r.verdict for r in comparisons.itertuples()}
    verdict.update({(r.backbone, r.best): "best" for r in comparisons.itertuples()})
    low, high = summary[f"test_{metric}_ci_low"], summary[f"test_{metric}_ci_high"]
    table = pd.DataFrame({
        "backbone": summary["backbone"], "strategy": summary["strategy"],
        "done": summary["trials_complete"], "pruned": summary["trials_pruned"], "seeds": summary["repeats"],
        f"val_{metric}_mean": summary[f"val_{metric}_mean"],
        f"test_{metric}_mean": summary[f"test_{metric}_mean"],
        "95% CI": [f"[{a:.4f}, {b:.4f}]" if pd.notna(a) else "-" for a, b in zip(low, high)],
        "vs best": [verdict.get((b, s), "-") for b, s in zip(summary["backbone"], summary["strategy"])]})
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def run_workers(argv: list[str], args: argparse.Namespace, exp: Experiment) -> int:
    """``--workers N``: N copies of this command on one study, each a worker process taking trials from the shared
    queue, with the compute threads split between them and, with ``--devices``, one device each in turn. Returns
    the first non-zero exit status (a worker that failed), else 0; the last worker to finish writes the full report.
    """
    threads, _ = choose_threads(args.threads, args.workers)
    devices = [d.strip() for d in args.devices.split(",")] if args.devices else [None]
    base = [a for i, a in enumerate(argv) if not _is_workers_flag(argv, i)]
    procs = []
    for i in range(args.workers):
        command = [sys.executable, "-m", "tlkit.sweep", *base, "--threads", str(threads), "--quiet"]
        if devices[i % len(devices)] is not None:
            command += ["--device", devices[i % len(devices)]]
        # each worker holds the data in memory only within its share (tlkit.data.store.in_memory_limit)
        env = {**os.environ, "TLKIT_LOCAL_WORKERS": str(args.workers)}
        procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env))
    log.info("started %d workers (%d compute thread%s each%s)", args.workers, threads, "s" * (threads != 1),
             f", devices {', '.join(devices)}" if args.devices else "")
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c != 0), 0)


def _is_workers_flag(argv: list[str], i: int) -> bool:
    """``--workers N``, ``--devices D``, ``--threads N`` (and their values), which each worker gets anew."""
    flags = ("--workers", "--devices", "--threads")
    return argv[i] in flags or argv[i].startswith(tuple(f + "=" for f in flags)) or (i > 0 and argv[i - 1] in flags)


def write_sweep_report(out: Path, storage_url: str | None, exp: Experiment) -> None:
    """The tables, plots and report.md of the sweep's results folder, from its storage."""
    from tlkit.report import write_report  # scipy and the report's tables: --check and --help need none of it

    write_report(out, open_storage(storage_url or default_storage(out)), exp.name, exp.metric)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = SweepProgress.for_stderr(quiet=args.quiet)
    log_to(progress.log_handler(), logging.WARNING if args.quiet else logging.INFO)
    started = time.perf_counter()
    try:
        exp = resolve_experiment(args, args.trials, args.repeats, args.study, args.replicates)
        if args.max_replicates is not None:
            exp = apply_overrides(exp, [f"max_replicates={args.max_replicates}"])
        out = args.out or Path("results") / exp.name
        if args.workers < 1:
            raise TlkitError(f"--workers must be >= 1 but got {args.workers}.")
        configure_threads(args.threads, workers=args.workers)
        if args.check:
            print(check_sweep(exp, out, args.storage, args.store))
            return 0
        if args.timeout is not None and not args.timeout > 0:
            raise TlkitError(f"--timeout must be a number of minutes > 0 but got {args.timeout}.")
        if args.workers > 1:
            os.environ["TLKIT_LOCAL_WORKERS"] = str(args.workers)  # this check holds the data as a worker would
            check_sweep(exp, out, args.storage, args.store)  # bad input is reported once, not by every worker
            code = run_workers(list(argv if argv is not None else sys.argv[1:]), args, exp)
            if code != 0:
                return code
        else:
            try:
                run_sweep(exp, out, args.storage, progress=progress,
                          timeout=args.timeout * 60 if args.timeout is not None else None, store_url=args.store)
            except TimeUp:
                write_sweep_report(out, args.storage, exp)  # it says what is done
                raise
            write_sweep_report(out, args.storage, exp)
    except TlkitError as err:
        print(f"tlkit: error: {err}", file=sys.stderr)
        return 2
    except TimeUp:
        progress.close()
        print_summary(out, exp.metric)
        print(f"\ntlkit: stopped by --timeout after {time.perf_counter() - started:.0f} s; the report says what is "
              f"done. Run the same command again to continue.")
        return 0
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
    print_summary(out, exp.metric)  # --quiet silences the progress, not the answer
    print(f"\nResults in {out}/ ({time.perf_counter() - started:.0f} s): report.md, summary.csv, comparisons.csv. "
          f"TensorBoard: tensorboard --logdir {out}/tb (one run per cell), --logdir {out}/tb_trials (every trial).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

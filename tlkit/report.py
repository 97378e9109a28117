"""``report.md``: the comparison people read first, with its intervals and tests, rebuilt from the study storage.

The storage is the source of truth, so ``python -m tlkit.report results/<study>`` rebuilds every table, plot and the
report, even while a sweep is still running or after it ran on other machines; running it twice gives byte-identical
files (sorted rows, fixed number formats, no timestamps, PNGs without a software stamp, seeded bootstraps).

The report never declares a winner the data does not support: a strategy is significantly worse or better than a
backbone's best on validation (Holm-corrected, 5% level), practically equivalent to it (the difference shown to lie
within the rope), or undecided (neither), and one significantly better on test says the validation pick did not
hold up.

Example:
    python -m tlkit.report results/digits
    python -m tlkit.report results/digits --storage postgresql://user@host/tlkit
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import optuna
import pandas as pd

from tlkit.analysis import compare, wording
from tlkit.analysis.across import ACROSS, across_backbones
from tlkit.analysis.budget import BUDGET
from tlkit.errors import TlkitError, mask_secrets, url_password
from tlkit.utils.files import atomic_write, read_json
from tlkit.metrics import Metric, get_metric
from tlkit.output.plots import PLOTS, order, write_plots
from tlkit.search.storage import default_storage, open_storage
from tlkit.search.study import cell_studies
from tlkit.output.boards import CELLS_DIR, write_cell_boards
from tlkit.output.markdown import num, params_text, table
from tlkit.output.sections import report_across, report_budget, report_ranking, report_replicates, report_soups
from tlkit.output.tables import (history_table, load_cells, predictions_table, repeats_table, replicates_table,
                                 soups_table, summary_table, trials_table, write_csv)

__all__ = ["write_report", "report_markdown", "report_ranking", "report_budget", "winners", "metric_of", "main",
           "PLOTS"]

TABLES = ("trials.csv", "history.csv", "repeats.csv", "summary.csv", "comparisons.csv", "predictions.csv",
          BUDGET)


# --------------------------------------------------------------------------------------------------------- markdown

def metric_of(experiment: dict[str, Any]) -> Metric:
    """The study's metric; one the report cannot import (registered in an experiment file) keeps its direction
    from ``experiment.json`` and is tested over seeds only."""
    name = experiment.get("metric", "accuracy")
    try:
        return get_metric(name)
    except TlkitError:
        return Metric(name, experiment.get("metric_direction", "maximize"), fn=lambda labels, logits: math.nan)


def winners(summary: pd.DataFrame, comparisons: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per backbone: the best strategy (chosen on validation), the strategies practically equivalent to it on
    test, those undecided, those significantly better and worse (Holm-corrected), and the best's test mean and
    interval: one column per verdict of ``compare.VERDICTS``."""
    rows = []
    for backbone, mine in comparisons.groupby("backbone", sort=False):
        best = mine["best"].iloc[0]
        row = summary[(summary["backbone"] == backbone) & (summary["strategy"] == best)].iloc[0]
        rows.append({"backbone": backbone, "best": best, "row": row,
                     **{kind: mine[mine["verdict"] == kind]["strategy"].tolist() for kind in compare.VERDICTS}})
    return pd.DataFrame(rows)


def _interval(row: Any, metric: str) -> str:
    mean, low, high = (row.get(f"test_{metric}_{k}") for k in ("mean", "ci_low", "ci_high"))
    if mean is None or pd.isna(mean):
        return "—"
    return f"{mean:.4f} [{low:.4f}, {high:.4f}]" if pd.notna(low) else f"{mean:.4f}"


def _trainable(row: Any) -> str:
    if pd.isna(row["trainable_params"]):
        return "—"
    total = row["total_params"]
    share = f" ({100 * row['trainable_params'] / total:.3g}%)" if pd.notna(total) and total else ""
    return f"{int(row['trainable_params']):,}{share}"


def _data_text(data: dict[str, Any]) -> str:
    classes = f" classes {data['classes']}" if data.get("classes") else ""
    cap = f", at most {data['train_per_class']} training images per class" if data.get("train_per_class") else ""
    return f"{data.get('name')}{classes}{cap}"


def budget_text(summary: pd.DataFrame, experiment: dict[str, Any], backbones: list[str],
                strategies: list[str]) -> str:
    """What the comparison cost: cells, trials, epochs, data, and the summed trial time (from the storage)."""
    complete, pruned, failed = (int(summary[c].sum()) for c in ("trials_complete", "trials_pruned", "trials_failed"))
    train = experiment.get("train", {})
    text = (f"{len(summary)} cells ({len(backbones)} backbones x {len(strategies)} strategies), "
            f"{experiment.get('trials', '?')} finished trials per cell ({complete} complete, {pruned} pruned, "
            f"{failed} failed), up to {train.get('epochs', '?')} epochs per trial at {train.get('image_size', '?')} "
            f"px. Target: {_data_text(experiment.get('data', {}))}, "
            f"{experiment.get('data', {}).get('val_fraction', '?')} of them held out for validation.")
    source = experiment.get("source")
    if source:
        text += (f" Source task (pretraining each backbone once): {_data_text(source['data'])}, "
                 f"{source['train']['epochs']} epochs.")
    minutes = float(summary["cell_time_s"].sum()) / 60.0
    return text + (f" The trials ran {minutes:.1f} min in all (summed trial wall time; source pretraining and test "
                   f"scoring not included).")


def _main_table(summary: pd.DataFrame, won: pd.DataFrame, metric: str, backbones: list[str],
                strategies: list[str]) -> list[str]:
    cell = summary.set_index(["backbone", "strategy"])
    best = {r["backbone"]: r["best"] for _, r in won.iterrows()}
    signs = (("equivalent", " ≈"), ("undecided", " ?"), ("better", " ↑"))
    mark = {(r["backbone"], s): sign for _, r in won.iterrows() for kind, sign in signs for s in r[kind]}
    rows = []
    for b in backbones:
        row = [b]
        for s in strategies:
            text = _interval(cell.loc[(b, s)], metric) if (b, s) in cell.index else "—"
            row.append(f"**{text}**" if best.get(b) == s and text != "—" else text + mark.get((b, s), ""))
        rows.append(row)
    return table(["backbone", *strategies], rows)


def _rope_text(comparisons: pd.DataFrame, metric: Metric) -> str:
    """The rope the comparisons used, in the metric's words (e.g. "±1 point")."""
    rope = comparisons["rope"].iloc[0] if len(comparisons) and "rope" in comparisons else compare.DEFAULT_ROPE
    return wording.rope_text(float(rope), points=metric.name != "log_loss")


def _method_text(summary: pd.DataFrame) -> str:
    methods = sorted(set(summary["ci_method"].dropna()) - {""}) if "ci_method" in summary else []
    return "; ".join(methods) if methods else "no interval (no kept predictions)"


def _differences(comparisons: pd.DataFrame, metric: str, points: bool) -> list[str]:
    lines = []
    for backbone, mine in comparisons.groupby("backbone", sort=False):
        lines += [f"**{backbone}** (best on validation: {mine['best'].iloc[0]})", ""]
        lines += [f"- {wording.sentence(row, metric, points)}" for _, row in mine.iterrows()] + [""]
    return lines


def _across_backbones(friedman: dict[str, Any] | None, plots: dict[str, bool]) -> list[str]:
    if not friedman:
        return ["Needs 3 or more backbones and strategies (Friedman's test is not defined for fewer).", ""]
    ranks = sorted(friedman["ranks"].items(), key=lambda kv: (kv[1], kv[0]))
    verdict = ("the strategies do not all rank alike" if friedman["p"] < compare.ALPHA else
               "the ranks could be chance: no strategy is shown to rank better than another")
    lines = [f"Average rank of each strategy's mean test score over {friedman['backbones']} backbones (1 = best). "
             f"Friedman's test: chi-square {friedman['statistic']:.2f}, p = {friedman['p']:.3g}: {verdict}. "
             f"Nemenyi's critical difference at the 5% level is {friedman['cd']:.2f} ranks: strategies closer "
             f"than that are not told apart.", ""]
    lines += table(["strategy", "average rank"], [[s, f"{r:.2f}"] for s, r in ranks]) + [""]
    if plots.get("critical_difference"):
        lines += [f"![Critical difference diagram]({PLOTS['critical_difference']})", ""]
    return lines


def report_markdown(study: str, metric: Metric, summary: pd.DataFrame, comparisons: pd.DataFrame,
                    friedman: dict[str, Any] | None, experiment: dict[str, Any], plots: dict[str, bool],
                    replicates_frame: pd.DataFrame | None = None, soups_frame: pd.DataFrame | None = None,
                    across_frame: pd.DataFrame | None = None) -> str:
    """``report.md``: the comparison first (intervals, ties, which differences are real), then the details."""
    m = metric.name
    lines = [f"# Study `{study}`: which strategy transfers best", ""]
    if summary.empty:
        return "\n".join(lines + ["No cell has started yet.", ""])
    backbones, strategies = order(summary, experiment)
    won = winners(summary, comparisons, m)
    if experiment.get("stopped_by_timeout_s"):
        lines += [f"**Cut short**: the sweep was stopped by `--timeout` after "
                  f"{experiment['stopped_by_timeout_s'] / 60:.0f} min, before every cell had its budget; run the "
                  f"same command again to finish the study.", ""]
    expected = len(set(experiment.get("backbones", []))) * len(set(experiment.get("strategies", [])))
    if expected > len(summary):
        lines += [f"**Partial results**: {len(summary)} of {expected} cells have started; run the sweep command "
                  f"again to finish the study.", ""]
    repeats = int(summary["repeats"].fillna(0).max()) if "repeats" in summary else 0
    replicates = int(summary["replicates"].fillna(0).max()) if "replicates" in summary else 1
    scored = (f"then trained again with {repeats} seed{'s' * (repeats != 1)} shared by every cell" if repeats else
              "and scored once (no repeats: the intervals and tests are over test examples of that one model)")
    if replicates > 1:
        scored = (f"and scored on test{f' with {repeats} repeat seeds' if repeats else ''}, in each of up to "
                  f"{replicates} replicates of the whole study (each its own train/validation split, search and "
                  f"seeds, shared by every cell of a backbone); a cell's value is the mean over its replicates")
    lines += [f"Mean test {m} of each cell with its 95% interval ({_method_text(summary)}). Each cell's "
              f"configuration is chosen on validation by its search, {scored}. **Bold**: the backbone's best "
              f"strategy on validation; ≈: practically equivalent to it on test (the difference shown to lie within "
              f"{_rope_text(comparisons, metric)}); ?: undecided (neither shown different, Holm-corrected at the 5% "
              f"level, nor equivalent); ↑: significantly better than it on test, so the validation pick did not "
              f"hold up on test; unmarked: significantly worse.", ""]
    lines += _main_table(summary, won, m, backbones, strategies) + [""]
    lines += ["## Winner per backbone", ""]
    lines += table(["backbone", "best (validation)", f"test {m} [95% CI]", "practically equivalent", "undecided",
                     "significantly better on test", "significantly worse"],
                    [[r["backbone"], r["best"], _interval(r["row"], m),
                      *(", ".join(r[kind]) or "—" for kind in ("equivalent", "undecided", "better", "worse"))]
                     for _, r in won.iterrows()], left=2, right=3) + [""]
    lines += ["## Which differences are real", ""]
    lines += ["Within each backbone, every strategy against the best one: the difference of test "
              f"{m} (positive: the best is better), its 95% interval and the p-value, Holm-corrected over the "
              f"backbone's comparisons; practically equivalent when the equivalence interval (two one-sided tests, "
              f"Bonferroni-adjusted over the backbone's comparisons) lies within {_rope_text(comparisons, metric)}; "
              f"for an undecided one, the difference it could have detected with 80% power (all in "
              f"`comparisons.csv`, explained in docs/results.md).", ""]
    lines += _differences(comparisons, m, points=metric.name != "log_loss")
    lines += report_replicates(replicates_frame, experiment, m)
    lines += report_across(across_frame, m, points=metric.name != "log_loss")
    lines += report_soups(soups_frame, m, points=metric.name != "log_loss")
    lines += ["## Across backbones", ""] + _across_backbones(friedman, plots)
    figures = [("test_by_strategy", f"Test {m} by strategy"),
               ("accuracy_vs_params", f"Test {m} against trainable parameters"),
               ("accuracy_vs_time", f"Test {m} against training time")]
    lines += [f"![{alt}]({PLOTS[key]})\n" for key, alt in figures if plots.get(key)]
    lines += ["## Budget", "", budget_text(summary, experiment, backbones, strategies), ""]
    lines += [f"Is it enough? Each cell's best validation {m} so far against its finished trials (a curve still "
              f"climbing at the end says more trials would have found better) and every trial's score (a wide "
              f"spread, column `val_{m}_sd_trials` of `summary.csv`: the strategy is unforgiving of its "
              f"hyperparameters).", ""]
    if plots.get("search_progress"):
        lines += [f"![Search progress]({PLOTS['search_progress']})", ""]
    lines += _configurations(summary, m, backbones, strategies)
    if plots.get("learning_curves"):
        lines += ["## Learning curves of each cell's best trial", "", f"![Learning curves]({PLOTS['learning_curves']})",
                  ""]
    lines += ["## Files", "",
              "`summary.csv` (one row per cell), `comparisons.csv` (one row per tested difference), `repeats.csv` "
              "(one row per cell and seed), `predictions.csv` (one row per scored model and test example), "
              "`trials.csv` (one row per search trial), `history.csv` (one row per trial and epoch), `budget.csv` "
              "(expected best validation score per number of trials), `replicates.csv` (with replicates: one row "
              "per cell and replicate); `tensorboard "
              "--logdir tb` for every trial's curves and the HParams dashboard. Rebuild this report with "
              "`python -m tlkit.report <this folder>`.", ""]
    return "\n".join(lines)


def _configurations(summary: pd.DataFrame, m: str, backbones: list[str], strategies: list[str]) -> list[str]:
    cell = summary.set_index(["backbone", "strategy"])
    rows = []
    for b in backbones:
        for s in strategies:
            if (b, s) not in cell.index:
                continue
            r = cell.loc[(b, s)]
            rows.append([b, s, num(r["best_trial"], "d"), num(r[f"best_val_{m}"]), num(r[f"test_{m}"]),
                         _trainable(r), num(r["train_time_s"], ".1f"),
                         f"{r['trials_complete']}/{r['trials_pruned']}/{r['trials_failed']}",
                         params_text(r["best_params"])])
    return ["## Best configuration of each cell", ""] + table(
        ["backbone", "strategy", "best trial", f"val {m}", f"test {m}", "trainable params", "train time (s)",
         "complete/pruned/failed", "parameters"], rows, left=2, right=8) + [""]


def write_report(out: Path, storage: Any, study: str, metric: str) -> None:
    """Every table, plot and ``report.md`` of a results folder, from the storage.

    The order of backbones and strategies in the report comes from ``experiment.json`` in ``out`` when present.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    experiment_file = out / "experiment.json"
    experiment = json.loads(experiment_file.read_text(encoding="utf-8")) if experiment_file.is_file() else {}
    experiment.setdefault("metric", metric)
    m = metric_of(experiment)
    position = {(b, s): (i, j) for i, b in enumerate(dict.fromkeys(experiment.get("backbones", [])))
                for j, s in enumerate(dict.fromkeys(experiment.get("strategies", [])))}
    cells = sorted(load_cells(storage, study, m),  # the experiment file's order, then any others by name
                   key=lambda c: (position.get((c.backbone, c.strategy), (math.inf, math.inf)), c.backbone,
                                  c.strategy))
    summary = summary_table(storage, study, m, cells)
    comparisons = compare.comparisons(cells, m, rope=experiment.get("rope", compare.DEFAULT_ROPE))
    friedman = compare.friedman_test(compare.rank_table(cells, m), m)
    history = history_table(storage, study, metric)
    trials = trials_table(storage, study, metric)
    write_csv(trials, out / "trials.csv")
    write_csv(history, out / "history.csv")
    write_csv(repeats_table(storage, study, metric), out / "repeats.csv")
    replicates = replicates_table(storage, study, metric)
    if not replicates.empty:  # a study run once has no replicates.csv, as before replicates existed
        write_csv(replicates, out / "replicates.csv")
    soups = soups_table(storage, study, m, rope=experiment.get("rope", compare.DEFAULT_ROPE))
    if not soups.empty:  # a study from before soups existed, or with soups=False, has no soups.csv
        write_csv(soups, out / "soups.csv")
    across = across_backbones(cells, m, rope=experiment.get("rope", compare.DEFAULT_ROPE))
    if not across.empty:  # with replicates and 2 or more backbones only
        write_csv(across, out / ACROSS)
    write_csv(summary, out / "summary.csv")
    write_csv(comparisons, out / "comparisons.csv")
    write_csv(predictions_table(cells), out / "predictions.csv")
    plots = write_plots(out, summary, history, trials, metric, experiment, friedman)
    write_cell_boards(out / CELLS_DIR, summary, history, metric)
    text = report_markdown(study, m, summary, comparisons, friedman, experiment, plots, replicates, soups, across)
    text += report_budget(out, trials, summary, m, experiment, plots)  # writes budget.csv
    text += report_ranking(out, summary, m)  # the ranking before training, if the sweep made one (ranking.csv)
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# ------------------------------------------------------------------------------------------ ranking before training

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tlkit.report",
        description="Rebuild the tables (trials.csv, history.csv, summary.csv), plots and report.md of a results "
                    "folder from its study storage. Safe while a sweep runs; the same storage gives the same files.")
    p.add_argument("results", type=Path, help="the results folder of a sweep, e.g. results/digits")
    p.add_argument("--storage", help="Optuna storage URL, e.g. postgresql://user@host/db (default: the SQLite "
                                     "file study.db in the results folder)")
    p.add_argument("--study", help="study name (default: the name in the folder's experiment.json)")
    return p


def _stored_metric(url: str, study: str) -> str:
    """The metric a study's cells were run with, from their stored identity (for a folder without
    experiment.json: the report of a study that ran on other machines)."""
    for summary in cell_studies(open_storage(url), study).values():
        identity = summary.user_attrs.get("identity") or {}
        if identity.get("metric"):
            return identity["metric"]
    raise TlkitError(mask_secrets(f"No study {study!r} in {url}. HINT: check --study and --storage.",
                                  [url_password(url)]))


def _resolve(args: argparse.Namespace) -> tuple[str, str, str]:
    """Study name, metric and storage URL of a results folder, or a TlkitError saying what is missing."""
    folder: Path = args.results
    experiment_file = folder / "experiment.json"
    if not experiment_file.is_file() and args.storage and args.study:
        return args.study, _stored_metric(args.storage, args.study), args.storage  # a new machine: the storage says
    if not experiment_file.is_file():
        raise TlkitError(f"No experiment.json in {folder}: it does not look like a results folder of "
                         f"`python -m tlkit.sweep`. HINT: pass the folder the sweep wrote (its --out, by default "
                         f"results/<study>), or --storage URL --study NAME to build one from a shared storage.")
    experiment = read_json(experiment_file, "run the sweep command that made this folder again: it writes "
                                            "experiment.json anew and keeps every finished trial.")
    study = args.study or experiment.get("name")
    if not study:
        raise TlkitError(f"{experiment_file} has no study name. HINT: pass --study NAME.")
    if args.storage:
        return study, experiment.get("metric", "accuracy"), args.storage
    if not (folder / "study.db").is_file():
        raise TlkitError(f"No study.db in {folder}: the study lives elsewhere. HINT: pass the sweep's storage, "
                         f"e.g. --storage postgresql://user@host/db.")
    return study, experiment.get("metric", "accuracy"), default_storage(folder)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tlkit.report RESULTS_DIR [--storage URL] [--study NAME]``."""
    args = build_parser().parse_args(argv)
    try:
        study, metric, url = _resolve(args)
        with warnings.catch_warnings():  # heartbeats are Optuna-experimental; a reader has nothing to do about it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = open_storage(url)
        if not cell_studies(storage, study):
            names = sorted({s.study_name.split("/")[0] for s in optuna.get_all_study_summaries(storage, False)})
            raise TlkitError(mask_secrets(f"No study {study!r} in {url}. Studies there: "
                                          f"{', '.join(names) or 'none'}. HINT: pass --study NAME.",
                                          [url_password(url)]))
        write_report(args.results, storage, study, metric)
    except TlkitError as err:
        print(f"tlkit: error: {err}", file=sys.stderr)
        return 2
    print(f"Report in {args.results / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

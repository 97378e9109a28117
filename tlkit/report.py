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

from tlkit.analysis import compare
from tlkit.analysis.agreement import AGREEMENT, ESTIMATORS, KNN_K, RANKING, agreement
from tlkit.analysis.budget import BUDGET, budget_curves, budget_verdicts
from tlkit.errors import TlkitError, mask_secrets, url_password
from tlkit.utils.files import atomic_write, read_json
from tlkit.metrics import Metric, get_metric
from tlkit.output.plots import PLOTS, order, write_plots
from tlkit.search.storage import default_storage, open_storage
from tlkit.search.study import cell_studies
from tlkit.output.boards import CELLS_DIR, write_cell_boards
from tlkit.output.tables import (history_table, load_cells, predictions_table, repeats_table, replicates_table,
                                 soups_table, summary_table, trials_table, write_csv)

__all__ = ["write_report", "report_markdown", "report_ranking", "report_budget", "winners", "metric_of", "main",
           "PLOTS"]

TABLES = ("trials.csv", "history.csv", "repeats.csv", "summary.csv", "comparisons.csv", "predictions.csv",
          BUDGET)


# --------------------------------------------------------------------------------------------------------- markdown

def _num(x: Any, fmt: str = ".4f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA else format(x, fmt)


def _params(best_params: str) -> str:
    if not best_params:
        return "—"
    items = json.loads(best_params).items()
    return ", ".join(f"{k}={format(v, '.4g') if isinstance(v, float) else v}" for k, v in sorted(items))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, right: int | None = None) -> list[str]:
    """A Markdown table: the first ``left`` columns (names) left-aligned, numbers right-aligned up to ``right``."""
    right = len(header) if right is None else right
    align = ["---:" if left <= i < right else "---" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(r) + " |" for r in rows)]


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
    return _table(["backbone", *strategies], rows)


def _rope_text(comparisons: pd.DataFrame, metric: Metric) -> str:
    """The rope the comparisons used, in the metric's words (e.g. "±1 point")."""
    rope = comparisons["rope"].iloc[0] if len(comparisons) and "rope" in comparisons else compare.DEFAULT_ROPE
    return compare.rope_text(float(rope), points=metric.name != "log_loss")


def _method_text(summary: pd.DataFrame) -> str:
    methods = sorted(set(summary["ci_method"].dropna()) - {""}) if "ci_method" in summary else []
    return "; ".join(methods) if methods else "no interval (no kept predictions)"


def _differences(comparisons: pd.DataFrame, metric: str, points: bool) -> list[str]:
    lines = []
    for backbone, mine in comparisons.groupby("backbone", sort=False):
        lines += [f"**{backbone}** (best on validation: {mine['best'].iloc[0]})", ""]
        lines += [f"- {compare.sentence(row, metric, points)}" for _, row in mine.iterrows()] + [""]
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
    lines += _table(["strategy", "average rank"], [[s, f"{r:.2f}"] for s, r in ranks]) + [""]
    if plots.get("critical_difference"):
        lines += [f"![Critical difference diagram]({PLOTS['critical_difference']})", ""]
    return lines


def report_markdown(study: str, metric: Metric, summary: pd.DataFrame, comparisons: pd.DataFrame,
                    friedman: dict[str, Any] | None, experiment: dict[str, Any], plots: dict[str, bool],
                    replicates_frame: pd.DataFrame | None = None, soups_frame: pd.DataFrame | None = None) -> str:
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
    lines += _table(["backbone", "best (validation)", f"test {m} [95% CI]", "practically equivalent", "undecided",
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


def report_soups(table: pd.DataFrame | None, m: str, points: bool) -> list[str]:
    """The "Soups and ensembles" section: each cell's best trial beside its uniform and greedy soups and its top-k
    ensemble, with the difference against the best trial and what each costs at inference."""
    if table is None or table.empty:
        return []
    lines = ["## Soups and ensembles", "",
             f"Each cell's complete trials started from the same weights, so they can be averaged (Wortsman et al. "
             f"2022): a uniform soup of all of them, a greedy soup that adds them in order of validation {m} while "
             f"it does not drop (BatchNorm statistics recomputed on the training images), and an ensemble that "
             f"averages the probabilities of the top trials (`soups.csv`). Difference: best trial minus the model "
             f"(positive: the best trial is better), with its 95% interval, Holm-corrected over the cell's three "
             f"models; a soup costs what the best trial costs at inference, an ensemble of k costs k times as much.",
             ""]
    rows = []
    for _, r in table.iterrows():
        if r["model"] == "soups":
            rows.append([r["backbone"], r["strategy"], r["note"], "", "", "", "", "", ""])
            continue
        diff = "—" if r["model"] == "best trial" or pd.isna(r.get("difference")) else (
            f"{_amount(r['difference'], points)} [{_amount(r['ci_low'], points)}, {_amount(r['ci_high'], points)}]")
        rows.append([r["backbone"], r["strategy"], r["model"], _num(r["ingredients"], ".3g"), _num(r[f"val_{m}"]),
                     _num(r[f"test_{m}"]), diff, "" if r["model"] == "best trial" else str(r.get("verdict", "")),
                     _cost(r)])
    lines += _table(["backbone", "strategy", "model", "ingredients", f"val {m}", f"test {m}", "best trial minus it",
                     "verdict", "params, ms/image"], rows, left=3, right=6) + [""]
    greedy = table[table["model"] == "greedy soup"]
    if len(greedy):
        counts = greedy["verdict"].value_counts()
        lines += [f"The greedy soup against the best trial, over {len(greedy)} cells: " + ", ".join(
            f"{counts.get(v, 0)} {v}" for v in ("better", "equivalent", "undecided", "worse")) + " (the verdict is "
                  "the soup's: better means the soup is significantly better on test).", ""]
    return lines


def _amount(x: float, points: bool) -> str:
    return f"{100 * x:+.1f}" if points else f"{x:+.3g}"


def _cost(r: pd.Series) -> str:
    if pd.isna(r.get("params")):
        return ""
    return f"{int(r['params']):,}, {1000 * r['seconds_per_image']:.3f}"


def report_replicates(table: pd.DataFrame | None, experiment: dict[str, Any], m: str) -> list[str]:
    """The "Replicates" section: how much each cell moved between reruns of the whole study and how often its
    search chose another configuration, and what ``--replicates auto`` did (nothing without replicates)."""
    if table is None or table.empty:
        return []
    lines = ["## Replicates", "",
             f"Each replicate reran the whole study: its own train/validation split, its own search of each cell and "
             f"its own training seeds, shared by every cell of a backbone (`replicates.csv`). Across replicates, a "
             f"cell's test {m} (of its chosen configuration) and how many different configurations its searches "
             f"chose:", ""]
    rows = []
    for (backbone, strategy), cell in table.groupby(["backbone", "strategy"], sort=False):
        test = cell[f"test_{m}_mean"].dropna()
        rows.append([backbone, strategy, str(len(cell)), _num(test.mean()), _num(test.std(ddof=1)),
                     f"{_num(test.min())} to {_num(test.max())}", f"{cell['best_params'].nunique()} of {len(cell)}"])
    lines += _table(["backbone", "strategy", "replicates", f"mean test {m}", "sd", "range", "configurations"],
                    rows, left=2, right=6) + [""]
    auto = experiment.get("replicates_auto")
    if auto:
        stopped = ", ".join(f"{cell} after {n}" for cell, n in auto["stopped_as_worse"].items()) or "none"
        saved = 1 - auto["cell_replicates"] / auto["full_grid"]
        lines += [f"`--replicates auto` ran {auto['replicates']} replicates ({auto['reason']}): "
                  f"{auto['cell_replicates']} cell-replicates trained of the {auto['full_grid']} of a full grid of "
                  f"{auto['max_replicates']} replicates ({100 * saved:.0f}% saved). Cells stopped early as "
                  f"significantly worse: {stopped}.", ""]
    return lines


def _configurations(summary: pd.DataFrame, m: str, backbones: list[str], strategies: list[str]) -> list[str]:
    cell = summary.set_index(["backbone", "strategy"])
    rows = []
    for b in backbones:
        for s in strategies:
            if (b, s) not in cell.index:
                continue
            r = cell.loc[(b, s)]
            rows.append([b, s, _num(r["best_trial"], "d"), _num(r[f"best_val_{m}"]), _num(r[f"test_{m}"]),
                         _trainable(r), _num(r["train_time_s"], ".1f"),
                         f"{r['trials_complete']}/{r['trials_pruned']}/{r['trials_failed']}",
                         _params(r["best_params"])])
    return ["## Best configuration of each cell", ""] + _table(
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
    write_csv(summary, out / "summary.csv")
    write_csv(comparisons, out / "comparisons.csv")
    write_csv(predictions_table(cells), out / "predictions.csv")
    plots = write_plots(out, summary, history, trials, metric, experiment, friedman)
    write_cell_boards(out / CELLS_DIR, summary, history, metric)
    text = report_markdown(study, m, summary, comparisons, friedman, experiment, plots, replicates, soups)
    text += report_budget(out, trials, summary, m, experiment, plots)  # writes budget.csv
    text += report_ranking(out, summary, m)  # the ranking before training, if the sweep made one (ranking.csv)
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# ------------------------------------------------------------------------------------------ ranking before training

def _ranking_table(ranking: pd.DataFrame) -> list[str]:
    header = ["backbone", *(f"{label} (rank)" for label in ESTIMATORS.values()), "seconds", "searched"]
    rows = [[r["backbone"], *(f"{r[n]:.4f} ({r[f'{n}_rank']})" for n in ESTIMATORS), f"{r['seconds']:.1f}",
             "yes" if r.get("searched", True) else "no"] for _, r in ranking.iterrows()]
    return _table(header, [list(map(str, row)) for row in rows])


def _agreement_lines(table: pd.DataFrame, m: str) -> list[str]:
    if table.empty:
        return ["Kendall's tau needs at least 2 backbones with a test score.", ""]
    n = int(table["backbones"].max())
    lines = [f"How well the ranking predicted fine-tuning: Kendall's tau over backbones between each estimate and "
             f"each strategy's mean test {m} (1: the same order, 0: unrelated, -1: reversed), with its two-sided "
             f"p-value (`{AGREEMENT}`). With {n} backbones the smallest p-value any tau can reach is "
             f"{2 / math.factorial(n) if n < 20 else 0:.3g}, so read tau as a description, not as a test.", ""]
    pivot = table.pivot_table(index="strategy", columns="estimator", values="kendall_tau", sort=False)
    pvals = table.pivot_table(index="strategy", columns="estimator", values="p_value", sort=False)
    header = ["strategy", *(ESTIMATORS[e] for e in ESTIMATORS if e in pivot.columns)]
    rows = [[s, *(f"{pivot.loc[s, e]:+.2f} (p = {pvals.loc[s, e]:.2g})" if pd.notna(pivot.loc[s, e]) else "—"
                  for e in ESTIMATORS if e in pivot.columns)] for s in pivot.index]
    return lines + _table(header, rows) + [""]


def report_ranking(out: Path, summary: pd.DataFrame, metric: Metric) -> str:
    """The report's section on the ranking before training (empty without ``ranking.csv``): the table, which
    backbones ``keep_top_backbones`` dropped, and how well the ranking predicted the fine-tuned order. Writes that
    agreement to ``rank_agreement.csv``."""
    path = Path(out) / RANKING
    if not path.is_file():
        return ""
    ranking = pd.read_csv(path).drop_duplicates("backbone")  # a backbone listed twice (before that was refused)
    table = agreement(ranking, summary, metric)
    write_csv(table, Path(out) / AGREEMENT)
    n_train = int(ranking["train_images"].iloc[0]) if "train_images" in ranking and len(ranking) else 0
    lines = ["", "## Ranking before training", "",
             f"Each backbone's frozen features of the {n_train} training images (its starting weights, no "
             f"augmentation) scored before any trial (`{RANKING}`; higher is better, rank 1 the most promising): "
             f"LogME (You et al. 2021), the accuracy of a {KNN_K}-nearest-neighbour vote on the validation split "
             f"(cosine similarity), and the H-score (Bao et al. 2019) with Ledoit-Wolf shrinkage (Ibrahim et al. "
             f"2023). Seconds: features and all three estimates.", ""]
    lines += _ranking_table(ranking) + [""]
    dropped = ranking[~ranking["searched"].astype(bool)] if "searched" in ranking else ranking.iloc[0:0]
    if len(dropped):
        lines += ["Not searched (`keep_top_backbones`): " + "; ".join(
            f"{r.backbone}: {r.dropped_because}" for r in dropped.itertuples()) + ". They were never trained.", ""]
    lines += _agreement_lines(table, metric.name)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- budget curves

VERDICT_TEXT = {"rising": "still rising: more trials may help", "flat": "flat", "one trial": "one trial: no curve",
                "no interval": "no test interval to judge it by"}


def _tolerances(summary: pd.DataFrame, m: str) -> dict[tuple[str, str], float]:
    """Half the width of each cell's 95% test interval: what the comparison can resolve."""
    low, high = f"test_{m}_ci_low", f"test_{m}_ci_high"
    if summary.empty or low not in summary or high not in summary:
        return {}
    return {(r["backbone"], r["strategy"]): (float(r[high]) - float(r[low])) / 2 for _, r in summary.iterrows()
            if pd.notna(r[low]) and pd.notna(r[high])}


def _budget_leaders(curves: pd.DataFrame, metric: Metric, backbones: list[str]) -> list[str]:
    """Per backbone, when the strategy with the best expected validation score at one trial is not the one at the
    largest budget every strategy reached: the pick depends on the budget (Dodge et al.'s point)."""
    lines = []
    for b in backbones:
        mine = curves[curves["backbone"] == b]
        if mine["strategy"].nunique() < 2:
            continue
        most = int(mine.groupby("strategy")["complete"].first().min())
        if most < 2:
            continue
        lead = {n: mine[mine["trials"] == n].sort_values(
            "expected_best", ascending=metric.direction == "minimize", kind="stable")["strategy"].iloc[0]
            for n in (1, most)}
        if lead[1] != lead[most]:
            lines.append(f"On {b} the best expected validation {metric.name} of 1 trial is {lead[1]}'s, of {most} "
                         f"trials {lead[most]}'s: which strategy wins depends on the budget.")
    return lines


def report_budget(out: Path, trials: pd.DataFrame, summary: pd.DataFrame, metric: Metric,
                  experiment: dict[str, Any], plots: dict[str, bool]) -> str:
    """The report's section on budget curves (Dodge et al. 2019): each cell's expected best validation score of n
    trials, the verdict of its last doubling, and where the winner depends on the budget. Writes ``budget.csv``."""
    m, direction = metric.name, metric.direction
    curves = budget_curves(trials, m, direction)
    write_csv(curves, Path(out) / BUDGET)
    if curves.empty:
        return ""
    backbones, strategies = order(summary, experiment)
    verdicts = budget_verdicts(curves, _tolerances(summary, m), direction).set_index(["backbone", "strategy"])
    lines = ["", "## Budget curves", "",
             f"The expected best validation {m} of a search of n trials, n = 1 to N, drawn with replacement from "
             f"the cell's N complete trials (Dodge et al. 2019, eq. 1), with one standard deviation: unlike the "
             f"best so far, it does not depend on the order the sampler tried them in (`{BUDGET}`). Pruned and "
             f"failed trials are left out: a pruned trial's score is from the epoch where it was stopped, not a "
             f"finished configuration's. Verdict: the gain from ⌈N/2⌉ to N trials against half the width of the "
             f"cell's 95% test interval; a gain at least that large is \"still rising\" (another doubling could "
             f"move the cell by as much as the comparison can resolve), a smaller one \"flat\".", ""]
    if plots.get("budget_curves"):
        lines += [f"![Budget curves]({PLOTS['budget_curves']})", ""]
    still = [f"{b} / {s}" for (b, s), v in verdicts["verdict"].items() if v == "rising"]
    lines += [f"{len(still)} of {len(verdicts)} cells still rising, more trials may help them: {', '.join(still)}."
              if still else "No cell is still rising: by this rule more trials would not change the comparison.", ""]
    rows = []
    for b in backbones:
        for s in strategies:
            if (b, s) in verdicts.index:
                r = verdicts.loc[(b, s)]
                rows.append([b, s, str(r["complete"]), _num(r["at_half"]), _num(r["at_full"]),
                             format(r["gain"], "+.4f"), _num(r["tolerance"]), VERDICT_TEXT[r["verdict"]]])
    lines += _table(["backbone", "strategy", "N", "at ⌈N/2⌉", "at N", "gain", "test CI half-width", "verdict"],
                    rows, left=2, right=7) + [""]
    leaders = _budget_leaders(curves, metric, backbones)
    return "\n".join(lines + ([" ".join(leaders), ""] if leaders else []))


# -------------------------------------------------------------------------------------------------------------- CLI

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

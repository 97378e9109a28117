"""The sections of ``report.md`` after the main comparison, each from its own table: replicates (reruns of the whole
study), soups and ensembles, budget curves, and the ranking of backbones before training. Each returns its lines,
or none when the study has nothing for it (a study run once has no replicates section)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from tlkit.analysis import wording
from tlkit.analysis.agreement import AGREEMENT, ESTIMATORS, KNN_K, RANKING, agreement
from tlkit.analysis.budget import BUDGET, budget_curves, budget_verdicts
from tlkit.metrics import Metric
from tlkit.output.markdown import num, table
from tlkit.output.plots import PLOTS, order
from tlkit.output.tables import write_csv

__all__ = ["report_replicates", "report_across", "report_soups", "report_budget", "report_ranking"]


def report_across(frame: pd.DataFrame | None, m: str, points: bool) -> list[str]:
    """The strategies compared across backbones over (backbone, replicate) pairs (``across_backbones.csv``);
    nothing without replicates or with one backbone."""
    if frame is None or frame.empty:
        return []
    return ["## Across backbones, over replicates", "",
            f"Each strategy against the one with the best mean validation {m} over every backbone's even-numbered "
            f"replicates, paired over (backbone, odd replicate) pairs, Holm-corrected (`across_backbones.csv`):", "",
            *(f"- {wording.sentence(row, m, points)}" for _, row in frame.iterrows()), ""]


def report_soups(frame: pd.DataFrame | None, m: str, points: bool) -> list[str]:
    """The "Soups and ensembles" section: each cell's best trial beside its uniform and greedy soups and its top-k
    ensemble, with the difference against the best trial and what each costs at inference."""
    if frame is None or frame.empty:
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
    for _, r in frame.iterrows():
        if r["model"] == "soups":
            rows.append([r["backbone"], r["strategy"], r["note"], "", "", "", "", "", ""])
            continue
        diff = "—" if r["model"] == "best trial" or pd.isna(r.get("difference")) else (
            f"{_amount(r['difference'], points)} [{_amount(r['ci_low'], points)}, {_amount(r['ci_high'], points)}]")
        rows.append([r["backbone"], r["strategy"], r["model"], num(r["ingredients"], ".3g"), num(r[f"val_{m}"]),
                     num(r[f"test_{m}"]), diff, "" if r["model"] == "best trial" else str(r.get("verdict", "")),
                     _cost(r)])
    lines += table(["backbone", "strategy", "model", "ingredients", f"val {m}", f"test {m}", "best trial minus it",
                     "verdict", "params, ms/image"], rows, left=3, right=6) + [""]
    greedy = frame[frame["model"] == "greedy soup"]
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


def report_replicates(frame: pd.DataFrame | None, experiment: dict[str, Any], m: str) -> list[str]:
    """The "Replicates" section: how much each cell moved between reruns of the whole study and how often its
    search chose another configuration, and what ``--replicates auto`` did (nothing without replicates)."""
    if frame is None or frame.empty:
        return []
    lines = ["## Replicates", "",
             f"Each replicate reran the whole study: its own train/validation split, its own search of each cell and "
             f"its own training seeds, shared by every cell of a backbone (`replicates.csv`). Across replicates, a "
             f"cell's test {m} (of its chosen configuration) and how many different configurations its searches "
             f"chose:", ""]
    rows = []
    for (backbone, strategy), cell in frame.groupby(["backbone", "strategy"], sort=False):
        test = cell[f"test_{m}_mean"].dropna()
        rows.append([backbone, strategy, str(len(cell)), num(test.mean()), num(test.std(ddof=1)),
                     f"{num(test.min())} to {num(test.max())}", f"{cell['best_params'].nunique()} of {len(cell)}"])
    lines += table(["backbone", "strategy", "replicates", f"mean test {m}", "sd", "range", "configurations"],
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


def _ranking_table(ranking: pd.DataFrame) -> list[str]:
    header = ["backbone", *(f"{label} (rank)" for label in ESTIMATORS.values()), "seconds", "searched"]
    rows = [[r["backbone"], *(f"{r[n]:.4f} ({r[f'{n}_rank']})" for n in ESTIMATORS), f"{r['seconds']:.1f}",
             "yes" if r.get("searched", True) else "no"] for _, r in ranking.iterrows()]
    return table(header, [list(map(str, row)) for row in rows])


def _agreement_lines(frame: pd.DataFrame, m: str) -> list[str]:
    if frame.empty:
        return ["Kendall's tau needs at least 2 backbones with a test score.", ""]
    n = int(frame["backbones"].max())
    lines = [f"How well the ranking predicted fine-tuning: Kendall's tau over backbones between each estimate and "
             f"each strategy's mean test {m} (1: the same order, 0: unrelated, -1: reversed), with its two-sided "
             f"p-value (`{AGREEMENT}`). With {n} backbones the smallest p-value any tau can reach is "
             f"{2 / math.factorial(n) if n < 20 else 0:.3g}, so read tau as a description, not as a test.", ""]
    pivot = frame.pivot_table(index="strategy", columns="estimator", values="kendall_tau", sort=False)
    pvals = frame.pivot_table(index="strategy", columns="estimator", values="p_value", sort=False)
    header = ["strategy", *(ESTIMATORS[e] for e in ESTIMATORS if e in pivot.columns)]
    rows = [[s, *(f"{pivot.loc[s, e]:+.2f} (p = {pvals.loc[s, e]:.2g})" if pd.notna(pivot.loc[s, e]) else "—"
                  for e in ESTIMATORS if e in pivot.columns)] for s in pivot.index]
    return lines + table(header, rows) + [""]


def report_ranking(out: Path, summary: pd.DataFrame, metric: Metric) -> str:
    """The report's section on the ranking before training (empty without ``ranking.csv``): the table, which
    backbones ``keep_top_backbones`` dropped, and how well the ranking predicted the fine-tuned order. Writes that
    agreement to ``rank_agreement.csv``."""
    path = Path(out) / RANKING
    if not path.is_file():
        return ""
    ranking = pd.read_csv(path).drop_duplicates("backbone")  # a backbone listed twice (before that was refused)
    frame = agreement(ranking, summary, metric)
    write_csv(frame, Path(out) / AGREEMENT)
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
    lines += _agreement_lines(frame, metric.name)
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
                rows.append([b, s, str(r["complete"]), num(r["at_half"]), num(r["at_full"]),
                             format(r["gain"], "+.4f"), num(r["tolerance"]), VERDICT_TEXT[r["verdict"]]])
    lines += table(["backbone", "strategy", "N", "at ⌈N/2⌉", "at N", "gain", "test CI half-width", "verdict"],
                    rows, left=2, right=7) + [""]
    leaders = _budget_leaders(curves, metric, backbones)
    return "\n".join(lines + ([" ".join(leaders), ""] if leaders else []))


# -------------------------------------------------------------------------------------------------------------- CLI

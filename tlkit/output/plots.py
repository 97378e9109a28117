"""The plots of a report, drawn without pyplot and under matplotlib's default style (neither the caller's backend
nor their style changes the files), saved without a software stamp so a rebuild is byte-identical.

Every plot takes the tables (``summary.csv``, ``history.csv``, ``trials.csv``; the budget curves are computed from
the last by ``tlkit.analysis.budget``) and returns whether it had data to draw; intervals come from ``summary.csv``
(see ``tlkit.analysis.compare``).
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from tlkit.analysis.budget import budget_curves
from tlkit.utils.files import atomic_write
from tlkit.utils.text import short_number

__all__ = ["PLOTS", "write_plots", "order"]

PLOTS = {
    "test_by_strategy": "test_by_strategy.png",
    "accuracy_vs_params": "accuracy_vs_params.png",
    "accuracy_vs_time": "accuracy_vs_time.png",
    "learning_curves": "learning_curves.png",
    "search_progress": "search_progress.png",
    "budget_curves": "budget_curves.png",
    "critical_difference": "critical_difference.png",
}


def order(summary: pd.DataFrame, experiment: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Backbones and strategies in the experiment file's order (how its author thinks of them), then any others."""
    def ordered(column: str, key: str) -> list[str]:
        named = dict.fromkeys(experiment.get(key, []))  # a name listed twice (before that was refused) is one cell
        given = [x for x in named if x in set(summary[column])] if not summary.empty else []
        rest = sorted(set(summary[column]) - set(given)) if not summary.empty else []
        return given + rest
    return ordered("backbone", "backbones"), ordered("strategy", "strategies")


def _colors(strategies: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(strategies) <= 10 else "tab20"]
    return {s: cmap(i % cmap.N) for i, s in enumerate(strategies)}


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")


def _save(fig: Any, path: Path) -> None:
    """PNG without the matplotlib version stamp, so a rebuild is byte-identical."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def _axis_range(lows: pd.Series, highs: pd.Series) -> tuple[float, float]:
    """Around the data with a margin, not from 0: differences of a point or two must be visible."""
    low, high = float(lows.min(skipna=True)), float(highs.max(skipna=True))
    span = max(high - low, 1e-3)
    return low - 0.15 * span, high + 0.35 * span


def plot_test_by_strategy(summary: pd.DataFrame, metric: str, backbones: list[str], strategies: list[str],
                          path: Path) -> bool:
    """One panel per backbone: mean test score of each strategy (bars) with its 95% interval (error bars), and its
    validation score (ticks)."""
    from matplotlib.figure import Figure

    test, low, high, val = (f"test_{metric}_mean", f"test_{metric}_ci_low", f"test_{metric}_ci_high",
                            f"val_{metric}_mean")
    if summary.empty or test not in summary or summary[test].isna().all():
        return False
    colors = _colors(strategies)
    ncols = min(3, len(backbones))
    nrows = math.ceil(len(backbones) / ncols)
    fig = Figure(figsize=(5.6 * ncols, max(3.0, 0.42 * len(strategies) + 1.6) * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, backbone in zip(axes.flat, backbones):
        cell = summary[summary["backbone"] == backbone].set_index("strategy").reindex(strategies)
        y = list(range(len(strategies)))
        scores, vals = cell[test].astype(float), cell[val].astype(float)
        lows, highs = cell[low].astype(float), cell[high].astype(float)
        left, right = _axis_range(pd.concat([lows, vals, scores]), pd.concat([highs, vals, scores]))
        ax.barh(y, (scores - left).fillna(0.0), left=left, color=[colors[s] for s in strategies], height=0.7)
        errors = [(scores - lows).clip(lower=0).fillna(0.0), (highs - scores).clip(lower=0).fillna(0.0)]
        ax.errorbar(scores, y, xerr=errors, fmt="none", ecolor="black", elinewidth=1.2, capsize=3)
        ax.plot(vals, y, "k|", markersize=14, markeredgewidth=2)
        for yi, score, hi in zip(y, scores, highs):
            at = left if math.isnan(score) else score if math.isnan(hi) else hi
            ax.text(at, yi, "  n/a" if math.isnan(score) else f"  {score:.3f}", va="center", fontsize=9)
        ax.set_yticks(y, strategies)
        ax.invert_yaxis()
        ax.set_xlim(left, right)
        ax.set_title(backbone, fontsize=12)
        ax.set_xlabel(f"test {metric}")
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(backbones):]:
        ax.set_visible(False)
    fig.suptitle(f"Test {metric}: mean with 95% interval (bars), validation {metric} (|)", fontsize=12)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_search_progress(trials: pd.DataFrame, metric: str, direction: str, backbones: list[str],
                         strategies: list[str], path: Path) -> bool:
    """Is the budget enough? Per backbone, each strategy's best validation score so far against the number of
    finished trials (a curve still climbing at the last trial says more trials would have found better), and
    every trial's score as a dot (a wide spread: the strategy is unforgiving of its hyperparameters)."""
    val = f"val_{metric}"
    done = trials[trials["state"] == "COMPLETE"] if not trials.empty else trials
    if done.empty:
        return False
    colors = _colors(strategies)
    fig, axes, nrows = _panels(len(backbones))
    for ax, backbone in zip(axes.flat, backbones):
        for k, strategy in enumerate(strategies):
            cell = done[(done["backbone"] == backbone) & (done["strategy"] == strategy)].sort_values("trial")
            if cell.empty:
                continue
            values = cell[val].astype(float).to_numpy()
            best = (pd.Series(values).cummax() if direction == "maximize" else pd.Series(values).cummin()).tolist()
            x = range(1, len(values) + 1)
            ax.step([*x, len(values) + 0.5], [*best, best[-1]], where="post", color=colors[strategy], linewidth=1.8)
            ax.plot([xi + 0.06 * (k - len(strategies) / 2) for xi in x], values, "o", color=colors[strategy],
                    markersize=3.5, alpha=0.6)
        _label_panel(ax, backbone, "finished trials (complete)", f"validation {metric}")
    _finish_panels(fig, axes, len(backbones), strategies, colors, nrows, path)
    return True


def plot_budget_curves(trials: pd.DataFrame, metric: str, direction: str, backbones: list[str],
                       strategies: list[str], path: Path) -> bool:
    """Is the budget enough, whatever order the sampler tried things in? Per backbone, each strategy's expected best
    validation score of n trials (Dodge et al. 2019) against n, with a band of one standard deviation: a line still
    climbing at its last point says more trials may help; lines that cross say the winner depends on the budget."""
    curves = budget_curves(trials, metric, direction)
    if curves.empty:
        return False
    colors = _colors(strategies)
    fig, axes, nrows = _panels(len(backbones))
    for ax, backbone in zip(axes.flat, backbones):
        for strategy in strategies:
            cell = curves[(curves["backbone"] == backbone) & (curves["strategy"] == strategy)]
            if cell.empty:
                continue
            n, mean, sd = (cell[c].astype(float).to_numpy() for c in ("trials", "expected_best", "sd"))
            ax.plot(n, mean, "o-", color=colors[strategy], linewidth=1.8, markersize=3.5)
            ax.fill_between(n, mean - sd, mean + sd, color=colors[strategy], alpha=0.12, linewidth=0)
        _label_panel(ax, backbone, "trials (complete)", f"expected best validation {metric}")
    _finish_panels(fig, axes, len(backbones), strategies, colors, nrows, path)
    return True


def _panels(count: int) -> tuple[Any, Any, int]:
    """A figure of ``count`` panels, 3 to a row: ``(figure, axes grid, rows)``."""
    from matplotlib.figure import Figure

    ncols = min(3, count)
    nrows = math.ceil(count / ncols)
    fig = Figure(figsize=(5.6 * ncols, 3.8 * nrows))
    return fig, fig.subplots(nrows, ncols, squeeze=False), nrows


def _label_panel(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    """A per-backbone panel's title, axis labels (whole numbers of trials on x) and grid."""
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize=12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _finish_panels(fig: Any, axes: Any, used: int, strategies: list[str], colors: dict[str, Any], nrows: int,
                   path: Path) -> None:
    """Hide the unused panels, put one legend of the strategies' colours on top, save."""
    from matplotlib.lines import Line2D

    for ax in list(axes.flat)[used:]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colors[s], linewidth=2.5, label=s) for s in strategies]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(strategies), 8), fontsize=10, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (3.8 * nrows)))
    _save(fig, path)


def plot_critical_difference(friedman: dict[str, Any] | None, path: Path) -> bool:
    """Demšar's critical-difference diagram: strategies on an axis of average rank (1 = best); strategies joined
    by a bar are not told apart by the Nemenyi test at the 5% level."""
    from matplotlib.figure import Figure

    if not friedman:
        return False
    ranks = sorted(friedman["ranks"].items(), key=lambda kv: (kv[1], kv[0]))
    k, cd = len(ranks), friedman["cd"]
    cliques = []  # maximal runs of strategies within cd of each other
    for i in range(k):
        j = max(j for j in range(i, k) if ranks[j][1] - ranks[i][1] < cd)
        if j > i and not any(a <= i and j <= b for a, b in cliques):
            cliques.append((i, j))
    fig = Figure(figsize=(8, 1.6 + 0.32 * k + 0.25 * len(cliques)))
    ax = fig.subplots()
    lo, hi = 1, k
    ax.set_xlim(lo - 0.3, hi + 0.3)
    ax.set_ylim(-(k // 2 + 1.5 + 0.3 * len(cliques)), 1.6)
    ax.plot([lo, hi], [0, 0], color="black", linewidth=1)
    for r in range(lo, hi + 1):
        ax.plot([r, r], [0, 0.12], color="black", linewidth=1)
        ax.text(r, 0.22, str(r), ha="center", fontsize=9)
    ax.plot([lo, lo + cd], [1.05, 1.05], color="black", linewidth=2)
    ax.text(lo + cd / 2, 1.2, f"CD = {cd:.2f}", ha="center", fontsize=9)
    half = (k + 1) // 2
    for i, (name, rank) in enumerate(ranks):
        left = i < half
        depth = -(0.5 + (i if left else k - 1 - i) * 0.45 + 0.3 * len(cliques))
        end = lo - 0.25 if left else hi + 0.25
        ax.plot([rank, rank, end], [0, depth, depth], color="black", linewidth=0.8)
        ax.text(end, depth, f"{name} ({rank:.2f})" if left else f"({rank:.2f}) {name}",
                ha="right" if left else "left", va="center", fontsize=9)
    for n, (i, j) in enumerate(cliques):
        y = -0.2 - 0.28 * n
        ax.plot([ranks[i][1] - 0.03, ranks[j][1] + 0.03], [y, y], color="black", linewidth=3.5)
    ax.set_axis_off()
    ax.set_title(f"Average rank over {friedman['backbones']} backbones (Friedman p = {friedman['p']:.3g})",
                 fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_scatter(summary: pd.DataFrame, metric: str, backbones: list[str], strategies: list[str], x: str,
                 what: str, unit: str, path: Path) -> bool:
    """Mean test score (with its 95% interval) against a cost (trainable parameters, training time of the best
    trial): colour = strategy, marker = backbone."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    test, low, high = f"test_{metric}_mean", f"test_{metric}_ci_low", f"test_{metric}_ci_high"
    data = summary.dropna(subset=[test, x]) if not summary.empty and test in summary else pd.DataFrame()
    if data.empty:
        return False
    colors = _colors(strategies)
    markers = {b: MARKERS[i % len(MARKERS)] for i, b in enumerate(backbones)}
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    for row in data.to_dict("records"):
        xv, yv = float(row[x]), float(row[test])
        if pd.notna(row[low]) and pd.notna(row[high]):
            ax.errorbar(xv, yv, yerr=[[max(0.0, yv - row[low])], [max(0.0, row[high] - yv)]], fmt="none",
                        ecolor=colors[row["strategy"]], elinewidth=1.2, capsize=3, zorder=2)
        ax.scatter(xv, yv, s=90, color=colors[row["strategy"]], marker=markers[row["backbone"]],
                   edgecolors="black", linewidths=0.6, zorder=3)
    xs = data[x].astype(float)
    log = bool(xs.min() > 0 and xs.max() / xs.min() >= 20)
    if log:  # spans orders of magnitude: log scale, with plain tick labels (1k, 100k) rather than 10^3
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: short_number(v)))
    ax.set_xlabel(", ".join([f"{what} ({unit}" if unit else what] + (["log scale"] if log else []))
                  + (")" if unit else ""))
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3, which="both")
    used = [s for s in strategies if s in set(data["strategy"])]
    by_strategy = ax.legend(handles=[Line2D([], [], linestyle="", marker="o", markersize=9, color=colors[s], label=s)
                                     for s in used], title="strategy", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                            fontsize=10, frameon=False)
    ax.add_artist(by_strategy)
    ax.legend(handles=[Line2D([], [], linestyle="", marker=markers[b], markersize=9, markerfacecolor="white",
                              markeredgecolor="black", label=b) for b in backbones if b in set(data["backbone"])],
              title="backbone", loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=10, frameon=False)
    ax.set_title(f"Test {metric} (mean, 95% interval) against {what}", fontsize=12)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_learning_curves(summary: pd.DataFrame, history: pd.DataFrame, metric: str, backbones: list[str],
                         strategies: list[str], path: Path) -> bool:
    """Per backbone: validation metric, validation loss and training loss per epoch of each cell's best trial."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    if summary.empty or history.empty or summary["best_trial"].isna().all():
        return False
    colors = _colors(strategies)
    panels = [(f"val_{metric}", f"validation {metric}"), ("val_loss", "validation loss"),
              ("train_loss", "training loss")]
    fig = Figure(figsize=(15, 3.6 * len(backbones)))
    axes = fig.subplots(len(backbones), 3, squeeze=False)
    for r, backbone in enumerate(backbones):
        for strategy in strategies:
            best = summary[(summary["backbone"] == backbone) & (summary["strategy"] == strategy)]["best_trial"]
            if best.empty or pd.isna(best.iloc[0]):
                continue
            h = history[(history["backbone"] == backbone) & (history["strategy"] == strategy)
                        & (history["trial"] == best.iloc[0])]
            for ax, (column, _) in zip(axes[r], panels):
                ax.plot(h["epoch"].astype(int), h[column].astype(float), marker="o", markersize=3,
                        color=colors[strategy], linewidth=1.6)
        for ax, (_, label) in zip(axes[r], panels):
            ax.set_title(f"{backbone}: {label}", fontsize=11)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[s], linewidth=2.5, label=s) for s in strategies]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(strategies), 8), fontsize=10, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.6 * len(backbones))))
    _save(fig, path)
    return True


def write_plots(out: Path, summary: pd.DataFrame, history: pd.DataFrame, trials: pd.DataFrame, metric: str,
                experiment: dict[str, Any], friedman: dict[str, Any] | None) -> dict[str, bool]:
    """Every plot of the report; returns which ones had data to draw (a plot without data is removed).

    Figures are drawn without pyplot and under matplotlib's default style, so neither the caller's backend nor
    their style changes the files.
    """
    import matplotlib.style

    out = Path(out)
    backbones, strategies = order(summary, experiment)
    drawn = {k: False for k in PLOTS}
    if backbones:
        with matplotlib.style.context("default"):
            drawn = {
                "test_by_strategy": plot_test_by_strategy(summary, metric, backbones, strategies,
                                                          out / PLOTS["test_by_strategy"]),
                "accuracy_vs_params": plot_scatter(summary, metric, backbones, strategies, "trainable_params",
                                                   "trainable parameters", "", out / PLOTS["accuracy_vs_params"]),
                "accuracy_vs_time": plot_scatter(summary, metric, backbones, strategies, "train_time_s",
                                                 "training time", "s", out / PLOTS["accuracy_vs_time"]),
                "learning_curves": plot_learning_curves(summary, history, metric, backbones, strategies,
                                                        out / PLOTS["learning_curves"]),
                "search_progress": plot_search_progress(trials, metric, experiment.get("metric_direction",
                                                                                       "maximize"),
                                                        backbones, strategies, out / PLOTS["search_progress"]),
                "budget_curves": plot_budget_curves(trials, metric, experiment.get("metric_direction", "maximize"),
                                                    backbones, strategies, out / PLOTS["budget_curves"]),
                "critical_difference": plot_critical_difference(friedman, out / PLOTS["critical_difference"]),
            }
    for key, ok in drawn.items():
        if not ok:
            (out / PLOTS[key]).unlink(missing_ok=True)
    return drawn



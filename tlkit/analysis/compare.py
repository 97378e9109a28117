"""Which differences are real: intervals per cell, paired comparisons within a backbone, ranks across backbones.

Input is what the report reads from the storage: each cell's scored models (its repeats, else its search's best
trial), each with its validation and test metric and its per-example test predictions. Output is plain tables:

- ``cell_intervals``: the test metric of each cell with a 95% interval, over seeds (t, when there are 2 or more
  repeats) or over test examples (with one model: Wilson's interval for an accuracy, else a bootstrap), named in
  ``ci_method``;
- ``comparisons``: within each backbone, every strategy against the best one (chosen on validation), paired by seed
  (t-test, 3 or more common seeds) or by test example (McNemar's exact test for an accuracy of one model each, else
  a paired bootstrap), Holm-corrected per backbone, with a verdict: ``worse`` (significantly below the best),
  ``better`` (significantly above it on test: the validation pick did not hold up), ``tied`` or ``untested``;
- ``rank_table`` / ``friedman_test``: with 3 or more backbones, each strategy's average rank, Friedman's test and
  the Nemenyi critical difference (Demšar 2006).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tlkit.analysis import stats
from tlkit.metrics import Metric, Predictions

__all__ = ["ScoredModel", "CellScores", "cell_intervals", "choose_best", "comparisons", "rank_table",
           "friedman_test", "sentence", "verdict", "VERDICTS", "ALPHA", "MIN_SEEDS_FOR_T"]

ALPHA = 0.05
VERDICTS = ("better", "tied", "worse", "untested")
"""A comparison's verdict on the other strategy, seen from the best on validation."""
MIN_SEEDS_FOR_T = 3
"""With fewer common seeds than this, differences are tested over test examples instead (paired bootstrap)."""


@dataclass(frozen=True)
class ScoredModel:
    """One trained model of a cell: a repeat (``seed`` its index) or the search's best trial (``seed`` None)."""

    seed: int | None
    val: float
    test: float
    predictions: Predictions | None = None
    replicate: int = 0
    """The replicate of the study it belongs to (``Experiment.replicates``; 0 with a single run)."""


@dataclass
class CellScores:
    """What the statistics know of one cell: its scored models and its size. The cell itself (which backbone under
    which strategy, its study and folder) is ``tlkit.search.study.Cell``."""

    backbone: str
    strategy: str
    models: list[ScoredModel] = field(default_factory=list)
    trainable_params: float = math.nan

    @property
    def repeats(self) -> list[ScoredModel]:
        return [m for m in self.models if m.seed is not None]

    @property
    def scored(self) -> list[ScoredModel]:
        """The repeats when there are any, else the search's best trial: what the statistics are about."""
        return self.repeats or self.models

    @property
    def val_mean(self) -> float:
        return float(np.mean([m.val for m in self.scored])) if self.scored else math.nan


def _mean_metric(models: list[ScoredModel], metric: Metric) -> Any:
    """``score(indices)``: the metric on those test examples, averaged over the models (their seeds)."""
    preds = [m.predictions for m in models]
    return lambda idx: float(np.mean([metric.on(p.subset(idx)) for p in preds]))


def cell_interval(cell: CellScores, metric: Metric) -> stats.Interval | None:
    """The cell's test metric with a 95% interval, kept inside the values the metric can take (a t interval on
    accuracies near 1 would otherwise reach past 1; the true mean cannot, so nothing is lost)."""
    interval = _raw_interval(cell, metric)
    if interval is None or metric.bounds is None:
        return interval
    low, high = metric.bounds
    return dataclasses.replace(interval, low=max(interval.low, low), high=min(interval.high, high))


def _raw_interval(cell: CellScores, metric: Metric) -> stats.Interval | None:
    models = cell.scored
    if len(models) >= 2:
        return stats.t_interval([m.test for m in models])
    if len(models) == 1 and models[0].predictions is not None and metric.from_predictions is not None:
        p = models[0].predictions
        if metric.proportion is not None:
            interval = stats.wilson_interval(int(metric.proportion(p).sum()), len(p))
        else:
            interval = stats.bootstrap_interval(_mean_metric(models, metric), len(p))
        source = "" if models[0].seed is not None else ", the search's best trial"
        return stats.Interval(interval.mean, interval.sd, interval.low, interval.high, interval.n,
                              interval.method[:-1] + source + ")")
    return None


def cell_intervals(cells: list[CellScores], metric: Metric) -> pd.DataFrame:
    rows = []
    for c in cells:
        interval = cell_interval(c, metric)
        mean = interval.mean if interval else float(np.mean([m.test for m in c.scored])) if c.scored else math.nan
        rows.append({"backbone": c.backbone, "strategy": c.strategy, "repeats": len(c.repeats),
                     f"val_{metric.name}_mean": c.val_mean, f"test_{metric.name}_mean": mean,
                     f"test_{metric.name}_sd": interval.sd if interval and len(c.scored) >= 2 else math.nan,
                     f"test_{metric.name}_ci_low": interval.low if interval else math.nan,
                     f"test_{metric.name}_ci_high": interval.high if interval else math.nan,
                     "ci_method": interval.method if interval else ""})
    return pd.DataFrame(rows)


def choose_best(cells: list[CellScores], metric: Metric) -> CellScores:
    """The best cell on validation (mean over its scored models); ties go to fewer trainable parameters, then to
    the strategy's name. The test split never chooses: it only reports."""
    sign = -1.0 if metric.direction == "maximize" else 1.0
    return min(cells, key=lambda c: (sign * c.val_mean, c.trainable_params, c.strategy))


def _compare(best: CellScores, other: CellScores, metric: Metric) -> stats.Comparison | None:
    """``best - other`` oriented so that positive means the best is better (for a minimised metric the sign is
    turned), paired by seed when enough seeds are shared, else by test example."""
    sign = 1.0 if metric.direction == "maximize" else -1.0
    mine, theirs = {m.seed: m for m in best.repeats}, {m.seed: m for m in other.repeats}
    common = sorted(set(mine) & set(theirs))
    if len(common) >= MIN_SEEDS_FOR_T:
        return stats.paired_t([sign * mine[s].test for s in common], [sign * theirs[s].test for s in common])
    a = [mine[s] for s in common] if common else best.scored[:1]
    b = [theirs[s] for s in common] if common else other.scored[:1]
    if not a or not b or any(m.predictions is None for m in a + b) or metric.from_predictions is None:
        return None
    if len(a[0].predictions) != len(b[0].predictions):
        return None  # scored on different test sets: no pairing possible
    score_a, score_b = _mean_metric(a, metric), _mean_metric(b, metric)
    result = stats.paired_bootstrap(lambda i: sign * score_a(i), lambda i: sign * score_b(i), len(a[0].predictions))
    if metric.proportion is not None and len(a) == len(b) == 1:  # one model each: McNemar's exact test
        p = stats.mcnemar(metric.proportion(a[0].predictions), metric.proportion(b[0].predictions))
        result = dataclasses.replace(result, p=p, method=f"McNemar's exact test over {result.n} test examples "
                                                         f"(CI: paired bootstrap)")
    return result


def comparisons(cells: list[CellScores], metric: Metric) -> pd.DataFrame:
    """Within each backbone, every strategy against the best one; Holm-corrected over the backbone's tests."""
    rows = []
    for backbone in dict.fromkeys(c.backbone for c in cells):
        mine = [c for c in cells if c.backbone == backbone and c.scored]
        if len(mine) < 2:
            continue
        best = choose_best(mine, metric)
        tests = [(c, _compare(best, c, metric)) for c in mine if c is not best]
        adjusted = iter(stats.holm([t.p for _, t in tests if t is not None]) if any(t for _, t in tests) else [])
        for c, t in tests:
            p_holm = next(adjusted) if t is not None else math.nan
            rows.append({"backbone": backbone, "best": best.strategy, "strategy": c.strategy,
                         "method": t.method if t else "not available", "n": t.n if t else 0,
                         "difference": t.diff if t else math.nan, "ci_low": t.low if t else math.nan,
                         "ci_high": t.high if t else math.nan, "p": t.p if t else math.nan, "p_holm": p_holm,
                         "verdict": verdict(t, p_holm)})
    return pd.DataFrame(rows, columns=["backbone", "best", "strategy", "method", "n", "difference", "ci_low",
                                       "ci_high", "p", "p_holm", "verdict"])


def verdict(test: stats.Comparison | None, p_holm: float) -> str:
    """``worse``/``better`` when the Holm-adjusted two-sided test rejects, by the sign of ``best - other``.

    A two-sided test that rejects says the two differ, not which way: the sign says it. The best is chosen on
    validation, so on test another strategy can be significantly better than it (``better``)."""
    if test is None:
        return "untested"
    if not p_holm < ALPHA or test.diff == 0:
        return "tied"
    return "worse" if test.diff > 0 else "better"


def _amount(x: float, points: bool) -> str:
    return f"{100 * x:.1f} points" if points else f"{x:.3g}"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def sentence(row: Any, metric: str, points: bool) -> str:
    """One comparison in plain words, with its interval and Holm-adjusted p-value."""
    if row["verdict"] == "untested":
        return f"{row['best']} vs {row['strategy']}: not tested ({row['method']})."
    amount, low, high = (_amount(row[k], points) for k in ("difference", "ci_low", "ci_high"))
    interval = f"95% CI {low.split()[0]} to {high.split()[0]}"
    if row["verdict"] == "worse":
        return (f"{row['best']} beats {row['strategy']} by {amount} of test {metric} ({interval}, "
                f"{_p(row['p_holm'])} Holm-adjusted; {row['method']}).")
    if row["verdict"] == "better":
        amount, low, high = (_amount(-row[k], points) for k in ("difference", "ci_high", "ci_low"))
        return (f"{row['strategy']} beats {row['best']} (the validation pick) by {amount} of test {metric} "
                f"(95% CI {low.split()[0]} to {high.split()[0]}, {_p(row['p_holm'])} Holm-adjusted; "
                f"{row['method']}): the pick on validation did not hold up on test.")
    return (f"{row['best']} and {row['strategy']} cannot be told apart here ({amount}, {interval}, "
            f"{_p(row['p_holm'])} Holm-adjusted; {row['method']}).")


def rank_table(cells: list[CellScores], metric: Metric) -> pd.DataFrame:
    """Backbones x strategies of mean test metric, for the strategies every backbone has (empty otherwise)."""
    frame = pd.DataFrame([{"backbone": c.backbone, "strategy": c.strategy,
                           "test": float(np.mean([m.test for m in c.scored]))} for c in cells if c.scored])
    if frame.empty:
        return frame
    table = frame.pivot(index="backbone", columns="strategy", values="test")
    return table.dropna(axis=1)


def friedman_test(table: pd.DataFrame, metric: Metric) -> dict[str, Any] | None:
    """Average ranks, Friedman's test and Nemenyi's critical difference; None with fewer than 3 backbones or
    strategies (Friedman's test is not defined there)."""
    if table.shape[0] < 3 or table.shape[1] < 3:
        return None
    ranks = stats.average_ranks(table.to_numpy(), higher_is_better=metric.direction == "maximize")
    statistic, p = stats.friedman(table.to_numpy())
    return {"ranks": dict(zip(table.columns, ranks.tolist())), "statistic": statistic, "p": p,
            "cd": stats.nemenyi_cd(table.shape[1], table.shape[0], ALPHA), "backbones": table.shape[0]}

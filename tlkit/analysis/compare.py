"""Which differences are real: intervals per cell, paired comparisons within a backbone, ranks across backbones.

Input is what the report reads from the storage: each cell's scored models (its repeats, else its search's best
trial; with replicates, those of every replicate), each with its validation and test metric and its per-example
test predictions. Output is plain tables:

- ``cell_intervals``: the test metric of each cell with a 95% interval, over seeds (t, when there are 2 or more
  repeats) or over test examples (with one model: Wilson's interval for an accuracy, else a bootstrap), named in
  ``ci_method``;
- ``comparisons``: within each backbone, every strategy against a reference, the best one on validation (with 2 or
  more replicates: chosen on one half of them, tested on the other), paired by replicate, by seed (3 or more common
  seeds) or by test example, Holm-corrected per backbone, with a verdict: ``equivalent`` (within the region of
  practical equivalence ``rope``), ``worse`` or ``better`` (shown different, by its sign), ``undecided`` (neither)
  or ``untested``, and the difference the comparison could have detected (``detectable``);
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

__all__ = ["ScoredModel", "CellScores", "Reference", "cell_intervals", "choose_best", "choose_reference",
           "comparisons", "model_comparisons", "rank_table", "friedman_test", "verdict", "VERDICTS", "ALPHA",
           "DEFAULT_ROPE", "POWER", "MIN_SEEDS_FOR_T", "MIN_REPLICATES", "COLUMNS", "replicate_mean",
           "comparison_numbers", "metric_sign"]

ALPHA = 0.05
DEFAULT_ROPE = 0.01
"""The region of practical equivalence, in metric units: differences within +-0.01 (1 point of accuracy) are too
small to matter."""
POWER = 0.8
"""The power at which ``detectable`` is computed."""
VERDICTS = ("better", "equivalent", "undecided", "worse", "untested")
"""A comparison's verdict on the other strategy, seen from the reference (the best on validation)."""
MIN_SEEDS_FOR_T = 3
"""With fewer common seeds than this, differences are tested over test examples instead (paired bootstrap)."""
MIN_REPLICATES = 2
"""With this many replicates common to a backbone's cells, the reference is chosen on half of them (split-half)."""
COLUMNS = ["backbone", "best", "reference", "strategy", "method", "n", "difference", "ci_low", "ci_high", "p",
           "p_holm", "rope", "tost_level", "tost_low", "tost_high", "detectable", "p_outperform", "p_outperform_low",
           "p_outperform_high", "p_better", "p_rope", "p_worse", "verdict"]


@dataclass(frozen=True)
class ScoredModel:
    """One trained model of a cell: a repeat (``seed`` its index) or the search's best trial (``seed`` None).

    ``replicate`` numbers a whole rerun of the study (its own train/validation split, search and seeds), shared by
    every cell of a backbone, so cells can be paired by replicate."""

    seed: int | None
    val: float
    test: float
    predictions: Predictions | None = None
    replicate: int = 0


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
    replicates = _replicates(cell)
    if len(replicates) >= 2:  # over reruns of the whole study: one value per replicate, its models' mean
        interval = stats.t_interval([replicate_mean(cell, r) for r in replicates])
        return dataclasses.replace(interval, method=f"t over {len(replicates)} replicates")
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


def _replicates(cell: CellScores) -> list[int]:
    return sorted({m.replicate for m in cell.scored})


def cell_intervals(cells: list[CellScores], metric: Metric) -> pd.DataFrame:
    """One row per cell: its mean test metric with a 95% interval (``cell_interval``) and how it was made; a
    ``replicates`` column only when a cell has more than one (a study run once keeps the columns it had)."""
    rows = []
    for c in cells:
        interval = cell_interval(c, metric)
        mean = interval.mean if interval else float(np.mean([m.test for m in c.scored])) if c.scored else math.nan
        spread = interval is not None and (len(c.scored) >= 2 or len(_replicates(c)) >= 2)
        rows.append({"backbone": c.backbone, "strategy": c.strategy, "repeats": len(c.repeats),
                     "replicates": len(_replicates(c)),
                     f"val_{metric.name}_mean": c.val_mean, f"test_{metric.name}_mean": mean,
                     f"test_{metric.name}_sd": interval.sd if spread else math.nan,
                     f"test_{metric.name}_ci_low": interval.low if interval else math.nan,
                     f"test_{metric.name}_ci_high": interval.high if interval else math.nan,
                     "ci_method": interval.method if interval else ""})
    table = pd.DataFrame(rows)
    if not table.empty and table["replicates"].max() <= 1:
        table = table.drop(columns="replicates")
    return table


def choose_best(cells: list[CellScores], metric: Metric) -> CellScores:
    """The best cell on validation (mean over its scored models); ties go to fewer trainable parameters, then to
    the strategy's name. The test split never chooses: it only reports."""
    sign = -1.0 if metric.direction == "maximize" else 1.0
    return min(cells, key=lambda c: (sign * c.val_mean, c.trainable_params, c.strategy))


def metric_sign(metric: Metric) -> float:
    """+1 for a maximised metric, -1 for a minimised one: ``sign x (best - other)`` is positive when best is better."""
    return 1.0 if metric.direction == "maximize" else -1.0


def _compare(best: CellScores, other: CellScores, metric: Metric) -> stats.Comparison | None:
    """``best - other`` oriented so that positive means the best is better (for a minimised metric the sign is
    turned), paired by seed when enough seeds are shared, else by test example."""
    sign = metric_sign(metric)
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


# ------------------------------------------------------------------------------------------------------ replicates

def _ids(replicates: list[int]) -> str:
    return ", ".join(map(str, replicates))


def _only(cell: CellScores, replicates: list[int]) -> CellScores:
    """The cell with only the models of those replicates."""
    return dataclasses.replace(cell, models=[m for m in cell.models if m.replicate in replicates])


def replicate_mean(cell: CellScores, replicate: int) -> float:
    """A replicate's value: the mean test metric of its scored models (its repeats, else its search's best)."""
    return float(np.mean([m.test for m in _only(cell, [replicate]).scored]))


@dataclass(frozen=True)
class Reference:
    """The strategy a backbone's others are compared with, and the replicates it was chosen and is tested on
    (both ``None`` without replicates: chosen and tested on the same models)."""

    best: CellScores
    chosen_on: list[int] | None = None
    tested_on: list[int] | None = None

    @property
    def text(self) -> str:
        if self.chosen_on is None:
            return "best on validation"
        return f"best on validation of replicates {_ids(self.chosen_on)}, tested on {_ids(self.tested_on)}"


def choose_reference(cells: list[CellScores], metric: Metric) -> Reference:
    """The reference of a backbone's comparisons.

    With fewer than 2 replicates common to the cells: the best on validation (``choose_best``), tested on the same
    models. With more, split-half by the replicate's number: chosen on validation of the even-numbered replicates
    common to every cell (0, 2, 4...), tested on the odd-numbered ones (1, 3, 5...; each pair on those both cells
    have, so a cell that ``--replicates auto`` stopped early keeps its comparison). Why: the strategy that wins on
    validation of some runs also carries those runs' luck onto their test split (the winner's curse); replicates
    it was not chosen on are independent of the choice, so its advantage there is not inflated.
    """
    replicates = sorted(set.intersection(*({m.replicate for m in c.scored} for c in cells)))
    if len(replicates) < MIN_REPLICATES or not any(r % 2 for r in replicates) or all(r % 2 for r in replicates):
        return Reference(choose_best(cells, metric))
    chosen_on, tested_on = [r for r in replicates if r % 2 == 0], [r for r in replicates if r % 2]
    halves = [_only(c, chosen_on) for c in cells]
    pick = choose_best(halves, metric)
    return Reference(next(c for c, half in zip(cells, halves) if half is pick), chosen_on, tested_on)


def _tested_on(ref: Reference, other: CellScores) -> list[int] | None:
    """The odd-numbered replicates the reference and ``other`` both have (None without replicates)."""
    if ref.tested_on is None:
        return None
    mine = {m.replicate for m in ref.best.scored} & {m.replicate for m in other.scored}
    return sorted(r for r in mine if r % 2)


def _compare_replicates(best: CellScores, other: CellScores, metric: Metric, tested_on: list[int],
                        rope: float) -> tuple[stats.Comparison, dict[str, float]]:
    """``best - other`` paired over the test replicates (each one's mean test metric), with the probability of
    outperforming and the Bayesian posterior of the mean difference."""
    sign = metric_sign(metric)
    a = [sign * replicate_mean(best, r) for r in tested_on]
    b = [sign * replicate_mean(other, r) for r in tested_on]
    diffs = np.subtract(a, b)
    won = stats.outperform_probability(diffs)
    p_better, p_rope, p_worse = stats.posterior_probabilities(diffs, rope)
    return stats.paired_t(a, b, unit=f"replicates ({_ids(tested_on)})"), {
        "p_outperform": won.mean, "p_outperform_low": won.low, "p_outperform_high": won.high,
        "p_better": p_better, "p_rope": p_rope, "p_worse": p_worse}


_REPLICATE_COLUMNS = ("p_outperform", "p_outperform_low", "p_outperform_high", "p_better", "p_rope", "p_worse")


def _compare_on(best: CellScores, other: CellScores, metric: Metric, tested_on: list[int] | None,
                rope: float) -> tuple[stats.Comparison | None, dict[str, float]]:
    """The comparison the reference was chosen for: over test replicates when there are 2 or more, within the one
    test replicate (by seed or example) when there is one, else over every model (no replicates)."""
    none = dict.fromkeys(_REPLICATE_COLUMNS, math.nan)
    if tested_on is None:
        return _compare(best, other, metric), none
    if not tested_on:
        return None, none  # no test replicate in common
    if len(tested_on) >= 2:
        return _compare_replicates(best, other, metric, tested_on, rope)
    result = _compare(_only(best, tested_on), _only(other, tested_on), metric)
    if result is None:
        return None, none
    return dataclasses.replace(result, method=f"{result.method} in replicate {tested_on[0]}"), none


# ----------------------------------------------------------------------------------------------------- comparisons

def comparisons(cells: list[CellScores], metric: Metric, rope: float = DEFAULT_ROPE) -> pd.DataFrame:
    """Within each backbone, every strategy against the reference (``choose_reference``), Holm-corrected over the
    backbone's tests, with a verdict (``verdict``) and the difference each comparison could have detected.

    ``rope`` is the region of practical equivalence in metric units: a difference known to lie within ``+-rope``
    is too small to matter. Columns: ``COLUMNS`` (docs/results.md says what each holds).

    Example:
        table = comparisons(cells, get_metric("accuracy"), rope=0.01)  # within 1 point: equivalent
    """
    if not rope >= 0:
        raise ValueError(f"rope must be >= 0 (in {metric.name} units, e.g. 0.01 for 1 point) but got {rope}.")
    rows = []
    for backbone in dict.fromkeys(c.backbone for c in cells):
        mine = [c for c in cells if c.backbone == backbone and c.scored]
        if len(mine) >= 2:
            rows += _backbone_rows(mine, metric, rope)
    return pd.DataFrame(rows, columns=COLUMNS)


def _backbone_rows(cells: list[CellScores], metric: Metric, rope: float) -> list[dict[str, Any]]:
    """One backbone's rows. Its tests share the Bonferroni level ``ALPHA / m`` (the level of Holm's first, strictest
    step) for the equivalence interval and the power column, so each stays consistent with the Holm family."""
    ref = choose_reference(cells, metric)
    tests = [(c, *_compare_on(ref.best, c, metric, _tested_on(ref, c), rope)) for c in cells if c is not ref.best]
    tested = [t for _, t, _ in tests if t is not None]
    adjusted = iter(stats.holm([t.p for t in tested]))
    level = ALPHA / max(len(tested), 1)
    rows = []
    for c, t, extra in tests:
        p_holm = next(adjusted) if t is not None else math.nan
        if t is not None and ref.chosen_on is not None:
            t = dataclasses.replace(t, method=f"{t.method}, reference chosen on replicates {_ids(ref.chosen_on)}")
        rows.append({"backbone": c.backbone, "best": ref.best.strategy, "reference": ref.text,
                     "strategy": c.strategy, **comparison_numbers(t, p_holm, level, rope), **extra})
    return rows


def model_comparisons(reference: list[ScoredModel], others: dict[str, list[ScoredModel]], metric: Metric,
                      rope: float = DEFAULT_ROPE) -> dict[str, dict[str, Any]]:
    """``reference - other`` for each of ``others`` (e.g. a cell's best trial against its soups and its ensemble),
    with the statistics and verdict of ``comparisons``, Holm-corrected over ``others``: paired by replicate (t over
    the replicates both have, 2 or more) else over the test examples of one model each (McNemar's exact test for an
    accuracy, else a paired bootstrap)."""
    tests = {name: _compare_models(reference, models, metric) for name, models in others.items()}
    tested = [t for t in tests.values() if t is not None]
    adjusted = iter(stats.holm([t.p for t in tested]))
    level = ALPHA / max(len(tested), 1)
    return {name: comparison_numbers(t, next(adjusted) if t is not None else math.nan, level, rope)
            for name, t in tests.items()}


def _compare_models(reference: list[ScoredModel], other: list[ScoredModel], metric: Metric
                    ) -> stats.Comparison | None:
    mine, theirs = {m.replicate: m for m in reference}, {m.replicate: m for m in other}
    common = sorted(set(mine) & set(theirs))
    if len(common) >= 2:
        sign = metric_sign(metric)
        return stats.paired_t([sign * mine[r].test for r in common], [sign * theirs[r].test for r in common],
                              unit=f"replicates ({_ids(common)})")
    if not common:
        return None
    return _compare(CellScores("", "reference", [mine[common[0]]]), CellScores("", "other", [theirs[common[0]]]),
                    metric)


def comparison_numbers(test: stats.Comparison | None, p_holm: float, level: float, rope: float) -> dict[str, Any]:
    """A row's statistics: the difference with its 95% interval, the tests, the equivalence (TOST) interval at
    ``1 - 2 level``, the detectable difference at ``level``, and the verdict."""
    row: dict[str, Any] = {"rope": rope, "tost_level": 1 - 2 * level}
    if test is None:
        return row | {"method": "not available", "n": 0, "verdict": "untested"}
    tost = test.interval(1 - 2 * level)
    return row | {"method": test.method, "n": test.n, "difference": test.diff, "ci_low": test.low,
                  "ci_high": test.high, "p": test.p, "p_holm": p_holm, "tost_low": tost[0], "tost_high": tost[1],
                  "detectable": stats.detectable_difference(test.se, test.df, level, POWER),
                  "verdict": verdict(test, p_holm, tost, rope)}


def verdict(test: stats.Comparison | None, p_holm: float, tost: tuple[float, float],
            rope: float = DEFAULT_ROPE) -> str:
    """What a reader may conclude of the other strategy against the reference, in this order:

    - ``equivalent``: the equivalence interval ``tost`` lies inside ``[-rope, +rope]``. With ``tost`` at level
      ``1 - 2 alpha`` this is Schuirmann's two one-sided tests at ``alpha``: both "more than ``rope`` worse" and
      "more than ``rope`` better" are rejected. It holds even when the difference is also shown to be non-zero:
      real, but smaller than what the user called practically meaningful (``sentence`` says so).
    - ``worse`` / ``better``: else, the Holm-adjusted two-sided test rejects; the sign of ``best - other`` says
      which way (the reference is chosen on validation, so on test another can be significantly better).
    - ``undecided``: neither; the data cannot say (``detectable`` says how large a difference they could have
      shown). ``untested``: no test was possible.
    """
    if test is None:
        return "untested"
    if -rope <= tost[0] and tost[1] <= rope:
        return "equivalent"
    if p_holm < ALPHA and test.diff != 0:
        return "worse" if test.diff > 0 else "better"
    return "undecided"


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

"""The statistics behind "is the difference real?": intervals, paired tests, multiple-comparison correction, ranks.

Plain functions of arrays, with scipy doing the distributions. Where a quantity has two honest estimates (over seeds
when there are enough of them, over test examples when there is one seed) the caller picks, and every result carries
the name of its method so a reader knows what the interval is an interval of.

References: Student's t for means over seeds; Efron & Tibshirani (1993) for the percentile bootstrap; Holm (1979)
for the step-down correction; Schuirmann (1987) for equivalence by two one-sided tests (a (1 - 2 alpha) interval);
Cohen (1988) for power; Bouthillier et al. (2021) for the probability of outperforming; Benavoli et al. (2017) for
the Bayesian t-test with a region of practical equivalence; Demšar (2006) for Friedman's test, average ranks and the
Nemenyi critical difference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import optimize
from scipy import stats as scipy_stats

__all__ = ["Interval", "Comparison", "t_interval", "bootstrap_interval", "wilson_interval", "mcnemar", "paired_t",
           "paired_bootstrap", "holm", "detectable_difference", "outperform_probability", "posterior_probabilities",
           "average_ranks", "friedman", "nemenyi_cd", "BOOTSTRAP_SAMPLES"]

BOOTSTRAP_SAMPLES = 2000
"""Resamples per bootstrap: enough for a stable 95% interval (Efron & Tibshirani suggest >= 1000)."""


@dataclass(frozen=True)
class Interval:
    """A mean with its spread and a confidence interval, and how the interval was made."""

    mean: float
    sd: float
    low: float
    high: float
    n: int
    method: str


@dataclass(frozen=True)
class Comparison:
    """``a - b``: the mean difference, its confidence interval and a two-sided p-value.

    ``se`` and ``df`` (infinite for a bootstrap) give the difference's standard error and its reference distribution,
    and ``draws`` a bootstrap's resampled differences, so ``interval`` can give the interval at any other level (an
    equivalence test's, a corrected one) from the same data.
    """

    diff: float
    low: float
    high: float
    p: float
    n: int
    method: str
    se: float = math.nan
    df: float = math.inf
    draws: np.ndarray | None = field(default=None, compare=False, repr=False)

    def interval(self, level: float) -> tuple[float, float]:
        """The two-sided ``level`` interval: Student's t around ``diff``, or the bootstrap's percentiles."""
        if self.draws is not None:
            low, high = np.quantile(self.draws, [0.5 - level / 2, 0.5 + level / 2])
            return float(low), float(high)
        half = float(scipy_stats.t.ppf(0.5 + level / 2, self.df)) * self.se
        return self.diff - half, self.diff + half


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of ``values`` (one per seed) with Student's t interval; needs at least two values."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        raise ValueError(f"a t interval needs at least 2 values but got {len(x)}")
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    return Interval(mean, sd, mean - half, mean + half, len(x), f"t over {len(x)} seeds")


def _resamples(n: int, samples: int, seed: int) -> np.ndarray:
    """``samples`` x ``n`` indices drawn with replacement, from a fixed seed (a report rebuilds identically)."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def bootstrap_interval(score: Callable[[np.ndarray], float], n: int, level: float = 0.95,
                       samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> Interval:
    """Percentile bootstrap over ``n`` test examples: ``score(indices)`` is the metric on those examples.

    This is the interval of one trained model's score as the test set varies (seed-to-seed variation is not in
    it): what can honestly be said with a single seed.
    """
    point = float(score(np.arange(n)))
    draws = np.array([score(idx) for idx in _resamples(n, samples, seed)])
    low, high = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(point, float(draws.std(ddof=1)), float(low), float(high), n,
                    f"bootstrap over {n} test examples (1 seed)")


def wilson_interval(successes: int, n: int, level: float = 0.95) -> Interval:
    """Wilson's score interval of a proportion (an accuracy on ``n`` test examples): unlike the bootstrap it stays
    honest at the edges, e.g. 180 of 180 correct gives [0.979, 1.0], not [1.0, 1.0]."""
    result = scipy_stats.binomtest(int(successes), int(n))
    ci = result.proportion_ci(confidence_level=level, method="wilson")
    mean = successes / n
    return Interval(mean, math.sqrt(mean * (1 - mean) / n), float(ci.low), float(ci.high), n,
                    f"Wilson interval over {n} test examples (1 seed)")


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> float:
    """McNemar's exact test that two models scored on the same examples are equally often right: a two-sided
    binomial test on the examples exactly one of them gets right."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_t(a: Sequence[float], b: Sequence[float], level: float = 0.95, unit: str = "seeds") -> Comparison:
    """``a - b`` paired by seed (or by ``unit``, e.g. replicates): Student's t interval of the mean difference and
    the paired t-test's p-value."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs but got {len(d)}")
    sd = float(d.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, len(d) - 1)) * sd / math.sqrt(len(d))
    if sd == 0.0:  # identical differences: no spread to test against
        p = 1.0 if d.mean() == 0 else 0.0
    else:
        p = float(scipy_stats.ttest_rel(np.asarray(a, dtype=float), np.asarray(b, dtype=float)).pvalue)
    mean = float(d.mean())
    return Comparison(mean, mean - half, mean + half, p, len(d), f"paired t-test over {len(d)} {unit}",
                      se=sd / math.sqrt(len(d)), df=len(d) - 1)


def paired_bootstrap(score_a: Callable[[np.ndarray], float], score_b: Callable[[np.ndarray], float], n: int,
                     level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> Comparison:
    """``a - b`` on the same ``n`` test examples, resampled together (paired bootstrap, Koehn 2004).

    The p-value is twice the share of resamples on the far side of zero (at least ``1/samples``): how often the
    other test sets one might have drawn would reverse the sign of the difference.
    """
    diff = float(score_a(np.arange(n)) - score_b(np.arange(n)))
    draws = np.array([score_a(idx) - score_b(idx) for idx in _resamples(n, samples, seed)])
    low, high = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    tail = min(float(np.mean(draws <= 0)), float(np.mean(draws >= 0)))
    p = min(1.0, max(2 * tail, 1.0 / samples))
    return Comparison(diff, float(low), float(high), p, n, f"paired bootstrap over {n} test examples",
                      se=float(draws.std(ddof=1)), draws=draws)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order.

    Written out because scipy has Benjamini-Hochberg (``false_discovery_control``) but not Holm: sort ascending,
    multiply the i-th smallest by (m - i), carry the running maximum, cap at 1.
    """
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for i, index in enumerate(order):
        running = max(running, min(1.0, (len(p) - i) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def detectable_difference(se: float, df: float, alpha: float, power: float = 0.8) -> float:
    """The smallest true difference a two-sided test at ``alpha`` detects with probability ``power``.

    A comparison that finds nothing says little unless it could have found something: this is the size it could
    have found. With finite ``df`` (a paired t-test) it is exact, from the noncentral t: the noncentrality ``nc``
    where ``P(|T| > t_crit) = power`` for ``T ~ t(df, nc)``, times ``se`` (what statsmodels' ``TTestPower`` solves).
    With ``df`` infinite (a bootstrap) it is the normal approximation ``(z_(1-alpha/2) + z_power) x se``.
    """
    if not se > 0:
        return 0.0 if se == 0 else math.nan
    if math.isinf(df):
        return (float(scipy_stats.norm.ppf(1 - alpha / 2)) + float(scipy_stats.norm.ppf(power))) * se
    crit = float(scipy_stats.t.ppf(1 - alpha / 2, df))

    def short_of(nc: float) -> float:  # the far tail is P(T < -crit) = P(t(df, -nc) > crit), NaN where negligible
        far = float(np.nan_to_num(scipy_stats.nct.sf(crit, df, -nc)))
        return float(scipy_stats.nct.sf(crit, df, nc)) + far - power

    high = crit + float(scipy_stats.norm.ppf(power))
    while short_of(high) < 0:
        high *= 2
    return float(optimize.brentq(short_of, 0.0, high, xtol=1e-10)) * se


def outperform_probability(diffs: Sequence[float], level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES,
                           seed: int = 0) -> Interval:
    """Bouthillier et al. (2021)'s probability that the other outperforms: the share of pairs with ``diff < 0``
    (``diffs`` are ``best - other``, positive when the best is better; ties count half), with a percentile
    bootstrap interval over the pairs. Unlike a mean difference it says how often a rerun would reverse the order."""
    d = np.asarray(diffs, dtype=float)

    def share(x: np.ndarray) -> np.ndarray:
        return np.mean(x < 0, axis=-1) + 0.5 * np.mean(x == 0, axis=-1)

    draws = share(d[_resamples(len(d), samples, seed)])
    low, high = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(float(share(d)), float(draws.std(ddof=1)), float(low), float(high), len(d),
                    f"share of {len(d)} pairs, bootstrap interval")


def posterior_probabilities(diffs: Sequence[float], rope: float) -> tuple[float, float, float]:
    """``(P(mu < -rope), P(|mu| <= rope), P(mu > rope))`` for the mean ``mu`` of ``diffs``, under the Bayesian
    t-test (Benavoli et al. 2017) with correlation 0: a flat prior gives the posterior ``mu ~ t(n - 1, mean,
    sd / sqrt(n))``. It is baycomp's ``CorrelatedTTest`` without the Nadeau-Bengio term ``rho / (1 - rho)``, which
    baycomp fixes at ``1 / (n - 1)`` for k-fold cross-validation; independent reruns have no such correlation."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return math.nan, math.nan, math.nan
    mean, scale = float(d.mean()), float(d.std(ddof=1)) / math.sqrt(len(d))
    if scale == 0:
        below, above = float(mean < -rope), float(mean > rope)
    else:
        posterior = scipy_stats.t(len(d) - 1, mean, scale)
        below, above = float(posterior.cdf(-rope)), float(posterior.sf(rope))
    return below, 1.0 - below - above, above


def average_ranks(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Mean rank of each column (strategy) over the rows (backbones); rank 1 is the best, ties share their ranks."""
    x = np.asarray(scores, dtype=float)
    ranks = np.vstack([scipy_stats.rankdata(-row if higher_is_better else row) for row in x])
    return ranks.mean(axis=0)


def friedman(scores: np.ndarray) -> tuple[float, float]:
    """Friedman's test that all columns (strategies) rank alike over the rows (backbones): ``(statistic, p)``."""
    x = np.asarray(scores, dtype=float)
    result = scipy_stats.friedmanchisquare(*x.T)
    return float(result.statistic), float(result.pvalue)


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of average ranks for ``k`` strategies over ``n`` backbones (Demšar 2006):
    two strategies whose average ranks differ by less are not told apart."""
    q = float(scipy_stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return q * math.sqrt(k * (k + 1) / (6.0 * n))

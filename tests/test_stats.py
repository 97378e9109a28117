"""The statistics against hand-computed values (scipy only as the oracle for distributions' quantiles)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tlkit.analysis import stats


def test_t_interval_by_hand():
    interval = stats.t_interval([0.80, 0.82, 0.84])
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, 2 df) x sd / sqrt(n)
    assert (interval.mean, interval.sd) == (pytest.approx(0.82), pytest.approx(0.02))
    assert (interval.low, interval.high) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    assert interval.method == "t over 3 seeds"
    with pytest.raises(ValueError, match="at least 2"):
        stats.t_interval([0.5])


def test_paired_t_by_hand_and_against_scipy():
    a, b = [0.90, 0.86, 0.88, 0.91], [0.85, 0.84, 0.86, 0.85]
    d = np.array(a) - np.array(b)  # 0.05, 0.02, 0.02, 0.06: mean 0.0375, sd 0.0206155
    result = stats.paired_t(a, b)
    sd = math.sqrt(((0.05 - 0.0375) ** 2 + 2 * (0.02 - 0.0375) ** 2 + (0.06 - 0.0375) ** 2) / 3)
    t = 0.0375 / (sd / 2)
    assert result.diff == pytest.approx(0.0375) and d.std(ddof=1) == pytest.approx(sd)
    assert result.p == pytest.approx(2 * scipy_stats.t.sf(t, 3))
    assert result.p == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    half = 3.182446305284263 * sd / 2  # t(0.975, 3 df)
    assert (result.low, result.high) == (pytest.approx(0.0375 - half), pytest.approx(0.0375 + half))
    same = stats.paired_t([0.5, 0.6], [0.5, 0.6])
    assert (same.diff, same.p) == (0.0, 1.0)


def test_holm_by_hand():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> running max 0.06.
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([]) == []


def test_wilson_interval_by_hand():
    k, n, z = 8, 10, 1.959963984540054
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
    interval = stats.wilson_interval(k, n)
    assert (interval.low, interval.high) == (pytest.approx(centre - half), pytest.approx(centre + half))
    perfect = stats.wilson_interval(180, 180)  # a bootstrap would say [1, 1]
    assert perfect.high == 1.0 and perfect.low == pytest.approx(180 / (180 + z * z))
    assert perfect.method == "Wilson interval over 180 test examples (1 seed)"


def test_mcnemar_by_hand():
    a = [True] * 50 + [True] * 9 + [False] * 1 + [False] * 40  # a alone right on 9, b alone right on 1
    b = [True] * 50 + [False] * 9 + [True] * 1 + [False] * 40
    assert stats.mcnemar(a, b) == pytest.approx(2 * (1 + 10) / 2 ** 10)  # two-sided binomial, 1 of 10
    assert stats.mcnemar(a, a) == 1.0


def test_bootstraps_are_seeded_and_paired():
    rng = np.random.default_rng(1)
    right_a = rng.random(400) < 0.9
    right_b = right_a.copy()
    right_b[:20] = ~right_b[:20]  # b differs from a on 20 examples only
    score_a, score_b = (lambda i: float(right_a[i].mean())), (lambda i: float(right_b[i].mean()))
    one = stats.bootstrap_interval(score_a, 400)
    assert one == stats.bootstrap_interval(score_a, 400)  # a rebuilt report is identical
    assert one.low < one.mean < one.high and one.mean == pytest.approx(right_a.mean())
    paired = stats.paired_bootstrap(score_a, score_b, 400)
    assert paired.diff == pytest.approx(right_a.mean() - right_b.mean())
    assert paired.low <= paired.diff <= paired.high
    # Pairing: the difference's interval is narrower than one model's alone (unpaired it would be ~1.4x wider).
    assert paired.high - paired.low < 0.8 * (one.high - one.low)
    same = stats.paired_bootstrap(score_a, score_a, 400)
    assert (same.diff, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0)


def test_average_ranks_with_ties_by_hand():
    scores = np.array([[0.9, 0.8, 0.8], [0.7, 0.9, 0.6], [0.5, 0.6, 0.7]])
    # Ranks per row (1 = best): [1, 2.5, 2.5], [2, 1, 3], [3, 2, 1].
    assert stats.average_ranks(scores).tolist() == pytest.approx([2.0, 5.5 / 3, 6.5 / 3])
    assert stats.average_ranks(scores, higher_is_better=False).tolist() == pytest.approx([2.0, 6.5 / 3, 5.5 / 3])


def test_friedman_by_hand():
    scores = np.array([[0.9, 0.8, 0.7], [0.8, 0.9, 0.7], [0.9, 0.7, 0.8], [0.9, 0.8, 0.7]])
    # Rank sums over N=4 rows, k=3: [1+2+1+1, 2+1+3+2, 3+3+2+3] = [5, 8, 11].
    chi2 = 12 / (4 * 3 * 4) * (5 ** 2 + 8 ** 2 + 11 ** 2) - 3 * 4 * 4
    statistic, p = stats.friedman(scores)
    assert statistic == pytest.approx(chi2) == pytest.approx(4.5)
    assert p == pytest.approx(scipy_stats.chi2.sf(4.5, 2))


@pytest.mark.parametrize("k, q", [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (8, 3.031), (10, 3.164)])
def test_nemenyi_critical_difference_matches_demsar_table(k, q):
    """Demšar (2006), Table 5(a): q_0.05 for k classifiers; CD = q sqrt(k(k+1) / 6N)."""
    assert stats.nemenyi_cd(k, 12) == pytest.approx(q * math.sqrt(k * (k + 1) / (6 * 12)), abs=2e-3)


def test_intervals_at_other_levels_come_from_the_same_data():
    t = stats.paired_t([0.90, 0.86, 0.88, 0.91], [0.85, 0.84, 0.86, 0.85])
    assert t.interval(0.95) == (pytest.approx(t.low), pytest.approx(t.high))
    half = 2.3533634348018264 * t.se  # t(0.95, 3 df): the 90% interval of two one-sided tests at 5%
    assert t.interval(0.90) == (pytest.approx(t.diff - half), pytest.approx(t.diff + half))
    rng = np.random.default_rng(2)
    right_a, right_b = rng.random(300) < 0.9, rng.random(300) < 0.8
    boot = stats.paired_bootstrap(lambda i: float(right_a[i].mean()), lambda i: float(right_b[i].mean()), 300)
    assert boot.interval(0.95) == (boot.low, boot.high) and boot.se == pytest.approx(np.std(boot.draws, ddof=1))
    assert boot.interval(0.90) == tuple(pytest.approx(q) for q in np.quantile(boot.draws, [0.05, 0.95]))


def test_detectable_difference_by_hand():
    # Normal approximation (a bootstrap): (z_0.975 + z_0.8) x se.
    assert stats.detectable_difference(0.01, math.inf, 0.05) == pytest.approx((1.959963984540054 + 0.8416212335729143)
                                                                               * 0.01)
    # Paired t, n = 5, sd 0.02: statsmodels' TTestPower().solve_power(nobs=5, alpha=0.05, power=0.8) gives the
    # effect size 1.6819970833 (computed once with statsmodels 0.15.0), i.e. a difference of 0.02 x 1.68.
    assert stats.detectable_difference(0.02 / math.sqrt(5), 4, 0.05) == pytest.approx(0.02 * 1.6819970833, rel=1e-6)
    # n = 3 at alpha 0.025: here TTestPower's own power is NaN (scipy 1.17's nct.cdf) and its solver stops short;
    # check the power instead, by simulating the t-test on differences of that mean.
    delta = stats.detectable_difference(0.01 / math.sqrt(3), 2, 0.025)
    x = np.random.default_rng(0).normal(delta, 0.01, size=(400_000, 3))
    t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(3))
    assert np.mean(np.abs(t) > scipy_stats.t.ppf(1 - 0.025 / 2, 2)) == pytest.approx(0.8, abs=0.003)
    assert stats.detectable_difference(0.0, 2, 0.05) == 0.0
    assert math.isnan(stats.detectable_difference(math.nan, 2, 0.05))
    # Fewer pairs or a stricter level: a larger difference is needed.
    assert stats.detectable_difference(0.01, 1, 0.05) > stats.detectable_difference(0.01, 4, 0.05)


def test_outperform_probability_by_hand():
    d = [0.01, -0.02, 0.0, 0.03]  # best - other: the other wins once, ties once -> (1 + 0.5) / 4
    result = stats.outperform_probability(d)
    assert result.mean == pytest.approx(0.375) and result.n == 4
    draws = []
    for idx in np.random.default_rng(0).integers(0, 4, size=(stats.BOOTSTRAP_SAMPLES, 4)):
        x = np.asarray(d)[idx]
        draws.append((np.sum(x < 0) + 0.5 * np.sum(x == 0)) / 4)
    assert (result.low, result.high) == tuple(pytest.approx(q) for q in np.quantile(draws, [0.025, 0.975]))
    assert result.low <= 0.375 <= result.high
    never = stats.outperform_probability([0.01, 0.02, 0.03])
    assert (never.mean, never.low, never.high) == (0.0, 0.0, 0.0)


def test_posterior_probabilities_by_hand():
    d = np.array([0.01, 0.03, 0.0, 0.02, 0.015])  # mean 0.015, sd 0.01118
    mean, scale = 0.015, math.sqrt(np.sum((d - 0.015) ** 2) / 4) / math.sqrt(5)
    below, inside, above = stats.posterior_probabilities(d, 0.01)
    assert above == pytest.approx(1 - scipy_stats.t.cdf((0.01 - mean) / scale, 4))  # standardised by hand
    assert below == pytest.approx(scipy_stats.t.cdf((-0.01 - mean) / scale, 4))
    assert below + inside + above == pytest.approx(1.0) and above > 0.5 > below
    # baycomp's CorrelatedTTest would multiply scale^2 by n (1/n + 1/(n-1)) = 2.25: its k-fold correlation term.
    assert stats.posterior_probabilities([0.02, 0.02], 0.01) == (0.0, 0.0, 1.0)  # no spread: all mass at 0.02
    assert all(math.isnan(p) for p in stats.posterior_probabilities([0.02], 0.01))

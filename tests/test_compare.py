"""Which differences are real, on fixed inputs: the reference is chosen on validation (with replicates, on half of
them), differences are paired by replicate, seed or test example, Holm-corrected, and a verdict says better, worse,
equivalent (within the rope) or undecided, never "worse" for what the data cannot tell apart."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tlkit.analysis import compare, stats, wording
from tlkit.metrics import Predictions, get_metric

ACC = get_metric("accuracy")


def _cell(strategy, vals, tests, backbone="b", params=100.0, predictions=None, replicates=None):
    models = [compare.ScoredModel(i if replicates is None else None, v, t, predictions[i] if predictions else None,
                                  replicate=0 if replicates is None else replicates[i])
              for i, (v, t) in enumerate(zip(vals, tests))]
    return compare.CellScores(backbone, strategy, models, trainable_params=params)


def _predictions(right: np.ndarray) -> Predictions:
    labels = np.zeros(len(right), dtype=np.int64)
    pred = np.where(right, 0, 1)
    return Predictions(labels, pred, np.where(right, -0.1, -2.3), (~right).astype(np.int64))


def test_the_best_is_chosen_on_validation_ties_to_fewer_parameters():
    cells = [_cell("full", [0.9, 0.9], [0.80, 0.80], params=1000), _cell("probe", [0.9, 0.9], [0.70, 0.70], params=10),
             _cell("last", [0.8, 0.8], [0.99, 0.99])]
    assert compare.choose_best(cells, ACC).strategy == "probe"  # not "last", whose test score is highest
    lowest = compare.choose_best(cells, get_metric("log_loss"))
    assert lowest.strategy == "last"


def test_seed_paired_comparisons_with_holm_and_verdicts():
    best = _cell("a", [0.95, 0.95, 0.95], [0.90, 0.91, 0.92])
    close = _cell("b", [0.90, 0.90, 0.90], [0.895, 0.915, 0.915])
    far = _cell("c", [0.80, 0.80, 0.80], [0.70, 0.72, 0.71])
    table = compare.comparisons([best, close, far], ACC).set_index("strategy")
    assert set(table.best) == {"a"}
    for name, cell in (("b", close), ("c", far)):
        expected = stats.paired_t([m.test for m in best.models], [m.test for m in cell.models])
        assert table.difference[name] == pytest.approx(expected.diff) and table.p[name] == pytest.approx(expected.p)
        assert table.method[name] == "paired t-test over 3 seeds"
    assert table.p_holm.tolist() == pytest.approx(stats.holm(table.p.tolist()))
    # b: d = (0.005, -0.005, 0.005), se = 0.01 / sqrt(3) / sqrt(3); TOST at 1 - 2 x 0.05/2 = 95%, t(0.975, 2) = 4.303
    se = math.sqrt(((0.005 - 0.005 / 3) ** 2 * 2 + (-0.005 - 0.005 / 3) ** 2) / 2) / math.sqrt(3)
    assert table.tost_level["b"] == pytest.approx(0.95)
    assert (table.tost_low["b"], table.tost_high["b"]) == (pytest.approx(0.005 / 3 - 4.302652729911275 * se),
                                                           pytest.approx(0.005 / 3 + 4.302652729911275 * se))
    assert table.tost_high["b"] > 0.01  # reaches past 1 point: not shown equivalent, nor different
    assert table.verdict.to_dict() == {"b": "undecided", "c": "worse"}
    wider = compare.comparisons([best, close, far], ACC, rope=0.02).set_index("strategy")
    assert wider.verdict.to_dict() == {"b": "equivalent", "c": "worse"} and set(wider.rope) == {0.02}
    assert set(table.reference) == {"best on validation"} and table.p_outperform.isna().all()


def test_a_strategy_that_beats_the_validation_pick_on_test_is_better_not_worse():
    """The quickstart case of issue 27: the pick (lp_ft) was best on validation and lost clearly on test."""
    pick = _cell("lp_ft", [0.99, 0.99, 0.99], [0.920, 0.930, 0.935])
    beats_it = _cell("last_n", [0.98, 0.98, 0.98], [0.990, 0.995, 0.994])
    same = _cell("bitfit", [0.97, 0.97, 0.97], [0.925, 0.928, 0.934])
    table = compare.comparisons([pick, beats_it, same], ACC).set_index("strategy")
    assert set(table.best) == {"lp_ft"}
    assert table.difference["last_n"] == pytest.approx(np.mean([0.920, 0.930, 0.935]) - np.mean([0.990, 0.995, 0.994]))
    assert table.difference["last_n"] < 0 and table.p_holm["last_n"] < compare.ALPHA
    assert table.verdict.to_dict() == {"last_n": "better", "bitfit": "undecided"}
    text = wording.sentence(table.reset_index().set_index("strategy").loc["last_n"].to_dict() | {"strategy": "last_n"},
                            "accuracy", points=True)
    assert text.startswith("last_n beats lp_ft (the validation pick) by 6.5 points of test accuracy (95% CI ")
    assert "did not hold up on test" in text


def test_mcnemar_verdict_follows_the_sign_of_the_difference():
    rng = np.random.default_rng(1)
    right_pick = rng.random(300) < 0.85
    right_other = right_pick.copy()
    right_other[np.flatnonzero(~right_pick)[:30]] = True  # the other gets 30 more right: better on test
    pick = _cell("pick", [0.99], [right_pick.mean()], predictions=[_predictions(right_pick)])
    other = _cell("other", [0.90], [right_other.mean()], predictions=[_predictions(right_other)])
    row = compare.comparisons([pick, other], ACC).iloc[0]
    assert row.best == "pick" and row.difference == pytest.approx(-30 / 300)
    assert row.p == pytest.approx(scipy_stats.binomtest(0, 30, 0.5).pvalue) and row.verdict == "better"


def test_verdict_rule_on_fixed_intervals():
    def test(diff):
        return stats.Comparison(diff, diff - 0.01, diff + 0.01, 0.001, 3, "t")
    cases = [((0.05, 0.01, (0.03, 0.07)), "worse"), ((-0.05, 0.01, (-0.07, -0.03)), "better"),
             ((-0.05, 0.2, (-0.12, 0.02)), "undecided"), ((0.0, 0.01, (-0.02, 0.02)), "undecided"),
             ((0.002, 0.6, (-0.006, 0.009)), "equivalent"),
             ((0.004, 0.001, (0.002, 0.006)), "equivalent"),  # real (p small) but inside the rope
             ((0.004, 0.001, (-0.01, 0.01)), "equivalent"),  # the rope's edges are inside it
             ((0.009, 0.001, (0.005, 0.011)), "worse")]  # real and may reach past the rope: its sign decides
    assert [compare.verdict(test(d), p, tost, 0.01) for (d, p, tost), _ in cases] == [v for _, v in cases]
    assert compare.verdict(test(0.002), 0.6, (-0.006, 0.009), rope=0.005) == "undecided"
    assert compare.verdict(None, math.nan, (math.nan, math.nan)) == "untested"
    assert set(compare.VERDICTS) == {"better", "worse", "equivalent", "undecided", "untested"}


def test_a_minimised_metric_turns_the_sign_so_positive_means_better():
    best = _cell("a", [0.2, 0.2, 0.2], [0.30, 0.31, 0.32])  # lower log-loss is better
    worse = _cell("b", [0.5, 0.5, 0.5], [0.60, 0.62, 0.61])
    row = compare.comparisons([best, worse], get_metric("log_loss")).iloc[0]
    assert (row.best, row.strategy) == ("a", "b") and row.difference == pytest.approx(0.30)


def test_one_seed_uses_the_test_examples_mcnemar_and_wilson():
    rng = np.random.default_rng(0)
    right_a = rng.random(300) < 0.95
    right_b = right_a.copy()
    right_b[:30] = False  # b misses 30 examples a may get right
    a = _cell("a", [0.95], [right_a.mean()], predictions=[_predictions(right_a)])
    b = _cell("b", [0.90], [right_b.mean()], predictions=[_predictions(right_b)])
    row = compare.comparisons([a, b], ACC).iloc[0]
    only_a = int(np.sum(right_a & ~right_b))
    assert row.p == pytest.approx(scipy_stats.binomtest(only_a, only_a, 0.5).pvalue)
    assert row.method == "McNemar's exact test over 300 test examples (CI: paired bootstrap)"
    assert row.difference == pytest.approx(right_a.mean() - right_b.mean()) and row.verdict == "worse"
    interval = compare.cell_interval(a, ACC)
    assert interval.method == "Wilson interval over 300 test examples (1 seed)"
    expected = stats.wilson_interval(int(right_a.sum()), 300)
    assert (interval.low, interval.high) == (pytest.approx(expected.low), pytest.approx(expected.high))


def test_intervals_stay_inside_what_the_metric_can_be():
    near_one = _cell("a", [1.0, 1.0, 1.0], [0.97, 1.0, 1.0])
    interval = compare.cell_interval(near_one, ACC)
    raw = stats.t_interval([0.97, 1.0, 1.0])
    assert raw.high > 1.0 and interval.high == 1.0 and interval.low == pytest.approx(raw.low)
    assert compare.cell_interval(_cell("b", [], []), ACC) is None


def test_sentences_say_what_the_numbers_say():
    undecided = {"best": "last_n", "strategy": "layer_decay", "verdict": "undecided", "difference": 0.007,
                 "ci_low": -0.004, "ci_high": 0.018, "p_holm": 0.41, "method": "paired t-test over 3 seeds",
                 "rope": 0.01, "tost_level": 0.9, "tost_low": -0.002, "tost_high": 0.016, "detectable": 0.0234}
    assert wording.sentence(undecided, "accuracy", points=True) == (
        "last_n vs layer_decay: undecided on test accuracy: the difference, 0.7 points (95% CI -0.4 to 1.8, p = 0.410 "
        "Holm-adjusted), is neither shown to be real nor shown to lie within ±1 point; the study could have detected "
        "differences of about 2.3 points (paired t-test over 3 seeds).")
    equivalent = {**undecided, "verdict": "equivalent", "difference": 0.002, "tost_low": -0.004, "tost_high": 0.008,
                  "tost_level": 0.95, "rope": 0.005 * 2}
    assert wording.sentence(equivalent, "accuracy", points=True) == (
        "last_n and layer_decay are practically equivalent on test accuracy: the difference, 0.2 points (95% CI -0.4 "
        "to 0.8, p = 0.410 Holm-adjusted), lies within ±1 point (paired t-test over 3 seeds).")
    real = {**equivalent, "p_holm": 0.002, "tost_low": 0.001, "tost_high": 0.003, "rope": 0.02}
    assert wording.sentence(real, "accuracy", points=True) == (
        "last_n and layer_decay are practically equivalent on test accuracy: the difference, 0.2 points (95% CI 0.1 "
        "to 0.3), is real (p = 0.002 Holm-adjusted) but lies within ±2 points, smaller than what was set to matter "
        "(paired t-test over 3 seeds).")
    assert wording.sentence({**equivalent, "rope": 0.05}, "log_loss", points=False).endswith(
        "the difference, 0.002 (95% CI -0.004 to 0.008, p = 0.410 Holm-adjusted), lies within ±0.05 (paired t-test "
        "over 3 seeds).")
    replicates = {**undecided, "p_outperform": 0.25, "p_outperform_low": 0.0, "p_outperform_high": 0.75,
                  "p_better": 0.05, "p_rope": 0.3, "p_worse": 0.65}
    assert wording.sentence(replicates, "accuracy", points=True).endswith(
        "(paired t-test over 3 seeds). layer_decay outperforms last_n on 25% of the test replicates (95% CI 0% to "
        "75%); posterior probability that it is better by more than 1 point 0.05, within ±1 point 0.30, worse 0.65.")
    worse = {**undecided, "strategy": "full_finetune", "verdict": "worse", "difference": 0.033, "ci_low": 0.021,
             "ci_high": 0.045, "p_holm": 0.003}
    assert wording.sentence(worse, "accuracy", points=True) == (
        "last_n beats full_finetune by 3.3 points of test accuracy (95% CI 2.1 to 4.5, p = 0.003 Holm-adjusted; "
        "paired t-test over 3 seeds).")
    better = {**worse, "strategy": "bitfit", "verdict": "better", "difference": -0.067, "ci_low": -0.090,
              "ci_high": -0.044}
    assert wording.sentence(better, "accuracy", points=True) == (
        "bitfit beats last_n (the validation pick) by 6.7 points of test accuracy (95% CI 4.4 to 9.0, p = 0.003 "
        "Holm-adjusted; paired t-test over 3 seeds): the pick on validation did not hold up on test.")


def test_ranks_and_friedman_across_backbones():
    cells = [_cell(s, [0.9], [t], backbone=b) for b, row in
             (("x", {"p": 0.9, "q": 0.8, "r": 0.7}), ("y", {"p": 0.8, "q": 0.9, "r": 0.7}),
              ("z", {"p": 0.9, "q": 0.7, "r": 0.8}), ("w", {"p": 0.9, "q": 0.8, "r": 0.7})) for s, t in row.items()]
    result = compare.friedman_test(compare.rank_table(cells, ACC), ACC)
    assert result["ranks"] == pytest.approx({"p": 5 / 4, "q": 8 / 4, "r": 11 / 4})
    assert result["statistic"] == pytest.approx(4.5) and result["backbones"] == 4
    assert result["cd"] == pytest.approx(stats.nemenyi_cd(3, 4))
    assert compare.friedman_test(compare.rank_table(cells[:6], ACC), ACC) is None  # 2 backbones: not defined
    assert math.isclose(compare.cell_intervals(cells[:1], ACC).test_accuracy_mean[0], 0.9)


@pytest.mark.parametrize("name", ["accuracy", "log_loss"])
def test_each_verdict_from_seeds_for_a_maximised_and_a_minimised_metric(name):
    """The same data read as an accuracy, and mirrored (1 - x) as a log-loss, where lower is better."""
    flip = (lambda x: x) if name == "accuracy" else (lambda x: 1 - x)

    def cell(strategy, val, tests):
        return _cell(strategy, [flip(val)] * len(tests), [flip(t) for t in tests])

    ref = cell("ref", 0.99, [0.900, 0.910, 0.920])
    others = [cell("same", 0.90, [0.899, 0.911, 0.919]),  # d = 0.001, -0.001, 0.001
              cell("worse", 0.90, [0.800, 0.812, 0.818]),  # d = 0.100, 0.098, 0.102
              cell("better", 0.90, [0.950, 0.962, 0.968]),  # d = -0.050, -0.052, -0.048
              cell("noisy", 0.90, [0.850, 0.950, 0.900]),  # d = 0.050, -0.040, 0.020
              _cell("bare", [flip(0.5)], [flip(0.5)])]  # one model, no predictions: nothing to pair
    table = compare.comparisons([ref, *others], get_metric(name)).set_index("strategy")
    assert table.verdict.to_dict() == {"same": "equivalent", "worse": "worse", "better": "better",
                                       "noisy": "undecided", "bare": "untested"}
    assert table.difference["worse"] == pytest.approx(0.1) and table.difference["better"] == pytest.approx(-0.05)
    # By hand for "same", with m = 4 tests: TOST at 1 - 2 x 0.05/4, detectable at alpha 0.05/4.
    d = np.array([0.001, -0.001, 0.001])
    se = d.std(ddof=1) / math.sqrt(3)
    half = scipy_stats.t.ppf(1 - 0.05 / 4, 2) * se
    assert table.tost_level["same"] == pytest.approx(0.975)
    assert (table.tost_low["same"], table.tost_high["same"]) == (pytest.approx(d.mean() - half),
                                                                 pytest.approx(d.mean() + half))
    assert table.detectable["same"] == pytest.approx(stats.detectable_difference(se, 2, 0.05 / 4))
    assert table.tost_high["same"] < 0.01 and table.detectable["noisy"] > 0.1  # 3 noisy seeds see only large gaps
    assert math.isnan(table.detectable["bare"]) and table.method["bare"] == "not available"


def test_the_bootstrap_detectable_difference_uses_the_bootstrap_sd():
    rng = np.random.default_rng(3)
    right_a = rng.random(500) < 0.9
    right_b = right_a.copy()
    right_b[np.flatnonzero(right_a)[:5]] = False  # b misses 5 more: 1 point
    a = _cell("a", [0.95], [right_a.mean()], predictions=[_predictions(right_a)])
    b = _cell("b", [0.90], [right_b.mean()], predictions=[_predictions(right_b)])
    row = compare.comparisons([a, b], ACC).iloc[0]
    boot = stats.paired_bootstrap(lambda i: float(right_a[i].mean()), lambda i: float(right_b[i].mean()), 500)
    assert row.detectable == pytest.approx((1.959963984540054 + 0.8416212335729143) * boot.se)
    assert (row.tost_low, row.tost_high) == tuple(pytest.approx(q) for q in np.quantile(boot.draws, [0.05, 0.95]))
    # McNemar: all 5 discordant examples go to a, p = 2 / 2^5 = 0.0625: not shown, and 1 point is not within the rope.
    assert row.p == pytest.approx(0.0625) and row.verdict == "undecided"


def test_over_replicates_the_reference_is_chosen_on_the_even_ones_and_tested_on_the_odd_ones():
    """6 replicates, one model each: "lucky" is best on validation of replicates 0, 2, 4, "steady" of all six."""
    lucky = _cell("lucky", [0.95, 0.70, 0.95, 0.70, 0.95, 0.70], [0.80, 0.85, 0.81, 0.86, 0.82, 0.87],
                  replicates=range(6))
    steady = _cell("steady", [0.90, 0.99, 0.90, 0.99, 0.90, 0.99], [0.82, 0.84, 0.80, 0.88, 0.81, 0.87],
                   replicates=range(6))
    assert compare.choose_best([lucky, steady], ACC).strategy == "steady"
    ref = compare.choose_reference([lucky, steady], ACC)
    assert (ref.best.strategy, ref.chosen_on, ref.tested_on) == ("lucky", [0, 2, 4], [1, 3, 5])
    row = compare.comparisons([lucky, steady], ACC, rope=0.01).iloc[0]
    assert (row.best, row.strategy, row.n) == ("lucky", "steady", 3)
    assert row.reference == "best on validation of replicates 0, 2, 4, tested on 1, 3, 5"
    assert row.method == "paired t-test over 3 replicates (1, 3, 5), reference chosen on replicates 0, 2, 4"
    d = np.array([0.85 - 0.84, 0.86 - 0.88, 0.87 - 0.87])  # replicates 1, 3, 5 only
    expected = stats.paired_t([0.85, 0.86, 0.87], [0.84, 0.88, 0.87])
    assert row.difference == pytest.approx(d.mean()) and row.p == pytest.approx(expected.p)
    assert row.p_outperform == pytest.approx((1 + 0.5) / 3)  # steady wins on 3, ties on 5
    assert row.p_outperform_low <= row.p_outperform <= row.p_outperform_high
    posterior = scipy_stats.t(2, d.mean(), d.std(ddof=1) / math.sqrt(3))
    assert row.p_worse == pytest.approx(posterior.sf(0.01)) and row.p_better == pytest.approx(posterior.cdf(-0.01))
    assert row.p_rope == pytest.approx(posterior.cdf(0.01) - posterior.cdf(-0.01))
    assert row.verdict == "undecided"
    text = wording.sentence(row, "accuracy", points=True)
    assert "steady outperforms lucky on 50% of the test replicates" in text


def test_a_cell_stopped_early_keeps_its_comparison_on_the_replicates_it_has():
    """``--replicates auto`` stops a decided-worse cell: the reference is chosen on the even replicates every cell
    has (0, 2), and each pair is tested on the odd ones both cells have."""
    vals = [0.9, 0.8, 0.9, 0.8, 0.9, 0.8]
    best = _cell("best", vals, [0.85, 0.86, 0.84, 0.87, 0.85, 0.86], replicates=range(6))
    close = _cell("close", [v - 0.01 for v in vals], [0.84, 0.85, 0.84, 0.86, 0.85, 0.85], replicates=range(6))
    poor = _cell("poor", [0.5] * 4, [0.60, 0.61, 0.60, 0.62], replicates=range(4))  # stopped after replicate 3
    ref = compare.choose_reference([best, close, poor], ACC)
    assert (ref.best.strategy, ref.chosen_on, ref.tested_on) == ("best", [0, 2], [1, 3])
    rows = compare.comparisons([best, close, poor], ACC).set_index("strategy")
    assert rows.loc["close", "n"] == 3 and rows.loc["close", "difference"] == pytest.approx(np.mean([.01, .01, .01]))
    assert rows.loc["poor", "n"] == 2 and rows.loc["poor", "difference"] == pytest.approx(np.mean([.25, .25]))


def test_replicates_of_a_minimised_metric_turn_the_sign():
    lo = _cell("lo", [0.1, 0.5, 0.1, 0.5], [0.20, 0.30, 0.21, 0.31], replicates=range(4))  # lower is better
    hi = _cell("hi", [0.3, 0.3, 0.3, 0.3], [0.25, 0.40, 0.26, 0.42], replicates=range(4))
    row = compare.comparisons([lo, hi], get_metric("log_loss")).iloc[0]
    assert (row.best, row.strategy) == ("lo", "hi")  # 0.1 < 0.3 on replicates 0, 2 (0.5 on 1, 3 is not looked at)
    assert row.difference == pytest.approx(np.mean([0.40 - 0.30, 0.42 - 0.31])) and row.p_outperform == 0.0


def test_two_replicates_choose_on_one_and_pair_within_the_other():
    rng = np.random.default_rng(4)
    right = {r: rng.random(200) < 0.8 for r in range(2)}
    worse = {r: right[r] & (rng.random(200) < 0.7) for r in range(2)}
    a = _cell("a", [0.9, 0.5], [right[0].mean(), right[1].mean()],
              predictions=[_predictions(right[0]), _predictions(right[1])], replicates=[0, 1])
    b = _cell("b", [0.8, 0.8], [worse[0].mean(), worse[1].mean()],
              predictions=[_predictions(worse[0]), _predictions(worse[1])], replicates=[0, 1])
    row = compare.comparisons([a, b], ACC).iloc[0]
    assert row.best == "a" and row.reference == "best on validation of replicates 0, tested on 1"
    assert row.method == ("McNemar's exact test over 200 test examples (CI: paired bootstrap) in replicate 1, "
                          "reference chosen on replicates 0")
    assert row.difference == pytest.approx(right[1].mean() - worse[1].mean()) and math.isnan(row.p_outperform)


def test_one_replicate_keeps_the_pick_on_validation_and_a_bad_rope_is_refused():
    cells = [_cell("a", [0.9] * 3, [0.90, 0.91, 0.92]), _cell("b", [0.8] * 3, [0.85, 0.86, 0.88])]
    row = compare.comparisons(cells, ACC).iloc[0]
    assert row.reference == "best on validation" and row.method == "paired t-test over 3 seeds"
    assert row.rope == compare.DEFAULT_ROPE == 0.01 and list(compare.comparisons(cells, ACC).columns) == compare.COLUMNS
    with pytest.raises(ValueError, match="rope must be >= 0 .* but got -0.01"):
        compare.comparisons(cells, ACC, rope=-0.01)


def test_across_backbones_pairs_backbone_and_replicate_and_chooses_on_the_even_replicates():
    """2 backbones x 4 replicates: "a" has the better validation on replicates 0 and 2 of both backbones, so it is
    the reference; the test differences are over the 4 (backbone, odd replicate) pairs."""
    from tlkit.analysis.across import across_backbones

    r = range(4)
    cells = [_cell("a", [0.9, 0.1, 0.9, 0.1], [0.80, 0.81, 0.82, 0.83], backbone="x", replicates=r),
             _cell("b", [0.5, 0.9, 0.5, 0.9], [0.70, 0.74, 0.72, 0.70], backbone="x", replicates=r),
             _cell("a", [0.8, 0.1, 0.8, 0.1], [0.60, 0.62, 0.64, 0.66], backbone="y", replicates=r),
             _cell("b", [0.4, 0.9, 0.4, 0.9], [0.50, 0.57, 0.52, 0.60], backbone="y", replicates=r)]
    row = across_backbones(cells, ACC, rope=0.01).iloc[0]
    assert (row.backbone, row.best, row.strategy, row.n) == ("all", "a", "b", 4)
    a, b = [0.81, 0.83, 0.62, 0.66], [0.74, 0.70, 0.57, 0.60]  # (x, 1), (x, 3), (y, 1), (y, 3)
    expected = stats.paired_t(a, b)
    assert row.difference == pytest.approx(np.mean(np.subtract(a, b))) and row.p == pytest.approx(expected.p)
    assert row.method.startswith("paired t-test over 4 (backbone, replicate) pairs (2 backbones x replicates 1, 3)")
    assert across_backbones(cells[:2], ACC).empty  # one backbone: nothing across backbones
    assert across_backbones([_cell("a", [0.9], [0.8], backbone=k) for k in "xy"] +
                            [_cell("b", [0.8], [0.7], backbone=k) for k in "xy"], ACC).empty  # no replicates

"""Budget curves (tlkit.analysis.budget): Dodge et al.'s expected best of n trials, checked by hand and against every
n-tuple of draws."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from tlkit.analysis.budget import budget_curves, budget_verdicts, expected_best, expected_best_sd


def test_expected_best_by_hand():
    values = [0.9, 0.1, 0.5]  # any order
    assert expected_best(values, 1) == pytest.approx(0.5)  # one draw: the mean
    assert expected_best(values, 2) == pytest.approx((0.1 * 1 + 0.5 * 3 + 0.9 * 5) / 9)  # P(max = v_(i)) = (2i-1)/9
    assert expected_best(values, 2, "minimize") == pytest.approx((0.9 * 1 + 0.5 * 3 + 0.1 * 5) / 9)
    assert expected_best_sd(values, 1) == pytest.approx(np.std(values))
    assert expected_best([0.3, 0.3], 5) == pytest.approx(0.3) and expected_best_sd([0.3, 0.3], 5) == 0.0


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
@pytest.mark.parametrize("values", [[0.2, 0.7, 0.4], [0.5, 0.5, 0.1, 0.9], [1.0, 3.0, 2.0, 2.0, 0.5]])
def test_expected_best_equals_every_n_tuple(values, direction):
    best = max if direction == "maximize" else min
    for n in range(1, 5):
        draws = [best(t) for t in itertools.product(values, repeat=n)]
        assert expected_best(values, n, direction) == pytest.approx(np.mean(draws))
        assert expected_best_sd(values, n, direction) == pytest.approx(np.std(draws))


def test_expected_best_only_improves_with_more_trials():
    rng = np.random.default_rng(0)
    values = rng.normal(size=7)
    curve = [expected_best(values, n) for n in range(1, 30)]
    assert all(b >= a for a, b in zip(curve, curve[1:])) and curve[-1] <= values.max()


@pytest.mark.parametrize("bad, message", [({"n": 0}, "n must be >= 1 but got 0"),
                                          ({"direction": "up"}, "direction must be"),
                                          ({"values": []}, "at least one score")])
def test_bad_arguments_say_what_was_wrong(bad, message):
    kwargs = {"values": [0.1], "n": 1, "direction": "maximize", **bad}
    with pytest.raises(ValueError, match=message):
        expected_best(**kwargs)


def _trials() -> pd.DataFrame:
    rows = [("r", "a", 0, "COMPLETE", 0.1), ("r", "a", 1, "COMPLETE", 0.5), ("r", "a", 2, "COMPLETE", 0.9),
            ("r", "a", 3, "PRUNED", 0.99), ("r", "a", 4, "FAIL", None), ("r", "b", 0, "COMPLETE", 0.6),
            ("v", "a", 0, "RUNNING", None)]
    return pd.DataFrame(rows, columns=["backbone", "strategy", "trial", "state", "val_accuracy"])


def test_budget_curves_use_the_complete_trials_of_each_cell():
    curves = budget_curves(_trials(), "accuracy")
    assert list(curves.columns) == ["backbone", "strategy", "trials", "expected_best", "sd", "complete"]
    a = curves[curves["strategy"] == "a"]
    assert a["trials"].tolist() == [1, 2, 3] and set(a["complete"]) == {3}  # the pruned 0.99 is not a draw
    assert a["expected_best"].tolist() == pytest.approx([0.5, 6.1 / 9, expected_best([0.1, 0.5, 0.9], 3)])
    assert curves[curves["strategy"] == "b"][["trials", "expected_best", "sd"]].values.tolist() == [[1, 0.6, 0.0]]
    assert "v" not in set(curves["backbone"])  # no finished trial, no curve
    assert budget_curves(pd.DataFrame(), "accuracy").empty


def test_verdicts_compare_the_last_doubling_with_the_tolerance():
    curves = budget_curves(_trials(), "accuracy")
    gain = expected_best([0.1, 0.5, 0.9], 3) - expected_best([0.1, 0.5, 0.9], 2)  # ceil(3/2) = 2 -> 3
    table = budget_verdicts(curves, {("r", "a"): gain - 1e-9}).set_index("strategy")
    assert table.loc["a", "half"] == 2 and table.loc["a", "gain"] == pytest.approx(gain)
    assert table.loc["a", "verdict"] == "rising" and table.loc["b", "verdict"] == "one trial"
    assert budget_verdicts(curves, {("r", "a"): gain + 1e-9}).set_index("strategy").loc["a", "verdict"] == "flat"
    assert budget_verdicts(curves, {}).set_index("strategy").loc["a", "verdict"] == "no interval"
    lower = budget_curves(_trials().assign(val_accuracy=lambda d: -d["val_accuracy"]), "accuracy", "minimize")
    assert budget_verdicts(lower, {("r", "a"): math.inf}, "minimize").loc[0, "gain"] == pytest.approx(gain)

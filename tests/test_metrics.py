"""Metrics against hand-computed values, their directions, and a lower-is-better metric through a whole sweep."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tlkit.errors import TlkitError
from tlkit.metrics import METRICS, get_metric, list_metrics, register_metric
from tlkit.sweep import main
from tlkit.testing import write_experiment

# Four examples, three classes. Predictions (argmax): 0, 2, 2, 1; labels: 0, 1, 2, 1.
LABELS = np.array([0, 1, 2, 1])
LOGITS = np.array([[2.0, 0.0, 0.0],
                   [0.0, 1.0, 3.0],
                   [0.0, 0.0, 1.0],
                   [0.0, 2.0, 1.0]])


def test_accuracy_balanced_accuracy_and_macro_f1_by_hand():
    assert get_metric("accuracy")(LABELS, LOGITS) == 0.75
    # Recall per class: 0 -> 1/1, 1 -> 1/2, 2 -> 1/1; mean 5/6.
    assert get_metric("balanced_accuracy")(LABELS, LOGITS) == pytest.approx(5 / 6)
    # F1 per class: 0 -> 1; 1 -> precision 1, recall 1/2 -> 2/3; 2 -> precision 1/2, recall 1 -> 2/3.
    assert get_metric("macro_f1")(LABELS, LOGITS) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert get_metric("error_rate")(LABELS, LOGITS) == 0.25


def test_log_loss_by_hand():
    probs = np.exp(LOGITS) / np.exp(LOGITS).sum(axis=1, keepdims=True)
    expected = -np.mean([math.log(probs[i, y]) for i, y in enumerate(LABELS)])
    assert get_metric("log_loss")(LABELS, LOGITS) == pytest.approx(expected, rel=1e-12)
    big = LOGITS * 1000  # no overflow: the logits are shifted before exponentiating
    assert math.isfinite(get_metric("log_loss")(LABELS, big))


def test_top5_accuracy_by_hand():
    logits = np.tile(np.arange(8.0), (3, 1))  # classes 7, 6, 5, 4, 3 are the top five of every row
    labels = np.array([7, 3, 2])
    assert get_metric("top5_accuracy")(labels, logits) == pytest.approx(2 / 3)
    assert get_metric("top5_accuracy").min_classes == 6


def test_directions_and_what_better_means():
    assert {m: get_metric(m).direction for m in list_metrics()} == {
        "accuracy": "maximize", "balanced_accuracy": "maximize", "macro_f1": "maximize",
        "top5_accuracy": "maximize", "error_rate": "minimize", "log_loss": "minimize"}
    assert get_metric("log_loss").better(0.2, 0.3) and not get_metric("accuracy").better(0.2, 0.3)
    assert get_metric("log_loss").worst == math.inf and get_metric("accuracy").worst == -math.inf


def test_registering_a_metric_and_bad_names():
    @register_metric("always_half_test", direction="minimize")
    def always_half(labels, logits):
        return 0.5

    try:
        assert get_metric("always_half_test")(LABELS, LOGITS) == 0.5
        register_metric("always_half_test", direction="minimize")(always_half)  # a file loaded twice: fine
        with pytest.raises(TlkitError, match="already registered"):
            register_metric("always_half_test", direction="maximize")(always_half)
        with pytest.raises(TlkitError, match="direction of metric 'x' must be 'maximize' or 'minimize' but got 'up'"):
            register_metric("x", direction="up")
    finally:
        METRICS._entries.pop("always_half_test", None)
    with pytest.raises(TlkitError, match=r"Unknown metric 'acuracy'\. Did you mean 'accuracy'"):
        get_metric("acuracy")


@pytest.mark.slow
def test_a_lower_is_better_metric_works_end_to_end(tmp_path):
    """With log_loss the studies minimise, each trial's value is its lowest epoch, the cell's best trial is the
    lowest one, and the report's winner is the backbone's lowest."""
    exp = write_experiment(tmp_path, strategies=["linear_probe", "last_n"], trials=3, metric="log_loss",
                           pruner="none", train={"epochs": 3})
    out = tmp_path / "out"
    assert main([str(exp), "--out", str(out), "--quiet"]) == 0
    trials = pd.read_csv(out / "trials.csv")
    history = pd.read_csv(out / "history.csv")
    summary = pd.read_csv(out / "summary.csv").set_index("strategy")
    for row in trials.itertuples():
        epochs = history[(history.strategy == row.strategy) & (history.trial == row.trial)]
        assert row.val_log_loss == pytest.approx(epochs.val_log_loss.min())
        assert row.best_epoch == epochs.val_log_loss.idxmin() - epochs.index[0]
    for strategy, cell in trials.groupby("strategy"):
        assert summary.best_val_log_loss[strategy] == pytest.approx(cell.val_log_loss.min())
        assert summary.best_trial[strategy] == cell.trial[cell.val_log_loss.idxmin()]
    winner = summary.best_val_log_loss.idxmin()
    report = (out / "report.md").read_text()
    assert f"| test_resnet | {winner} |" in report

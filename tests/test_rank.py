"""Ranking backbones before training: each estimator against values worked out independently, a separable feature
set ranked above a random one, Kendall's tau against the fine-tuned order, keep_top_backbones, the CLI and a sweep."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file
from scipy.stats import multivariate_normal

from tlkit.errors import TlkitError
from tlkit.config.experiment import Experiment
from tlkit.metrics import get_metric
from tlkit.analysis.agreement import BEST_ROW, agreement, rank_table
from tlkit.analysis.ranking import h_score, keep_top, knn_accuracy, logme, logme_evidence, score_features
from tlkit.rank import main
from tlkit.testing import write_experiment


def _oracle(features, y, alpha, beta):
    """The log evidence / N of ``y`` under LogME's model, straight from its definition: ``y ~ N(0, I/beta + F F^T /
    alpha)``."""
    n = len(y)
    cov = np.eye(n) / beta + features @ features.T / alpha
    return multivariate_normal.logpdf(y, mean=np.zeros(n), cov=cov) / n


@pytest.mark.parametrize("n, d, duplicate", [(30, 4, False), (25, 6, True), (200, 16, False)])
def test_logme_returns_the_maximum_evidence_and_where_it_is(n, d, duplicate):
    rng = np.random.default_rng(n)
    features = rng.normal(size=(n, d))
    if duplicate:  # rank-deficient features (a repeated dimension), as dead units give
        features[:, -1] = features[:, 0]
    y = (features[:, 0] + rng.normal(scale=0.7, size=n) > 0).astype(float)
    evidence, alpha, beta = logme_evidence(features, y)
    assert evidence == pytest.approx(_oracle(features, y, alpha, beta), rel=1e-9, abs=1e-9)
    for factor in (0.8, 0.97, 1.03, 1.25):  # a maximum: moving either precision lowers the evidence
        assert _oracle(features, y, alpha * factor, beta) < evidence
        assert _oracle(features, y, alpha, beta * factor) < evidence


def test_logme_of_labels_is_the_mean_one_vs_rest_evidence():
    rng = np.random.default_rng(1)
    features, labels = rng.normal(size=(40, 5)), np.repeat([0, 1, 2, 3], 10)
    expected = np.mean([logme_evidence(features, (labels == c).astype(float))[0] for c in range(4)])
    assert logme(features, labels) == pytest.approx(expected, rel=1e-12)


def test_knn_accuracy_by_hand():
    # Class 0 points east (0, 5.7 and 11.3 degrees), class 1 north (90, 88.9 and 78.7 degrees). Cosine similarity
    # orders neighbours by angle and ignores length.
    train = np.array([[1, 0], [10, 1], [1, 0.2], [0, 1], [0.1, 5], [0.2, 1]], dtype=float)
    train_labels = np.array([0, 0, 0, 1, 1, 1])
    # At 1.9 and 87.1 degrees: clear. At 42 degrees ([1, 0.9], labelled 1): its 5 nearest are 30.7, 36.3, 42 degrees
    # away (east) and 36.7, 46.9 (north): 3 votes east, wrong. At 38.7 degrees ([5, 4], labelled 0): east, right.
    val = np.array([[3, 0.1], [0.1, 2], [1, 0.9], [5, 4]])
    val_labels = np.array([0, 1, 1, 0])
    assert knn_accuracy(train, train_labels, val, val_labels, k=5) == pytest.approx(0.75)
    assert knn_accuracy(train, train_labels, val, val_labels, k=1) == pytest.approx(0.75)  # nearest: 11.3 deg
    assert knn_accuracy(train * 7, train_labels, val, val_labels, k=5) == pytest.approx(0.75)


def test_h_score_by_hand():
    # One feature 0, 2 | 4, 6: variance 5, between-class variance 4 (class means 1 and 5 around 3): H = 4/5.
    assert h_score(np.array([[0.0], [2], [4], [6]]), np.array([0, 0, 1, 1]), shrinkage=False) == pytest.approx(0.8)
    # Two features with identity covariance; only the first separates the classes (means +1, -1): H = 1.
    features = np.array([[1.0, 1], [1, -1], [-1, 1], [-1, -1]])
    labels = np.array([0, 0, 1, 1])
    assert h_score(features, labels, shrinkage=False) == pytest.approx(1.0)
    # Ledoit-Wolf shrinks the identity towards itself, so only the (1 - a) factor on the between-class part stays.
    from sklearn.covariance import ledoit_wolf
    shrink = ledoit_wolf(features, assume_centered=True)[1]
    assert h_score(features, labels) == pytest.approx(1.0 - shrink)


def test_a_separable_feature_set_ranks_above_a_random_one():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    val_labels = np.repeat(np.arange(4), 10)

    def separable(y):  # the class is written in the first 4 dimensions, with noise everywhere
        return np.hstack([np.eye(4)[y] * 3, np.zeros((len(y), 4))]) + rng.normal(scale=0.5, size=(len(y), 8))

    rows = [{"backbone": "separable", **score_features(separable(labels), labels, separable(val_labels),
                                                        val_labels)},
            {"backbone": "random", **score_features(rng.normal(size=(120, 8)), labels, rng.normal(size=(40, 8)),
                                                     val_labels)}]
    table = rank_table(rows).set_index("backbone")
    for name in ("logme", "knn_accuracy", "h_score"):
        assert table.loc["separable", name] > table.loc["random", name]
        assert (table.loc["separable", f"{name}_rank"], table.loc["random", f"{name}_rank"]) == (1, 2)
        assert table.loc["separable", f"{name}_s"] >= 0
    assert table.loc["separable", "knn_accuracy"] > 0.9 and table.loc["random", "knn_accuracy"] < 0.6


def test_kendall_tau_compares_each_estimate_with_each_strategy_in_the_metric_direction():
    ranking = rank_table([{"backbone": b, "logme": v, "knn_accuracy": k, "h_score": h}
                          for b, v, k, h in [("a", 3.0, 0.9, 2.0), ("b", 2.0, 0.8, 3.0), ("c", 1.0, 0.7, 1.0)]])
    summary = pd.DataFrame({"backbone": list("abcabc"), "strategy": ["lp"] * 3 + ["ft"] * 3,
                            "test_accuracy_mean": [0.9, 0.8, 0.7, 0.5, 0.6, 0.7],
                            "val_accuracy_mean": [0.80, 0.9, 0.9, 0.95, 0.7, 0.8]})
    tau = agreement(ranking, summary, get_metric("accuracy")).set_index(["strategy", "estimator"])
    assert tau.loc[("lp", "logme"), "kendall_tau"] == pytest.approx(1.0)  # the same order
    assert tau.loc[("ft", "logme"), "kendall_tau"] == pytest.approx(-1.0)  # reversed
    assert tau.loc[("lp", "h_score"), "kendall_tau"] == pytest.approx(1 / 3)  # pairs ac, bc agree, ab not: (2 - 1) / 3
    assert tau.loc[("lp", "logme"), "backbones"] == 3
    # Each backbone's best strategy chosen on validation (a: ft, b: lp, c: lp), scored on test: a 0.5, b 0.8, c 0.7.
    # Against LogME's a > b > c: ab and ac disagree, bc agrees: (1 - 2) / 3. (Chosen on test it would be 1.0.)
    assert tau.loc[(BEST_ROW, "logme"), "kendall_tau"] == pytest.approx(-1 / 3)
    # An error rate is better low: the same numbers read as errors reverse every tau.
    errors = summary.rename(columns={"test_accuracy_mean": "test_error_rate_mean",
                                     "val_accuracy_mean": "val_error_rate_mean"})
    flipped = agreement(ranking, errors, get_metric("error_rate")).set_index(["strategy", "estimator"])
    assert flipped.loc[("lp", "logme"), "kendall_tau"] == pytest.approx(-1.0)


def _exp(**fields) -> Experiment:
    return Experiment(backbones=["test_resnet", "test_vit", "test_efficientnet"], strategies=["linear_probe"],
                      **fields)


def test_keep_top_backbones_keeps_the_best_by_logme_and_says_why_the_rest_went():
    ranking = rank_table([{"backbone": b, "logme": v, "knn_accuracy": 0.5, "h_score": 1.0}
                          for b, v in [("test_resnet", -0.9), ("test_vit", -0.2), ("test_efficientnet", -0.5)]])
    kept, dropped = keep_top(_exp(keep_top_backbones=2), ranking)
    assert kept == ["test_vit", "test_efficientnet"]  # in the experiment's order
    assert list(dropped) == ["test_resnet"]
    assert "LogME rank 3 of 3" in dropped["test_resnet"] and "keep_top_backbones=2" in dropped["test_resnet"]
    assert keep_top(_exp(), ranking) == (["test_resnet", "test_vit", "test_efficientnet"], {})
    assert keep_top(_exp(keep_top_backbones=5), ranking)[1] == {}


@pytest.mark.parametrize("fields, message", [({"keep_top_backbones": 0}, "keep_top_backbones must be None or an int"),
                                             ({"keep_top_backbones": 2, "pretrained": False}, "pretrained=False")])
def test_keep_top_backbones_is_checked(fields, message):
    with pytest.raises(TlkitError, match=message):
        _exp(**fields)


def _weights(tmp_path, arch: str, seed: int) -> str:
    torch.manual_seed(seed)
    path = tmp_path / f"{arch}.safetensors"
    save_file(timm.create_model(arch, num_classes=10).state_dict(), str(path))
    return f"{arch}={path}"


def test_the_cli_ranks_every_backbone_without_training(tmp_path, capsys):
    exp = write_experiment(tmp_path, backbones=["test_resnet", "test_vit"], pretrained=True)
    args = [str(exp), "--out", str(tmp_path / "out"), "--set", "data.train_per_class=30", "--set",
            "train.image_size=32"]
    for i, arch in enumerate(["test_resnet", "test_vit"]):
        args += ["--weights", _weights(tmp_path, arch, i)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ranked before training" in printed and "Nothing was trained" in printed
    ranking = pd.read_csv(tmp_path / "out" / "ranking.csv")
    assert sorted(ranking["backbone"]) == ["test_resnet", "test_vit"]
    assert set(ranking["logme_rank"]) == {1, 2} and (ranking["seconds"] > 0).all()
    assert (ranking["train_images"] < 5 * 30).all() and (ranking["feature_dim"] > 0).all()  # 25% held out
    assert not list((tmp_path / "out").glob("trials"))  # nothing trained, no study


def test_the_cli_refuses_random_weights(tmp_path, capsys):
    assert main([str(write_experiment(tmp_path))]) == 2
    assert "pretrained=False" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sweep_ranks_keeps_the_top_backbones_and_reports_how_well_the_ranking_predicted(tmp_path):
    import tlkit
    from tlkit.testing import run_tiny_sweep

    weights = dict(_weights(tmp_path, arch, i).split("=") for i, arch in
                   enumerate(["test_resnet", "test_vit", "test_efficientnet"]))
    out = run_tiny_sweep(tmp_path, tmp_path / "cache", backbones=list(weights), weights=weights, pretrained=True,
                         keep_top_backbones=2, strategies=["linear_probe", "lora"],
                         train={"epochs": 1, "max_batches": 2, "image_size": 32})
    ranking = pd.read_csv(out / "ranking.csv")
    assert len(ranking) == 3 and ranking["searched"].sum() == 2
    dropped = ranking.loc[~ranking["searched"], "backbone"].item()
    assert ranking.loc[~ranking["searched"], "logme_rank"].item() == 3
    summary = pd.read_csv(out / "summary.csv")
    assert dropped not in set(summary["backbone"]) and len(summary) == 4
    report = (out / "report.md").read_text()
    assert "## Ranking before training" in report and f"{dropped}: LogME rank 3 of 3" in report
    assert "Partial results" not in report
    tau = pd.read_csv(out / "rank_agreement.csv")
    assert set(tau["strategy"]) >= {"linear_probe", "lora"} and (tau["backbones"] == 2).all()
    assert tau["kendall_tau"].dropna().between(-1, 1).all()  # NaN when two cells tie (tiny, barely trained)
    kept = ranking.loc[ranking["searched"], "backbone"].iloc[0]
    model = tlkit.load_best(out, backbone=kept, strategy="lora")  # merged: a plain timm model
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert type(model) is type(timm.create_model(kept, num_classes=5))
    with torch.no_grad():
        assert math.isfinite(float(model(torch.zeros(2, 3, 32, 32)).sum()))


def test_a_sweep_of_one_backbone_ranks_nothing(tmp_path):
    """One backbone has no order to predict: the sweep goes straight to training (no features, no ranking.csv),
    while two backbones are ranked (the test above)."""
    from tlkit.config.loading import load_experiment
    from tlkit.sweep import rank_in_sweep

    exp = load_experiment(write_experiment(tmp_path, backbones=["test_resnet"], pretrained=True))
    unused = object()  # neither the splits nor the weights may be touched
    assert rank_in_sweep(exp, unused, unused, torch.device("cpu"), tmp_path / "out") is exp
    assert not (tmp_path / "out" / "ranking.csv").exists()


def test_an_out_that_is_a_file_is_refused_before_any_ranking(tmp_path, capsys, monkeypatch):
    import tlkit.rank

    exp, taken = write_experiment(tmp_path, pretrained=True), tmp_path / "ranking.txt"
    taken.write_text("mine")
    monkeypatch.setattr(tlkit.rank, "prepare", lambda *a, **k: pytest.fail("the data was loaded first"))
    assert main([str(exp), "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert f"The --out folder '{taken}' cannot be made: '{taken}' is a file, not a folder" in err
    assert "HINT: pass --out with a folder you can write" in err and "Traceback" not in err
    assert taken.read_text() == "mine"

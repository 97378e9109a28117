"""The ranking's tables without its estimators: the names of its files and columns, the rank table, and how well
it predicted the fine-tuned order (Kendall's tau against the summary's test scores).

Apart from ``ranking.py`` (which needs torch and timm for the frozen features) so that ``python -m tlkit.report``
reads ``ranking.csv`` and writes ``rank_agreement.csv`` with pandas and SciPy only. ``tlkit.analysis.ranking``
re-exports every name here.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import pandas as pd

from tlkit.metrics import Metric

__all__ = ["ESTIMATORS", "KNN_K", "RANKING", "AGREEMENT", "BEST_ROW", "rank_table", "agreement"]

ESTIMATORS = {"logme": "LogME", "knn_accuracy": "kNN accuracy", "h_score": "H-score"}
"""Column name -> display name; every estimator is higher-is-better."""
KNN_K = 5
RANKING = "ranking.csv"
AGREEMENT = "rank_agreement.csv"


def rank_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per backbone with each estimator's rank beside it (1 = most promising; ties share the better rank,
    a missing value ranks last), sorted by LogME's rank."""
    table = pd.DataFrame(list(rows))
    for name in ESTIMATORS:
        table[f"{name}_rank"] = table[name].rank(ascending=False, method="min", na_option="bottom").astype(int)
    first = ["backbone", *(c for name in ESTIMATORS for c in (name, f"{name}_rank"))]
    table = table[first + [c for c in table.columns if c not in first]]
    return table.sort_values(["logme_rank", "backbone"], kind="stable").reset_index(drop=True)


# --- after the sweep: did the ranking predict the fine-tuned order? --------------------------------------------------

BEST_ROW = "best strategy of each backbone (chosen on validation)"


def _best_on_validation(summary: pd.DataFrame, column: str, metric: Metric, sign: float
                        ) -> list[tuple[str, pd.Series]]:
    """``[(BEST_ROW, test score of each backbone's validation pick)]``, or ``[]`` without validation scores."""
    val = f"val_{metric.name}_mean"
    if val not in summary:
        return []
    rows = summary.dropna(subset=[column, val]).assign(
        _val=lambda d: -sign * d[val], _params=lambda d: d["trainable_params"] if "trainable_params" in d else 0)
    picked = rows.sort_values(["backbone", "_val", "_params", "strategy"], kind="stable").groupby("backbone").head(1)
    return [(BEST_ROW, picked.set_index("backbone")[column] * sign)]


def agreement(ranking: pd.DataFrame, summary: pd.DataFrame, metric: Metric) -> pd.DataFrame:
    """Kendall's tau over backbones between each estimator and each strategy's mean test score (oriented so that
    higher is better), and the same against the test score of each backbone's best strategy, chosen on validation
    as everywhere else (``val_<metric>_mean``; ties: fewer trainable parameters, then the name), never on the test
    scores it is then read from; with its two-sided p-value and the number of backbones (at least 2 with both
    numbers, else no row)."""
    from scipy.stats import kendalltau

    columns = ["strategy", "estimator", "kendall_tau", "p_value", "backbones"]
    column = next((c for c in (f"test_{metric.name}_mean", f"test_{metric.name}") if c in summary), None)
    if column is None or summary.empty or ranking.empty:
        return pd.DataFrame(columns=columns)
    sign = -1.0 if metric.direction == "minimize" else 1.0
    scores = summary[["backbone", "strategy", column]].dropna()
    per_strategy = [(s, g.set_index("backbone")[column] * sign) for s, g in scores.groupby("strategy", sort=False)]
    rows = []
    for strategy, finetuned in [*per_strategy, *_best_on_validation(summary, column, metric, sign)]:
        estimates = ranking.set_index("backbone").reindex(finetuned.index)
        for name in ESTIMATORS:
            both = pd.concat([estimates[name], finetuned], axis=1).dropna()
            if len(both) < 2:
                continue
            with warnings.catch_warnings():  # a constant column (tied scores) gives NaN, which the table shows
                warnings.simplefilter("ignore")
                tau, p = kendalltau(both.iloc[:, 0], both.iloc[:, 1])
            rows.append({"strategy": strategy, "estimator": name, "kendall_tau": float(tau), "p_value": float(p),
                         "backbones": len(both)})
    return pd.DataFrame(rows, columns=columns)

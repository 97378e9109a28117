"""Budget curves (Dodge et al. 2019, "Show your work"): the expected best validation score of a cell's search as a
function of how many trials it had, computed from the trials it already ran.

A best-so-far curve depends on the order the sampler happened to try configurations in; the expected maximum does
not. With a cell's ``N`` finished validation scores sorted ``v_(1) <= ... <= v_(N)``, the best of ``n`` trials drawn
from them with replacement is ``v_(i)`` with probability ``(i/N)^n - ((i-1)/N)^n`` (Dodge et al., eq. 1), so

    E[best of n] = sum_i v_(i) * ((i/N)^n - ((i-1)/N)^n),

and its standard deviation follows from the same weights. For a minimised metric the order is reversed (the expected
minimum). Only COMPLETE trials count: a pruned trial's score is from an epoch where the pruner stopped it, not a
finished configuration's, and a failed one has none.

Whether the budget was enough is judged from the curve's last doubling: the gain from ``ceil(N/2)`` to ``N``
trials. If it is smaller than the half-width of the cell's 95% test interval, another doubling would likely move
the cell by less than the comparison can resolve ("flat"); otherwise more trials may still change it ("rising").

Example:
    >>> expected_best([0.1, 0.5, 0.9], 2)  # (0.1 * 1 + 0.5 * 3 + 0.9 * 5) / 9
    0.6777777777777778
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["expected_best", "expected_best_sd", "budget_curves", "budget_verdicts", "BUDGET", "COLUMNS",
           "VERDICT_COLUMNS"]

BUDGET = "budget.csv"

COLUMNS = ["backbone", "strategy", "trials", "expected_best", "sd", "complete"]
VERDICT_COLUMNS = ["backbone", "strategy", "complete", "half", "at_half", "at_full", "gain", "tolerance", "verdict"]


def _weights(values: Sequence[float], n: int, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """The scores sorted worst to best, and the probability that each is the best of ``n`` draws."""
    if n < 1:
        raise ValueError(f"n must be >= 1 but got {n}.")
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize' but got {direction!r}.")
    v = np.sort(np.asarray(values, dtype=np.float64))
    if len(v) == 0:
        raise ValueError("values must hold at least one score but got none.")
    if direction == "minimize":
        v = v[::-1]
    return v, np.diff((np.arange(len(v) + 1) / len(v)) ** n)


def expected_best(values: Sequence[float], n: int, direction: str = "maximize") -> float:
    """The expected best of ``n`` trials drawn with replacement from ``values`` (Dodge et al. 2019, eq. 1)."""
    v, w = _weights(values, n, direction)
    return float(v @ w)


def expected_best_sd(values: Sequence[float], n: int, direction: str = "maximize") -> float:
    """The standard deviation of that best: how much a search of ``n`` trials could land above or below it."""
    v, w = _weights(values, n, direction)
    mean = float(v @ w)
    return math.sqrt(max(float((v - mean) ** 2 @ w), 0.0))


def budget_curves(trials: pd.DataFrame, metric: str, direction: str = "maximize") -> pd.DataFrame:
    """One row per cell and number of trials ``1..N`` (``N``: the cell's COMPLETE trials, column ``complete``),
    from ``trials.csv``'s rows: ``expected_best`` and ``sd`` of the best ``val_<metric>`` of that many trials."""
    column = f"val_{metric}"
    if trials.empty or column not in trials:
        return pd.DataFrame(columns=COLUMNS)
    done = trials[(trials["state"] == "COMPLETE") & trials[column].notna()]
    rows = []
    for (backbone, strategy), cell in done.groupby(["backbone", "strategy"], sort=True):
        values = cell[column].astype(float).tolist()
        for n in range(1, len(values) + 1):
            rows.append({"backbone": backbone, "strategy": strategy, "trials": n,
                         "expected_best": expected_best(values, n, direction),
                         "sd": expected_best_sd(values, n, direction), "complete": len(values)})
    return pd.DataFrame(rows, columns=COLUMNS)


def budget_verdicts(curves: pd.DataFrame, tolerance: dict[tuple[str, str], float], direction: str = "maximize"
                    ) -> pd.DataFrame:
    """Per cell: the expected best at ``half = ceil(N/2)`` and at ``N`` trials, the ``gain`` between them (positive:
    better), and ``verdict``: "rising" when the gain is at least ``tolerance[(backbone, strategy)]`` (the report
    passes the half-width of the cell's test interval), "flat" when it is less, "one trial" with ``N = 1``, and
    "no interval" without a tolerance."""
    sign = -1.0 if direction == "minimize" else 1.0
    rows = []
    for (backbone, strategy), cell in curves.groupby(["backbone", "strategy"], sort=False):
        by_n = cell.set_index("trials")["expected_best"]
        full = int(cell["complete"].iloc[0])
        half = math.ceil(full / 2)
        gain = sign * (by_n[full] - by_n[half])
        tol = tolerance.get((backbone, strategy), math.nan)
        verdict = ("one trial" if full == 1 else "no interval" if not np.isfinite(tol) else
                   "rising" if gain >= tol else "flat")
        rows.append({"backbone": backbone, "strategy": strategy, "complete": full, "half": half,
                     "at_half": float(by_n[half]), "at_full": float(by_n[full]), "gain": float(gain),
                     "tolerance": tol, "verdict": verdict})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)

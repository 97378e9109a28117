"""A comparison in plain words: one sentence per row of ``comparisons.csv`` (``tlkit.analysis.compare``) that says
what a reader may conclude, with its interval and its Holm-adjusted p-value, and the rope in the metric's words."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from tlkit.analysis.compare import ALPHA

__all__ = ["sentence", "rope_text"]


def _amount(x: float, points: bool) -> str:
    return f"{100 * x:.1f} points" if points else f"{x:.3g}"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def rope_text(rope: float, points: bool) -> str:
    """``±1 point`` for a rope of 0.01 in points (an accuracy), ``±0.01`` otherwise."""
    if not points:
        return f"±{rope:.3g}"
    value = f"{100 * rope:.3g}"
    return f"±{value} point{'' if value == '1' else 's'}"


def _level(level: float) -> str:
    return f"{100 * level:.3g}%"


def sentence(row: Any, metric: str, points: bool) -> str:
    """One comparison in plain words, with its interval and Holm-adjusted p-value (and, over replicates, how often
    the other outperforms the reference)."""
    if row["verdict"] == "untested":
        return f"{row['best']} vs {row['strategy']}: not tested ({row['method']})."
    words = {"worse": _worse, "better": _better, "equivalent": _equivalent, "undecided": _undecided}
    return words[row["verdict"]](row, metric, points) + _replicate_words(row, points)


def _worse(row: Any, metric: str, points: bool) -> str:
    amount, low, high = (_amount(row[k], points) for k in ("difference", "ci_low", "ci_high"))
    return (f"{row['best']} beats {row['strategy']} by {amount} of test {metric} (95% CI {low.split()[0]} to "
            f"{high.split()[0]}, {_p(row['p_holm'])} Holm-adjusted; {row['method']}).")


def _better(row: Any, metric: str, points: bool) -> str:
    amount, low, high = (_amount(-row[k], points) for k in ("difference", "ci_high", "ci_low"))
    return (f"{row['strategy']} beats {row['best']} (the validation pick) by {amount} of test {metric} "
            f"(95% CI {low.split()[0]} to {high.split()[0]}, {_p(row['p_holm'])} Holm-adjusted; "
            f"{row['method']}): the pick on validation did not hold up on test.")


def _equivalent(row: Any, metric: str, points: bool) -> str:
    amount, low, high = (_amount(row[k], points) for k in ("difference", "tost_low", "tost_high"))
    interval = f"{_level(row['tost_level'])} CI {low.split()[0]} to {high.split()[0]}"
    within = f"lies within {rope_text(row['rope'], points)}"
    if row["p_holm"] < ALPHA and row["difference"] != 0:
        within = (f"is real ({_p(row['p_holm'])} Holm-adjusted) but {within}, smaller than what was set to "
                  f"matter")
    else:
        interval += f", {_p(row['p_holm'])} Holm-adjusted"
    return (f"{row['best']} and {row['strategy']} are practically equivalent on test {metric}: the difference, "
            f"{amount} ({interval}), {within} ({row['method']}).")


def _undecided(row: Any, metric: str, points: bool) -> str:
    amount, low, high = (_amount(row[k], points) for k in ("difference", "ci_low", "ci_high"))
    return (f"{row['best']} vs {row['strategy']}: undecided on test {metric}: the difference, {amount} (95% CI "
            f"{low.split()[0]} to {high.split()[0]}, {_p(row['p_holm'])} Holm-adjusted), is neither shown to be "
            f"real nor shown to lie within {rope_text(row['rope'], points)}; the study could have detected differences "
            f"of about {_amount(row['detectable'], points)} ({row['method']}).")


def _replicate_words(row: Any, points: bool) -> str:
    if pd.isna(row.get("p_outperform", math.nan)):
        return ""
    return (f" {row['strategy']} outperforms {row['best']} on {row['p_outperform']:.0%} of the test replicates "
            f"(95% CI {row['p_outperform_low']:.0%} to {row['p_outperform_high']:.0%}); posterior probability "
            f"that it is better by more than {rope_text(row['rope'], points)[1:]} {row['p_better']:.2f}, within "
            f"{rope_text(row['rope'], points)} {row['p_rope']:.2f}, worse {row['p_worse']:.2f}.")

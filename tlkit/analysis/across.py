"""Strategies compared across backbones, over replicates: is one strategy better than another for *these*
backbones, not only for one of them? The units are (backbone, replicate) pairs: each is a whole rerun of the study on
one backbone, and both strategies of a pair share its split, search seed and training seeds, so the differences are
paired. As within a backbone (``tlkit.analysis.compare``), the reference is chosen without the replicates it is
tested on: the strategy with the best mean validation score over every backbone's even-numbered replicates, tested on
the odd-numbered ones. The pairs of one replicate share its train/validation split across backbones, so they are not
independent of each other: the interval is a little narrow where backbones agree for the split's sake.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tlkit.analysis import stats
from tlkit.analysis.compare import (ALPHA, COLUMNS, DEFAULT_ROPE, CellScores, comparison_numbers, metric_sign,
                                    replicate_mean)
from tlkit.metrics import Metric

__all__ = ["across_backbones", "ACROSS"]

ACROSS = "across_backbones.csv"


def across_backbones(cells: list[CellScores], metric: Metric, rope: float = DEFAULT_ROPE) -> pd.DataFrame:
    """Every strategy that all backbones have against the reference, paired over (backbone, odd replicate) pairs,
    Holm-corrected over the strategies, with the columns and verdicts of ``comparisons`` (``backbone`` is ``all``).
    Empty with fewer than 2 backbones, or without an even and an odd replicate common to every cell."""
    backbones = sorted({c.backbone for c in cells})
    by_cell = {(c.backbone, c.strategy): c for c in cells if c.scored}
    strategies = [s for s in dict.fromkeys(c.strategy for c in cells)
                  if all((b, s) in by_cell for b in backbones)]
    mine = [by_cell[(b, s)] for b in backbones for s in strategies]
    if len(backbones) < 2 or len(strategies) < 2:
        return pd.DataFrame(columns=COLUMNS)
    common = sorted(set.intersection(*({m.replicate for m in c.scored} for c in mine)))
    chosen_on, tested_on = [r for r in common if r % 2 == 0], [r for r in common if r % 2]
    if not chosen_on or not tested_on:
        return pd.DataFrame(columns=COLUMNS)
    sign = metric_sign(metric)
    val = {s: np.mean([_replicate_val(by_cell[(b, s)], r) for b in backbones for r in chosen_on]) for s in strategies}
    best = max(strategies, key=lambda s: (sign * val[s], -strategies.index(s)))
    units = [(b, r) for b in backbones for r in tested_on]
    tests = {}
    for s in (s for s in strategies if s != best):
        a = [sign * replicate_mean(by_cell[(b, best)], r) for b, r in units]
        o = [sign * replicate_mean(by_cell[(b, s)], r) for b, r in units]
        tests[s] = stats.paired_t(a, o, unit=f"(backbone, replicate) pairs ({len(backbones)} backbones x replicates "
                                             f"{', '.join(map(str, tested_on))})") if len(units) >= 2 else None
    tested = [t for t in tests.values() if t is not None]
    adjusted = iter(stats.holm([t.p for t in tested]))
    level = ALPHA / max(len(tested), 1)
    reference = (f"best mean validation over the backbones' replicates {', '.join(map(str, chosen_on))}, tested on "
                 f"{', '.join(map(str, tested_on))}")
    rows = [{"backbone": "all", "best": best, "reference": reference, "strategy": s,
             **comparison_numbers(t, next(adjusted) if t is not None else math.nan, level, rope)}
            for s, t in tests.items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def _replicate_val(cell: CellScores, replicate: int) -> float:
    return float(np.mean([m.val for m in cell.scored if m.replicate == replicate]))

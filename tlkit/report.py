"""Tables from the study storage (the source of truth): ``trials.csv`` and ``summary.csv``.

``python -m tlkit.report results/<study>`` rebuilds them; running it twice gives byte-identical files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from tlkit.study import cell_studies

__all__ = ["trials_table", "summary_table", "write_tables", "write_csv"]


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Atomically: a reader never sees half a table."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _studies(storage: Any, study: str) -> list[optuna.Study]:
    return [optuna.load_study(study_name=name, storage=storage) for name in sorted(cell_studies(storage, study))]


def trials_table(storage: Any, study: str, metric: str) -> pd.DataFrame:
    """One row per trial of every cell."""
    rows = []
    for s in _studies(storage, study):
        for t in s.get_trials(deepcopy=False):
            u = t.user_attrs
            rows.append({
                "backbone": s.user_attrs.get("backbone"), "strategy": s.user_attrs.get("strategy"),
                "trial": t.number, "state": t.state.name, f"val_{metric}": t.value,
                **{f"params_{k}": v for k, v in sorted(t.params.items())},
                "epochs_run": u.get("epochs_run", 0), "best_epoch": u.get("best_epoch"),
                "trainable_params": u.get("trainable_params"), "total_params": u.get("total_params"),
                "wall_time_s": u.get("wall_time"), "resumed_from_trial": u.get("resumed_from_trial"),
                "resumed_from_epoch": u.get("resumed_from_epoch"),
                "note": u.get("pruned_reason") or u.get("failure_reason") or "",
                "weights": u.get("weights"), "bn_policy": u.get("bn_policy"),
            })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    fixed = [c for c in df.columns if not c.startswith("params_")]
    params = sorted(c for c in df.columns if c.startswith("params_"))
    order = fixed[:5] + params + fixed[5:]
    return df[order].sort_values(["backbone", "strategy", "trial"], kind="stable").reset_index(drop=True)


def summary_table(storage: Any, study: str, metric: str) -> pd.DataFrame:
    """One row per (backbone, strategy) cell: budget spent, the best trial, and its test score."""
    rows = []
    for s in _studies(storage, study):
        trials = s.get_trials(deepcopy=False)
        count = {state: sum(t.state == state for t in trials) for state in TrialState}
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: t.value) if complete else None
        test = s.user_attrs.get("best_test") or {}
        ok = best is not None and test.get("trial") == best.number
        rows.append({
            "backbone": s.user_attrs.get("backbone"), "strategy": s.user_attrs.get("strategy"),
            "trials_complete": count[TrialState.COMPLETE], "trials_pruned": count[TrialState.PRUNED],
            "trials_failed": count[TrialState.FAIL],
            "best_trial": best.number if best else None, f"best_val_{metric}": best.value if best else None,
            f"test_{metric}": test.get("test_metric") if ok else None,
            "test_loss": test.get("test_loss") if ok else None,
            "trainable_params": best.user_attrs.get("trainable_params") if best else None,
            "total_params": best.user_attrs.get("total_params") if best else None,
            "train_time_s": best.user_attrs.get("wall_time") if best else None,
            "cell_time_s": round(sum(t.user_attrs.get("wall_time") or 0.0 for t in trials), 3),
            "best_params": json.dumps(best.params, sort_keys=True) if best else "",
            "weights": best.user_attrs.get("weights") if best else None,
        })
    return pd.DataFrame(rows)


def write_tables(out: Path, storage: Any, study: str, metric: str) -> None:
    out = Path(out)
    write_csv(trials_table(storage, study, metric), out / "trials.csv")
    write_csv(summary_table(storage, study, metric), out / "summary.csv")

"""The tables of a results folder, built from the study storage (the source of truth, shared by every worker).

``trials.csv`` (one row per search trial), ``history.csv`` (one row per trial and epoch), ``repeats.csv`` (one row
per cell and seed of the repeat runs), ``predictions.csv`` (one row per scored model and test example) and
``summary.csv`` (one row per cell, with its interval); ``load_cells`` gives ``tlkit.analysis.compare`` what it tests.
Rows are sorted and numbers kept as they are stored, so the same storage always gives the same files.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from tlkit.analysis import compare
from tlkit.search import _optuna
from tlkit.utils.files import atomic_write
from tlkit.metrics import Predictions
from tlkit.search.records import SOUP_KINDS, SOUPS, all_params, current_repeats, repeats_study_name
from tlkit.search.queue import NONE_LEFT
from tlkit.search.study import Cell, cell_studies, replicate_seed, study_cell

__all__ = ["write_csv", "trials_table", "history_table", "repeats_table", "predictions_table", "summary_table",
           "load_cells", "search_studies"]


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Atomically: a reader never sees half a table."""
    atomic_write(Path(path), lambda tmp: df.to_csv(tmp, index=False, lineterminator="\n"))


def search_studies(storage: Any, study: str, replicate: int | None = None) -> list[optuna.Study]:
    """The cells' search studies, every replicate's (``replicate`` None) or one replicate's, by name (a cell's
    replicates follow it)."""
    return [optuna.load_study(study_name=name, storage=storage) for name, summary in
            sorted(cell_studies(storage, study).items()) if replicate in (None, study_cell(summary).replicate)]


def _with_replicates(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Rows sorted by ``by``; the ``replicate`` column is kept (after ``strategy``) only when the study has
    replicates beyond the first, so a study run once gives the same table as before replicates existed."""
    if df.empty or "replicate" not in df.columns:
        return df
    if not (df["replicate"] > 0).any():
        return df.drop(columns="replicate").sort_values(list(by), kind="stable").reset_index(drop=True)
    columns = [c for c in df.columns if c != "replicate"]
    at = columns.index("strategy") + 1
    df = df[columns[:at] + ["replicate"] + columns[at:]]
    keys = list(by)
    keys.insert(keys.index("strategy") + 1, "replicate")
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def _best(s: optuna.Study) -> FrozenTrial | None:
    """Optuna's own best trial, so the table names the same trial ``evaluate_best`` scored on the test split."""
    try:
        return s.best_trial
    except ValueError:
        return None


def _ints(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Counts stay integers in the CSV (``12``, not ``12.0``) even when some rows have none."""
    for c in columns:
        if c in df.columns:
            df[c] = df[c].astype("Int64")
    return df


def trials_table(storage: Any, study: str, metric: str) -> pd.DataFrame:
    """One row per trial of every cell (a budget's queued, not yet started trials are not rows)."""
    rows = []
    for s in search_studies(storage, study):
        for t in s.get_trials(deepcopy=False):
            if t.state == TrialState.WAITING:
                continue
            u = t.user_attrs
            rows.append({
                "backbone": s.user_attrs.get("backbone"), "strategy": s.user_attrs.get("strategy"),
                "replicate": s.user_attrs.get("replicate", 0),
                "trial": t.number, "state": t.state.name, f"val_{metric}": t.value,
                **{f"params_{k}": v for k, v in sorted(all_params(t).items())},
                "epochs_run": u.get("epochs_run", 0), "best_epoch": u.get("best_epoch"),
                "trainable_params": u.get("trainable_params"), "total_params": u.get("total_params"),
                "wall_time_s": u.get("wall_time"), "resumed_from_trial": u.get("resumed_from_trial"),
                "resumed_from_epoch": u.get("resumed_from_epoch"),
                "note": u.get("pruned_reason") or u.get("failure_reason") or (
                    ("opened after another worker took the last queued trial; not trained"
                     if u.get("duplicate_of") == NONE_LEFT else
                     f"duplicate of trial {u['duplicate_of']} (queued twice by two workers; not trained)")
                    if "duplicate_of" in u else ""),
                "weights": u.get("weights"), "run": u.get("run", t.number),
            })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    fixed = [c for c in df.columns if not c.startswith("params_")]
    params = sorted(c for c in df.columns if c.startswith("params_"))
    order = fixed[:6] + params + fixed[6:]
    df = _with_replicates(df[order], ["backbone", "strategy", "trial"])
    return _ints(df, ["epochs_run", "best_epoch", "trainable_params", "total_params", "resumed_from_trial",
                      "resumed_from_epoch", "run"])


def history_table(storage: Any, study: str, metric: str) -> pd.DataFrame:
    """One row per epoch of every trial: losses, metric, per-group learning rates, trainable params, images/s.

    A trial that resumed another (after a crash) carries the epochs it inherited, so each trial's rows are its
    whole learning curve.
    """
    rows = []
    for s in search_studies(storage, study):
        for t in s.get_trials(deepcopy=False):
            for epoch in t.user_attrs.get("history") or []:
                row = {"backbone": s.user_attrs.get("backbone"), "strategy": s.user_attrs.get("strategy"),
                       "replicate": s.user_attrs.get("replicate", 0), "trial": t.number, "state": t.state.name,
                       **epoch}
                row[f"val_{metric}"] = row.pop("val_metric")
                rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    lrs = sorted((c for c in df.columns if c.startswith("lr_group")), key=lambda c: int(c[len("lr_group"):]))
    order = ["backbone", "strategy", "replicate", "trial", "state", "epoch", "train_loss", "val_loss",
             f"val_{metric}", *lrs, "trainable_params", "images_per_s", "seconds", "features_cached"]
    df = _with_replicates(df[[c for c in order if c in df.columns]], ["backbone", "strategy", "trial", "epoch"])
    return _ints(df, ["epoch", "trainable_params"])


def _repeats_study(storage: Any, study: str, cell: Cell) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=repeats_study_name(study, cell), storage=storage)
    except KeyError:
        return None  # no repeats yet


def _config_run(best: FrozenTrial | None) -> int | None:
    return best.user_attrs.get("run", best.number) if best is not None else None


def _cell_repeats(storage: Any, study: str, s: optuna.Study) -> list[FrozenTrial]:
    """The cell's repeat trials of its current best configuration, by seed index."""
    best = _best(s)
    repeats = _repeats_study(storage, study, study_cell(s))
    if best is None or repeats is None:
        return []
    by_index = current_repeats(repeats, _config_run(best))
    return [by_index[i] for i in sorted(by_index)]


def repeats_table(storage: Any, study: str, metric: str) -> pd.DataFrame:
    """One row per cell and seed: the best configuration trained again; validation and test metric, time."""
    rows = []
    for s in search_studies(storage, study):
        for t in _cell_repeats(storage, study, s):
            u = t.user_attrs
            rows.append({"backbone": s.user_attrs.get("backbone"), "strategy": s.user_attrs.get("strategy"),
                         "replicate": s.user_attrs.get("replicate", 0), "repeat": u.get("repeat"), "seed": u.get("seed"), "config_trial": u.get("config_trial"),
                         "state": t.state.name, f"val_{metric}": t.value, f"test_{metric}": u.get("test_metric"),
                         "test_loss": u.get("test_loss"), "epochs_run": u.get("epochs_run"),
                         "best_epoch": u.get("best_epoch"), "wall_time_s": u.get("wall_time"),
                         "resumed_from_trial": u.get("resumed_from_trial"),
                         "note": u.get("pruned_reason") or u.get("failure_reason") or ""})
    columns = ["backbone", "strategy", "replicate", "repeat", "seed", "config_trial", "state", f"val_{metric}",
               f"test_{metric}", "test_loss", "epochs_run", "best_epoch", "wall_time_s", "resumed_from_trial", "note"]
    df = pd.DataFrame(rows, columns=columns)
    df = _with_replicates(df, ["backbone", "strategy", "repeat"]) if rows else df.drop(columns="replicate")
    return _ints(df, ["repeat", "seed", "config_trial", "epochs_run", "best_epoch",
                                             "resumed_from_trial"])


def load_cells(storage: Any, study: str, metric: Any) -> list[compare.CellScores]:
    """Every cell with its scored models, in every replicate: complete repeats of its best configuration, and its
    search's best trial (seed None), each with validation and test metric and its kept test predictions. The
    trainable size is replicate 0's best trial's."""
    cells: dict[tuple[str, str], compare.CellScores] = {}
    for s in search_studies(storage, study):
        where = study_cell(s)
        cell = cells.setdefault((where.backbone, where.strategy), compare.CellScores(where.backbone, where.strategy))
        if where.replicate == 0 and (best := _best(s)) is not None:
            cell.trainable_params = float(best.user_attrs.get("trainable_params") or math.nan)
        cell.models.extend(_scored_models(storage, study, s, where.replicate))
    return list(cells.values())


def _scored_models(storage: Any, study: str, s: optuna.Study, replicate: int) -> list[compare.ScoredModel]:
    best, test = _best(s), s.user_attrs.get("best_test") or {}
    models = []
    if best is not None and test.get("trial") == best.number:
        models.append(compare.ScoredModel(None, best.value, test["test_metric"], _predictions(test.get("predictions")),
                                          replicate))
    for t in _cell_repeats(storage, study, s):
        if t.state == TrialState.COMPLETE and "test_metric" in t.user_attrs:
            models.append(compare.ScoredModel(t.user_attrs["repeat"], t.value, t.user_attrs["test_metric"],
                                              _predictions(t.user_attrs.get("predictions")), replicate))
    return models


def replicates_table(storage: Any, study: str, metric: str) -> pd.DataFrame:
    """One row per cell and replicate: the configuration its search chose (``best_run``: its trial folder
    ``trial_NNNN``, which a resumed trial keeps), its validation metric and its test metric (the mean of its repeats when it has any, else its best trial's). Empty for a study run once."""
    rows = []
    for s in search_studies(storage, study):
        best, where, test = _best(s), study_cell(s), s.user_attrs.get("best_test") or {}
        repeats = [t for t in _cell_repeats(storage, study, s)
                   if t.state == TrialState.COMPLETE and "test_metric" in t.user_attrs]
        scored = bool(best) and test.get("trial") == best.number
        rows.append({"backbone": where.backbone, "strategy": where.strategy, "replicate": where.replicate,
                     "seed": replicate_seed(s.user_attrs.get("identity", {}).get("seed", 0), where.replicate),
                     "best_run": best.user_attrs.get("run", best.number) if best else None,
                     "best_params": json.dumps(all_params(best), sort_keys=True) if best else "",
                     f"best_val_{metric}": best.value if best else None,
                     f"test_{metric}": test.get("test_metric") if scored else None,
                     "repeats": len(repeats),
                     f"val_{metric}_mean": _mean([t.value for t in repeats]) if repeats else (
                         best.value if best else None),
                     f"test_{metric}_mean": _mean([t.user_attrs["test_metric"] for t in repeats]) if repeats else (
                         test.get("test_metric") if scored else None)})
    df = pd.DataFrame(rows)
    if df.empty or not (df["replicate"] > 0).any():
        return pd.DataFrame()
    return _ints(df.sort_values(["backbone", "strategy", "replicate"], kind="stable").reset_index(drop=True),
                 ["replicate", "seed", "best_run", "repeats"])


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def soups_table(storage: Any, study: str, metric: Any, rope: float = compare.DEFAULT_ROPE) -> pd.DataFrame:
    """One row per cell and model: its best trial, then its uniform soup, greedy soup and top-k ensemble
    (``tlkit.search.soups``), each with its validation and test metric (means over replicates), its inference cost
    (parameters, seconds per test image) and, against the best trial, the difference of test metric with the
    statistics and verdict of ``comparisons.csv`` (positive: the best trial is better). A cell without soups has one
    row saying why. Empty when no cell has soups (a study from before soups existed)."""
    by_cell: dict[tuple[str, str], list[optuna.Study]] = {}
    for s in search_studies(storage, study):
        by_cell.setdefault((s.user_attrs.get("backbone"), s.user_attrs.get("strategy")), []).append(s)
    rows = [row for (backbone, strategy), studies in by_cell.items()
            for row in _soup_rows(backbone, strategy, studies, metric, rope)]
    return pd.DataFrame(rows) if any(r["model"] != "best trial" for r in rows) else pd.DataFrame()


def _soup_rows(backbone: str, strategy: str, studies: list[optuna.Study], metric: Any, rope: float
               ) -> list[dict[str, Any]]:
    best: list[compare.ScoredModel] = []
    made: dict[str, list[tuple[compare.ScoredModel, dict[str, Any]]]] = {kind: [] for kind in SOUP_KINDS}
    skipped = ""
    for s in studies:
        replicate, test, trial = study_cell(s).replicate, s.user_attrs.get("best_test") or {}, _best(s)
        if trial is None or test.get("trial") != trial.number:
            continue
        best.append(compare.ScoredModel(None, trial.value, test["test_metric"], _predictions(test.get("predictions")),
                                        replicate))
        soups = s.user_attrs.get(SOUPS) or {}
        skipped = skipped or soups.get("skipped", "")
        for kind in SOUP_KINDS:
            if kind in soups:
                r = soups[kind]
                made[kind].append((compare.ScoredModel(None, r["val_metric"], r["test_metric"],
                                                       _predictions(r.get("predictions")), replicate), r))
    if not best:
        return []
    head = {"backbone": backbone, "strategy": strategy, "replicates": len(best)}
    single = [r for _, r in made["uniform"]]  # a soup is one model of the best trial's architecture: its cost
    rows = [{**head, "model": "best trial", "ingredients": 1, f"val_{metric.name}": _mean([m.val for m in best]),
             f"test_{metric.name}": _mean([m.test for m in best]),
             "params": _mean([r["params"] for r in single]) if single else math.nan,
             "seconds_per_image": _mean([r["seconds_per_image"] for r in single]) if single else math.nan,
             "note": ""}]
    stats_of = compare.model_comparisons(best, {k: [m for m, _ in v] for k, v in made.items() if v}, metric, rope)
    for kind, models in made.items():
        if models:
            records = [r for _, r in models]
            rows.append({**head, "model": SOUP_KINDS[kind], "replicates": len(models),
                         "ingredients": _mean([len(r["runs"]) for r in records]),
                         f"val_{metric.name}": _mean([m.val for m, _ in models]),
                         f"test_{metric.name}": _mean([m.test for m, _ in models]),
                         "params": _mean([r["params"] for r in records]),
                         "seconds_per_image": _mean([r["seconds_per_image"] for r in records]),
                         "note": "", **{k: v for k, v in stats_of[kind].items() if k in SOUP_STATS}})
    if skipped and not any(made.values()):
        rows.append({**head, "model": "soups", "note": f"not made: {skipped}"})
    return rows


SOUP_STATS = ("method", "n", "difference", "ci_low", "ci_high", "p", "p_holm", "tost_low", "tost_high", "verdict")


def _predictions(payload: dict[str, str] | None) -> Predictions | None:
    return Predictions.from_json(payload) if payload else None


def predictions_table(cells: list[compare.CellScores]) -> pd.DataFrame:
    """One row per scored model and test example: the label, the predicted class and the label's probability
    (``model`` is ``search`` for the search's best trial, ``repeat`` for a repeat with its ``seed``)."""
    frames = []
    for c in cells:
        for m in c.models:
            if m.predictions is None:
                continue
            p = m.predictions
            frames.append(pd.DataFrame({
                "backbone": c.backbone, "strategy": c.strategy, "replicate": m.replicate,
                "model": "search" if m.seed is None else "repeat",
                "repeat": pd.array([m.seed] * len(p), dtype="Int64"), "example": np.arange(len(p)),
                "label": p.labels, "pred": p.pred, "p_label": np.exp(p.log_p_label), "label_rank": p.label_rank}))
    if not frames:
        return pd.DataFrame(columns=["backbone", "strategy", "model", "repeat", "example", "label", "pred",
                                     "p_label", "label_rank"])
    table = pd.concat(frames, ignore_index=True)
    return table if (table["replicate"] > 0).any() else table.drop(columns="replicate")


def summary_table(storage: Any, study: str, metric: Any, cells: list[compare.CellScores] | None = None) -> pd.DataFrame:
    """One row per (backbone, strategy) cell: budget spent, the best trial and its test score, how much the
    validation metric varied over the search's trials (how forgiving the strategy is of its hyperparameters), and
    the test metric over the repeats with its 95% interval (see ``tlkit.analysis.compare``)."""
    name = metric.name
    rows = []
    for s in search_studies(storage, study, replicate=0):  # every replicate's own search: replicates.csv
        trials = s.get_trials(deepcopy=False)
        count = {state: sum(t.state == state for t in trials) for state in TrialState}
        retried = {n for t in trials for n in _optuna.earlier_attempts(t)}
        failed = sum(t.state == TrialState.FAIL and t.number not in retried and "duplicate_of" not in t.user_attrs
                     for t in trials)
        best = _best(s)
        test = s.user_attrs.get("best_test") or {}
        ok = best is not None and test.get("trial") == best.number
        rows.append({
            "backbone": s.user_attrs.get("backbone"), "strategy": s.user_attrs.get("strategy"),
            "trials_complete": count[TrialState.COMPLETE], "trials_pruned": count[TrialState.PRUNED],
            "trials_failed": failed,
            "best_trial": best.number if best else None, f"best_val_{name}": best.value if best else None,
            f"test_{name}": test.get("test_metric") if ok else None,
            "test_loss": test.get("test_loss") if ok else None,
            "trainable_params": best.user_attrs.get("trainable_params") if best else None,
            "total_params": best.user_attrs.get("total_params") if best else None,
            "train_time_s": best.user_attrs.get("wall_time") if best else None,
            "cell_time_s": round(sum(t.user_attrs.get("wall_time") or 0.0 for t in trials), 3),
            "best_params": json.dumps(all_params(best), sort_keys=True) if best else "",
            "weights": best.user_attrs.get("weights") if best else None,
            "best_epoch": best.user_attrs.get("best_epoch") if best else None,
            f"val_{name}_sd_trials": _sd([t.value for t in trials if t.state == TrialState.COMPLETE]),
        })
    summary = pd.DataFrame(rows)
    intervals = compare.cell_intervals(cells if cells is not None else load_cells(storage, study, metric), metric)
    if not summary.empty:
        summary = summary.merge(intervals, on=["backbone", "strategy"], how="left")
    return _ints(summary, ["best_trial", "trainable_params", "total_params", "best_epoch", "repeats", "replicates"])


def _sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan



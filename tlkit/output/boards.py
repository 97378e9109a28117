"""TensorBoard's shared names and the comparison board ``tb/``, which the report rebuilds from its tables.

The trial boards (``tb_trials/``, a callback of the fit loop) are in ``tensorboard.py``; this half imports no torch
until it writes (``torch.utils.tensorboard``'s writer, inside the functions), so ``python -m tlkit.report`` starts
without torch. ``tlkit.output.tensorboard`` re-exports every name here; its docstring describes both folders.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from tlkit.search.study import Cell
from tlkit.utils.files import rebuild_folder

__all__ = ["run_dir", "lr_tag", "hparam_value", "trial_metrics", "write_hparams_config", "write_cell_boards",
           "TRIALS_DIR", "CELLS_DIR"]

TRIALS_DIR, CELLS_DIR = "tb_trials", "tb"


def run_dir(root: Path, cell: Cell, name: str) -> Path:
    """``<root>/<strategy>/<backbone>/<name>``: strategy first, so a run name cut short still tells strategies
    apart; hub names made path-safe as for ``trials/``."""
    return Path(root) / cell.strategy / cell.folder.parent / name


def lr_tag(index: int, num_groups: int) -> str:
    """``lr/head`` for the classifier, ``lr/head-1`` for the group below it, ...: the same depth from the head
    means the same tag on every backbone."""
    depth = num_groups - 1 - index
    return "lr/head" if depth == 0 else f"lr/head-{depth}"


def hparam_value(value: Any) -> Any:
    """HParams takes numbers, strings and bools; anything else (a list choice) is shown as its repr."""
    return value if isinstance(value, (bool, int, float, str)) else repr(value)


def trial_metrics(metric: str) -> dict[str, None]:
    return {f"hparams/best_val_{metric}": None, f"hparams/test_{metric}": None, "hparams/epochs_run": None}


def write_hparams_config(root: Path, hparams: Iterable[str], metric: str, domains: dict[str, list[str]],
                         cells: bool = False) -> None:
    """The HParams tab's columns, once, in the log folder's own run: ``Backbone`` and ``Strategy`` (with their
    values, for filtering), every searched hyperparameter, and the metric columns. Without it TensorBoard takes the
    first trial's hyperparameters only, hiding what the other strategies search."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    names = {"Backbone": "", "Strategy": "", **{k: 0.0 for k in sorted(set(hparams))}}
    metrics = ({f"hparams/val_{metric}_mean": None, f"hparams/test_{metric}_mean": None,
                f"hparams/test_{metric}_ci_low": None, f"hparams/test_{metric}_ci_high": None} if cells
               else trial_metrics(metric))
    experiment, _, _ = hparams_summaries(names, metrics, hparam_domain_discrete=domains)
    for old in Path(root).glob("events.out.tfevents.*"):
        old.unlink()  # one experiment summary: a rerun replaces it (a study may have grown)
    with SummaryWriter(str(root)) as writer:
        writer.file_writer.add_summary(experiment)


def write_cell_boards(root: Path, summary: pd.DataFrame, history: pd.DataFrame, metric: str) -> None:
    """``tb/``: one run per cell, rebuilt from the report's tables: the epochs of its best search trial, and in
    HParams its configuration with the mean test score over its repeats and the interval's ends.

    Derived from the storage, like the tables, so it is rebuilt whole: in a temporary sibling swapped in by renames,
    so TensorBoard never reads a half-deleted folder and two reports at once (two sweeps of one results folder) do
    not delete each other's event files."""
    rebuild_folder(Path(root), lambda folder: _write_cell_boards(folder, summary, history, metric))


def _write_cell_boards(root: Path, summary: pd.DataFrame, history: pd.DataFrame, metric: str) -> None:
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    searched = {k for p in summary.get("best_params", pd.Series(dtype=str)).dropna() if p for k in json.loads(p)}
    domains = {"Backbone": sorted(set(summary["backbone"])), "Strategy": sorted(set(summary["strategy"]))}
    write_hparams_config(root, searched, metric, domains, cells=True)
    for row in summary.to_dict("records"):
        if pd.isna(row.get("best_trial")):
            continue
        cell = Cell(row["backbone"], row["strategy"])
        params = {k: hparam_value(v) for k, v in sorted(json.loads(row["best_params"] or "{}").items())}
        values = {f"hparams/val_{metric}_mean": row.get(f"val_{metric}_mean"),
                  f"hparams/test_{metric}_mean": row.get(f"test_{metric}_mean"),
                  f"hparams/test_{metric}_ci_low": row.get(f"test_{metric}_ci_low"),
                  f"hparams/test_{metric}_ci_high": row.get(f"test_{metric}_ci_high")}
        epochs = history[(history["backbone"] == cell.backbone) & (history["strategy"] == cell.strategy)
                         & (history["trial"] == row["best_trial"])]
        lrs = sorted((c for c in epochs.columns if c.startswith("lr_group") and epochs[c].notna().any()),
                     key=lambda c: int(c[len("lr_group"):]))
        with SummaryWriter(str(root / cell.strategy / cell.folder.parent)) as writer:
            _, start, stop = hparams({"Backbone": cell.backbone, "Strategy": cell.strategy, **params},
                                     dict.fromkeys(values))
            writer.file_writer.add_summary(start)
            for e in epochs.to_dict("records"):
                step = int(e["epoch"])
                for tag, column in (("loss/train", "train_loss"), ("loss/val", "val_loss"),
                                    (f"val/{metric}", f"val_{metric}")):
                    writer.add_scalar(tag, float(e[column]), step)
                for i, column in enumerate(lrs):
                    writer.add_scalar(lr_tag(i, len(lrs)), float(e[column]), step)
            last = int(epochs["epoch"].max()) if not epochs.empty else 0
            for tag, value in values.items():
                if value is not None and pd.notna(value):
                    writer.add_scalar(tag, float(value), last)
            writer.file_writer.add_summary(stop)

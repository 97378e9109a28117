"""The cells of a sweep: one Optuna study per (backbone, strategy), each recording what it is (its identity), so a
changed experiment is never mixed into an existing study; one results folder per study.

Each cell is its own study (same budget, same sampler seed, same data split) so a sampler that likes one cell cannot
starve another. The storage is ``tlkit.search.storage``, a cell's queue of runs ``tlkit.search.queue``, the liveness
of the workers that hold its trials ``tlkit.search.workers``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage

from tlkit.utils.files import check_writable
from tlkit.errors import TlkitError
from tlkit.config.experiment import Experiment
from tlkit.config.identity import RETIRED, concerns, identity
from tlkit.metrics import get_metric

__all__ = ["Cell", "cells", "replicate_seed", "study_cell", "REPLICATE_SEED_OFFSET", "cell_studies", "check_identity",
           "check_results_folder", "make_pruner", "open_cell_study"]


REPLICATE_SEED_OFFSET = 1_000_000
"""Replicate r's seeds start at ``exp.seed + r * REPLICATE_SEED_OFFSET``: far from every seed of another replicate
(search trials use ``seed + run``, repeats ``seed + 100_000 + index``)."""


@dataclass(frozen=True)
class Cell:
    """One comparison cell: a backbone under a strategy, in one replicate of the study (0: the study a single run
    gives; see ``Experiment.replicates``)."""

    backbone: str
    strategy: str
    replicate: int = 0

    def study_name(self, study: str) -> str:
        return f"{study}/{self.backbone}/{self.strategy}" + (f"/replicate_{self.replicate}" if self.replicate else "")

    @property
    def folder(self) -> Path:
        """``resnet18.a1_in1k/last_n`` (``.../last_n/replicate_1`` for replicate 1): browsable, and safe for hub
        names with ``/`` or ``:``."""
        folder = Path(self.backbone.replace("/", "_").replace(":", "_")) / self.strategy
        return folder / f"replicate_{self.replicate}" if self.replicate else folder

    @property
    def design(self) -> Cell:
        """The cell of the comparison, whatever the replicate: what its plan and its report rows are keyed by."""
        return Cell(self.backbone, self.strategy)


def replicate_seed(seed: int, replicate: int) -> int:
    """The base seed of ``replicate``: its split, its search's sampler and its trainings derive from it; replicate
    0 keeps the experiment's own seed, so a study of one replicate is what it was before replicates existed."""
    return seed + replicate * REPLICATE_SEED_OFFSET


def cells(exp: Experiment, replicate: int = 0) -> list[Cell]:
    return [Cell(b, s, replicate) for b in exp.backbones for s in exp.strategies]


def cell_studies(storage: RDBStorage | str, study: str) -> dict[str, Any]:
    """Existing studies of this sweep, by name."""
    return {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
            if s.study_name.startswith(f"{study}/")}


def check_identity(storage: RDBStorage, study: str, exp: Experiment) -> None:
    """Refuse to mix trials of a changed experiment into an existing study; name what changed."""
    for name, summary in cell_studies(storage, study).items():
        backbone, strategy = summary.user_attrs.get("backbone"), summary.user_attrs.get("strategy")
        mine = identity(exp, backbone, strategy)
        theirs = summary.user_attrs.get("identity")
        if theirs is not None:  # recorded before identities were per cell: another cell's weights did not count
            theirs = {k: v for k, v in theirs.items() if concerns(k, backbone, strategy)}
        changed = [c for c in _changes(theirs, mine) if not (c[0] in RETIRED and c[2] is None)] \
            if theirs is not None else []
        if not changed:  # a field added since (absent there, None here) changes nothing
            continue
        shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changed[:6])
        raise TlkitError(f"Study {study!r} was run with a different experiment ({shown}"
                         f"{' ...' if len(changed) > 6 else ''}). Mixing its trials with new ones would make the "
                         f"comparison meaningless. HINT: keep it and start a new study in its own folder: --study "
                         f"NEW_NAME (results go to results/NEW_NAME; if you pass --out, give a new folder too, as "
                         f"trial folders are per results folder), or delete the old results folder to start over.")


def check_results_folder(out: Path, study: str) -> None:
    """One results folder, one study: trial folders and exported models are per folder, so a second study there
    would overwrite the first one's."""
    check_writable(out)
    try:
        theirs = json.loads((Path(out) / "experiment.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):  # none, or damaged: the sweep writes it anew
        return
    if theirs and theirs != study:
        raise TlkitError(f"The results folder {str(out)!r} holds study {theirs!r}; study {study!r} would overwrite "
                         f"its trial folders and best models. HINT: give study {study!r} its own folder with --out "
                         f"(or leave out --out: results/{study}), or pass --study {theirs} to continue that study.")


def _changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every leaf that differs, e.g. ``search.lr.attributes.low``."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """Optuna's pruner by name: ``median`` (a trial below the median of earlier trials at the same epoch stops,
    after 2 trials and from the second epoch), ``hyperband`` (successive halving brackets over 1..epochs epochs),
    or ``none``. Which pruner stopped a trial, and at which epoch, is in trials.csv (``note``)."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs))
    return optuna.pruners.NopPruner()


def open_cell_study(storage: RDBStorage, study: str, exp: Experiment, cell: Cell) -> optuna.Study:
    pruner = make_pruner(exp.pruner, exp.train.epochs)
    s = optuna.create_study(storage=storage, study_name=cell.study_name(study),
                            direction=get_metric(exp.metric).direction, load_if_exists=True, pruner=pruner)
    if "identity" not in s.user_attrs:
        s.set_user_attr("identity", identity(exp, cell.backbone, cell.strategy))
        s.set_user_attr("backbone", cell.backbone)
        s.set_user_attr("strategy", cell.strategy)
        if cell.replicate:
            s.set_user_attr("replicate", cell.replicate)
    return s


def study_cell(summary: Any) -> Cell:
    """The cell a stored study (an ``optuna.Study`` or a study summary) belongs to, from its user attributes."""
    attrs = summary.user_attrs
    return Cell(attrs.get("backbone"), attrs.get("strategy"), attrs.get("replicate", 0))

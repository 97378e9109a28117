"""What the report reads of a cell's stored trials: a trial's full parameters, where a cell's repeats are stored
and which of them count. Kept apart from the objective and the repeats' runner, which import the trial runner (torch),
so that writing a report from a finished study imports no torch."""
from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tlkit.search.study import Cell

__all__ = ["all_params", "repeats_study_name", "current_repeats", "SOUPS", "SOUP_KINDS"]

SOUPS = "soups"
"""The cell study's user attribute that holds its soups and ensemble (``tlkit.search.soups``)."""
SOUP_KINDS = {"uniform": "uniform soup", "greedy": "greedy soup", "ensemble": "ensemble"}
"""The models ``tlkit.search.soups`` makes of a cell's trials, by their key in ``SOUPS``, with their names."""


def all_params(trial: FrozenTrial | optuna.Trial) -> dict[str, Any]:
    """A trial's hyperparameters: the sampled ones and the fixed ones it ran with (``fixed_params`` user attribute),
    so tables, reports and exported models show every value, not only what Optuna sampled."""
    return {**trial.user_attrs.get("fixed_params", {}), **trial.params}


def repeats_study_name(study: str, cell: Cell) -> str:
    """Outside the ``<study>/`` prefix of search studies, so a cell's search and its repeats never mix."""
    return f"{study}:repeats/{cell.backbone}/{cell.strategy}" + (f"/replicate_{cell.replicate}" if cell.replicate
                                                                   else "")


def current_repeats(repeats: optuna.Study, config_run: int, states: tuple[TrialState, ...] | None = None
                    ) -> dict[int, FrozenTrial]:
    """The repeat trials of one configuration by seed index: for each seed its finished trial if there is one,
    else the latest live one (a retry replaces the attempt it continues; a duplicate is never chosen)."""
    rank = {TrialState.COMPLETE: 3, TrialState.PRUNED: 2, TrialState.RUNNING: 1, TrialState.WAITING: 1}
    out: dict[int, FrozenTrial] = {}
    for t in repeats.get_trials(deepcopy=False, states=states):
        if t.user_attrs.get("config_run") != config_run or t.state not in rank or "duplicate_of" in t.user_attrs:
            continue
        index = t.user_attrs["repeat"]
        if index not in out or (rank[t.state], t.number) > (rank[out[index].state], out[index].number):
            out[index] = t
    return out

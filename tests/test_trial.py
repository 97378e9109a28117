"""The Optuna adapter: a cell's objective samples, builds the spec, runs it, records the result, lets the pruner
stop it, and re-queues a crashed trial with its parameters. Real tiny trials, an in-memory study."""
from __future__ import annotations

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tlkit.search import _optuna
from tlkit.engine.splits import splits_for
from tlkit.errors import TlkitError
from tlkit.config.experiment import Data, Experiment, Train
from tlkit.config.identity import identity
from tlkit.config.loading import apply_overrides
from tlkit.strategies import get_strategy
from tlkit.search.queue import ensure_runs
from tlkit.search.storage import open_storage
from tlkit.search.study import Cell, cells, open_cell_study
from tlkit.search.objective import SweepRun, make_objective, plan_cell, search_space, spec_for, trial_folder


def _run(tmp_path, **fields) -> SweepRun:
    exp = Experiment(**{"backbones": ["test_resnet"], "strategies": ["last_n"], "name": "t", "pretrained": False,
                        "data": Data("digits", classes=[5, 6, 7], train_per_class=30, val_fraction=0.25),
                        "train": Train(epochs=2, batch_size=16, image_size=16), **fields})
    return SweepRun(exp, tmp_path, splits_for(exp.data, 16, 0), {}, torch.device("cpu"), _plans(exp))


def _plans(exp: Experiment) -> dict:
    """The cells' plans as ``cli.prepare`` makes them (test_resnet has 6 layer groups); none for an experiment whose
    strategy_params a test expects ``search_space`` to refuse."""
    try:
        return {cell: plan_cell(exp, cell, 6) for cell in cells(exp)}
    except TlkitError:
        return {}


def _storage(run: SweepRun):
    """A file, not ``:memory:``: Optuna's heartbeat thread opens a connection of its own."""
    return open_storage(f"sqlite:///{run.out / 'study.db'}")


def _optimize(run: SweepRun, cell: Cell, pruner=None) -> optuna.Study:
    study = open_cell_study(_storage(run), "t", run.exp, cell)
    if pruner is not None:
        study.pruner = pruner
    ensure_runs(study, 1)  # as run_cell does: the objective trains queued runs only
    study.optimize(make_objective(run, cell), n_trials=1, catch=())
    return study


def test_a_strategy_hyperparameter_may_not_shadow_a_shared_one(tmp_path):
    run = _run(tmp_path, search={"epochs": IntDistribution(1, 3)})
    exp = run.exp
    space = search_space(exp, get_strategy("layer_decay"), 6)
    assert set(space) == {"epochs", "layer_decay"}
    exp.search["n_groups"] = IntDistribution(1, 2)  # what last_n searches itself
    with pytest.raises(TlkitError, match=r"Strategy 'last_n' searches \['n_groups'\], which the experiment's search "
                                         r"space also names.*HINT: remove"):
        search_space(exp, get_strategy("last_n"), 6)


def test_the_objective_records_the_trial_in_the_storage(tmp_path):
    run = _run(tmp_path)
    cell = Cell("test_resnet", "last_n")
    study = _optimize(run, cell)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and set(trial.params) == {"lr", "weight_decay", "n_groups"}
    u = trial.user_attrs
    assert (u["backbone"], u["strategy"], u["run"], u["epochs_run"], u["num_groups"]) == \
        ("test_resnet", "last_n", 0, 2, 6)
    assert trial.value == max(h["val_metric"] for h in u["history"]) and u["worker"].count(":") == 2
    assert trial.intermediate_values == {h["epoch"]: h["val_metric"] for h in u["history"]}
    assert (trial_folder(tmp_path, cell, 0) / "outcome.json").is_file()


def test_the_pruner_stops_a_trial_with_its_reason(tmp_path):
    study = _optimize(_run(tmp_path), Cell("test_resnet", "last_n"), pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["epochs_run"] == 1
    assert trial.user_attrs["pruned_reason"] == "ThresholdPruner at epoch 0"


def test_a_crash_is_requeued_with_the_same_parameters(tmp_path, monkeypatch):
    run = _run(tmp_path)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr("tlkit.search.objective.run_trial", out_of_memory)
    study = open_cell_study(_storage(run), "t", run.exp, Cell("test_resnet", "last_n"))
    ensure_runs(study, 1)
    with pytest.raises(RuntimeError, match="out of memory"):
        study.optimize(make_objective(run, Cell("test_resnet", "last_n")), n_trials=1, catch=())
    failed, retry = study.trials
    assert failed.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert failed.user_attrs["failure_reason"] == "crashed (RuntimeError: CUDA out of memory); re-queued"
    assert retry.params == failed.params and _optuna.previous_attempt(retry) == 0


def test_a_strategy_hyperparameter_can_be_fixed_or_re_ranged_from_the_experiment(tmp_path):
    """Issue 27: last_n with n_groups=1 needed a subclass; strategy_params fixes it (or narrows its range)."""
    fixed = _run(tmp_path, strategy_params={"last_n": {"n_groups": 1}})
    assert set(search_space(fixed.exp, get_strategy("last_n"), 6)) == {"lr", "weight_decay"}
    cell = Cell("test_resnet", "last_n")
    spec = spec_for(fixed, cell, {"lr": 1e-3, "weight_decay": 1e-4}, seed=0, folder=tmp_path / "x")
    assert spec.params == {"n_groups": 1} and spec.recipe.lr == 1e-3
    (trial,) = _optimize(fixed, cell).trials
    assert trial.state == TrialState.COMPLETE and set(trial.params) == {"lr", "weight_decay"}
    narrowed = _run(tmp_path / "n", strategy_params={"last_n": {"n_groups": IntDistribution(1, 2)}})
    assert search_space(narrowed.exp, get_strategy("last_n"), 6)["n_groups"] == IntDistribution(1, 2)


@pytest.mark.parametrize("params, message", [
    ({"last_n": {"n_group": 1}}, r"strategy_params\['last_n'\]\['n_group'\]: Unknown last_n hyperparameter "
                                 r"'n_group'\. Did you mean 'n_groups'"),
    ({"last_n": {"n_groups": 9}}, r"strategy_params\['last_n'\]\['n_groups'\] can be 9, which last_n refuses with 6 "
                                  r"layer groups: last_n: n_groups must be in \[0, 5\]"),
    ({"last_n": {"n_groups": IntDistribution(1, 7)}}, r"can be 7, which last_n refuses"),
])
def test_a_strategy_hyperparameter_no_trial_can_use_is_refused_before_any_trial(tmp_path, params, message):
    run = _run(tmp_path, strategy_params=params)
    with pytest.raises(TlkitError, match=message):
        search_space(run.exp, get_strategy("last_n"), 6)


def test_strategy_params_from_set_and_in_the_identity(tmp_path):
    exp = _run(tmp_path).exp
    assert not [k for k in identity(exp) if k.startswith("strategy_params")]  # older studies keep their identity
    one = apply_overrides(exp, ["strategy_params.last_n.n_groups=1"])
    assert one.strategy_params == {"last_n": {"n_groups": 1}} and identity(one)["strategy_params.last_n.n_groups"] == 1
    ranged = apply_overrides(exp, ["strategy_params.last_n.n_groups=[1, 2]"])
    assert ranged.strategy_params == {"last_n": {"n_groups": [1, 2]}}
    assert search_space(ranged, get_strategy("last_n"), 6)["n_groups"] == IntDistribution(1, 2)
    assert identity(ranged) != identity(one) != identity(exp)
    with pytest.raises(TlkitError, match=r"strategy_params names 'lastn'.*Did you mean 'last_n'"):
        apply_overrides(exp, ["strategy_params.lastn.n_groups=1"])


def test_a_strategy_range_from_set_keeps_the_strategys_own_scale(tmp_path):
    """``--set strategy_params.l2_sp.alpha=[1e-4, 1]`` narrows l2_sp's log-scale range, as search.lr=[...] does."""
    run = _run(tmp_path, strategies=["l2_sp", "lp_ft"], strategy_params={"l2_sp": {"alpha": [1e-3, 1]},
                                                                        "lp_ft": {"probe_fraction": [0.3, 0.5]}})
    assert search_space(run.exp, get_strategy("l2_sp"), 6)["alpha"] == FloatDistribution(1e-3, 1.0, log=True)
    assert search_space(run.exp, get_strategy("lp_ft"), 6)["probe_fraction"] == FloatDistribution(0.3, 0.5)


@pytest.mark.parametrize("strategy, params, message", [
    ("last_n", {"n_groups": True}, r"strategy_params\['last_n'\]\['n_groups'\] must be int \(its default is 1\) "
                                   r"but got True"),
    ("last_n", {"n_groups": 1.5}, r"must be int \(its default is 1\) but got 1\.5"),
    ("lp_ft", {"probe_fraction": "abc"}, r"must be float \(its default is 0\.5\) but got 'abc'"),
    ("lp_ft", {"probe_fraction": 7.0}, r"can be 7\.0, which lp_ft refuses"),
    ("linear_probe", {"x": 1}, r"linear_probe takes no hyperparameters\. HINT"),
])
def test_a_strategy_value_of_the_wrong_kind_is_a_message_not_a_traceback(tmp_path, strategy, params, message):
    run = _run(tmp_path, strategies=[strategy], strategy_params={strategy: params})
    with pytest.raises(TlkitError, match=message):
        search_space(run.exp, get_strategy(strategy), 6)


def test_fixed_strategy_values_show_in_the_tables(tmp_path):
    from tlkit.search.records import all_params

    run = _run(tmp_path, strategy_params={"last_n": {"n_groups": 2}})
    (trial,) = _optimize(run, Cell("test_resnet", "last_n")).trials
    assert trial.user_attrs["fixed_params"] == {"n_groups": 2} and "n_groups" not in trial.params
    assert all_params(trial) == {"n_groups": 2, **trial.params}

"""The Optuna side of a sweep: cells, their studies (direction from the metric), study identity, run numbering,
the sampler's seed, and dead local workers. In-memory SQLite, no training."""
from __future__ import annotations

import subprocess
import sys

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from tlkit import _optuna
from tlkit.errors import TlkitError
from tlkit.experiment import Experiment
from tlkit.study import (
    Cell,
    cells,
    check_identity,
    check_results_folder,
    open_cell_study,
    open_storage,
    reseed_sampler,
    run_of,
    take_up_dead_local_trials,
    worker_id,
)

# study.ask() on a storage with heartbeats: fine here, Optuna only recommends optimize().
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")

def _exp(**fields) -> Experiment:
    return Experiment(**{"backbones": ["test_resnet", "hf-hub:timm/a:b"], "strategies": ["last_n", "bitfit"],
                         "name": "s", **fields})


@pytest.fixture
def storage():
    return open_storage("sqlite:///:memory:")


def test_cells_are_every_backbone_under_every_strategy_with_safe_folders():
    assert cells(_exp()) == [Cell("test_resnet", "last_n"), Cell("test_resnet", "bitfit"),
                             Cell("hf-hub:timm/a:b", "last_n"), Cell("hf-hub:timm/a:b", "bitfit")]
    assert str(Cell("hf-hub:timm/a:b", "last_n").folder) == "hf-hub_timm_a_b/last_n"
    assert Cell("x", "y").study_name("s") == "s/x/y"


@pytest.mark.parametrize("metric, direction", [("accuracy", "MAXIMIZE"), ("log_loss", "MINIMIZE")])
def test_a_cell_study_follows_the_metric_and_records_what_it_is(storage, metric, direction):
    exp = _exp(metric=metric)
    study = open_cell_study(storage, "s", exp, Cell("test_resnet", "bitfit"))
    assert study.direction.name == direction
    assert (study.user_attrs["backbone"], study.user_attrs["strategy"]) == ("test_resnet", "bitfit")
    assert study.user_attrs["identity"]["metric"] == metric


def test_a_changed_experiment_names_the_changed_leaf(storage):
    open_cell_study(storage, "s", _exp(), Cell("test_resnet", "bitfit"))
    check_identity(storage, "s", _exp(trials=9, backbones=["test_resnet"]))  # budget and cells: same study
    changed = _exp(search={"lr": FloatDistribution(1e-3, 1e-2, log=True)})
    with pytest.raises(TlkitError, match=r"search\.lr\.attributes\.low: 0\.0001 -> 0\.001.*weight_decay"):
        check_identity(storage, "s", changed)


def test_one_results_folder_holds_one_study(tmp_path):
    (tmp_path / "experiment.json").write_text('{"name": "first"}')
    check_results_folder(tmp_path, "first")
    with pytest.raises(TlkitError, match="holds study 'first'; study 'second' would overwrite"):
        check_results_folder(tmp_path, "second")


def test_runs_are_numbered_over_first_attempts_and_a_retry_continues_its_run(storage):
    study = open_cell_study(storage, "s", _exp(), Cell("test_resnet", "last_n"))
    first = study.ask()
    assert run_of(first) == (0, None)
    study.tell(first, 0.5)
    second = study.ask()
    second.suggest_float("lr", 1e-4, 1e-2)
    _optuna.fail_trial(study, _optuna.frozen_trial(second), ("failure_reason", "killed"))
    _optuna.requeue(study, _optuna.reload(study, _optuna.frozen_trial(second)))
    retry = study.ask()  # trial 2 continues run 1 (trial 1's folder and seed)
    assert retry.number == 2 and run_of(retry) == (1, 1)
    study.tell(retry, 0.6)
    assert run_of(study.ask()) == (2, None)  # trial 3 is the third configuration


def test_the_sampler_seed_counts_configurations_not_retries(storage):
    """A restarted sweep draws what an uninterrupted one would: a retry repeats its configuration and does not
    shift the draws of the configurations after it."""
    def draw(study):
        reseed_sampler(study, seed=0, trials=4)
        trial = study.ask()
        return trial, trial.suggest_float("lr", 1e-4, 1e-2, log=True)

    interrupted = open_cell_study(storage, "s", _exp(), Cell("test_resnet", "last_n"))
    t0, a0 = draw(interrupted)
    interrupted.tell(t0, 0.5)
    t1, a1 = draw(interrupted)
    assert a1 != a0
    _optuna.fail_trial(interrupted, _optuna.frozen_trial(t1), ("failure_reason", "killed"))
    _optuna.requeue(interrupted, _optuna.reload(interrupted, _optuna.frozen_trial(t1)))
    retry, again = draw(interrupted)
    assert again == a1 and _optuna.is_retry(_optuna.frozen_trial(retry))
    interrupted.tell(retry, 0.5)
    _, a2 = draw(interrupted)

    uninterrupted = open_cell_study(storage, "s", _exp(), Cell("test_resnet", "bitfit"))
    draws = []
    for value in (0.5, 0.5, None):
        trial, lr = draw(uninterrupted)
        draws.append(lr)
        if value is not None:
            uninterrupted.tell(trial, value)
    assert draws == [a0, a1, a2]


def test_a_dead_local_worker_s_trial_is_taken_up_at_once_and_only_once(storage):
    study = open_cell_study(storage, "s", _exp(), Cell("test_resnet", "last_n"))
    dead = subprocess.Popen([sys.executable, "-c", "print(1)"])
    dead.wait()
    host = worker_id().rsplit(":", 2)[0]
    for worker in (f"{host}:{dead.pid}:0", worker_id(), "other-host:1:1"):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-2)
        trial.set_user_attr("worker", worker)
    # Our own pid counts as dead too: a sweep that starts finds its own earlier trials only after a restart.
    assert take_up_dead_local_trials(study) == 2
    states = [t.state for t in study.get_trials()]
    assert states[:3] == [TrialState.FAIL, TrialState.FAIL, TrialState.RUNNING]  # another host: the heartbeat
    assert [t.state for t in study.get_trials()[3:]] == [TrialState.WAITING, TrialState.WAITING]
    assert take_up_dead_local_trials(study) == 0

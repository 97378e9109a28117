"""The Optuna side of a sweep: cells, their studies (direction from the metric), study identity, run numbering,
the sampler's seed, and dead local workers. In-memory SQLite, no training."""
from __future__ import annotations

import subprocess
import sys

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from tlkit.search import _optuna
from tlkit.errors import TlkitError
from tlkit.config.experiment import Data, Experiment, Source, Train
from tlkit.config.identity import identity
from tlkit.search.queue import (MOVED, DuplicateRun, claim_run, ensure_runs, finished_count, reseed_sampler,
                                retries_first, run_of)
from tlkit.search.storage import open_storage
from tlkit.search.study import Cell, cells, check_identity, check_results_folder, open_cell_study
from tlkit.search.workers import take_up_dead_local_trials, worker_id

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


def test_the_sampler_seed_follows_the_run(storage):
    """Run r draws the same configuration in every cell and in every rerun, whatever ran before it; two workers
    taking runs 0 and 1 at the same moment draw different ones."""
    def draw(study, run):
        trial = study.ask()
        reseed_sampler(study, seed=0, trials=4, run=run)
        return trial, trial.suggest_float("lr", 1e-4, 1e-2, log=True)

    a = open_cell_study(storage, "s", _exp(), Cell("test_resnet", "last_n"))
    b = open_cell_study(storage, "s", _exp(), Cell("test_resnet", "bitfit"))
    (ta, a0), (tb, b1) = draw(a, 0), draw(b, 1)
    a.tell(ta, 0.5)
    b.tell(tb, 0.5)
    _, b0 = draw(b, 0)
    assert a0 == b0 and a0 != b1


def test_a_budget_is_queued_once_per_run_and_grows_on_demand(storage):
    study = open_cell_study(storage, "s", _exp(), Cell("test_resnet", "last_n"))
    ensure_runs(study, 3)
    ensure_runs(study, 3)  # a second worker, or a rerun: nothing more to queue
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["run"] for t in waiting) == [0, 1, 2]
    ensure_runs(study, 5)  # --trials 5 later: two more runs
    assert sorted(t.user_attrs["run"] for t in study.get_trials(states=(TrialState.WAITING,))) == [0, 1, 2, 3, 4]
    assert finished_count(study) == 0


def test_a_run_queued_twice_is_trained_once(storage):
    """Two workers queued the same budget at once: the second waiting trial of a run is a duplicate and stops."""
    study = open_cell_study(storage, "s", _exp(), Cell("test_resnet", "last_n"))
    study.enqueue_trial({}, user_attrs={"run": 0})
    study.enqueue_trial({}, user_attrs={"run": 0})  # the racing worker's copy
    first = study.ask()
    assert claim_run(first) == (0, None)
    second = study.ask()
    with pytest.raises(DuplicateRun, match="run 0 is trial 0's"):
        claim_run(second)
    assert second.user_attrs["duplicate_of"] == 0
    study.tell(first, 0.5)
    study.tell(second, state=TrialState.FAIL)
    assert finished_count(study) == 1


def test_a_run_whose_retry_was_lost_is_queued_again_with_its_parameters(storage):
    study = open_cell_study(storage, "s", _exp(), Cell("test_resnet", "last_n"))
    ensure_runs(study, 1)
    trial = study.ask()
    lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    study.tell(trial, state=TrialState.FAIL)  # failed, and nobody queued its retry
    ensure_runs(study, 1)
    retry = study.ask()
    assert claim_run(retry) == (0, 0) and retry.suggest_float("lr", 1e-4, 1e-2, log=True) == lr


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


def test_a_retry_runs_before_the_later_runs_queued_ahead_of_it(storage):
    """Run 1 of 3 dies: its retry is queued behind run 2's waiting trial. Taken in trial order, run 2 would be
    sampled without run 1's result; so run 2's waiting trial is taken off the queue and queued again behind it."""
    study = open_cell_study(storage, "s", _exp(), Cell("test_resnet", "last_n"))
    ensure_runs(study, 3)
    first = study.ask()
    assert claim_run(first) == (0, None)
    study.tell(first, 0.5)
    dying = study.ask()
    assert claim_run(dying) == (1, None)
    lr = dying.suggest_float("lr", 1e-4, 1e-2, log=True)
    study.tell(dying, state=TrialState.FAIL)
    _optuna.requeue(study, _optuna.reload(study, _optuna.frozen_trial(dying)))
    assert retries_first(study) == 1
    ensure_runs(study, 3)
    assert retries_first(study) == 0, "once in order, nothing more moves"
    retry = study.ask()
    assert claim_run(retry) == (1, 1) and retry.suggest_float("lr", 1e-4, 1e-2, log=True) == lr
    study.tell(retry, 0.6)
    last = study.ask()
    assert claim_run(last) == (2, None)
    study.tell(last, 0.7)
    assert finished_count(study) == 3 and not study.get_trials(states=(TrialState.WAITING,))
    moved = [t for t in study.get_trials() if t.user_attrs.get("duplicate_of") == MOVED]
    assert len(moved) == 1 and moved[0].state == TrialState.FAIL and "run 1" in moved[0].user_attrs["failure_reason"]


def test_a_study_recorded_before_runtime_moved_out_of_train_continues(storage):
    """Its stored identity holds source.train.device/keep_checkpoints (in Train then, now Runtime's): not a change."""
    source = {"source": Source(data=Data("digits", classes=[0, 1, 2]))}
    study = open_cell_study(storage, "s", _exp(**source), Cell("test_resnet", "bitfit"))
    old = {**study.user_attrs["identity"], "source.train.device": "auto", "source.train.keep_checkpoints": "best"}
    study.set_user_attr("identity", old)
    check_identity(storage, "s", _exp(**source))
    study.set_user_attr("identity", {**old, "source.train.epochs": 99})  # a real change is still one
    with pytest.raises(TlkitError, match=r"source\.train\.epochs: 99 -> 10"):
        check_identity(storage, "s", _exp(**source))


def test_a_study_recorded_before_ema_existed_continues_and_setting_it_is_a_new_study(storage):
    """``train.ema_decay`` came later: absent from an older stored identity and None here, it changes nothing;
    set, it changes what every trial computes. New augmentation names change it only when listed."""
    source = {"source": Source(data=Data("digits", classes=[0, 1, 2]))}
    study = open_cell_study(storage, "s", _exp(**source), Cell("test_resnet", "bitfit"))
    old = {k: v for k, v in study.user_attrs["identity"].items() if not k.endswith("train.ema_decay")}
    assert len(old) == len(study.user_attrs["identity"]) - 2  # train.ema_decay and source.train.ema_decay
    study.set_user_attr("identity", old)
    check_identity(storage, "s", _exp(**source))
    with pytest.raises(TlkitError, match=r"train\.ema_decay: None -> 0\.999"):
        check_identity(storage, "s", _exp(train=Train(ema_decay=0.999), **source))
    with pytest.raises(TlkitError, match=r"train\.augment: \['crop', 'hflip'\] -> \['randaugment', 'mixup'\]"):
        check_identity(storage, "s", _exp(train=Train(augment="randaugment+mixup"), **source))


def test_a_cells_identity_holds_only_its_own_weights_and_strategy_params(storage, tmp_path):
    """Adding a strategy with its own parameters, or a weights file for another backbone (or one keep_top_backbones
    dropped), changes no other cell: each cell records and is checked on what bears on it."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    open_cell_study(storage, "s", _exp(), Cell("test_resnet", "bitfit"))
    grown = _exp(strategies=["last_n", "bitfit", "lora"], strategy_params={"lora": {"rank": 4}},
                 weights={"hf-hub:timm/a:b": str(weights)})
    check_identity(storage, "s", grown)  # bitfit on test_resnet is untouched
    open_cell_study(storage, "s", grown, Cell("test_resnet", "lora"))
    changed = _exp(strategies=["last_n", "bitfit", "lora"], strategy_params={"lora": {"rank": 8}})
    with pytest.raises(TlkitError, match=r"strategy_params\.lora\.rank: 4 -> 8"):
        check_identity(storage, "s", changed)
    mine = _exp(weights={"test_resnet": str(weights)})
    with pytest.raises(TlkitError, match=r"weights\.test_resnet: None -> "):
        check_identity(storage, "s", mine)


def test_a_study_recorded_with_every_backbones_weights_continues(storage, tmp_path):
    """Before identities were per cell, a cell recorded every backbone's weights digest."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    exp = _exp(weights={"hf-hub:timm/a:b": str(weights)})
    study = open_cell_study(storage, "s", exp, Cell("test_resnet", "bitfit"))
    study.set_user_attr("identity", identity(exp))  # the old, whole-experiment identity
    check_identity(storage, "s", _exp())  # the other backbone's file is gone: not this cell's business

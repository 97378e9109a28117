"""A hostile machine and hostile input: a full disk, a read-only folder or a database that goes away mid-sweep stops
the sweep with one paragraph and a study that the same command, rerun once the fault is fixed, finishes as if
nothing had happened; damaged files tlkit reads name themselves; random wrong ``--set`` values either run a complete
study or stop before anything is written."""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import shutil
from pathlib import Path

import optuna
import PIL.Image
import pytest
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from safetensors import SafetensorError

import tlkit
import tlkit.engine.checkpoint
import tlkit.engine.runner
import tlkit.engine.loop
from tlkit.models.backbones import create_backbone, layer_groups, preprocessing
from tlkit.data.tensors import make_splits
from tlkit.data.datasets import load_dataset
from tlkit.engine.features import feature_dir
from tlkit.errors import TlkitError, environment_fault
from tlkit.config.experiment import Train
from tlkit.metrics import get_metric
from tlkit.predict import main as predict_main
from tlkit.report import main as report_main
from tlkit.engine.runner import read_outcome
from tlkit.strategies import create_strategy
from tlkit.sweep import main
from tlkit.testing import write_experiment
from tlkit.engine.loop import Trainer

FAULTY = {"name": "faulty", "trials": 2, "train": {"epochs": 3, "batch_size": 16}, "data": {"train_per_class": 16},
          "pruner": "none"}
RERUN = "run the same command again: finished trials are kept and the interrupted trial resumes"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_paragraph(err: str, *fragments: str) -> None:
    assert "Traceback" not in err, err
    message = err.strip()
    assert message.startswith("tlkit: error: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def _study(out: Path) -> optuna.Study:
    url = f"sqlite:///{out / 'study.db'}"
    (name,) = [n for n in optuna.get_all_study_names(url) if "/" in n and ":" not in n]
    return optuna.load_study(study_name=name, storage=url)


def _states(out: Path) -> list[str]:
    return [t.state.name for t in _study(out).get_trials()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted sweep every faulted one must end up equal to (also a finished study to damage)."""
    tmp = tmp_path_factory.mktemp("reference")
    exp, out = write_experiment(tmp, **FAULTY), tmp / "results"
    assert main([str(exp), "--out", str(out), "--quiet"]) == 0
    return out


def _assert_same_results(out: Path, reference: Path) -> None:
    """Each run (configuration) completed once, with the reference's parameters, every epoch's numbers and best
    weights bit for bit, and the same exported model."""
    def by_run(folder: Path) -> dict[int, optuna.trial.FrozenTrial]:
        done = [t for t in _study(folder).get_trials() if t.state == TrialState.COMPLETE]
        assert len({t.user_attrs["run"] for t in done}) == len(done), "a run completed twice"
        return {t.user_attrs["run"]: t for t in done}

    def numbers(trial: optuna.trial.FrozenTrial) -> list[tuple]:
        return [tuple(v for k, v in sorted(r.items()) if k not in ("seconds", "images_per_s"))
                for r in trial.user_attrs["history"]]

    mine, theirs = by_run(out), by_run(reference)
    assert sorted(mine) == sorted(theirs) == [0, 1]
    for run in mine:
        assert (mine[run].params, mine[run].value, numbers(mine[run])) == \
            (theirs[run].params, theirs[run].value, numbers(theirs[run]))
        best = Path(f"trials/test_resnet/last_n/trial_{run:04d}/best.safetensors")
        assert _sha(out / best) == _sha(reference / best)
    model = Path("best/test_resnet/last_n/model.safetensors")
    assert _sha(out / model) == _sha(reference / model)


def _disk_fails_once(monkeypatch, code: int) -> list[str]:
    """The disk refuses the last checkpoint of run 1 (epoch 1) the way safetensors reports it: ``SafetensorError:
    ... (os error N)``. Returns the list the failed file name lands in."""
    real, failed = tlkit.engine.checkpoint.save_file, []

    def save_file(tensors, filename, metadata=None):
        if "trial_0001/.epoch_0001.safetensors" in filename and not failed:
            failed.append(filename)
            raise SafetensorError(f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(tlkit.engine.checkpoint, "save_file", save_file)
    return failed


@pytest.mark.slow
def test_a_full_disk_mid_trial_stops_the_sweep_and_a_rerun_finishes_it(reference, tmp_path, monkeypatch, capfd):
    exp, out = write_experiment(tmp_path, **FAULTY), tmp_path / "results"
    failed = _disk_fails_once(monkeypatch, errno.ENOSPC)
    capfd.readouterr()
    assert main([str(exp), "--out", str(out), "--quiet"]) == 1
    assert failed, "the fault fired"
    _one_paragraph(capfd.readouterr().err, "The disk is full", "trial_0001/epoch_0001.safetensors'", RERUN)
    assert _states(out) == ["COMPLETE", "FAIL", "WAITING"], "one retry of the interrupted run is queued"
    assert main([str(exp), "--out", str(out), "--quiet"]) == 0  # the fault is gone (it fired once)
    assert _states(out) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert _study(out).get_trials()[2].user_attrs["resumed_from_epoch"] == 1, "resumed from its last checkpoint"
    _assert_same_results(out, reference)


STORAGE_CALLS = ("create_new_trial", "set_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
                 "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials")


def _database_fails(monkeypatch, message: str) -> list[bool]:
    """From the moment run 1 has saved its epoch-0 checkpoint, every call to the study storage fails as it does
    when the database is gone; until the returned list is cleared."""
    down: list[bool] = []
    for name in STORAGE_CALLS:
        def call(self, *args, _real=getattr(RDBStorage, name), **kwargs):
            if down:
                raise sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception(message))
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(RDBStorage, name, call)
    real_save = tlkit.engine.runner.save_epoch

    def save_epoch(folder, epoch, *args, **kwargs):
        real_save(folder, epoch, *args, **kwargs)
        if (folder.name, epoch) == ("trial_0001", 0):
            down.append(True)
    monkeypatch.setattr(tlkit.engine.runner, "save_epoch", save_epoch)
    return down


@pytest.mark.slow
def test_a_database_lost_mid_trial_leaves_a_trial_the_rerun_takes_up(reference, tmp_path, monkeypatch, capfd):
    """Nothing can be recorded, not even the failure: the trial stays RUNNING, and the rerun sees its worker is gone,
    re-queues it and resumes it from its checkpoint."""
    exp, out = write_experiment(tmp_path, **FAULTY), tmp_path / "results"
    down = _database_fails(monkeypatch, "could not connect to server: Connection refused")
    capfd.readouterr()
    assert main([str(exp), "--out", str(out), "--quiet"]) == 1
    _one_paragraph(capfd.readouterr().err, "The study storage could not be reached", "Connection refused", RERUN)
    down.clear()
    assert _states(out) == ["COMPLETE", "RUNNING"]
    assert main([str(exp), "--out", str(out), "--quiet"]) == 0
    assert _states(out) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert _study(out).get_trials()[2].user_attrs["resumed_from_epoch"] == 1
    _assert_same_results(out, reference)


@pytest.mark.slow
def test_a_trial_re_queued_before_the_database_locked_is_re_queued_once(reference, tmp_path, monkeypatch, capfd):
    """The crash of run 1 is recorded and re-queued, then marking it failed hits a locked database: the rerun must
    not queue a second retry of it (which would train the configuration twice)."""
    exp, out = write_experiment(tmp_path, **FAULTY), tmp_path / "results"
    _disk_fails_once(monkeypatch, errno.ENOSPC)
    down = [True]
    monkeypatch.setattr(RDBStorage, "set_trial_state_values", _locked_for_failing(down))
    capfd.readouterr()
    assert main([str(exp), "--out", str(out), "--quiet"]) == 1
    _one_paragraph(capfd.readouterr().err, "The study storage is locked by another process", RERUN)
    down.clear()
    assert _states(out) == ["COMPLETE", "RUNNING", "WAITING"]
    assert main([str(exp), "--out", str(out), "--quiet"]) == 0
    assert _states(out) == ["COMPLETE", "FAIL", "COMPLETE"], "one retry, not two"
    _assert_same_results(out, reference)


def _locked_for_failing(down: list[bool]):
    """``set_trial_state_values`` that, while ``down``, fails to mark a trial FAIL (Optuna's tell after a crash) as a
    locked SQLite database fails."""
    real = RDBStorage.set_trial_state_values

    def set_trial_state_values(self, trial_id, state, values=None):
        if down and state == TrialState.FAIL:
            raise sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("database is locked"))
        return real(self, trial_id, state, values)
    return set_trial_state_values


@pytest.mark.parametrize("error, said", [
    (OSError(errno.EDQUOT, "Disk quota exceeded", "r/trials/x.pt"), "The disk is full (OSError: [Errno 122]"),
    (PermissionError(errno.EACCES, "Permission denied", "r/tb"), "Permission denied (PermissionError"),
    (OSError(errno.EIO, "Input/output error"), "An input/output error"),
    (sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database or disk is full")), "is on a full disk"),
    (sqlalchemy.exc.OperationalError("INSERT", {}, Exception("attempt to write a readonly database")),
     "cannot be written"),
    (sqlalchemy.exc.DatabaseError("SELECT", {}, Exception("database disk image is malformed")), "is damaged"),
    (optuna.exceptions.StorageInternalError("An exception is raised during the commit"), "could not be reached"),
])
def test_each_fault_of_the_machine_gets_its_own_remedy(error, said):
    try:  # raised while handling another error, as a failing write inside a crashed trial's bookkeeping is
        try:
            raise RuntimeError("the trial crashed")
        except RuntimeError:
            raise error
    except Exception as err:  # noqa: BLE001
        fault = environment_fault(err)
    assert fault is not None and said in str(fault) and "HINT: " in str(fault)
    assert (RERUN in str(fault)) == ("damaged" not in said), "a damaged database is not fixed by rerunning"
    assert environment_fault(RuntimeError("a bug")) is None and environment_fault(KeyError("x")) is None


def test_a_results_folder_that_is_a_file_or_read_only_is_refused_up_front(tmp_path, monkeypatch, capfd):
    exp = write_experiment(tmp_path, name="study", trials=1, train={"epochs": 1})
    capfd.readouterr()
    assert main([str(exp), "--out", str(exp), "--quiet"]) == 2
    _one_paragraph(capfd.readouterr().err, "is a file, not a folder", "HINT: pass --out")
    assert exp.read_text().startswith("from tlkit import"), "the file is untouched"
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked)  # chmod does not stop root
    assert main([str(exp), "--out", str(locked / "results"), "--quiet"]) == 2
    _one_paragraph(capfd.readouterr().err, f"'{locked}' is read-only", "HINT: pass --out")
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("below", ["", "sub"], ids=["the_file", "below_it"])
def test_a_tlkit_cache_that_is_a_file_is_refused_up_front(tmp_path, monkeypatch, capfd, below):
    exp, out, file = write_experiment(tmp_path, name="study", trials=1, train={"epochs": 1}), tmp_path / "results", \
        tmp_path / "cache"
    file.write_text("not a folder")
    monkeypatch.setenv("TLKIT_CACHE", str(file / below))
    capfd.readouterr()
    assert main([str(exp), "--out", str(out), "--quiet"]) == 2
    _one_paragraph(capfd.readouterr().err, f"TLKIT_CACHE='{file / below}' cannot be tlkit's cache folder: '{file}' is "
                   f"a file, not a folder", "HINT: set TLKIT_CACHE to a folder")
    assert not out.exists() and file.read_text() == "not a folder"
    with pytest.raises(TlkitError, match="TLKIT_CACHE="):  # and any other use of the cache
        feature_dir()


def test_a_damaged_study_database_is_named_and_left_as_it_is(tmp_path, capfd):
    exp = write_experiment(tmp_path, name="study", trials=1, train={"epochs": 1})
    out = tmp_path / "results"
    out.mkdir()
    (out / "study.db").write_bytes(b"SQLite format 2\x00" + bytes(range(256)) * 8)
    before = _snapshot(out)
    capfd.readouterr()
    assert main([str(exp), "--out", str(out), "--quiet"]) == 2
    _one_paragraph(capfd.readouterr().err, "study.db' is not a SQLite database, or is damaged", "move the file aside")
    assert _snapshot(out) == before


@pytest.mark.parametrize("damage", ['{"state": "COMPL', "[1, 2]", '{"state": "RUNNING"}', ""])
def test_a_damaged_outcome_is_set_aside_and_the_trial_runs_again(tmp_path, caplog, damage):
    (tmp_path / "outcome.json").write_text(damage)
    assert read_outcome(tmp_path) is None
    assert (tmp_path / "outcome.json.bad").read_text() == damage and "set aside" in caplog.text


@pytest.mark.parametrize("damaged", ["outcome", "checkpoint"])
def test_a_damaged_file_in_a_read_only_folder_is_a_warning_not_a_crash(tmp_path, caplog, make_read_only, damaged):
    """Setting a damaged file aside cannot fail the reader: left where it is, it is skipped (read-only results or
    cache folders only cost the work of doing it again)."""
    import torch

    if damaged == "outcome":
        (tmp_path / "outcome.json").write_text('{"state": "COMPL')
    else:
        for epoch in (0, 1):
            tlkit.engine.checkpoint.save_epoch(tmp_path, epoch, torch.nn.Linear(2, 2), {"epoch": epoch})
        (tmp_path / "epoch_0001.pt").write_bytes(b"torn")
    make_read_only(tmp_path)
    if damaged == "outcome":
        assert read_outcome(tmp_path) is None
    else:
        assert tlkit.engine.checkpoint.load_latest(tmp_path)[1]["epoch"] == 0, "the epoch before it is used"
    assert "cannot be set aside" in caplog.text and "stays where it is" in caplog.text
    assert not list(tmp_path.glob("*.bad"))


def test_damaged_json_files_name_themselves(reference, tmp_path, capfd):
    """A torn experiment.json: the report names it, the sweep writes it anew; a torn model.json: load_best names it
    and how to export the model again."""
    out = tmp_path / "results"
    shutil.copytree(reference, out)
    (out / "experiment.json").write_text('{"name": "faul')
    capfd.readouterr()
    assert report_main([str(out)]) == 2
    _one_paragraph(capfd.readouterr().err, "experiment.json cannot be read", "run the sweep command")
    exp = write_experiment(tmp_path, **FAULTY)
    assert main([str(exp), "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "experiment.json").read_text())["name"] == "faulty"
    model_json = out / "best/test_resnet/last_n/model.json"
    for damage in ('{"backbone": "test_res', "[]", "{}"):
        model_json.write_text(damage)
        with pytest.raises(TlkitError, match=r"model\.json .*HINT: delete .*last_n and run the sweep command again"):
            tlkit.load_best(out, "test_resnet", "last_n")


MISSING = "<no such field>"
MODEL_JSON_DAMAGE = [
    ({"classes": []}, "'classes' must be a non-empty list of distinct class names (strings) but got []"),
    ({"classes": MISSING}, "'classes' is missing"),
    ({"image_size": "big"}, "'image_size' must be an integer >= 1 (pixels) but got 'big'"),
    ({"image_size": True}, "'image_size' must be an integer >= 1"),
    ({"mean": "abc"}, "'mean' must be a list of 3 numbers, one per RGB channel but got 'abc'"),
    ({"mean": [0.5]}, "'mean' must be a list of 3 numbers, one per RGB channel but got [0.5]"),
    ({"std": [0.5, 0.0, 0.5]}, "'std' must be a list of 3 positive numbers"),
    ({"num_classes": 4}, "'classes' has 5 names but 'num_classes' is 4"),
    ({"classes": ["5", "5", "6", "7", "8"]}, "'classes' must be a non-empty list of distinct"),
    ({"decode_size": -1, "metric": 3}, "'decode_size' must be null or an integer >= 1 (pixels) but got -1; 'metric'"),
    ({"backbone": "hf-hub:someone/x"}, "it names hf-hub:someone/x/last_n, not the test_resnet/last_n whose folder"),
]


@pytest.fixture(scope="module")
def exported(reference, tmp_path_factory):
    """A copy of the reference's exported models, and the last_n cell's model.json as written."""
    out = tmp_path_factory.mktemp("exported") / "results"
    shutil.copytree(reference / "best", out / "best")
    return out, json.loads((out / "best/test_resnet/last_n/model.json").read_text())


def _network_calls(monkeypatch) -> list[str]:
    """Every attempt to resolve a host or open a connection, refused and recorded; the hub's offline switch off."""
    import socket

    import huggingface_hub.constants

    calls: list[str] = []

    def refuse(*args, **kwargs):
        calls.append(repr(args[:2]))
        raise OSError(errno.ENETUNREACH, "network refused by the test")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return calls


@pytest.mark.parametrize("change, said", MODEL_JSON_DAMAGE)
def test_a_model_json_with_wrong_contents_names_each_wrong_field(exported, change, said, monkeypatch, capfd):
    """Valid JSON, wrong contents: load_best (and so predict) refuses it naming the fields, before building anything
    and without any network (a backbone edited to a hub name must not reach the hub)."""
    out, written = exported
    model_json = out / "best/test_resnet/last_n/model.json"
    info = {k: v for k, v in {**written, **change}.items() if v != MISSING}
    model_json.write_text(json.dumps(info))
    calls = _network_calls(monkeypatch)
    with pytest.raises(TlkitError, match=r"model\.json is damaged: .*HINT: delete .*last_n and run the sweep") as err:
        tlkit.load_best(out, "test_resnet", "last_n")
    assert said in str(err.value) and calls == []
    image = out / "one.png"
    PIL.Image.new("RGB", (8, 8)).save(image)
    capfd.readouterr()
    assert predict_main([str(out), str(image), "--backbone", "test_resnet", "--strategy", "last_n"]) == 2
    _one_paragraph(capfd.readouterr().err, said)
    model_json.write_text(json.dumps(written))
    assert tlkit.load_best(out, "test_resnet", "last_n").tlkit_info == written, "the file as written loads"


def test_a_hub_backbone_is_built_offline_or_refused(exported, monkeypatch):
    """An hf-hub: name in a cell's own folder (an hf-hub backbone's export) is built from the cache only: not
    cached, it is a TlkitError, and no connection is tried."""
    out, written = exported
    folder = out / "best/hf-hub_someone_x/last_n"
    shutil.copytree(out / "best/test_resnet/last_n", folder)
    (folder / "model.json").write_text(json.dumps({**written, "backbone": "hf-hub:someone/x"}))
    calls = _network_calls(monkeypatch)
    with pytest.raises(TlkitError, match=r"backbone 'hf-hub:someone/x' of .*model\.json cannot be built offline"):
        tlkit.load_best(out, "hf-hub:someone/x", "last_n")
    assert calls == []
    import huggingface_hub.constants
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ, "restored"


# --- random wrong --set values ------------------------------------------------------------------------------------

WRONG_VALUES = {  # mostly wrong; the few right ones make sure the "exit 0" side of the property is tried too
    "train.lr": ["-1e-3", "0", "1e999", "'fast'", "None", "[1e-3]", "3e-3"],
    "train.batch_size": ["0", "-8", "2.5", "'16'", "True", "1"],
    "train.epochs": ["0", "-1", "1.5", "'2'"],
    "train.momentum": ["-0.1", "1", "1.5"],
    "train.label_smoothing": ["-0.1", "1.0", "2"],
    "train.weight_decay": ["-1e-3", "1e999", "'none'"],
    "train.warmup_epochs": ["-1", "1", "5"],
    "train.crop_padding": ["-1", "0.5"],
    "train.max_batches": ["0", "-1", "'all'"],
    "train.image_size": ["0", "-16", "4.0"],
    "train.optimizer": ["'sgdd'", "''", "3"],
    "train.augment": ["['rotate']", "'crop'", "[None]"],
    "data.val_fraction": ["0", "1", "-0.5", "0.001"],
    "data.classes": ["[]", "[5]", "[5, 5]", "[-1, 2]", "[5, 99]", "[5, 6]"],
    "data.train_per_class": ["0", "1", "-2"],
    "seed": ["-1", "10**9", "1e3"],
    "trials": ["0", "-1"],
    "search.lr": ["[-1, 1]", "[0, 1]", "[1e-3]", "'x'", "[1e-2, 1e-3]"],
    "search.weight_decay": ["[-1, 0]", "[1e-5]", "[]"],
}


@pytest.mark.slow
def test_random_wrong_set_values_run_a_complete_study_or_stop_before_anything_is_written(tmp_path, capfd):
    """Property: whatever the values, exit 0 with every trial finished, or exit 2 with one paragraph, no traceback
    and no results folder. Seeded, so a failure names a case that can be rerun."""
    rng = random.Random(11)
    exp = write_experiment(tmp_path, name="fuzz", trials=1, train={"epochs": 1, "batch_size": 16},
                           data={"train_per_class": 16})
    cases = [[f"{key}={rng.choice(WRONG_VALUES[key])}" for key in rng.sample(sorted(WRONG_VALUES), rng.choice([1, 2]))]
             for _ in range(60)]
    outcomes = []
    for case, overrides in enumerate([*cases, ["data.classes=[5, 6]", "search.lr=None", "train.lr=3e-3"]]):  # runs
        out = tmp_path / f"case_{case}"
        capfd.readouterr()
        code = main([str(exp), "--out", str(out), "--quiet", *[a for o in overrides for a in ("--set", o)]])
        err = capfd.readouterr().err
        assert code in (0, 2), f"case {case} {overrides}: exit {code}\n{err}"
        if code == 2:
            _one_paragraph(err)
            assert not out.exists(), f"case {case} {overrides} wrote {out}"
        else:
            states = [t.state for t in _study(out).get_trials()]
            assert states and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, (case, overrides, states)
        outcomes.append(code)
    assert outcomes.count(0) >= 1 and outcomes.count(2) >= 40, outcomes  # both sides of the property were tried


def test_a_training_split_smaller_than_a_batch_trains_on_all_of_it_once_per_epoch(monkeypatch):
    """Decided, not refused: a split of n <= batch_size images is one optimizer step per epoch on all n (never zero
    steps, never a dropped remainder), so a tiny study still trains and its number means something."""
    train, test = load_dataset("digits")
    splits = make_splits(train, test, classes=[0, 1], val_fraction=0.25, seed=0, image_size=16, train_per_class=4)
    seen: list[int] = []

    def iterate_batches(data, batch_size, _real=tlkit.engine.loop.iterate_batches, **kwargs):
        for x, y in _real(data, batch_size, **kwargs):
            if kwargs.get("shuffle_seed") is not None:  # training batches only
                seen.append(len(y))
            yield x, y
    monkeypatch.setattr(tlkit.engine.loop, "iterate_batches", iterate_batches)
    model = create_backbone("test_resnet", 2)
    groups = layer_groups(model)
    trainer = Trainer(model, groups, create_strategy("full_finetune", num_groups=len(groups), epochs=3), splits,
                      Train(epochs=3, batch_size=32, image_size=16), get_metric("accuracy"), seed=0,
                      **preprocessing(model))
    trainer.fit()
    assert len(splits.train) == 6 and trainer.steps_per_epoch == 1
    assert seen == [6, 6, 6] and trainer.step == 3
    assert all(math.isfinite(r.train_loss) for r in trainer.history)

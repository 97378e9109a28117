"""Kill a real sweep with SIGKILL at exact points, run the same command again, and compare with an uninterrupted run.

The experiment file carries the kill switch (a test harness, no hooks in tlkit): with ``TLKIT_TEST_KILL`` set it
SIGKILLs its own process once per listed point (a marker file remembers that it fired), e.g. ``batch:1:2:2`` is
"in run 1, epoch 2, before batch 2" (two optimizer steps into the epoch). Without it the file is an ordinary
experiment, so the uninterrupted reference runs the very same file and command.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from tlkit.search.queue import MOVED
from tlkit.search.storage import open_storage
from tlkit.search.workers import take_up_dead_local_trials
from tlkit.testing import write_experiment

KILL_PRELUDE = '''
import os, signal
from pathlib import Path
import tlkit.engine.loop, tlkit.engine.runner
from tlkit.strategies.gradual import Gradual

_KILLS = [k.split(":") for k in os.environ.get("TLKIT_TEST_KILL", "").split(",") if k]
_MARKERS = Path(os.environ.get("TLKIT_TEST_MARKERS", "."))
_LOG = os.environ.get("TLKIT_TEST_LOG")
_now = {"cell": "", "run": -1, "epoch": -1}


def _kill_if(where, epoch, batch=None):
    if _now["cell"] != "gradual_kill":
        return
    for i, (w, run, ep, *b) in enumerate(_KILLS):
        sig, _, w = w.rpartition("@")
        if (w, int(run), int(ep)) == (where, _now["run"], epoch) and (not b or int(b[0]) == batch):
            marker = _MARKERS / f"kill_{i}"
            if not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGINT if sig == "int" else signal.SIGKILL)


@register_strategy("gradual_kill")
class GradualKill(Gradual):
    def lr_scales(self, epoch):
        _kill_if("unfreeze", epoch)
        return super().lr_scales(epoch)


def _load_latest(folder, _real=tlkit.engine.runner.load_latest):
    latest = _real(folder)
    _now.update(cell=folder.parent.name, run=int(folder.name.rsplit("_", 1)[1]),
                epoch=latest[1]["epoch"] - 1 if latest else -1)
    _kill_if("loaded", _now["epoch"] + 1)
    return latest


def _iterate_batches(data, batch_size, _real=tlkit.engine.loop.iterate_batches, **kw):
    training = kw.get("shuffle_seed") is not None
    if training:  # one call per training epoch
        _now["epoch"] += 1
        if _LOG:
            with open(_LOG, "a") as fh:
                fh.write(f"{os.getpid()} {_now['cell']} {_now['run']} {_now['epoch']}\\n")
    for i, batch in enumerate(_real(data, batch_size, **kw)):
        if training:
            _kill_if("batch", _now["epoch"], i)
        yield batch


def _save_epoch(folder, epoch, *args, _real=tlkit.engine.runner.save_epoch, **kw):
    _real(folder, epoch, *args, **kw)
    _kill_if("saved", epoch)


def _save_tensors(path, *args, _real=tlkit.engine.runner.save_tensors, **kw):
    _real(path, *args, **kw)
    _kill_if("best", int(kw.get("metadata", {}).get("epoch", -1)))


def _finish(*args, _real=tlkit.engine.runner._finish):
    _real(*args)
    _kill_if("finished", _now["epoch"])


runner = tlkit.engine.runner
runner.load_latest, runner.save_epoch, runner.save_tensors = _load_latest, _save_epoch, _save_tensors
tlkit.engine.runner._finish = _finish
tlkit.engine.loop.iterate_batches = _iterate_batches
'''

EPOCHS = 4
TRIALS = 2


def _experiment(folder: Path) -> Path:
    return write_experiment(folder, name="resume", strategies=["gradual_kill"], trials=TRIALS,
                            train={"epochs": EPOCHS}, prelude=KILL_PRELUDE)


def _env(tmp: Path, kill: str) -> dict[str, str]:
    return {**os.environ, "TLKIT_CACHE": str(tmp.parent / "cache"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "TLKIT_TEST_KILL": kill, "TLKIT_TEST_MARKERS": str(tmp), "TLKIT_TEST_LOG": str(tmp / "epochs.log")}


def _sweep(exp: Path, out: Path, tmp: Path, kill: str = "") -> subprocess.CompletedProcess:
    """``python -m tlkit.sweep EXP --out OUT``: the same command every time, only the kill switch differs."""
    return subprocess.run([sys.executable, "-m", "tlkit.sweep", str(exp), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, env=_env(tmp, kill), timeout=300)


def _epochs_trained(tmp: Path, since: int = 0) -> list[tuple[int, int]]:
    """(run, epoch) of every training epoch started, in order, from line ``since`` of the log."""
    log = tmp / "epochs.log"
    rows = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return [(int(run), int(epoch)) for _, _, run, epoch in rows[since:]]


def _study(out: Path) -> optuna.Study:
    url = f"sqlite:///{out / 'study.db'}"
    (name,) = [n for n in optuna.get_all_study_names(url) if ":repeats/" not in n]
    return optuna.load_study(study_name=name, storage=url)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _numbers(history: list[dict]) -> list[tuple]:
    """What each epoch computed (losses, metric, learning rates, trainable parameters), without timings."""
    return [tuple(v for k, v in sorted(row.items()) if k not in ("seconds", "images_per_s")) for row in history]


def _completed_by_run(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    runs = [t.user_attrs["run"] for t in done]
    assert len(runs) == len(set(runs)), f"a run completed twice: {runs}"
    return {t.user_attrs["run"]: t for t in done}


def _assert_same_results(out: Path, reference: dict) -> None:
    """Every run of the resumed study equals the uninterrupted one: parameters, every epoch's numbers, the best
    weights bit for bit, and the exported test score."""
    mine, theirs = _completed_by_run(_study(out)), _completed_by_run(reference["study"])
    assert sorted(mine) == list(range(TRIALS)), "the requested number of completed trials, one per run"
    for run in range(TRIALS):
        assert mine[run].params == theirs[run].params
        assert mine[run].value == theirs[run].value
        assert _numbers(mine[run].user_attrs["history"]) == _numbers(theirs[run].user_attrs["history"])
        best = Path(f"trials/test_resnet/gradual_kill/trial_{run:04d}/best.safetensors")
        assert _sha(out / best) == _sha(reference["out"] / best), "the best weights are bit-identical"
    same = ["trials_complete", "trials_pruned", "best_val_accuracy", "test_accuracy", "test_loss", "best_params"]
    summary, ref_summary = (pd.read_csv(o / "summary.csv")[same] for o in (out, reference["out"]))
    assert summary.equals(ref_summary), "the study's results are those of the uninterrupted run"
    live = [p for p in out.glob("trials/**/epoch_*") if not p.name.endswith(".bad")]  # damaged ones stay aside
    assert not live, "per-epoch state is dropped once every trial is finished"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted sweep: the same file and command, no kill switch."""
    tmp = tmp_path_factory.mktemp("reference")
    exp, out = _experiment(tmp), tmp / "results"
    proc = _sweep(exp, out, tmp)
    assert proc.returncode == 0, proc.stderr
    return {"out": out, "study": _study(out), "log": _epochs_trained(tmp)}


@pytest.mark.slow
def test_reference_trains_every_epoch_once_and_keeps_only_the_best_weights(reference):
    assert reference["log"] == [(r, e) for r in range(TRIALS) for e in range(EPOCHS)]
    for run in range(TRIALS):  # retention 'best': per-epoch state is dropped once a trial is finished
        folder = reference["out"] / f"trials/test_resnet/gradual_kill/trial_{run:04d}"
        assert sorted(p.name for p in folder.iterdir()) == ["best.safetensors", "outcome.json", "trial.json"]
    history = _completed_by_run(reference["study"])[1].user_attrs["history"]
    assert history[2]["trainable_params"] > history[1]["trainable_params"], "epoch 2 unfreezes a new group"


class _Evil:
    """Unpickling this runs ``open(marker, "w")``: a stand-in for any code a pickle could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _truncate(path: Path, tmp: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _booby_trap(path: Path, tmp: Path) -> Path:
    torch.save({"epoch": EPOCHS, "payload": _Evil(tmp / "code_ran")}, path)
    return path


TRIAL_1 = "trials/test_resnet/gradual_kill/trial_0001"
# One trial (run 1) stopped again and again, each time at a different point, sometimes with its newest checkpoint
# damaged afterwards, then left to finish. Each step: (kill point, epochs the process trained in run 1, its exit
# code, the epoch the next attempt resumes at, damage done to the trial folder before the next attempt).
KILL_CHAIN = [
    ("int@loaded:1:0", [], 130, 0, None),  # Ctrl-C while the trial is set up: re-queued by the interrupted process
    ("batch:1:1:2", [0, 1], -signal.SIGKILL, 1, None),  # mid-epoch, two optimizer steps in
    ("unfreeze:1:2", [1], -signal.SIGKILL, 1,  # entering epoch 2, where gradual unfreezes a new group ...
     (_truncate, "epoch_0001.safetensors")),  # ... then the newest weights are torn: back to epoch 0's checkpoint
    (f"saved:1:{EPOCHS - 2}", [1, 2], -signal.SIGKILL, EPOCHS - 2,  # right after the last checkpoint (the last
     (_booby_trap, f"epoch_{EPOCHS - 2:04d}.pt")),  # epoch writes none) ... then its state is replaced by a pickle
    # that runs code: it is set aside and the trial resumes from the checkpoint before it
    (f"finished:1:{EPOCHS - 1}", [2, 3], -signal.SIGKILL, EPOCHS, None),  # outcome recorded, Optuna not yet told
]


@pytest.mark.slow
def test_killed_sweep_resumes_with_nothing_lost_and_nothing_repeated(reference, tmp_path):
    exp, out = _experiment(tmp_path), tmp_path / "results"
    kills = ",".join(point for point, *_ in KILL_CHAIN)
    seen, damaged = 0, None
    for i, (point, trained, code, _, damage) in enumerate(KILL_CHAIN):
        proc = _sweep(exp, out, tmp_path, kill=kills)
        assert proc.returncode == code, f"{point}: {proc.stderr[-3000:]}"
        assert (tmp_path / f"kill_{i}").exists(), f"{point} did not fire"
        if damaged is not None:
            assert str(damaged) in proc.stderr, f"{point}: the warning names the damaged file"
        epochs = _epochs_trained(tmp_path, since=seen)
        seen += len(epochs)
        expected = [(0, e) for e in range(EPOCHS)] * (i == 0) + [(1, e) for e in trained]
        assert epochs == expected, f"{point}: only what was not checkpointed is trained again"
        if i == 0:
            finished = out / "trials/test_resnet/gradual_kill/trial_0000/best.safetensors"
            finished_mtime = finished.stat().st_mtime_ns
        damaged = damage[0](out / TRIAL_1 / damage[1], tmp_path) if damage else None
    proc = _sweep(exp, out, tmp_path, kill=kills)
    assert proc.returncode == 0, proc.stderr
    assert _epochs_trained(tmp_path, since=seen) == [], "the last attempt only had to report the result"
    assert finished.stat().st_mtime_ns == finished_mtime, "the finished trial was never run again"
    assert not (tmp_path / "code_ran").exists(), "a checkpoint that would run code on load is never unpickled"
    assert sorted(p.name for p in (out / TRIAL_1).glob("*.bad")) == [  # set aside for a post-mortem, not deleted
        "epoch_0001.pt.bad", "epoch_0001.safetensors.bad", f"epoch_{EPOCHS - 2:04d}.pt.bad",
        f"epoch_{EPOCHS - 2:04d}.safetensors.bad"]

    _assert_same_results(out, reference)
    trials = pd.read_csv(out / "trials.csv").set_index("trial")
    assert list(trials.state) == ["COMPLETE"] + ["FAIL"] * len(KILL_CHAIN) + ["COMPLETE"]
    assert list(trials.run) == [0] + [1] * (len(KILL_CHAIN) + 1)
    retries = trials.iloc[2:]
    assert list(retries.resumed_from_trial) == list(range(1, len(KILL_CHAIN) + 1)), "each retry names its trial"
    assert list(retries.resumed_from_epoch) == [step[3] for step in KILL_CHAIN]
    assert list(trials.note.fillna("").str.split(";").str[0]) == \
        ["", "interrupted"] + ["worker process died"] * (len(KILL_CHAIN) - 1) + [""]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_trial_left_running_by_a_lost_worker_is_taken_up_once_after_the_heartbeat_grace(reference, tmp_path):
    """No process-id shortcut here (the worker was on 'another machine'): only Optuna's heartbeat can tell."""
    exp, out = _experiment(tmp_path), tmp_path / "results"
    assert _sweep(exp, out, tmp_path, kill="saved:0:1").returncode == -signal.SIGKILL
    seen = len(_epochs_trained(tmp_path))
    storage = open_storage(f"sqlite:///{out / 'study.db'}")  # the default grace period: minutes
    study = optuna.load_study(study_name=_study(out).study_name, storage=storage)
    (lost,) = study.get_trials(states=(TrialState.RUNNING,))
    storage.set_trial_user_attr(lost._trial_id, "worker", "other-host.example:4242:1")
    assert take_up_dead_local_trials(study) == 0
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[lost.number].state == TrialState.RUNNING, "within the grace period it may be alive"
    time.sleep(3)  # past a 2-second grace period

    driver = ("import sys, tlkit.search.storage as s; s.HEARTBEAT_S, s.GRACE_S = 1, 2; from tlkit.sweep import main; "
              "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", driver, str(exp), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, env=_env(tmp_path, ""), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _study(out).get_trials()
    # the lost one; run 1's first queued trial, taken off the queue untrained so that the retry runs first; 2 runs
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    (moved,) = [t for t in trials if t.user_attrs.get("duplicate_of") == MOVED]
    assert moved.user_attrs["run"] == 1 and moved.state == TrialState.FAIL and not moved.intermediate_values
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert retry.params == lost.params and retry.user_attrs["run"] == lost.user_attrs["run"]
    assert (retry.user_attrs["resumed_from_trial"], retry.user_attrs["resumed_from_epoch"]) == (lost.number, 2)
    # run 0 goes on from its checkpoint of epoch 1, then run 1 trains whole: the uninterrupted order
    assert _epochs_trained(tmp_path, since=seen) == [(0, 2), (0, 3)] + [(1, e) for e in range(EPOCHS)]
    _assert_same_results(out, reference)  # including run 1, sampled and seeded after the retry

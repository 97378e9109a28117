"""Bad input stops the sweep with one paragraph and no traceback, before anything is written; a changed experiment
never mixes into an old study; a NaN trial is pruned with its reason and can never be the best."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tlkit.sweep import main
from tlkit.testing import write_experiment


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content hash: what "nothing was written" means."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_one_paragraph_error(err: str, *fragments: str) -> None:
    assert "Traceback" not in err, err
    message = err.strip()
    assert message.startswith("tlkit: error: ") and "\n\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-trial study whose files must survive every bad rerun untouched."""
    tmp = tmp_path_factory.mktemp("finished")
    exp, out = write_experiment(tmp, name="study", trials=1, train={"epochs": 1}), tmp / "results"
    assert main([str(exp), "--out", str(out), "--quiet"]) == 0
    return exp, out, _snapshot(out)


def _broken_copy(exp: Path) -> Path:
    broken = exp.with_name("broken.py")
    broken.write_text(exp.read_text().replace("trials=1,", "trials=1,,"))
    return broken


BAD_INPUT = {
    "syntax error": (_broken_copy, [], ["broken.py:", "syntax error"]),
    "unknown backbone": (None, ["--set", 'backbones=["test_resnett"]'], ["Unknown backbone 'test_resnett'",
                                                                          "test_resnet"]),
    "unknown strategy": (None, ["--set", 'strategies=["lastn"]'], ["Unknown strategy 'lastn'", "'last_n'"]),
    "unknown --set key": (None, ["--set", "train.lrr=0.1"], ["Bad --set 'train.lrr=0.1'", "train.lr"]),
    "wrong --set type": (None, ["--set", "train.epochs=two"], ["train.epochs must be int"]),
    "malformed --set": (None, ["--set", "train.epochs"], ["expected KEY=VALUE"]),
    "missing data folder": (None, ["--set", "data.name=imagefolder", "--data-dir", "/nonexistent/images"],
                            ["/nonexistent/images", "does not exist", "--data-dir"]),
    "unknown dataset": (None, ["--set", "data.name=cifar_10"], ["Unknown dataset 'cifar_10'", "'cifar10'"]),
    "unknown metric": (None, ["--set", "metric=acc"], ["Unknown metric 'acc'", "accuracy"]),
    "metric needs more classes": (None, ["--set", "metric=top5_accuracy"], ["needs at least 6 classes",
                                                                           "has 5"]),
    "strategy shadows a shared hyperparameter": (lambda exp: _shadowing_copy(exp), [],
                                                 ["Strategy 'own_lr_test' searches ['lr']", "HINT: remove"]),
}


def _shadowing_copy(exp: Path) -> Path:
    """A strategy that searches its own ``lr`` beside the experiment's shared ``lr``."""
    prelude = ("@register_strategy('own_lr_test')\nclass OwnLr(Strategy):\n"
               "    @classmethod\n    def search_space(cls, num_groups, epochs):\n"
               "        return {'lr': FloatDistribution(0.1, 0.2)}\n"
               "    def lr_scales(self, epoch):\n        return [1.0] * self.num_groups\n")
    return write_experiment(exp.parent / "shadow", name="study", trials=1, train={"epochs": 1},
                            strategies=["own_lr_test"], prelude=prelude)


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_stops_before_anything_is_written(finished, tmp_path, capfd, case):
    exp, out, before = finished
    make_file, args, fragments = BAD_INPUT[case]
    exp = make_file(exp) if make_file else exp
    for target in (out, tmp_path / "fresh"):
        capfd.readouterr()
        assert main([str(exp), "--out", str(target), "--quiet", *args]) == 2
        _assert_one_paragraph_error(capfd.readouterr().err, *fragments)
    assert _snapshot(out) == before, "the finished study is untouched"
    assert not (tmp_path / "fresh").exists(), "no half-made study"


def test_a_second_study_in_the_same_results_folder_is_refused(finished, capfd):
    """Trial folders and exported models are per results folder: study 'other' there would overwrite 'study'."""
    exp, out, before = finished
    capfd.readouterr()
    assert main([str(exp), "--out", str(out), "--quiet", "--study", "other"]) == 2
    _assert_one_paragraph_error(capfd.readouterr().err, "holds study 'study'", "--out")
    assert _snapshot(out) == before


IDENTITY_CHANGES = {
    "search space": ("search.lr=[1e-3, 1e-2]", "search.lr.attributes.low: 0.0001 -> 0.001"),
    "metric": ("metric=balanced_accuracy", "metric: 'accuracy' -> 'balanced_accuracy'"),
    "dataset": ("data.classes=[0, 1, 2, 3, 4]", "data.classes: [5, 6, 7, 8, 9] -> [0, 1, 2, 3, 4]"),
    "recipe": ("train.epochs=2", "train.epochs: 1 -> 2"),
}


@pytest.mark.parametrize("change", list(IDENTITY_CHANGES))
def test_a_changed_experiment_is_refused_with_what_changed_and_how_to_start_anew(finished, capfd, change):
    exp, out, before = finished
    override, named = IDENTITY_CHANGES[change]
    capfd.readouterr()
    assert main([str(exp), "--out", str(out), "--quiet", "--set", override]) == 2
    _assert_one_paragraph_error(capfd.readouterr().err, "was run with a different experiment", named,
                                "--study NEW_NAME")
    assert _snapshot(out) == before


@pytest.mark.slow
def test_the_cli_reports_bad_input_without_a_traceback_and_the_hint_works(finished, tmp_path, monkeypatch):
    exp, out, before = finished
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "tlkit.sweep", str(exp), "--quiet", "--set", "metric=balanced_accuracy"]
    proc = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    _assert_one_paragraph_error(proc.stderr, "metric: 'accuracy' -> 'balanced_accuracy'")
    monkeypatch.chdir(tmp_path)  # following the hint: a new name, and so a new folder results/study_v2
    assert main([str(exp), "--quiet", "--set", "metric=balanced_accuracy", "--study", "study_v2"]) == 0
    assert pd.read_csv(tmp_path / "results/study_v2/summary.csv").trials_complete.tolist() == [1]
    assert _snapshot(out) == before


NAN_PRELUDE = '''
from tlkit.strategies.last_n import LastN

_made = [0]


@register_strategy("explode_first")
class ExplodeFirst(LastN):
    """The first trial of the process gets a 1e30 times larger learning rate from epoch 1: its loss turns NaN."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _made[0] += 1
        self.explode = _made[0] == 1

    def lr_scales(self, epoch):
        return [s * 1e30 if self.explode and epoch >= 1 and s > 0 else s for s in super().lr_scales(epoch)]
'''


@pytest.mark.slow
def test_a_nan_trial_is_pruned_with_its_reason_and_is_never_best(tmp_path):
    exp = write_experiment(tmp_path, name="nan", strategies=["explode_first"], trials=2, train={"epochs": 3},
                           pruner="none", prelude=NAN_PRELUDE)
    out = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "tlkit.sweep", str(exp), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    trials = pd.read_csv(out / "trials.csv").set_index("trial")
    assert trials.state.tolist() == ["PRUNED", "COMPLETE"], "the sweep went on after the NaN"
    assert "non-finite training loss" in trials.note[0] and "epoch 1" in trials.note[0]
    assert trials.epochs_run[0] == 1, "only the finite epoch was recorded"
    summary = pd.read_csv(out / "summary.csv")
    assert (summary.trials_pruned[0], summary.best_trial[0]) == (1, 1), "a pruned trial is never the best"
    assert summary.best_val_accuracy[0] == trials.val_accuracy[1]
    folder = out / "trials/test_resnet/explode_first"
    assert json.loads((folder / "trial_0000/outcome.json").read_text())["state"] == "PRUNED"
    assert not list(folder.glob("*/epoch_*")), "no checkpoint of a NaN epoch, and the trial's state was dropped"
    exported = (out / "best/test_resnet/explode_first/model.safetensors").read_bytes()
    assert exported == (folder / "trial_0001/best.safetensors").read_bytes()

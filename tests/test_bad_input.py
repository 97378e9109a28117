"""Bad input stops the sweep with one paragraph and no traceback, before anything is written; a changed experiment
never mixes into an old study; a NaN trial is pruned with its reason and can never be the best."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

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


# Values no trial can train with: refused up front, never found by a crashed trial (which would re-queue itself and
# leave a study that the corrected command then refuses as "a different experiment").
BAD_VALUES = {
    "negative learning rate": (None, ["--set", "search.lr=None", "--set", "train.lr=-0.001"],
                               ["train.lr must be a finite number > 0 but got -0.001", "--set train.lr="]),
    "label smoothing of 1": (None, ["--set", "train.label_smoothing=1.0"], ["train.label_smoothing must be in [0, 1)"]),
    "negative momentum": (None, ["--set", "train.momentum=-0.9"], ["train.momentum must be in [0, 1)"]),
    "negative weight decay": (None, ["--set", "search.weight_decay=None", "--set", "train.weight_decay=-0.01"],
                              ["train.weight_decay must be a finite number >= 0"]),
    "warm-up as long as training": (None, ["--set", "train.warmup_epochs=1"],
                                    ["train.warmup_epochs must be less than train.epochs"]),
    "zero batches per epoch": (None, ["--set", "train.max_batches=0"],
                               ["train.max_batches must be None or an int >= 1"]),
    "negative crop padding": (None, ["--set", "train.crop_padding=-4"], ["train.crop_padding must be >= 0"]),
    "batches of one image under BatchNorm": (None, ["--set", "train.batch_size=1"],
                                             ["'test_resnet' cannot train on batches of 1 image", "batch_size"]),
    "an image size the ViT cannot take": (None, ["--set", "backbones=['test_vit']", "--set", "train.image_size=12"],
                                          ["'test_vit' cannot run at image size 12", "train.image_size"]),
    "no class": (None, ["--set", "data.classes=[]"], ["data.classes=[] keeps no class", "at least 2"]),
    "one class": (None, ["--set", "data.classes=[5]"], ["data.classes=[5] keeps one class", "at least 2"]),
    "a validation split too small for every class": (None, ["--set", "data.val_fraction=0.01"],
                                                     ["without a validation image",
                                                      "HINT: set data.val_fraction to at least"]),
    "negative seed": (None, ["--set", "seed=-1"], ["seed must be an int in [0, "]),
    "searched batch size from 0": (lambda exp: _searching(exp, "IntDistribution(0, 8)", "batch_size"), [],
                                   ["search['batch_size']", "can give 0", "train.batch_size must be >= 1"]),
    "searched learning rate below 0": (lambda exp: _searching(exp, "FloatDistribution(-0.01, 0.01)", "lr"), [],
                                       ["search['lr']", "can give -0.01", "train.lr must be a finite number > 0"]),
    "unknown searched choice": (lambda exp: _searching(exp, "CategoricalDistribution(['adamw', 'sgdd'])", "optimizer"),
                                [], ["search['optimizer']", "can give 'sgdd'", "Did you mean 'sgd'?"]),
    "source recipe with a negative learning rate": (lambda exp: _with_source(exp), ["--set", "source.train.lr=-1"],
                                                    ["source.train.lr must be a finite number > 0"]),
    "misspelled backbone in --weights": (None, ["--weights", "test_resnett=weights.pt"],
                                         ["'test_resnett', which is not one of the experiment's backbones",
                                          "Did you mean 'test_resnet'?"]),
}


def _searching(exp: Path, dist: str, key: str) -> Path:
    path = write_experiment(exp.parent / f"search_{key}", name="study", trials=1, train={"epochs": 1},
                            search="SEARCH", prelude=f"SEARCH = {{{key!r}: {dist}}}")
    path.write_text(path.read_text().replace("search='SEARCH'", "search=SEARCH"))
    return path


def _with_source(exp: Path) -> Path:
    return write_experiment(exp.parent / "with_source", name="study", trials=1, train={"epochs": 1},
                            pretrained=True, source={"data": {"name": "digits", "classes": [0, 1]},
                                                     "train": {"epochs": 1, "image_size": 16}})


def _images(root: Path, classes: tuple[str, ...] = ("ant", "bee"), train: int = 4, test: int = 2) -> Path:
    """A real ImageFolder of tiny PNGs: ``root/{train,test}/<class>/<i>.png``."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


def _on_images(case: str, damage: Callable[[Path], Path] = lambda root: root, **shape: Any) -> Callable[[Path], Path]:
    """An experiment on a tiny ImageFolder written beside the finished study, after ``damage`` (which returns the
    data root to use)."""
    def make(exp: Path) -> Path:
        folder = exp.parent / case
        root = damage(_images(folder / "images", **shape))
        return write_experiment(folder, name="study", trials=1, train={"epochs": 1, "image_size": 8, "batch_size": 4},
                                data={"name": "imagefolder", "root": str(root), "classes": None,
                                      "train_per_class": None, "val_fraction": 0.5})
    return make


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _with_weights(case: str, write: Callable[[Path], None]) -> Callable[[Path], Path]:
    def make(exp: Path) -> Path:
        path = exp.parent / case / "weights.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        return write_experiment(path.parent, name="study", trials=1, train={"epochs": 1}, pretrained=True,
                                weights={"test_resnet": str(path)})
    return make


def _not_python(exp: Path) -> Path:
    text = exp.with_name("study.txt")
    text.write_text(exp.read_text())
    return text


# Files that are damaged, empty or not what they claim: each stops the sweep with a message naming the file.
BAD_FILES = {
    "a truncated image": (_on_images("truncated", lambda r: _truncate(r / "train/ant/0.png") or r), [],
                          ["Image ", "train/ant/0.png cannot be decoded", "HINT: replace or remove the file"]),
    "a text file named .jpg": (_on_images("text", lambda r: (r / "train/bee/notes.jpg").write_text("hi") and r), [],
                               ["train/bee/notes.jpg cannot be decoded", "not in an image format"]),
    "a .zip that is not a zip": (_on_images("zip", lambda r: (r.parent / "images.zip").write_text("PK?") and
                                            r.parent / "images.zip"), [],
                                 ["images.zip is not a readable zip file", "HINT:"]),
    "an empty class folder": (_on_images("empty_class", lambda r: (r / "train/cow").mkdir() or r), [],
                              ["class folder train/cow/ holds no images", "HINT: add its images, or remove"]),
    "a class without test images": (_on_images("no_test", lambda r: shutil.rmtree(r / "test/bee") or r), [],
                                    ["Class 'bee' has 0 test images", "HINT: add test images"]),
    "a stray image beside the class folders": (_on_images("stray", lambda r: shutil.copy(r / "train/ant/0.png",
                                                                                          r / "train/x.png") and r),
                                               [], ["'train/x.png' lies beside the class folders"]),
    "images of one class": (_on_images("one_class", classes=("ant",)), [],
                            ["The data has 1 class (ant)", "at least 2"]),
    "one training image per class": (_on_images("too_few", train=1), [],
                                     ["Class 'ant' has 1 training image", "at least 2"]),
    "an experiment file that calls sys.exit(0)": (
        lambda exp: write_experiment(exp.parent / "exits", name="study", prelude="import sys\nsys.exit(0)\n"), [],
        ["exits/study.py:4: the file called sys.exit(0)", "defines no experiment"]),
    "an experiment file that is not .py": (_not_python, [], ["study.txt' is not a Python file (.py)"]),
}


# Weights files that are not state dicts. Naming a weights file changes what a study computes, so on the finished
# study the first complaint is the changed experiment; a new study names the file.
BAD_WEIGHTS = {
    "an empty weights file": (lambda p: p.write_bytes(b""),
                              ["weights.pt' for backbone 'test_resnet' cannot be read safely", "HINT:"]),
    "a weights file holding a list": (lambda p: torch.save([1, 2], p),
                                      ["holds list, not a state dict of named tensors"]),
    "a weights file of non-tensors": (lambda p: torch.save({"conv1.weight": 1.0}, p),
                                      ["is not a state dict of named tensors", "'conv1.weight' -> float"]),
}


@pytest.mark.parametrize("case", list(BAD_WEIGHTS))
def test_a_bad_weights_file_is_named_and_nothing_is_written(finished, tmp_path, capfd, case):
    exp, out, before = finished
    write, fragments = BAD_WEIGHTS[case]
    exp = _with_weights(case.replace(" ", "_"), write)(exp)
    for target, expected in ((tmp_path / "fresh", fragments), (out, ["was run with a different experiment"])):
        capfd.readouterr()
        assert main([str(exp), "--out", str(target), "--quiet"]) == 2
        _assert_one_paragraph_error(capfd.readouterr().err, *expected)
    assert _snapshot(out) == before
    assert not (tmp_path / "fresh").exists()


def _shadowing_copy(exp: Path) -> Path:
    """A strategy that searches its own ``lr`` beside the experiment's shared ``lr``."""
    prelude = ("@register_strategy('own_lr_test')\nclass OwnLr(Strategy):\n"
               "    @classmethod\n    def search_space(cls, num_groups, epochs):\n"
               "        return {'lr': FloatDistribution(0.1, 0.2)}\n"
               "    def lr_scales(self, epoch):\n        return [1.0] * self.num_groups\n")
    return write_experiment(exp.parent / "shadow", name="study", trials=1, train={"epochs": 1},
                            strategies=["own_lr_test"], prelude=prelude)


@pytest.mark.parametrize("case", [*BAD_INPUT, *BAD_VALUES, *BAD_FILES])
def test_bad_input_stops_before_anything_is_written(finished, tmp_path, capfd, case):
    exp, out, before = finished
    make_file, args, fragments = {**BAD_INPUT, **BAD_VALUES, **BAD_FILES}[case]
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

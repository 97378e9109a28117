"""Source pretraining: each backbone trained once on a source task by the trial runner, cached, reused, and
retrained when the recipe changes or the cached file is damaged."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tlkit.config.loading import load_experiment
from tlkit.search.best import load_best
import tlkit.engine.source
from tlkit.engine.source import resolve_pretrained, source_weights_path, train_source
from tlkit.testing import write_experiment

SOURCE = {"data": {"name": "digits", "classes": [0, 1, 2, 3, 4], "train_per_class": 60},
          "train": {"epochs": 3, "batch_size": 32, "image_size": 16, "augment": ["crop"], "lr": 3e-3}}


def _sweep(tmp_path, *args):
    env = {**os.environ, "TLKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tlkit.sweep", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_train_source_keeps_the_best_epoch_and_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    exp = load_experiment(write_experiment(tmp_path, source={**SOURCE, "train": {**SOURCE["train"], "epochs": 2}},
                                           pretrained=True))
    path = source_weights_path(exp, "test_resnet")
    train_source(exp, "test_resnet", path)
    note = pd.read_json(path.with_suffix(".json"), typ="series")
    assert note["epochs"] == 2 and note["best_epoch"] in (0, 1) and 0 <= note["test_accuracy"] <= 1
    assert load_file(str(path))["fc.weight"].shape[0] == 5  # the source head, 5 classes
    assert not path.with_name(path.stem + ".run").exists()  # the trial's work folder is gone


def test_a_damaged_cached_source_is_set_aside_and_trained_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    exp = load_experiment(write_experiment(tmp_path, source={**SOURCE, "train": {**SOURCE["train"], "epochs": 1}},
                                           pretrained=True))
    trained = []

    def train(e, backbone, path, device=None):
        trained.append(backbone)
        train_source(e, backbone, path, device=device)

    monkeypatch.setattr(tlkit.engine.source, "train_source", train)
    first = resolve_pretrained(exp, "test_resnet", 5)
    path = source_weights_path(exp, "test_resnet")
    path.write_bytes(path.read_bytes()[:64])  # truncated
    second = resolve_pretrained(exp, "test_resnet", 5)
    assert trained == ["test_resnet", "test_resnet"] and "set aside" in caplog.text
    assert path.with_name(path.name + ".bad").is_file()
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)  # same recipe


@pytest.mark.slow
def test_source_task_is_trained_once_and_reused(tmp_path):
    exp = write_experiment(tmp_path, strategies=["linear_probe", "from_scratch"], source=SOURCE, trials=1,
                           pretrained=True)
    first = _sweep(tmp_path, exp, "--out", tmp_path / "a")
    assert first.returncode == 0, first.stderr
    assert "pretraining test_resnet on the source task" in first.stderr
    cached = list((tmp_path / "cache" / "source").glob("test_resnet-*.safetensors"))
    assert len(cached) == 1 and cached[0].with_suffix(".json").is_file()
    trials = pd.read_csv(tmp_path / "a" / "trials.csv")
    by_strategy = dict(zip(trials.strategy, trials.weights))
    assert by_strategy["linear_probe"].startswith("source task digits")
    assert by_strategy["from_scratch"].startswith("random init")
    # The probe's frozen body is exactly the source-trained body.
    model = load_best(tmp_path / "a", backbone="test_resnet", strategy="linear_probe")
    src = load_file(str(cached[0]))
    assert torch.equal(model.state_dict()["layer4.0.conv1.weight"], src["layer4.0.conv1.weight"])
    # A second study with the same source reuses the weights instead of training again.
    second = _sweep(tmp_path, exp, "--out", tmp_path / "b", "--study", "again")
    assert second.returncode == 0, second.stderr
    assert "pretraining" not in second.stderr
    # A different source recipe is a different cache entry.
    changed = _sweep(tmp_path, exp, "--out", tmp_path / "c", "--set", "source.train.epochs=2")
    assert changed.returncode == 0 and "pretraining" in changed.stderr
    assert len(list((tmp_path / "cache" / "source").glob("test_resnet-*.safetensors"))) == 2

"""Pretrained weights from a file or from the hub's local cache (a source task: test_source.py); and the errors
that stop a sweep before any trial when weights cannot be had."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file

from tlkit.errors import TlkitError
from tlkit.config.loading import load_experiment
from tlkit.search.best import load_best
from tlkit.sweep import main
from tlkit.testing import write_experiment
from tlkit.engine.source import resolve_pretrained


def _sweep(tmp_path, *args):
    env = {**os.environ, "TLKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tlkit.sweep", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def _random_weights(path, arch="test_resnet", seed=123, num_classes=1000):
    torch.manual_seed(seed)
    state = timm.create_model(arch, num_classes=num_classes).state_dict()
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_is_what_a_linear_probe_transfers(tmp_path, suffix):
    weights = tmp_path / f"r{suffix}"
    state = _random_weights(weights)
    exp = write_experiment(tmp_path, strategies=["linear_probe"], pretrained=True)
    out = tmp_path / "out"
    assert main([str(exp), "--out", str(out), "--quiet", "--weights", f"test_resnet={weights}"]) == 0
    model = load_best(out, backbone="test_resnet", strategy="linear_probe")
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(v, state[k]) for k, v in body.items())  # frozen body == the file, bit for bit
    assert model.fc.out_features == 5 and not model.training
    assert pd.read_csv(out / "trials.csv").weights.str.contains(f"file {weights}").all()


def test_weights_of_another_architecture_fail_before_any_trial(tmp_path):
    weights = tmp_path / "vit.safetensors"
    _random_weights(weights, arch="test_vit")
    exp = write_experiment(tmp_path, pretrained=True)
    proc = _sweep(tmp_path, exp, "--out", tmp_path / "out", "--weights", f"test_resnet={weights}")
    assert proc.returncode == 2
    assert "do not fit" in proc.stderr and "missing keys" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "study.db").exists()


def test_offline_without_cached_weights_names_the_backbone_and_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    exp = write_experiment(tmp_path, backbones=["test_resnet.r160_in1k"], pretrained=True)
    proc = _sweep(tmp_path, exp, "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr
    for needed in ("'test_resnet.r160_in1k'", "unreachable", "looked in", "--weights", "source", "pretrained=False"):
        assert needed in message, needed
    assert "Traceback" not in message and not (tmp_path / "out").exists()


def test_hub_weights_come_from_the_local_cache_when_offline(tmp_path, monkeypatch):
    """A file in the Hugging Face cache layout is found with HF_HUB_OFFLINE=1, through timm's own loader."""
    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    commit = hashlib.sha1(b"tlkit").hexdigest()
    repo = hub / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    state = _random_weights(repo / "snapshots" / commit / "model.safetensors")
    exp_file = write_experiment(tmp_path, backbones=["test_resnet.r160_in1k"], pretrained=True)
    script = ("import sys; from tlkit.engine.source import resolve_pretrained; "
              "from tlkit.config.loading import load_experiment;"
              f"exp = load_experiment({str(exp_file)!r});"
              "p = resolve_pretrained(exp, 'test_resnet.r160_in1k', 5);"
              "import torch; torch.save(p.state_dict, sys.argv[1]); print(p.origin)")
    out = tmp_path / "loaded.pt"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "timm hub" in proc.stdout
    loaded = torch.load(out, weights_only=True)
    assert torch.equal(loaded["conv1.0.weight"], state["conv1.0.weight"])


def test_shipped_experiments_load_and_cifar_needs_weights_offline(tmp_path, cifar_zip):
    for name in ("digits", "cifar", "cifar_split"):
        assert load_experiment(f"experiments/{name}.py").name == name
    exp = load_experiment("experiments/cifar.py")
    exp.data.root = str(cifar_zip.parent)
    with pytest.raises(TlkitError, match="No pretrained weights for backbone 'resnet18.a1_in1k'"):
        resolve_pretrained(exp, "resnet18.a1_in1k", 10)


@pytest.mark.slow
def test_cifar_experiment_runs_offline_with_supplied_weights(tmp_path, cifar_zip):
    weights = tmp_path / "resnet18.pth"
    _random_weights(weights, arch="resnet18")
    proc = _sweep(tmp_path, "experiments/cifar.py", "--out", tmp_path / "out", "--data-dir", cifar_zip.parent,
                  "--weights", f"resnet18.a1_in1k={weights}", "--trials", "1",
                  "--set", 'backbones=["resnet18.a1_in1k"]', "--set", 'strategies=["linear_probe"]',
                  "--set", "data.train_per_class=20", "--set", "data.test_per_class=10", "--set", "train.epochs=1",
                  "--set", "train.image_size=32")
    assert proc.returncode == 0, proc.stderr
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary.test_accuracy.between(0, 1).all() and summary.trials_complete.tolist() == [1]


def test_other_weights_in_the_same_file_are_a_changed_experiment(tmp_path, capsys):
    weights = tmp_path / "r.safetensors"
    _random_weights(weights, seed=1)
    exp = write_experiment(tmp_path, strategies=["linear_probe"], pretrained=True)
    args = [str(exp), "--out", str(tmp_path / "out"), "--quiet", "--weights", f"test_resnet={weights}"]
    assert main(args) == 0
    moved = tmp_path / "moved.safetensors"
    weights.rename(moved)  # the same weights elsewhere: the same study
    assert main(args[:-1] + [f"test_resnet={moved}"]) == 0
    _random_weights(moved, seed=2)  # other weights under the same name: refused
    assert main(args[:-1] + [f"test_resnet={moved}"]) == 2
    assert "weights.test_resnet" in capsys.readouterr().err

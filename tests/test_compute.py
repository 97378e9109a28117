"""Memory layout and precision: chosen per architecture and device as measured, overridable; channels_last on CPU
resumes exactly, bf16 autocast on CPU resumes (but, like CUDA, not bit for bit)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tlkit.models.backbones import create_backbone
from tlkit.engine.compute import CPU_CHANNELS_LAST, cpu_has_native_bf16, use_amp, use_channels_last
from tlkit.data.tensors import make_splits
from tlkit.data.datasets import load_dataset
from tlkit.config.experiment import Train
from tlkit.engine.runner import TrialSpec, read_outcome, run_trial
from tlkit.testing import KillAt

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def splits():
    train, test = load_dataset("digits")
    return make_splits(train, test, classes=[1, 2, 3], val_fraction=0.25, seed=0, image_size=16, train_per_class=40)


@pytest.mark.parametrize("backbone, on_cpu", [("test_resnet", True), ("test_efficientnet", True),
                                               ("test_convnext", True), ("test_vit", False)])
def test_channels_last_follows_the_measured_architectures_on_cpu_and_every_cnn_on_cuda(backbone, on_cpu):
    model = create_backbone(backbone, 3, 16)
    assert use_channels_last(model, CPU) is on_cpu
    assert (type(model).__name__ in CPU_CHANNELS_LAST) is on_cpu
    assert use_channels_last(model, CUDA) is True  # every timm model here has a convolution (a ViT's patch embedding)
    assert use_channels_last(model, CPU, Train(channels_last=not on_cpu)) is (not on_cpu)  # the recipe overrides


def test_bf16_autocast_is_on_for_cuda_and_only_when_asked_for_on_cpu():
    assert use_amp(Train(), CUDA) and not use_amp(Train(amp=False), CUDA)
    assert not use_amp(Train(), CPU) and not use_amp(Train(cpu_amp=False), CPU)
    assert use_amp(Train(cpu_amp=True), CPU) and not use_amp(Train(cpu_amp=True, amp=False), CPU)
    assert isinstance(cpu_has_native_bf16(), bool)


def _spec(folder: Path, backbone: str, **recipe) -> TrialSpec:
    return TrialSpec(backbone=backbone, strategy="full_finetune", params={}, metric="accuracy", seed=1,
                     recipe=Train(epochs=2, batch_size=16, image_size=16, **recipe), folder=folder)


def _kill_and_resume(tmp_path: Path, splits, backbone: str, **recipe):
    whole = run_trial(_spec(tmp_path / "whole", backbone, **recipe), splits, CPU)
    with pytest.raises(KeyboardInterrupt):
        run_trial(_spec(tmp_path / "killed", backbone, **recipe), splits, CPU, callbacks=[KillAt(epoch=1)])
    assert read_outcome(tmp_path / "killed") is None
    resumed = run_trial(_spec(tmp_path / "killed", backbone, **recipe), splits, CPU)
    assert resumed.state == "COMPLETE" and resumed.resumed_from_epoch == 1
    return whole, resumed


@pytest.mark.parametrize("backbone", ["test_efficientnet", "test_resnet",  # channels_last chosen on CPU
                                      "test_vit"])  # NCHW
def test_each_layout_resumes_to_exactly_the_uninterrupted_result(tmp_path, splits, backbone):
    whole, resumed = _kill_and_resume(tmp_path, splits, backbone)
    strip = lambda h: {k: v for k, v in h.items() if k not in ("images_per_s", "seconds")}  # noqa: E731
    assert [strip(h) for h in resumed.history] == [strip(h) for h in whole.history]
    a, b = load_file(str(tmp_path / "whole/best.safetensors")), load_file(str(tmp_path / "killed/best.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_on_cpu_resumes_but_like_cuda_not_bit_for_bit(tmp_path, splits):
    """oneDNN's bf16 convolution gradients are not bitwise repeatable (two uninterrupted runs of test_resnet differ
    in the last bits of a layer4 weight), so a resumed bf16 trial is checked to continue, not to be identical."""
    whole, resumed = _kill_and_resume(tmp_path, splits, "test_resnet", cpu_amp=True)
    assert [h["epoch"] for h in resumed.history] == [0, 1]
    assert resumed.history[1]["train_loss"] == pytest.approx(whole.history[1]["train_loss"], rel=0.05)


def test_bf16_autocast_on_cpu_changes_the_numbers_so_it_is_a_different_experiment(tmp_path, splits):
    """Not a silent switch: the float32 and bf16 runs of the same spec differ, and the recipe field is part of the
    study's identity (tlkit.config.identity.identity), so the two never mix in one study."""
    from tlkit.config.experiment import Experiment
    from tlkit.config.identity import identity

    fp32 = run_trial(_spec(tmp_path / "fp32", "test_resnet"), splits, CPU)
    bf16 = run_trial(_spec(tmp_path / "bf16", "test_resnet", cpu_amp=True), splits, CPU)
    assert fp32.history[0]["train_loss"] != bf16.history[0]["train_loss"]
    a = identity(Experiment(backbones=["test_resnet"], strategies=["linear_probe"]))
    b = identity(Experiment(backbones=["test_resnet"], strategies=["linear_probe"], train=Train(cpu_amp=True)))
    assert a["train.cpu_amp"] is None and b["train.cpu_amp"] is True

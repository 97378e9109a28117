"""How a model's tensors are laid out and computed: channels_last memory and bfloat16 autocast, chosen per
architecture and device from measurements, not from habit.

On a GPU, channels_last and bf16 autocast are what cuDNN and tensor cores are built for. On a CPU the answer depends
on the architecture: oneDNN's convolutions run faster on channels_last (NHWC) tensors, so convolutional networks
gain (EfficientNet's depthwise convolutions the most), while a ViT, whose work is matrix products on token
sequences, has nothing to gain and pays for the layout conversion of its one patch-embedding convolution.
``CPU_CHANNELS_LAST`` lists only the timm model classes with a measured gain on this project's development CPUs
(``docs/benchmarks.md``, two machines: AVX512 and AVX2): ResNet (training 0.99x-1.28x, forward passes 1.11x-2.05x),
EfficientNet (training 1.06x-2.4x, forward 3.37x), MobileNetV3 (1.18x, 2.45x) and ConvNeXt (training 0.98x-1.08x,
forward 1.38x-1.63x: evaluation and cached features gain, training is even). RegNet (1.04x, 1.03x: noise) and the
ViTs (test_vit 1.04x, 0.95x) stay NCHW, as does every class not measured yet: NCHW is always correct, only sometimes
slower. ``Train(channels_last=True/False)`` overrides the choice.

bf16 autocast on CPU is opt-in (``Train(cpu_amp=True)``): it is faster only on CPUs with native bf16 arithmetic
(AVX512-BF16 or AMX) and on models big enough for arithmetic to dominate (emulated, it was 5.7x-7.2x slower), and it
changes the numbers: in evaluation about one test prediction in 300, with no detectable accuracy difference; its
effect on training is not measured (``docs/benchmarks.md``). channels_last is deterministic on CPU, so a resumed
trial computes exactly what an uninterrupted one would; bf16 is not (oneDNN's bf16 convolution gradients
differ in the last bits between identical runs), so with it a resumed trial continues, as on CUDA, but not bit for
bit.
"""
from __future__ import annotations

import logging

import torch

from tlkit.config.experiment import Train

__all__ = ["CPU_CHANNELS_LAST", "use_channels_last", "set_memory_format", "use_amp", "cpu_has_native_bf16"]

log = logging.getLogger("tlkit")

CPU_CHANNELS_LAST = frozenset({"ResNet", "EfficientNet", "MobileNetV3", "ConvNeXt"})
"""timm model classes with a measured gain from channels_last on CPU (docs/benchmarks.md)."""


def _has_convolutions(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def use_channels_last(model: torch.nn.Module, device: torch.device, recipe: Train | None = None) -> bool:
    """Whether ``model`` runs in channels_last memory on ``device``: the recipe's explicit choice, else on CUDA
    every convolutional model, on CPU the measured classes of ``CPU_CHANNELS_LAST``."""
    if recipe is not None and recipe.channels_last is not None:
        return recipe.channels_last
    if device.type == "cuda":
        return _has_convolutions(model)
    return device.type == "cpu" and type(model).__name__ in CPU_CHANNELS_LAST


def set_memory_format(model: torch.nn.Module, device: torch.device, recipe: Train | None = None) -> bool:
    """Convert ``model`` to channels_last when :func:`use_channels_last` chooses it; returns that choice, which the
    inputs must follow."""
    channels_last = use_channels_last(model, device, recipe)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return channels_last


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: oneDNN computes bf16 in hardware instead of emulating it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


_warned_emulated = False


def use_amp(recipe: Train, device: torch.device) -> bool:
    """bf16 autocast: on CUDA when ``recipe.amp``; on CPU only when ``recipe.cpu_amp`` asks for it too."""
    global _warned_emulated
    if not recipe.amp:
        return False
    if device.type == "cuda":
        return True
    if device.type != "cpu" or not recipe.cpu_amp:
        return False
    if not cpu_has_native_bf16() and not _warned_emulated:
        _warned_emulated = True
        log.warning("train.cpu_amp: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so bf16 is emulated and "
                    "likely slower than float32; set train.cpu_amp=False")
    return True

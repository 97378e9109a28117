"""Tiny experiments for tests: scikit-learn digits and timm's ``test_*`` models, seconds per sweep on a CPU.

Shipped in the package (as Optuna ships ``optuna.testing``) so plugin authors can test their strategies the same way.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tlkit.config.experiment import load_experiment
from tlkit.engine.loop import Callback
from tlkit.sweep import run_sweep, write_sweep_report

__all__ = ["TINY_DEFAULTS", "experiment_source", "write_experiment", "run_tiny_sweep", "KillAt"]

TINY_DEFAULTS: dict[str, Any] = {
    "data": {"name": "digits", "classes": [5, 6, 7, 8, 9], "train_per_class": 40, "val_fraction": 0.25},
    "backbones": ["test_resnet"],
    "strategies": ["last_n"],
    "train": {"epochs": 2, "batch_size": 32, "image_size": 16, "augment": ["crop"],
              "checkpoint_every_s": 0},  # a checkpoint every epoch: the kill-and-resume tests aim at epochs
    "trials": 1,
    "repeats": 0,
    "pretrained": False,
    "seed": 0,
}


def experiment_source(**fields: Any) -> str:
    """Python source of an experiment file: TINY_DEFAULTS updated with ``fields`` (dicts merge one level deep).

    ``prelude`` (a string of code) goes before the experiment, e.g. to register a custom strategy.
    """
    prelude = fields.pop("prelude", "")
    merged = {**TINY_DEFAULTS}
    for key, value in fields.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    args = []
    for key, value in merged.items():
        if key in ("data", "train"):
            value = f"{key.capitalize()}(**{value!r})"
        elif key == "source" and isinstance(value, dict):
            value = f"Source(data=Data(**{value['data']!r}), train=Train(**{value.get('train', {})!r}))"
        else:
            value = repr(value)
        args.append(f"    {key}={value},")
    body = "\n".join(args)
    return (f"from tlkit import Data, Experiment, Source, Train, Strategy, register_strategy\n"
            f"from optuna.distributions import FloatDistribution, IntDistribution, CategoricalDistribution\n"
            f"{prelude}\n\nexperiment = Experiment(\n{body}\n)\n")


def run_tiny_sweep(folder: str | Path, cache: str | Path, **fields: Any) -> Path:
    """Write a tiny experiment into ``folder`` and run it offline into ``folder/results`` (returned), with decoded
    data and source weights cached in ``cache``. For module-scoped fixtures that share one real sweep."""
    saved = {key: os.environ.get(key) for key in ("TLKIT_CACHE", "HF_HUB_OFFLINE")}
    os.environ.update(TLKIT_CACHE=str(cache), HF_HUB_OFFLINE="1")
    try:
        exp = load_experiment(write_experiment(folder, **fields))
        out = run_sweep(exp, Path(folder) / "results")
        write_sweep_report(out, None, exp)  # what python -m tlkit.sweep writes when it stops
        return out
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def write_experiment(folder: str | Path, name: str = "tiny", **fields: Any) -> Path:
    """Write a tiny experiment file ``<folder>/<name>.py`` and return its path."""
    path = Path(folder) / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(experiment_source(**fields))
    return path


class KillAt(Callback):
    """Stands in for a kill: raises KeyboardInterrupt in ``epoch``, after its first optimizer step (with a
    checkpoint every epoch, ``checkpoint_every_s=0``, epoch ``epoch - 1`` is the newest checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_batch_end(self, trainer: Any, batch: int, num_batches: int) -> None:
        if trainer.epoch == self.epoch:
            raise KeyboardInterrupt

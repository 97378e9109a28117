"""Tiny experiments for tests: scikit-learn digits and timm's ``test_*`` models, seconds per sweep on a CPU.

Shipped in the package (as Optuna ships ``optuna.testing``) so plugin authors can test their strategies the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TINY_DEFAULTS", "experiment_source", "write_experiment"]

TINY_DEFAULTS: dict[str, Any] = {
    "data": {"name": "digits", "classes": [5, 6, 7, 8, 9], "train_per_class": 40, "val_fraction": 0.25},
    "backbones": ["test_resnet"],
    "strategies": ["last_n"],
    "train": {"epochs": 2, "batch_size": 32, "image_size": 16, "augment": ["crop"]},
    "trials": 1,
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


def write_experiment(folder: str | Path, name: str = "tiny", **fields: Any) -> Path:
    """Write a tiny experiment file ``<folder>/<name>.py`` and return its path."""
    path = Path(folder) / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(experiment_source(**fields))
    return path

"""Source pretraining: train each backbone once on a source task, so a study needs no downloaded weights.

This is Yosinski et al. (2014)'s set-up (pretrain on one half of the classes, transfer to the other half) and what a
user with in-domain data but no suitable hub weights wants. The training is an ordinary trial (``run_trial``, full
fine-tuning), checkpointed in a work folder beside the cached weights, so a killed pretraining resumes too. The
weights are cached by a hash of backbone, source data and recipe (``tlkit.models.weights.source_weights_path``): a later
sweep with the same source reuses them.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tlkit.models.backbones import create_backbone, preprocessing
from tlkit.data.tensors import to_device
from tlkit.data.datasets import splits_for
from tlkit.errors import TlkitError
from tlkit.config.experiment import Experiment
from tlkit.metrics import get_metric
from tlkit.engine.runner import TrialSpec, run_trial
from tlkit.engine.evaluate import evaluate
from tlkit.engine.loop import Callback, EpochResult, Trainer
from tlkit.models.weights import read_weights_file, save_source

__all__ = ["train_source"]

log = logging.getLogger("tlkit")


class _LogEpochs(Callback):
    def __init__(self, backbone: str) -> None:
        self.backbone = backbone

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        log.info("source %s epoch %d/%d: val %s %.4f", self.backbone, result.epoch + 1, trainer.recipe.epochs,
                 trainer.metric.name, result.val_metric)


def train_source(exp: Experiment, backbone: str, path: Path, device: torch.device | None = None) -> None:
    """Fully train ``backbone`` on ``exp.source`` (from random init, or ``exp.weights[backbone]``) and save its
    best-validation weights to ``path`` with a JSON note of how it did."""
    src = exp.source
    assert src is not None
    device = device or torch.device("cpu")
    started = time.perf_counter()
    splits = to_device(splits_for(src.data, src.train.image_size, exp.seed, "source.data."), device)
    base = read_weights_file(backbone, exp.weights[backbone]) if backbone in exp.weights else None
    log.info("pretraining %s on the source task (%d images, %d classes, %d epochs)", backbone, len(splits.train),
             splits.num_classes, src.train.epochs)
    work = path.with_name(path.stem + ".run")
    spec = TrialSpec(backbone=backbone, strategy="full_finetune", params={}, recipe=src.train, metric=exp.metric,
                     seed=exp.seed, folder=work, weights=base,
                     weights_origin=f"file {exp.weights[backbone]}" if base is not None else "random init")
    result = run_trial(spec, splits, device, callbacks=[_LogEpochs(backbone)])
    if result.state != "COMPLETE":
        raise TlkitError(f"Source pretraining of {backbone!r} produced no usable model ({result.reason}). HINT: "
                         f"lower source.train.lr or check the source data.")
    model = create_backbone(backbone, splits.num_classes, src.train.image_size)
    model.load_state_dict(load_file(str(work / "best.safetensors")))  # the head too: it is scored on source test
    model.to(device)
    test = evaluate(model, splits.test, metric=get_metric(exp.metric), batch_size=src.train.batch_size,
                    device=device, image_size=src.train.image_size, **preprocessing(model))
    save_source(path, model, {"backbone": backbone, "classes": splits.train.classes, "epochs": src.train.epochs,
                              "best_epoch": result.best_epoch, f"val_{exp.metric}": result.value,
                              f"test_{exp.metric}": test.metric, "seconds": round(time.perf_counter() - started, 1)})
    shutil.rmtree(work, ignore_errors=True)
    log.info("source %s: best val %s %.4f, test %.4f, saved %s", backbone, exp.metric, result.value, test.metric,
             path)

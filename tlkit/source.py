"""Source pretraining: train each backbone once on a source task, so a study needs no downloaded weights.

This is Yosinski et al. (2014)'s set-up (pretrain on one half of the classes, transfer to the other half) and what a
user with in-domain data but no suitable hub weights wants. The weights are cached by a hash of backbone, source
data and recipe (``tlkit.weights.source_weights_path``): a later sweep with the same source reuses them.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from tlkit.backbones import layer_groups, preprocessing
from tlkit.data import splits_for, to_device
from tlkit.experiment import Experiment
from tlkit.strategies.full_finetune import FullFinetune
from tlkit.train import Callback, EpochResult, Trainer, evaluate
from tlkit.trial import build_model
from tlkit.weights import Pretrained, read_weights_file, save_source

__all__ = ["train_source"]

log = logging.getLogger("tlkit")


class _KeepBest(Callback):
    """Keeps the best epoch's weights in memory and logs each epoch."""

    def __init__(self, backbone: str) -> None:
        self.backbone = backbone
        self.state: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        if trainer.best_epoch == result.epoch:
            self.state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        log.info("source %s epoch %d/%d: val %s %.4f", self.backbone, result.epoch + 1,
                 trainer.recipe.epochs, trainer.metric, result.val_metric)


def train_source(exp: Experiment, backbone: str, path: Path, device: torch.device | None = None) -> None:
    """Fully train ``backbone`` on ``exp.source`` (from random init, or ``exp.weights[backbone]``) and save its
    best-validation weights to ``path`` with a JSON note of how it did."""
    src = exp.source
    assert src is not None
    device = device or torch.device("cpu")
    started = time.perf_counter()
    splits = splits_for(src.data, src.train.image_size, exp.seed)
    splits = to_device(splits, device)
    base = (Pretrained(read_weights_file(backbone, exp.weights[backbone]), f"file {exp.weights[backbone]}")
            if backbone in exp.weights else None)
    log.info("pretraining %s on the source task (%d images, %d classes, %d epochs)", backbone, len(splits.train),
             splits.num_classes, src.train.epochs)
    model = build_model(backbone, splits.num_classes, base, exp.seed, src.train.image_size)
    groups = layer_groups(model, coarse=src.train.coarse_groups)
    strategy = FullFinetune(num_groups=len(groups), epochs=src.train.epochs)
    keep = _KeepBest(backbone)
    trainer = Trainer(model, groups, strategy, splits, src.train, exp.metric, seed=exp.seed, device=device,
                      callbacks=[keep], **preprocessing(model))
    trainer.fit()
    model.load_state_dict(keep.state)
    test_loss, test_metric = evaluate(model, splits.test, metric=exp.metric, batch_size=src.train.batch_size,
                                      device=device, image_size=src.train.image_size, **preprocessing(model))
    save_source(path, model, {"backbone": backbone, "classes": splits.train.classes, "epochs": src.train.epochs,
                              "best_epoch": trainer.best_epoch, f"val_{exp.metric}": trainer.best_metric,
                              f"test_{exp.metric}": test_metric, "seconds": round(time.perf_counter() - started, 1)})
    log.info("source %s: best val %s %.4f, test %.4f, saved %s", backbone, exp.metric, trainer.best_metric,
             test_metric, path)

"""Each cell's best trial: its test score (computed once, never used for selection) and a model one call away.

``load_best("results/digits", backbone="test_resnet", strategy="last_n")`` rebuilds the timm model with the right
head, loads the best weights and returns it in eval mode, with its preprocessing attached.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
import torch
from safetensors.torch import load_file

from tlkit.models.backbones import create_backbone, preprocessing
from tlkit.engine.checkpoint import atomic_write, read_json, write_json
from tlkit.engine.compute import set_memory_format, use_amp
from tlkit.errors import TlkitError, describe_error
from tlkit.metrics import Predictions, get_metric
from tlkit.data.preprocess import Preprocess
from tlkit.search.study import Cell
from tlkit.engine.evaluate import Scores, evaluate
from tlkit.search.objective import SweepRun, short_name, trial_folder

__all__ = ["evaluate_best", "score_test", "load_best"]

log = logging.getLogger("tlkit")


def evaluate_best(run: SweepRun, study: optuna.Study, cell: Cell) -> dict[str, Any] | None:
    """Score the cell's best trial on the test split and export its model (skipped if already done)."""
    try:
        best = study.best_trial
    except ValueError:
        return None  # no completed trial
    done = study.user_attrs.get("best_test")
    export_dir = run.out / "best" / cell.folder
    if done and done["trial"] == best.number and (export_dir / "model.safetensors").is_file():
        return done
    weights = trial_folder(run.out, cell, best.user_attrs.get("run", best.number)) / "best.safetensors"
    if not weights.is_file() and run.store is not None:
        run.store.pull(weights.parent)  # the best trial ran on another worker
    if not weights.is_file():
        log.warning("best trial %d of %s/%s has no weights here (%s); run the report on the machine that ran it",
                    best.number, cell.backbone, cell.strategy, weights)
        return None
    try:
        test, predictions, prep = score_test(run, cell.backbone, weights)
    except Exception as err:  # noqa: BLE001 - a damaged file must not stop the sweep's other cells
        log.warning("best weights %s of trial %d cannot be read (%s); %s/%s is not exported", weights, best.number,
                    describe_error(err), cell.backbone, cell.strategy)
        return None
    result = {"trial": best.number, "val_metric": best.value, "test_metric": test.metric, "test_loss": test.loss}
    atomic_write(export_dir / "model.safetensors", lambda tmp: Path(tmp).write_bytes(weights.read_bytes()))
    write_json(export_dir / "model.json", {
        "backbone": cell.backbone, "strategy": cell.strategy, "num_classes": run.splits.num_classes,
        "classes": run.splits.train.classes, "image_size": run.exp.train.image_size,
        "decode_size": run.exp.data.decode_size, **prep,
        "params": best.params, "metric": run.exp.metric, **result})
    if run.store is not None:
        run.store.push(export_dir)
    study.set_user_attr("best_test", {**result, "predictions": predictions.to_json()})
    run_number = best.user_attrs.get("run", best.number)
    run.on_test_score(cell, short_name(run_number), test.metric, best.user_attrs.get("epochs_run", 1) - 1)
    return result


def score_test(run: SweepRun, backbone: str, weights: Path) -> tuple[Scores, Predictions, dict[str, Any]]:
    """A trained model's test scores, its per-example predictions and its preprocessing (the test split is scored
    once per kept model, never used to select). Raises if the weights cannot be read."""
    model = create_backbone(backbone, run.splits.num_classes, run.exp.train.image_size)
    model.load_state_dict(load_file(str(weights)))
    model.to(run.device)
    channels_last = set_memory_format(model, run.device, run.exp.train)
    prep = preprocessing(model)
    test = evaluate(model, run.splits.test, metric=get_metric(run.exp.metric), batch_size=run.exp.train.batch_size,
                    device=run.device, image_size=run.exp.train.image_size, amp=use_amp(run.exp.train, run.device),
                    channels_last=channels_last, **prep)
    return test, Predictions.from_logits(test.labels.numpy(), test.logits.numpy()), prep


def load_best(results: str | Path, backbone: str, strategy: str) -> torch.nn.Module:
    """The best model of a cell, ready for inference (eval mode).

    The returned module has ``tlkit_info`` (classes, image size, mean and std, the best trial's parameters and
    scores) and ``tlkit_transform``, the exact preprocessing it was trained with
    (:class:`tlkit.data.preprocess.Preprocess`:
    an image path, PIL image or RGB array in, a normalised tensor out).

    Example:
        model = tlkit.load_best("results/digits", backbone="test_resnet", strategy="last_n")
        probabilities = model(model.tlkit_transform.batch(["seven.png"])).softmax(1)
        print(model.tlkit_info["classes"][int(probabilities.argmax())])
    """
    folder = Path(results) / "best" / Cell(backbone, strategy).folder
    meta_path = folder / "model.json"
    if not meta_path.is_file():
        available = sorted(str(p.parent.relative_to(Path(results) / "best"))
                           for p in (Path(results) / "best").glob("*/*/model.json"))
        raise TlkitError(f"No exported best model for {backbone}/{strategy} under {results}. Available: "
                         f"{', '.join(available) or 'none (has the sweep finished a trial?)'}.")
    info = read_json(meta_path, f"delete {folder} and run the sweep command again to export it anew.")
    if not isinstance(info.get("backbone"), str) or not isinstance(info.get("num_classes"), int):
        raise TlkitError(f"{meta_path} lacks the backbone or the number of classes: it is damaged. HINT: delete "
                         f"{folder} and run the sweep command again to export it anew.")
    model = create_backbone(info["backbone"], info["num_classes"], info.get("image_size"))
    weights = folder / "model.safetensors"
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as err:  # noqa: BLE001 - truncated, corrupt, or not this model's weights
        raise TlkitError(f"The exported model {weights} cannot be loaded ({describe_error(err)}). HINT: delete "
                         f"{folder} and run the sweep command again "
                         f"to export it anew from the trial's best.safetensors.") from None
    model.tlkit_info = info
    model.tlkit_transform = Preprocess.from_info(info)
    return model.eval()

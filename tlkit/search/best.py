"""Each cell's best trial: its test score (computed once, never used for selection) and a model one call away.

``load_best("results/digits", backbone="test_resnet", strategy="last_n")`` rebuilds the timm model with the right
head, loads the best weights and returns it in eval mode, with its preprocessing attached.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial
import torch
from safetensors.torch import load_file

from tlkit.utils.files import atomic_write, read_json, write_json
from tlkit.models.backbones import create_backbone, hub_offline, preprocessing
from tlkit.engine.compute import set_memory_format, use_amp
from tlkit.errors import TlkitError, describe_error
from tlkit.metrics import Predictions, get_metric
from tlkit.data.preprocess import Preprocess
from tlkit.search.study import Cell
from tlkit.engine.evaluate import Scores, evaluate
from tlkit.search.objective import SweepRun, short_name, trial_folder
from tlkit.search.records import all_params

__all__ = ["evaluate_best", "score_test", "load_best"]

log = logging.getLogger("tlkit")


def evaluate_best(run: SweepRun, study: optuna.Study, cell: Cell) -> dict[str, Any] | None:
    """Score the cell's best trial on the test split and export its model (skipped if already done). Only
    replicate 0 exports (``best/<backbone>/<strategy>``): another replicate's best trial is a measurement of the
    study's variance, and its weights stay in its trial folder."""
    try:
        best = study.best_trial
    except ValueError:
        return None  # no completed trial
    done = study.user_attrs.get("best_test")
    export_dir = run.out / "best" / cell.folder
    exports = cell.replicate == 0
    if done and done["trial"] == best.number and (not exports or (export_dir / "model.safetensors").is_file()):
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
    if exports:
        _export(run, cell, best, weights, export_dir, {**prep, **result})
    study.set_user_attr("best_test", {**result, "predictions": predictions.to_json()})
    run_number = best.user_attrs.get("run", best.number)
    run.on_test_score(cell, short_name(run_number), test.metric, best.user_attrs.get("epochs_run", 1) - 1)
    return result


def _export(run: SweepRun, cell: Cell, best: FrozenTrial, weights: Path, export_dir: Path, info: dict[str, Any]
            ) -> None:
    """The best model of a cell as ``load_best`` and ``tlkit.predict`` read it: its weights and model.json."""
    atomic_write(export_dir / "model.safetensors", lambda tmp: Path(tmp).write_bytes(weights.read_bytes()))
    write_json(export_dir / "model.json", {
        "backbone": cell.backbone, "strategy": cell.strategy, "num_classes": run.splits.num_classes,
        "classes": run.splits.train.classes, "image_size": run.exp.train.image_size,
        "decode_size": run.exp.data.decode_size, **info,
        "params": all_params(best), "metric": run.exp.metric})
    if run.store is not None:
        run.store.push(export_dir)


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


MODELS = ("best", "soup")
"""What ``load_best`` can load of a cell: its best trial, or its greedy soup (``tlkit.search.soups``)."""


def load_best(results: str | Path, backbone: str, strategy: str, model: str = "best") -> torch.nn.Module:
    """The best model of a cell, ready for inference (eval mode); ``model="soup"``: the cell's greedy soup of its
    trials instead (exported beside it when the sweep made one).

    The returned module has ``tlkit_info`` (classes, image size, mean and std, the best trial's parameters and
    scores) and ``tlkit_transform``, the exact preprocessing it was trained with
    (:class:`tlkit.data.preprocess.Preprocess`:
    an image path, PIL image or RGB array in, a normalised tensor out).

    Example:
        model = tlkit.load_best("results/digits", backbone="test_resnet", strategy="last_n")
        probabilities = model(model.tlkit_transform.batch(["seven.png"])).softmax(1)
        print(model.tlkit_info["classes"][int(probabilities.argmax())])
    """
    if model not in MODELS:
        raise TlkitError(f"model must be one of {', '.join(MODELS)} but got {model!r}.")
    folder = Path(results) / "best" / Cell(backbone, strategy).folder
    if model == "soup":
        folder = folder / "soup"
        if not (folder / "model.json").is_file():
            raise TlkitError(f"No greedy soup exported for {backbone}/{strategy} under {results}. HINT: soups are "
                             f"made after a cell's search (Experiment.soups, on by default) from 2 or more complete "
                             f"trials that start from the same weights; soups.csv says why a cell has none; "
                             f"model='best' loads its best trial.")
    meta_path = folder / "model.json"
    if not meta_path.is_file():
        available = sorted(str(p.parent.relative_to(Path(results) / "best"))
                           for p in (Path(results) / "best").glob("*/*/model.json"))
        raise TlkitError(f"No exported best model for {backbone}/{strategy} under {results}. Available: "
                         f"{', '.join(available) or 'none (has the sweep finished a trial?)'}.")
    fix = f"delete {folder} and run the sweep command again to export it anew."
    info = read_json(meta_path, fix)
    check_model_info(info, meta_path, fix, Cell(backbone, strategy))
    net = _build(info, meta_path, fix)
    weights = folder / "model.safetensors"
    try:
        net.load_state_dict(load_file(str(weights)))
    except Exception as err:  # noqa: BLE001 - truncated, corrupt, or not this model's weights
        raise TlkitError(f"The exported model {weights} cannot be loaded ({describe_error(err)}). HINT: delete "
                         f"{folder} and run the sweep command again "
                         f"to export it anew from the trial's best.safetensors.") from None
    net.tlkit_info = info
    net.tlkit_transform = Preprocess.from_info(info)
    return net.eval()


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_rgb(value: Any, positive: bool) -> bool:
    """Exactly one value per RGB channel: tlkit's images have 3 (a single value would broadcast silently)."""
    return (isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value)
            and (not positive or min(value) > 0))


def _is_classes(value: Any) -> bool:
    return (isinstance(value, list) and len(value) > 0 and all(isinstance(c, str) for c in value)
            and len(set(value)) == len(value))


MODEL_INFO: dict[str, tuple[Callable[[Any], bool], str]] = {
    "backbone": (lambda v: isinstance(v, str) and v != "", "a timm model name"),
    "strategy": (lambda v: isinstance(v, str) and v != "", "a strategy name"),
    "num_classes": (_is_count, "an integer >= 1"),
    "classes": (_is_classes, "a non-empty list of distinct class names (strings)"),
    "image_size": (_is_count, "an integer >= 1 (pixels)"),
    "decode_size": (lambda v: v is None or _is_count(v), "null or an integer >= 1 (pixels)"),
    "mean": (lambda v: _is_rgb(v, positive=False), "a list of 3 numbers, one per RGB channel"),
    "std": (lambda v: _is_rgb(v, positive=True), "a list of 3 positive numbers, one per RGB channel"),
    "params": (lambda v: isinstance(v, dict), "an object of the best trial's parameters"),
    "metric": (lambda v: isinstance(v, str), "a metric name"),
    "trial": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    **{k: (lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)), "a number or null")
       for k in ("val_metric", "test_metric", "test_loss")},  # shown, never used: NaN is a score too
}
"""What ``evaluate_best`` writes to ``model.json``: field -> (check, what it must be). Checked by hand rather than
with jsonschema: a dozen flat fields, messages in tlkit's words that name the field, and no dependency for it."""


def check_model_info(info: dict[str, Any], path: Path, fix: str, cell: Cell) -> None:
    """Raise a TlkitError naming every field of ``model.json`` that is missing or wrong, and a file that is not the
    requested cell's (a backbone name edited in would otherwise decide what is built, and from where)."""
    problems = [f"{key!r} is missing" if key not in info else f"{key!r} must be {what} but got {info[key]!r:.60}"
                for key, (check, what) in MODEL_INFO.items() if key not in info or not check(info[key])]
    if not problems and len(info["classes"]) != info["num_classes"]:
        problems.append(f"'classes' has {len(info['classes'])} names but 'num_classes' is {info['num_classes']}")
    if not problems and (info["backbone"], info["strategy"]) != (cell.backbone, cell.strategy):
        problems.append(f"it names {info['backbone']}/{info['strategy']}, not the {cell.backbone}/{cell.strategy} "
                        f"whose folder it lies in")
    if problems:
        raise TlkitError(f"{path} is damaged: {'; '.join(problems)}. HINT: {fix}")


def _build(info: dict[str, Any], path: Path, fix: str) -> torch.nn.Module:
    """The exported architecture, built offline: inference never downloads (an ``hf-hub:`` backbone's config must
    be in the Hugging Face cache, where its sweep put it)."""
    try:
        with hub_offline():
            return create_backbone(info["backbone"], info["num_classes"], info["image_size"])
    except Exception as err:  # noqa: BLE001 - an unknown name, a hub name not cached: the same remedies
        raise TlkitError(f"The backbone {info['backbone']!r} of {path} cannot be built offline "
                         f"({describe_error(err)}). HINT: for a hub model, fill the Hugging Face cache once online "
                         f"(timm.create_model({info['backbone']!r})); otherwise {fix}") from None

"""More than the best trial: each cell's model soups and its top-k ensemble, from the trials its search already ran.

Every trial of a cell starts from the same weights (the backbone's) and keeps its best epoch's weights, as plain timm
(adapters merged), so they can be averaged (``tlkit.engine.soup``): a uniform soup of every complete trial and a
greedy soup in order of validation score (Wortsman et al. 2022). An ensemble of the top ``ENSEMBLE_K`` trials averages
their predicted probabilities: more accurate, often, but it costs k models at inference, so its parameters and time
per image are recorded beside it. Each is scored on validation and test like the best trial, with its test
predictions kept, in the cell study's ``soups`` user attribute; the report compares them with the best trial
(``soups.csv``). Replicate 0's greedy soup is exported beside the best model (``best/<backbone>/<strategy>/soup``).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import load_file

from tlkit.utils.files import read_json, write_json
from tlkit.engine.checkpoint import save_tensors
from tlkit.engine.compute import set_memory_format, use_amp
from tlkit.engine.evaluate import Scores, evaluate
from tlkit.engine.soup import WeightSum, greedy_order, greedy_soup, recompute_batchnorm
from tlkit.errors import describe_error
from tlkit.metrics import Predictions, get_metric
from tlkit.models.backbones import create_backbone, preprocessing
from tlkit.search.objective import SweepRun, trial_folder
from tlkit.search.records import SOUPS
from tlkit.search.study import Cell

__all__ = ["make_soups", "ENSEMBLE_K", "SOUP_DIR"]

ENSEMBLE_K = 3
SOUP_DIR = "soup"
log = logging.getLogger("tlkit")


def make_soups(run: SweepRun, study: optuna.Study, cell: Cell) -> dict[str, Any]:
    """The cell's uniform and greedy soups and its top-k ensemble, computed once per set of complete trials (a
    rerun after more trials computes them again); ``{"skipped": reason}`` where they cannot be made."""
    trials = _ingredients(run, study, cell)
    key = sorted(t.user_attrs.get("run", t.number) for t, _ in trials)
    done = study.user_attrs.get(SOUPS)
    if done and done.get("runs") == key:
        return done
    reason = _why_not(run, cell, trials)
    if reason:
        result = {"runs": key, "skipped": reason}
    else:
        try:
            result = {"runs": key, **_cook(run, cell, trials)}
        except ValueError as err:  # ingredients of different architectures
            result = {"runs": key, "skipped": describe_error(err)}
    study.set_user_attr(SOUPS, result)
    if "skipped" in result:
        log.info("%s/%s: no soups (%s)", cell.backbone, cell.strategy, result["skipped"])
    return result


def _ingredients(run: SweepRun, study: optuna.Study, cell: Cell) -> list[tuple[FrozenTrial, Path]]:
    """The cell's complete trials whose best weights are here, best validation score first."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        weights = trial_folder(run.out, cell, t.user_attrs.get("run", t.number)) / "best.safetensors"
        if not weights.is_file() and run.store is not None:
            run.store.pull(weights.parent)
        if weights.is_file():
            out.append((t, weights))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return [out[i] for i in greedy_order([t.value for t, _ in out], maximize)]


def _why_not(run: SweepRun, cell: Cell, trials: list[tuple[FrozenTrial, Path]]) -> str:
    if not run.plans[cell.design].strategy.pretrained:
        return "its trials start from different random weights: there is no common start to average from"
    if len(trials) < 2:
        return f"{len(trials)} complete trial with weights here: a soup of one trial is that trial"
    return ""


def _cook(run: SweepRun, cell: Cell, trials: list[tuple[FrozenTrial, Path]]) -> dict[str, Any]:
    metric = get_metric(run.exp.metric)
    maximize = metric.direction == "maximize"
    model = create_backbone(cell.backbone, run.splits.num_classes, run.exp.train.image_size).to(run.device)
    prep = preprocessing(model)
    paths = [p for _, p in trials]
    uniform = WeightSum()
    for path in paths:
        uniform.add(load_file(str(path)))
    first = load_file(str(paths[0]))

    def val_score(weights: dict[str, torch.Tensor], n: int) -> float:
        return _scores(run, model, weights, n, prep, run.splits.val).metric

    kept, greedy, _ = greedy_soup(paths, val_score, maximize)
    runs = [t.user_attrs.get("run", t.number) for t, _ in trials]
    ensemble, seconds = _ensemble(run, model, paths[:ENSEMBLE_K], prep, runs[:ENSEMBLE_K])
    out = {"uniform": _record(run, model, uniform.mean(first), uniform.count, prep, runs, seconds),
           "greedy": _record(run, model, greedy, len(kept), prep, [runs[i] for i in kept], seconds),
           "ensemble": ensemble}
    if cell.replicate == 0:
        _export_soup(run, cell, greedy, out["greedy"])
    log.info("%s/%s soups: uniform of %d val %.4f test %.4f; greedy of %d val %.4f test %.4f; ensemble of %d test "
             "%.4f", cell.backbone, cell.strategy, uniform.count, out["uniform"]["val_metric"],
             out["uniform"]["test_metric"], len(kept), out["greedy"]["val_metric"], out["greedy"]["test_metric"],
             len(out["ensemble"]["runs"]), out["ensemble"]["test_metric"])
    return out


def _scores(run: SweepRun, model: torch.nn.Module, weights: dict[str, torch.Tensor], n: int,
            prep: dict[str, Any], split: Any) -> Scores:
    """``weights`` scored on ``split``; the BatchNorm statistics of a soup of 2 or more recomputed first."""
    model.load_state_dict(weights)
    if n > 1:
        recompute_batchnorm(model, run.splits.train, batch_size=run.exp.train.batch_size * 2, device=run.device,
                            image_size=run.exp.train.image_size, **prep)
    return _evaluate(run, model, prep, split)


def _evaluate(run: SweepRun, model: torch.nn.Module, prep: dict[str, Any], split: Any) -> Scores:
    """As ``score_test`` scores the best trial: same batch size, precision and memory format."""
    recipe = run.exp.train
    channels_last = set_memory_format(model, run.device, recipe)
    return evaluate(model, split, metric=get_metric(run.exp.metric), batch_size=recipe.batch_size,
                    device=run.device, image_size=recipe.image_size, amp=use_amp(recipe, run.device),
                    channels_last=channels_last, **prep)


def _record(run: SweepRun, model: torch.nn.Module, weights: dict[str, torch.Tensor], n: int,
            prep: dict[str, Any], runs: list[int], seconds: float) -> dict[str, Any]:
    val = _scores(run, model, weights, n, prep, run.splits.val)
    test = _evaluate(run, model, prep, run.splits.test)
    return {"runs": runs, "val_metric": val.metric, "test_metric": test.metric, "test_loss": test.loss,
            "params": sum(p.numel() for p in model.parameters()), "seconds_per_image": seconds,
            "predictions": Predictions.from_logits(test.labels.numpy(), test.logits.numpy()).to_json()}


def _ensemble(run: SweepRun, model: torch.nn.Module, paths: list[Path], prep: dict[str, Any], runs: list[int]
              ) -> tuple[dict[str, Any], float]:
    """The top trials' averaged probabilities on validation and test, with k models' parameters and time; and one
    model's inference time per test image, measured on the first member's test pass (the model has run the greedy
    soup's passes already, so it is warm), as the evaluation runs it (same batch size, precision, memory format)."""
    metric = get_metric(run.exp.metric)
    probs: dict[str, list[np.ndarray]] = {"val": [], "test": []}
    labels, seconds = {}, 0.0
    for path in paths:
        model.load_state_dict(load_file(str(path)))
        for name in ("val", "test"):
            started = time.perf_counter()
            scores = _evaluate(run, model, prep, getattr(run.splits, name))
            if name == "test" and not seconds:
                seconds = (time.perf_counter() - started) / len(run.splits.test)
            probs[name].append(torch.softmax(scores.logits.double(), 1).numpy())
            labels[name] = scores.labels.numpy()
    logits = {name: np.log(np.mean(p, axis=0) + 1e-300) for name, p in probs.items()}
    test_predictions = Predictions.from_logits(labels["test"], logits["test"])
    return {"runs": runs, "val_metric": metric(labels["val"], logits["val"]),
            "test_metric": metric(labels["test"], logits["test"]), "test_loss": _nll(labels["test"], logits["test"]),
            "params": len(paths) * sum(p.numel() for p in model.parameters()),
            "seconds_per_image": len(paths) * seconds, "predictions": test_predictions.to_json()}, seconds


def _nll(labels: np.ndarray, log_probs: np.ndarray) -> float:
    return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def _export_soup(run: SweepRun, cell: Cell, weights: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
    """The greedy soup beside the best model, as ``load_best(..., model="soup")`` and ``tlkit.predict --model
    soup`` read it: its weights and the best model's model.json with the soup's ingredients and scores."""
    best = run.out / "best" / cell.folder
    if not (best / "model.json").is_file():
        return  # no exported best model to describe the soup with
    info = read_json(best / "model.json", "run the sweep again to export it anew")
    folder = best / SOUP_DIR
    save_tensors(folder / "model.safetensors", {k: v.contiguous() for k, v in weights.items()})
    write_json(folder / "model.json", {**info, "model": "greedy soup", "soup_of_runs": record["runs"],
                                       "val_metric": record["val_metric"], "test_metric": record["test_metric"],
                                       "test_loss": record["test_loss"]})
    if run.store is not None:
        run.store.push(folder)

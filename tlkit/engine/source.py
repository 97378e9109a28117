"""Each backbone's starting weights (``resolve_pretrained``), and source pretraining: train each backbone once on a
source task, so a study needs no downloaded weights.

This is Yosinski et al. (2014)'s set-up (pretrain on one half of the classes, transfer to the other half) and what a
user with in-domain data but no suitable hub weights wants. The training is an ordinary trial (``run_trial``, full
fine-tuning), checkpointed in a work folder beside the cached weights, so a killed pretraining resumes too. The
weights are cached by a hash of backbone, source data and recipe (``source_weights_path``): a later
sweep with the same source reuses them.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tlkit.models.backbones import adapt_weights, create_backbone, load_into, preprocessing
from tlkit.engine.checkpoint import load_weights, save_weights
from tlkit.utils.files import write_json
from tlkit.data.tensors import cache_dir, to_device
from tlkit.engine.splits import splits_for
from tlkit.errors import TlkitError, describe_error
from tlkit.utils.files import set_aside
from tlkit.config.experiment import Experiment
from tlkit.config.identity import experiment_to_dict, file_digest, fingerprint
from tlkit.metrics import get_metric
from tlkit.engine.runner import TrialSpec, run_trial
from tlkit.engine.evaluate import evaluate
from tlkit.engine.loop import Callback, EpochResult, Trainer
from tlkit.models.weights import Pretrained, from_hub, hub_reachable

__all__ = ["resolve_pretrained", "train_source", "source_weights_path", "read_weights_file", "save_source"]

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
                     runtime=exp.runtime, seed=exp.seed, folder=work, weights=base,
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


def read_weights_file(backbone: str, path: str) -> dict[str, torch.Tensor]:
    """A weights file given for ``backbone``, read safely; a missing or unreadable file is a TlkitError."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise TlkitError(f"Weights file {str(file)!r} for backbone {backbone!r} does not exist. HINT: fix the path "
                         f"in --weights {backbone}=PATH or the experiment's weights={{...}}.")
    hint = "HINT: use safetensors or a plain state dict saved with torch.save(model.state_dict(), path)."
    try:
        state = load_weights(file)
    except Exception as err:  # noqa: BLE001
        raise TlkitError(f"Weights file {str(file)!r} for backbone {backbone!r} cannot be read safely "
                         f"({describe_error(err)}). {hint}") from None
    if not isinstance(state, dict) or not state:
        raise TlkitError(f"Weights file {str(file)!r} for backbone {backbone!r} holds "
                         f"{'an empty dict' if isinstance(state, dict) else type(state).__name__}, not a state dict "
                         f"of named tensors. {hint}")
    odd = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise TlkitError(f"Weights file {str(file)!r} for backbone {backbone!r} is not a state dict of named tensors "
                         f"(e.g. {odd[0]!r} -> {type(state[odd[0]]).__name__}). {hint}")
    return state


def resolve_pretrained(exp: Experiment, backbone: str, num_classes: int, device: torch.device | None = None
                       ) -> Pretrained:
    """The starting weights of ``backbone`` for this experiment, checked against the architecture.

    With ``exp.pretrained=False`` every cell starts from random weights. Otherwise: a source task (trained once by
    ``train_source`` on ``device``, starting from ``exp.weights[backbone]`` if given, and cached), else an explicit file
    (``exp.weights``), else the timm hub by pretrained tag.
    """
    if not exp.pretrained:
        return Pretrained(None, "random init (pretrained=False)")
    size = exp.train.image_size
    if exp.source is not None:
        origin = f"source task {_source_label(exp)}"
        state = adapt_weights(backbone, _source_state(exp, backbone, device), size, origin)
    elif backbone in exp.weights:
        origin = f"file {exp.weights[backbone]}"
        state = adapt_weights(backbone, read_weights_file(backbone, exp.weights[backbone]), size, origin)
    else:
        origin = f"timm hub ({backbone})"
        state = from_hub(backbone, hub_reachable(), size)
    model = create_backbone(backbone, num_classes, size)
    load_into(model, state, origin)  # fail early, before any trial
    return Pretrained(state, origin)


def _source_state(exp: Experiment, backbone: str, device: torch.device | None) -> dict[str, torch.Tensor]:
    """The cached source-task weights, trained first if missing; a cached file that cannot be read is set aside
    (renamed ``*.bad``) and trained again, so a damaged cache never blocks a study."""
    path = source_weights_path(exp, backbone)
    if path.is_file():
        try:
            return load_weights(path)
        except Exception as err:  # noqa: BLE001 - truncated or corrupt: retrain rather than trust it
            set_aside(path, f"cached source weights {path} cannot be read ({describe_error(err)})", "trained again")
    train_source(exp, backbone, path, device=device)
    return load_weights(path)


def _source_label(exp: Experiment) -> str:
    assert exp.source is not None
    classes = exp.source.data.classes
    return f"{exp.source.data.name}" + (f"[classes {classes}]" if classes else "")


def save_source(path: Path, model: torch.nn.Module, meta: dict) -> None:
    save_weights(path, model)
    write_json(path.with_suffix(".json"), meta)


def source_weights_path(exp: Experiment, backbone: str) -> Path:
    """Cache path keyed by a hash of backbone + source data + source recipe + seed: later sweeps reuse it.

    The architecture's parameter shapes are part of the key, so weights cached by a build of a model that no longer
    matches (another timm version, another image size for a ViT) are never offered to it.
    """
    assert exp.source is not None
    src = experiment_to_dict(exp)["source"]
    src["data"].pop("root", None)
    src["train"].pop("device", None)
    model = create_backbone(backbone, 1, exp.source.train.image_size)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    key = fingerprint({"backbone": backbone, "source": src, "seed": exp.seed, "base": _base_origin(exp, backbone),
                       "shapes": shapes, "metric": exp.metric})
    return cache_dir() / "source" / f"{backbone.replace('/', '_')}-{key}.safetensors"


def _base_origin(exp: Experiment, backbone: str) -> str:
    return file_digest(exp.weights[backbone]) if backbone in exp.weights else "random init"

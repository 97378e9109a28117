"""Test tools shipped in the package (as Optuna ships ``optuna.testing``): a plugin author tests the way tlkit does.

- ``check_strategy``: the strategy contract (``tlkit.strategies.base``) checked on timm's tiny models of four
  families, seconds on a CPU. Run it in your tests: ``check_strategy(MyStrategy)`` raises
  :class:`StrategyContractError` naming every rule the strategy breaks, and on which backbone and epoch.
- Tiny experiments (scikit-learn digits, timm's ``test_*`` models) and a real sweep of one, for end-to-end tests.
"""
from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from torch.nn.modules.batchnorm import _BatchNorm

from tlkit.config.experiment import Train
from tlkit.config.loading import load_experiment
from tlkit.engine.loop import Callback, apply_plan, param_groups, set_learning_rates, set_train_mode
from tlkit.errors import describe_error
from tlkit.models.backbones import LayerGroup, create_backbone, layer_groups
from tlkit.strategies import Strategy, check_plan, get_strategy
from tlkit.strategies.base import prepare
from tlkit.sweep import run_sweep, write_sweep_report

__all__ = ["check_strategy", "StrategyContractError", "CONTRACT_BACKBONES", "TINY_DEFAULTS", "experiment_source",
           "write_experiment", "run_tiny_sweep", "kill_prelude", "sweep_command", "KillAt"]

TINY_DEFAULTS: dict[str, Any] = {
    "data": {"name": "digits", "classes": [5, 6, 7, 8, 9], "train_per_class": 40, "val_fraction": 0.25},
    "backbones": ["test_resnet"],
    "strategies": ["last_n"],
    "train": {"epochs": 2, "batch_size": 32, "image_size": 16, "augment": ["crop"]},
    "runtime": {"checkpoint_every_s": 0},  # a checkpoint every epoch: the kill-and-resume tests aim at epochs
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
        if key in ("data", "train", "runtime"):
            value = f"{key.capitalize()}(**{value!r})"
        elif key == "source" and isinstance(value, dict):
            value = f"Source(data=Data(**{value['data']!r}), train=Train(**{value.get('train', {})!r}))"
        else:
            value = repr(value)
        args.append(f"    {key}={value},")
    body = "\n".join(args)
    return (f"from tlkit import Data, Experiment, Runtime, Source, Train, Strategy, register_strategy\n"
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


def kill_prelude(hit: str) -> str:
    """An experiment file's ``prelude`` that SIGKILLs the sweep once, right after an epoch checkpoint for which the
    Python expression ``hit`` (of ``folder``, a Path, and ``epoch``) is true, when the environment variable
    ``TLKIT_TEST_KILL_MARKER`` names a file that does not exist yet (it is created, so the rerun is not killed)."""
    return f"""
import os, signal
from pathlib import Path
import tlkit.engine.runner

_MARKER = os.environ.get("TLKIT_TEST_KILL_MARKER")


def _save_epoch(folder, epoch, *args, _real=tlkit.engine.runner.save_epoch, **kw):
    _real(folder, epoch, *args, **kw)
    if _MARKER and ({hit}) and not Path(_MARKER).exists():
        Path(_MARKER).touch()
        os.kill(os.getpid(), signal.SIGKILL)


tlkit.engine.runner.save_epoch = _save_epoch
"""


def sweep_command(experiment: str | Path, out: str | Path, cache: str | Path, *args: str,
                  kill_marker: str | Path | None = None) -> subprocess.CompletedProcess:
    """``python -m tlkit.sweep EXPERIMENT --out OUT --quiet ARGS`` in a child process, offline, with decoded data
    and source weights cached in ``cache``; ``kill_marker`` arms a ``kill_prelude``."""
    env = {**os.environ, "TLKIT_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    if kill_marker is not None:
        env["TLKIT_TEST_KILL_MARKER"] = str(kill_marker)
    return subprocess.run([sys.executable, "-m", "tlkit.sweep", str(experiment), "--out", str(out), "--quiet", *args],
                          capture_output=True, text=True, env=env, timeout=300)


class KillAt(Callback):
    """Stands in for a kill: raises KeyboardInterrupt in ``epoch``, after its first optimizer step (with a
    checkpoint every epoch, ``checkpoint_every_s=0``, epoch ``epoch - 1`` is the newest checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_batch_end(self, trainer: Any, batch: int, num_batches: int) -> None:
        if trainer.epoch == self.epoch:
            raise KeyboardInterrupt


# --- the strategy contract -----------------------------------------------------------------------------------------

CONTRACT_BACKBONES = ("test_resnet", "test_efficientnet", "test_convnext", "test_vit")
"""timm's tiny models of four families: a strategy defined on layer groups must work on all of them."""
_CLASSES = 5
_BATCH = 4
Found = tuple[str, "int | None", str]
"""(backbone, epoch or None, problem)"""


class StrategyContractError(AssertionError):
    """The rules of the strategy contract a strategy breaks, one per line in the message and in ``problems``.

    An AssertionError, so pytest shows it as a failed check, not as an error in the test."""

    def __init__(self, strategy: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"Strategy {strategy!r} breaks the strategy contract (tlkit/strategies/base.py):\n"
                         + "\n".join(f"- {p}" for p in self.problems))


def check_strategy(strategy: str | type[Strategy], backbones: Sequence[str] = CONTRACT_BACKBONES, epochs: int = 3,
                   params: dict[str, Any] | None = None, image_size: int = 32, coarse: bool = False) -> None:
    """Check that ``strategy`` (a registered name or a Strategy subclass) keeps the contract the trainer relies on;
    raise :class:`StrategyContractError` listing every broken rule, with the backbones and epochs it broke on.

    Why: a strategy that breaks it seldom crashes; it gives a number that looks like a result (a group it says
    trains gets no gradient, a tensor it trains is never stepped). Checked on each of ``backbones`` (timm names,
    built at ``image_size`` with random weights, nothing downloaded):

    - its search space holds only Float/Int/Categorical distributions of parameters it takes (in ``defaults``),
      none named like a ``Train`` field, and every value it can give (each end, each choice) makes a strategy whose
      plan passes ``check_plan`` at every epoch, for ``epochs`` and for 1 epoch;
    - ``prepare_model`` keeps the number of layer groups, and its model's state dict loads into a model prepared
      again (what a resumed trial does);
    - at every epoch, with ``params`` (default: its defaults), the trainer's own plan and optimizer code
      (``tlkit.engine.loop``): no parameter of a group at multiplier 0 trains, something trains, every parameter is
      in exactly one optimizer param group, learning rates are finite and >= 0; and one optimizer step (with
      ``loss_term``) gives a gradient to every parameter the plan trains and none to the others, leaves their
      ``requires_grad`` as the plan set it, steps no tensor outside the optimizer, changes no frozen parameter or
      frozen BatchNorm statistic, and changes some trained one;
    - ``export_model`` leaves the trained model as it was and returns the plain timm model (the same state-dict
      keys and shapes) with the same outputs.

    Example (in a test file)::

        from tlkit.testing import check_strategy

        def test_my_strategy_keeps_the_contract():
            check_strategy(MyStrategy)
    """
    cls = get_strategy(strategy) if isinstance(strategy, str) else strategy
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"check_strategy needs a strategy name or a tlkit.Strategy subclass but got {strategy!r}.")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1 but got {epochs}.")
    found: list[Found] = []
    for backbone in backbones:
        torch.manual_seed(0)
        model = create_backbone(backbone, _CLASSES, image_size)
        num_groups = len(layer_groups(model, coarse=coarse))
        found += [(backbone, None, p) for p in _search_space_problems(cls, num_groups, epochs)]
        found += [(backbone, epoch, p) for epoch, p in
                  _model_problems(cls, model, backbone, epochs, params or {}, image_size, coarse)]
    if found:
        raise StrategyContractError(cls.__dict__.get("name") or cls.__name__, _merge(found))


def _merge(found: Sequence[Found]) -> list[str]:
    """One line per problem, naming every backbone (and epoch) it was found on."""
    places: dict[str, dict[str, list[int]]] = {}
    for backbone, epoch, problem in found:
        epochs = places.setdefault(problem, {}).setdefault(backbone, [])
        if epoch is not None and epoch not in epochs:
            epochs.append(epoch)
    lines = []
    for problem, where in places.items():
        names = [b if not es else f"{b} (epoch{'s' * (len(es) > 1)} {', '.join(map(str, es))})"
                 for b, es in where.items()]
        lines.append(f"{', '.join(names)}: {problem}")
    return lines


def _search_space_problems(cls: type[Strategy], num_groups: int, epochs: int) -> list[str]:
    """The space for ``epochs`` and for a 1-epoch study (where ranges over epochs shrink to a point)."""
    problems: list[str] = []
    for e in sorted({1, epochs}):
        try:
            space = cls.search_space(num_groups, e)
        except Exception as err:  # noqa: BLE001 - whatever the strategy raises, a sweep would raise too
            return [f"search_space(num_groups, epochs={e}) raised {describe_error(err)}"]
        if not isinstance(space, dict):
            return [f"search_space must return a dict of optuna distributions but returned {type(space).__name__}."]
        problems += [p for p in _space_problems(cls, space) if p not in problems]
        if problems:
            continue
        for point in _corners(space):
            try:
                made = cls(num_groups=num_groups, epochs=e, **point)
                for epoch in range(e):
                    check_plan(made, epoch)
            except Exception as err:  # noqa: BLE001
                problems.append(f"search_space(num_groups, epochs={e}) can give {point}, but then: "
                                f"{describe_error(err)}")
    return problems


def _space_problems(cls: type[Strategy], space: dict[str, Any]) -> list[str]:
    problems = []
    for key, dist in space.items():
        if not isinstance(dist, (FloatDistribution, IntDistribution, CategoricalDistribution)):
            problems.append(f"search_space()[{key!r}] is a {type(dist).__name__}, not a FloatDistribution, "
                            f"IntDistribution or CategoricalDistribution (what a trial can suggest).")
        if key not in cls.defaults:
            problems.append(f"search_space() searches {key!r}, which the strategy does not take (not in its "
                            f"defaults, {sorted(cls.defaults)}): every trial would be refused.")
        if key in Train.__dataclass_fields__:
            problems.append(f"search_space() searches {key!r}, a train field: it clashes with an experiment that "
                            f"searches train.{key}. HINT: give the strategy's hyperparameter its own name.")
    return problems


def _corners(space: dict[str, BaseDistribution]) -> list[dict[str, Any]]:
    """Every end of every range and every choice, each with the other parameters at their first value."""
    def values(dist: BaseDistribution) -> list[Any]:
        return list(dist.choices) if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high]

    first = {k: values(d)[0] for k, d in space.items()}
    return [first] + [{**first, k: v} for k, d in space.items() for v in values(d)[1:]]


def _model_problems(cls: type[Strategy], model: torch.nn.Module, backbone: str, epochs: int,
                    params: dict[str, Any], image_size: int, coarse: bool) -> list[tuple[int | None, str]]:
    """The trainer's path through one trial, one step per epoch; ``(epoch or None, problem)``."""
    try:
        strategy = cls(num_groups=len(layer_groups(model, coarse=coarse)), epochs=epochs, **params)
        model, groups = prepare(strategy, model, coarse=coarse)
        problems = [(None, p) for p in _resume_problems(cls, backbone, epochs, params, image_size, coarse, model)]
        optimizer = torch.optim.AdamW(param_groups(model, groups, weight_decay=0.01), lr=1e-2)
    except Exception as err:  # noqa: BLE001 - whatever the strategy raises, a trial would raise too
        return [(None, f"building the trial's model and optimizer raised {describe_error(err)}")]
    problems += [(None, p) for p in _coverage_problems(model, optimizer)]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(_BATCH, 3, image_size, image_size, generator=generator)
    y = torch.randint(0, _CLASSES, (_BATCH,), generator=generator)
    for epoch in range(epochs):
        try:
            problems += [(epoch, p) for p in _step_problems(strategy, model, groups, optimizer, epoch, x, y)]
        except Exception as err:  # noqa: BLE001
            problems.append((epoch, f"a training step raised {describe_error(err)}"))
    try:
        problems += [(None, p) for p in _export_problems(strategy, model, backbone, image_size, x)]
    except Exception as err:  # noqa: BLE001
        problems.append((None, f"export_model raised {describe_error(err)}"))
    return problems


def _resume_problems(cls: type[Strategy], backbone: str, epochs: int, params: dict[str, Any], image_size: int,
                     coarse: bool, prepared: torch.nn.Module) -> list[str]:
    """A resumed trial prepares a fresh model and loads the checkpoint's state dict into it."""
    again = create_backbone(backbone, _CLASSES, image_size)
    again, _ = prepare(cls(num_groups=len(layer_groups(again, coarse=coarse)), epochs=epochs, **params), again,
                       coarse=coarse)
    try:
        again.load_state_dict(prepared.state_dict())
    except RuntimeError as err:
        return [f"the prepared model's state dict does not load into a model prepared again, so a resumed trial "
                f"cannot load its checkpoint ({describe_error(err)[:300]})."]
    return []


def _coverage_problems(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    counts: dict[int, int] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            counts[id(p)] = counts.get(id(p), 0) + 1
    wrong = {n: counts.get(id(p), 0) for n, p in model.named_parameters() if counts.get(id(p), 0) != 1}
    if wrong:
        return [f"every parameter must be in exactly one optimizer param group, but (name: groups) "
                f"{dict(list(wrong.items())[:5])}."]
    return []


def _step_problems(strategy: Strategy, model: torch.nn.Module, groups: Sequence[LayerGroup],
                   optimizer: torch.optim.Optimizer, epoch: int, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """The trainer's epoch start and one step (``tlkit.engine.loop``), then what a user would notice."""
    scales = check_plan(strategy, epoch)
    apply_plan(model, groups, scales, strategy)
    set_learning_rates(optimizer, 1e-2, scales)
    set_train_mode(model, groups, scales)
    params = dict(model.named_parameters())
    planned = {n for n, p in params.items() if p.requires_grad}
    problems = _plan_problems(groups, scales, planned)
    rates = [g["lr"] for g in optimizer.param_groups]
    if not all(math.isfinite(r) and r >= 0 for r in rates):
        problems.append(f"learning rates must be finite and >= 0 but got {rates}.")
    if not planned:
        return problems + ["nothing trains (every multiplier is 0, or trains_param refuses every parameter): the "
                           "trial's first step would fail."]
    before = {n: p.detach().clone() for n, p in params.items()}
    frozen_norms = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in model.named_modules()
                    if isinstance(m, _BatchNorm) and not m.training and m.running_mean is not None}
    loss = F.cross_entropy(model(x), y)
    extra = strategy.loss_term(model)
    if extra is not None:
        if not isinstance(extra, torch.Tensor) or extra.numel() != 1 or not torch.isfinite(extra).all():
            return problems + [f"loss_term must return None or a finite scalar tensor but returned {extra!r}."]
        loss = loss + extra
    problems += _outside_the_optimizer(loss, optimizer)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    flipped = sorted(n for n, p in params.items() if p.requires_grad != (n in planned))
    if flipped:
        problems.append(f"requires_grad of {len(flipped)} parameters changed between the plan and the step "
                        f"({flipped[:3]}): something changes requires_grad behind the plan. HINT: say what trains "
                        f"in lr_scales and trains_param only.")
    no_grad = [n for n in planned if params[n].grad is None]
    if no_grad:
        problems.append(f"{len(no_grad)} parameters the plan trains got no gradient from a training step, so they "
                        f"never change: {_by_group(no_grad, groups)}. HINT: do not detach or run under no_grad a "
                        f"part of the model whose group trains; give it multiplier 0 instead.")
    leaked = [n for n, p in params.items() if n not in planned and p.grad is not None]
    if leaked:
        problems.append(f"parameters the plan freezes got a gradient: {leaked[:3]}.")
    optimizer.step()
    changed = {n for n in params if not torch.equal(params[n].detach(), before[n])}
    if changed - planned:
        problems.append(f"a step changed parameters the plan freezes: {sorted(changed - planned)[:3]}.")
    if not changed & planned:
        problems.append("a step changed no parameter the plan trains.")
    modules = dict(model.named_modules())
    moved = [n for n, (mean, var) in frozen_norms.items()
             if not (torch.equal(mean, modules[n].running_mean) and torch.equal(var, modules[n].running_var))]
    if moved:
        problems.append(f"a step changed the running statistics of frozen BatchNorm layers: {moved[:3]}.")
    return problems


def _plan_problems(groups: Sequence[LayerGroup], scales: Sequence[float], planned: set[str]) -> list[str]:
    return [f"group {g.index} ({g.name}) has multiplier 0 but trains {[n for n in g.params if n in planned][:3]}."
            for g, scale in zip(groups, scales) if scale == 0 and any(n in planned for n in g.params)]


def _outside_the_optimizer(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> list[str]:
    """Tensors the loss gives a gradient that no optimizer param group holds: they never train."""
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    seen, stack, outside = set(), [loss.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        variable = getattr(fn, "variable", None)  # an AccumulateGrad node: a leaf that receives a gradient
        if variable is not None and id(variable) not in held:
            outside.append(tuple(variable.shape))
        stack.extend(f for f, _ in fn.next_functions)
    if outside:
        return [f"the loss depends on {len(outside)} trainable tensor(s) in no optimizer param group (shapes "
                f"{outside[:3]}): they get a gradient but are never stepped. HINT: register them on the model in "
                f"prepare_model, inside an existing layer group, so they are parameters of the model."]
    return []


def _by_group(names: Sequence[str], groups: Sequence[LayerGroup]) -> str:
    where = {n: g for g in groups for n in g.params}
    by: dict[str, list[str]] = {}
    for n in names:
        by.setdefault(f"group {where[n].index} ({where[n].name})", []).append(n)
    return "; ".join(f"{k}: {v[:3]}{' ...' if len(v) > 3 else ''}" for k, v in by.items())


def _export_problems(strategy: Strategy, model: torch.nn.Module, backbone: str, image_size: int,
                     x: torch.Tensor) -> list[str]:
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    exported = strategy.export_model(model)
    if not isinstance(exported, torch.nn.Module):
        return [f"export_model must return a torch module but returned {type(exported).__name__}."]
    problems = []
    now = model.state_dict()
    if now.keys() != trained.keys() or any(not torch.equal(v, trained[k]) for k, v in now.items()):
        problems.append("export_model changed the model being trained (training goes on after it: return a copy).")
    plain = {k: tuple(v.shape) for k, v in create_backbone(backbone, _CLASSES, image_size).state_dict().items()}
    mine = {k: tuple(v.shape) for k, v in exported.state_dict().items()}
    if mine != plain:
        extra, missing = sorted(set(mine) - set(plain)), sorted(set(plain) - set(mine))
        return problems + [f"export_model must return the plain timm model (what load_best loads) but its state "
                           f"dict differs: extra {extra[:3]}, missing {missing[:3]}, or other shapes."]
    with torch.no_grad():
        a, b = copy.deepcopy(model).eval()(x), copy.deepcopy(exported).eval()(x)
    if not torch.allclose(a, b, rtol=1e-3, atol=1e-4):
        problems.append(f"the exported model's outputs differ from the trained model's (max difference "
                        f"{(a - b).abs().max().item():.3g}).")
    return problems

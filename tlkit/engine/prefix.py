"""The frozen prefix: the layer groups below the first trainable one, run once instead of every epoch.

When the images are not augmented and a strategy keeps the bottom of the backbone frozen (``last_n``, the first
epochs of ``gradual``), what the frozen part computes is a fixed function of the image, just like a linear probe's
features. So the model is cut in two: the *prefix* (the frozen groups) runs once per (prefix weights, images,
preprocessing) through ``tlkit.engine.features.FeatureCache`` (in memory, and on disk for later trials and sweeps), and
only the *suffix* (everything after the cut) runs in the training loop, on the cached output.

Why torch.fx: timm has no generic "run from layer group k" (``forward_intermediates`` only stops early, it cannot
start late). A symbolic trace in which every module lying within one layer group is a leaf reduces any timm model to
a short chain of group calls and glue code, and the cut falls where the frozen part ends. A cut is taken only when
it is exact and pays: one tensor crosses it, the frozen part is deterministic (no trainable parameter, BatchNorm in
eval mode, no active dropout), the trace is the same in train and eval mode, prefix-then-suffix gives the model's
output bit for bit on a test batch, and the cached output fits in memory. Otherwise the model runs whole, as before.
"""
from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.fx as fx
from timm.layers import DropBlock2d, DropPath
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from tlkit.models.backbones import LayerGroup
from tlkit.models._timm import notrace_functions as get_notrace_functions, notrace_modules as get_notrace_modules
from tlkit.errors import describe_error
from tlkit.engine.evaluate import eval_mode

__all__ = ["Cut", "cut_frozen_prefix", "memory_budget"]

log = logging.getLogger("tlkit")

MEMORY_SHARE = 0.25
"""The cached prefix output (train and val splits) may take at most this share of the device's memory."""

_RANDOM_FUNCTIONS = {torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like, torch.bernoulli,
                     torch.multinomial, torch.normal, torch.nn.functional.dropout,
                     torch.nn.functional.dropout2d, torch.nn.functional.alpha_dropout,
                     "bernoulli", "bernoulli_", "uniform_", "normal_", "random_", "exponential_"}  # and methods


@dataclass
class Cut:
    """``suffix(prefix(x)) == model(x)``; both share the model's own modules and parameters."""

    prefix: fx.GraphModule
    suffix: fx.GraphModule
    boundary: str
    """The graph node whose value crosses the cut (e.g. ``layer3_1``), for messages."""


class _GroupTracer(fx.Tracer):
    """Leaves are timm's untraceable modules, torch.nn's own, and any module whose parameters all belong to one
    layer group: what is left to trace is the glue between groups."""

    def __init__(self, group_of: dict[str, int]) -> None:
        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self.group_of = group_of
        self.notrace = tuple(get_notrace_modules())

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        if isinstance(m, self.notrace) or super().is_leaf_module(m, qualname):
            return True
        groups = {self.group_of.get(f"{qualname}.{name}") for name, _ in m.named_parameters()}
        return len(groups) == 1 and None not in groups


def _trace(model: torch.nn.Module, groups: Sequence[LayerGroup]) -> fx.Graph:
    """The model traced for its one input: optional arguments (a ViT's ``attn_mask``) fixed at their defaults."""
    optional = {name: p.default for name, p in inspect.signature(model.forward).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return _GroupTracer({p: g.index for g in groups for p in g.params}).trace(model, concrete_args=optional)


def _deterministic_and_frozen(module: torch.nn.Module) -> bool:
    """No parameter trains and nothing in it behaves randomly or updates statistics in its current mode."""
    if any(p.requires_grad for p in module.parameters()):
        return False
    for m in module.modules():
        if not m.training:
            continue
        if isinstance(m, _BatchNorm) or isinstance(m, _DropoutNd) and m.p > 0:  # batch statistics, dropout
            return False
        if isinstance(m, (DropPath, DropBlock2d)) and getattr(m, "drop_prob", 0) > 0:
            return False
    return True


def _frozen_nodes(graph: fx.Graph, model: torch.nn.Module) -> list[fx.Node]:
    """The nodes computed from the input by frozen, deterministic code only, in graph order."""
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    frozen: list[fx.Node] = []
    seen: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "output":
            continue
        if node.op == "placeholder":
            ok = True
        elif node.op == "call_module":
            ok = _deterministic_and_frozen(modules[node.target])
        elif node.op == "get_attr":
            ok = node.target not in params or not params[node.target].requires_grad
        else:
            ok = node.target not in _RANDOM_FUNCTIONS
        if ok and all(n in seen for n in node.all_input_nodes):
            seen.add(node)
            frozen.append(node)
    return frozen


def _depends_on(node: fx.Node, source: fx.Node, memo: dict[fx.Node, bool]) -> bool:
    if node not in memo:
        memo[node] = node is source or any(_depends_on(n, source, memo) for n in node.all_input_nodes)
    return memo[node]


def _part(model: torch.nn.Module, nodes: Sequence[fx.Node], inputs: Sequence[fx.Node], output: fx.Node | None
          ) -> fx.GraphModule:
    """A module running ``nodes`` (in order) on ``inputs`` and returning ``output`` (None: the graph's own output,
    among ``nodes``), with the model's own submodules and parameters; what it does not need is dropped."""
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {n: new.placeholder(n.name) for n in inputs}
    for node in nodes:
        if node not in env:
            env[node] = new.node_copy(node, lambda n: env[n])
    if output is not None:
        new.output(env[output])
    part = fx.GraphModule(model, new)
    part.graph.eliminate_dead_code()
    part.recompile()
    return part


def cut_frozen_prefix(model: torch.nn.Module, groups: Sequence[LayerGroup], example: torch.Tensor,
                      num_images: int, budget_bytes: float) -> Cut | None:
    """The cut after the model's frozen prefix, as the model's modes and ``requires_grad`` flags stand now, or None
    where there is none worth taking (see the module docstring). ``example`` is a batch of at least two inputs
    for the exactness check; ``num_images`` the images whose prefix output would be cached."""
    if all(p.requires_grad for p in model.parameters()):
        return None  # nothing is frozen (full fine-tuning): no cut, and no trace to pay for
    try:
        graph = _trace(model, groups)
        with eval_mode(model):  # the glue must not depend on the mode: the suffix is evaluated with this graph
            same = str(_trace(model, groups)) == str(graph)
    except Exception as err:  # noqa: BLE001 - an untraceable model just runs whole
        log.debug("no frozen-prefix cut: %s cannot be traced (%s)", type(model).__name__, describe_error(err))
        return None
    if not same:
        return None
    frozen = _frozen_nodes(graph, model)
    source = next(n for n in graph.nodes if n.op == "placeholder")  # the image; the others are fixed defaults
    memo: dict[fx.Node, bool] = {}
    prefix = [n for n in frozen if _depends_on(n, source, memo)]  # constants are recomputed by the suffix
    inside = set(prefix)
    crossing = {n for n in prefix for user in n.users if user not in inside}
    if len(crossing) != 1 or source in crossing or not any(n.op == "call_module" for n in prefix):
        return None  # nothing frozen worth running once, or more than one value crosses the cut
    (boundary,) = crossing
    if any(user.op == "output" for user in boundary.users):
        return None  # the whole model is frozen: nothing trains
    cut = Cut(_part(model, frozen, [source], boundary),  # with the constants it needs
              _part(model, [n for n in graph.nodes if n not in inside], [boundary], None), boundary.name)
    return cut if _exact_and_small(model, cut, example, num_images, budget_bytes) else None


def _exact_and_small(model: torch.nn.Module, cut: Cut, example: torch.Tensor, num_images: int,
                     budget_bytes: float) -> bool:
    """Prefix then suffix equals the model, in eval mode (no batch statistics, no dropout), on ``example``; and
    the prefix's output for ``num_images`` images fits ``budget_bytes``."""
    try:
        with eval_mode(model), torch.no_grad():
            middle = cut.prefix(example)
            if not isinstance(middle, torch.Tensor):
                return False
            exact = torch.equal(cut.suffix(middle), model(example))
    except Exception as err:  # noqa: BLE001 - a cut that cannot run is not taken
        log.debug("frozen-prefix cut at %s does not run (%s)", cut.boundary, describe_error(err))
        return False
    size = middle[0].numel() * 4 * num_images  # cached as float32
    if exact and size > budget_bytes:
        log.info("the frozen layers' output (%.1f GiB) would not fit in memory: they run every epoch",
                 size / 2**30)
    return exact and size <= budget_bytes


def memory_budget(device: torch.device) -> float:
    """Bytes the cached prefix output may take: a share of the GPU's free memory, or of the machine's RAM."""
    if device.type == "cuda":
        return MEMORY_SHARE * torch.cuda.mem_get_info(device)[0]
    try:
        return MEMORY_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return 2.0 * 2**30

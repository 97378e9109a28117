"""What tlkit relies on from timm, checked against the installed timm (see tlkit/models/_timm.py).

The unstable parts (``group_with_matcher``, the fx no-trace registry, the pretrained-config overlay that loads a
state dict, ``PretrainedCfg`` fields) are reached only through ``tlkit.models._timm``; the public model methods tlkit
calls on every backbone are checked here too. ``pyproject.toml`` keeps timm below the next minor release: before
raising that bound, install the new timm and run ``python -m pytest tests/test_timm_contract.py``. Fast: timm's tiny
``test_*`` models, no weights downloaded.
"""
from __future__ import annotations

import inspect

import pytest
import timm
import torch
import torch.fx as fx
from timm.layers import DropBlock2d, DropPath

from tlkit.models import _timm

FAMILIES = ("test_resnet", "test_efficientnet", "test_convnext", "test_vit")
# (fine groups, coarse groups, first parameter of the stem, classifier module) as timm 1.0 defines them: a change
# here moves every strategy's multipliers onto other layers, so a study run before would not be reproduced.
EXPECTED = {
    "test_resnet": (6, 6, "conv1.0.weight", "fc"),
    "test_efficientnet": (7, 7, "conv_stem.weight", "classifier"),
    "test_convnext": (11, 6, "stem.0.weight", "head.fc"),
    "test_vit": (8, 8, "cls_token", "head"),
}


def _model(name: str, num_classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"img_size": 32} if _timm.fixed_input_size(name) else {}
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("coarse", [False, True])
def test_group_names_partition_the_names_stem_first_head_last(name: str, coarse: bool) -> None:
    model = _model(name)
    names = [n for n, _ in model.named_parameters()]
    groups = _timm.group_names(names, model.group_matcher(coarse=coarse))
    fine, coarse_count, stem, classifier = EXPECTED[name]
    assert len(groups) == (coarse_count if coarse else fine)
    assert sorted(n for g in groups for n in g) == sorted(names)  # every name exactly once
    for group in groups:  # input order within a group
        assert group == sorted(group, key=names.index)
    assert groups[0][0] == stem
    assert {f"{classifier}.weight", f"{classifier}.bias"} <= set(groups[-1])  # the head is matched by nothing


def test_group_names_unmatched_last_and_match_prev_group_joins_the_group_before() -> None:
    matcher = {"stem": r"^stem", "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}
    names = ["stem.w", "blocks.1.w", "blocks.0.w", "norm.w", "fc.w", "blocks.0.b"]
    assert _timm.group_names(names, matcher) == [["stem.w"], ["blocks.0.w", "blocks.0.b"], ["blocks.1.w", "norm.w"],
                                                 ["fc.w"]]


def test_group_names_takes_names_that_are_no_parameter() -> None:
    """An affine-free BatchNorm has no weight; tlkit groups the name its weight would have."""
    model = _model("test_resnet")
    names = [n for n, _ in model.named_parameters()] + ["layer2.0.bn_free.weight"]
    groups = _timm.group_names(names, model.group_matcher())
    assert any("layer2.0.bn_free.weight" in g and "layer2.0.conv1.weight" in g for g in groups)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_notrace_registry_lets_fx_trace_every_family(name: str) -> None:
    modules, functions = _timm.notrace_modules(), _timm.notrace_functions()
    assert modules and all(isinstance(m, type) and issubclass(m, torch.nn.Module) for m in modules)
    assert functions and all(callable(f) for f in functions)

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
            return isinstance(m, modules) or super().is_leaf_module(m, qualname)

    model = _model(name).eval()
    optional = {k: p.default for k, p in inspect.signature(model.forward).parameters.items()
                if p.default is not inspect.Parameter.empty}
    traced = fx.GraphModule(model, Tracer(autowrap_functions=functions).trace(model, concrete_args=optional))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


def test_create_from_state_dict_loads_strictly_through_the_checkpoint_filter() -> None:
    saved = timm.create_model("test_vit", pretrained=False, num_classes=3).state_dict()  # built for 160 px
    model = _timm.create_from_state_dict("test_vit", saved, 3, img_size=32)
    loaded = model.state_dict()
    assert loaded["pos_embed"].shape[1] == 1 + (32 // 16) ** 2 != saved["pos_embed"].shape[1]  # resampled
    assert all(torch.equal(loaded[k], v) for k, v in saved.items() if k != "pos_embed")
    resnet = _model("test_resnet", 3).state_dict()
    assert all(torch.equal(v, resnet[k]) for k, v in
               _timm.create_from_state_dict("test_resnet", resnet, 3).state_dict().items())
    with pytest.raises(Exception):
        _timm.create_from_state_dict("test_resnet", {k: v for k, v in resnet.items() if k != "layer1.0.conv1.weight"},
                                     3)


@pytest.mark.parametrize("name", FAMILIES)
def test_pretrained_cfg_fields(name: str) -> None:
    assert _timm.fixed_input_size(name) == (name == "test_vit")
    assert _timm.classifier_names(name) == (EXPECTED[name][3],)
    assert f"{EXPECTED[name][3]}.weight" in _model(name).state_dict()
    assert not _timm.fixed_input_size("hf-hub:timm/resnet18.a1_in1k")
    assert _timm.classifier_names("hf-hub:timm/resnet18.a1_in1k") == ("head",)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_model_methods_tlkit_calls(name: str) -> None:
    model = _model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    head = model.get_classifier()
    head_params = {n for n, p in model.named_parameters() if any(p is q for q in head.parameters())}
    assert head_params == {f"{EXPECTED[name][3]}.weight", f"{EXPECTED[name][3]}.bias"}
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        assert features.shape == (2, model.num_features)
        assert torch.allclose(head(features), model(x), atol=1e-5)  # the cached features feed the head alone
    for coarse in (False, True):
        assert isinstance(model.group_matcher(coarse=coarse), dict)
    if hasattr(model, "no_weight_decay"):
        assert set(model.no_weight_decay()) <= {n for n, _ in model.named_parameters()} | {"reg_token", "dist_token"}
    cfg = timm.data.resolve_data_config({}, model=model)
    assert len(cfg["mean"]) == len(cfg["std"]) == 3


def test_the_registry_and_layers_tlkit_uses() -> None:
    assert timm.models.split_model_name_tag("resnet18.a1_in1k") == ("resnet18", "a1_in1k")
    assert timm.models.split_model_name_tag("resnet18") == ("resnet18", "")
    assert timm.is_model("resnet18") and not timm.is_model("resnet_nope")
    assert "resnet18.a1_in1k" in timm.list_pretrained("resnet18.*")
    assert set(FAMILIES) <= set(timm.list_models("test_*"))
    assert "pretrained_cfg_overlay" in inspect.signature(timm.create_model).parameters
    assert DropPath(0.1).drop_prob == 0.1 and DropBlock2d(0.1).drop_prob == 0.1  # what the prefix cut checks

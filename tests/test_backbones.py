"""timm backbones: layer groups (stem first, head last, every parameter once), building a trial's model, and
starting weights loaded through timm's own pretrained path."""
from __future__ import annotations

import functools

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from tlkit.models.backbones import adapt_weights, build_model, check_backbone, create_backbone, layer_groups, load_into
from tlkit.errors import TlkitError

ARCHS = ["test_resnet", "test_efficientnet", "test_vit", "test_convnext"]
STEMS = {"test_resnet": "conv1.0.weight", "test_efficientnet": "conv_stem.weight",
         "test_vit": "patch_embed.proj.weight", "test_convnext": "stem.0.weight"}


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_groups_put_the_stem_first_and_the_classifier_last(arch):
    model = create_backbone(arch, 7)
    groups = layer_groups(model)
    head = {n for n, p in model.named_parameters() if any(p is q for q in model.get_classifier().parameters())}
    assert STEMS[arch] in groups[0].params and not groups[0].is_head
    assert groups[-1].is_head and set(groups[-1].params) == head
    names = [n for g in groups for n in g.params]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # every parameter exactly once
    assert [g.index for g in groups] == list(range(len(groups)))
    assert 2 < len(layer_groups(model, coarse=True)) <= len(groups)


def test_weightless_batchnorm_layers_belong_to_the_group_they_sit_in():
    model = timm.create_model("test_resnet", num_classes=3,
                              norm_layer=functools.partial(torch.nn.BatchNorm2d, affine=False))
    groups = layer_groups(model)
    placed = {name: g.index for g in groups for name in g.norms}
    weightless = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert sorted(placed) == sorted(weightless)
    assert placed["bn1"] == 0 and placed["layer4.0.bn2"] == len(groups) - 2
    assert placed["layer2.0.bn1"] == next(g.index for g in groups if "layer2.0.conv1.weight" in g.params)


def test_build_model_seeds_the_head_and_loads_the_body():
    source = create_backbone("test_resnet", 5)
    body = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    a = build_model("test_resnet", 3, body, seed=7)
    b = build_model("test_resnet", 3, body, seed=7)
    c = build_model("test_resnet", 3, body, seed=8)
    assert torch.equal(a.state_dict()["layer1.0.conv1.weight"], body["layer1.0.conv1.weight"])
    assert torch.equal(a.fc.weight, b.fc.weight) and not torch.equal(a.fc.weight, c.fc.weight)
    assert a.fc.weight.shape == (3, source.fc.in_features)  # the head is new: 3 classes, not the file's 5


def test_weights_of_another_architecture_name_the_keys():
    other = create_backbone("test_efficientnet", 3).state_dict()
    with pytest.raises(TlkitError, match=r"do not fit ResNet: missing keys \['conv1\.0\.weight'.*HINT"):
        load_into(create_backbone("test_resnet", 3), other, "file x.safetensors")


def test_a_vit_file_saved_at_one_size_loads_into_another_through_timm():
    """The file's position embeddings (10x10 patches at 160 px) are resampled to 4x4 for a 64 px model, as timm
    does for hub weights; everything else is loaded as saved."""
    torch.manual_seed(0)
    saved = timm.create_model("test_vit", num_classes=9).state_dict()
    assert saved["pos_embed"].shape[1] == 1 + (160 // 16) ** 2
    adapted = adapt_weights("test_vit", saved, 64, "file vit.safetensors")
    model = build_model("test_vit", 3, adapted, seed=0, image_size=64)
    expected = resample_abs_pos_embed(saved["pos_embed"], new_size=(4, 4), num_prefix_tokens=1)
    assert torch.allclose(model.pos_embed, expected, atol=1e-6)
    assert torch.equal(model.patch_embed.proj.weight, saved["patch_embed.proj.weight"])
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    # Without timm's filter the same file does not fit the 64 px model.
    with pytest.raises(TlkitError, match="shape mismatches .*pos_embed"):
        build_model("test_vit", 3, saved, seed=0, image_size=64)


def test_unknown_backbone_and_tag_suggest_close_names():
    with pytest.raises(TlkitError, match=r"Unknown backbone 'resnet_18'\. Did you mean 'resnet18'"):
        check_backbone("resnet_18")
    with pytest.raises(TlkitError, match=r"knows the architecture 'resnet18' but not the pretrained tag 'a9_in1k'"):
        check_backbone("resnet18.a9_in1k")


def test_load_into_replaces_only_the_head():
    source = create_backbone("test_vit", 3)
    target = create_backbone("test_vit", 7)
    head_before = target.head.weight.clone()
    load_into(target, source.state_dict(), "test")
    assert torch.equal(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert torch.equal(target.head.weight, head_before) and target.head.out_features == 7
    broken = {k: v for k, v in source.state_dict().items() if not k.startswith("blocks.1.")}
    with pytest.raises(TlkitError, match=r"missing keys \['blocks\.1\."):
        load_into(target, broken, "a partial file")

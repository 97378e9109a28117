"""The frozen prefix: cut exactly where the frozen groups end, run once per (weights, images, preprocessing), and
training on its output gives what training the whole model gives."""
from __future__ import annotations

import pytest
import torch

import tlkit.data.augment
import tlkit.engine.evaluate
import tlkit.engine.loop
import tlkit.engine.features
from tlkit.models.backbones import create_backbone, layer_groups, preprocessing
from tlkit.data.tensors import make_splits
from tlkit.data.datasets import load_dataset
from tlkit.config.experiment import Train
from tlkit.engine.evaluate import eval_mode
from tlkit.engine.features import feature_dir
from tlkit.metrics import get_metric
from tlkit.engine.prefix import cut_frozen_prefix
from tlkit.strategies import create_strategy
from tlkit.engine.loop import Trainer, apply_plan, set_train_mode

EXAMPLE = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def splits():
    train, test = load_dataset("digits")
    return make_splits(train, test, classes=[0, 1, 2, 3], val_fraction=0.3, seed=0, image_size=16,
                       train_per_class=40)


def _frozen_below(model, n_trainable: int, strategy: str = "last_n"):
    """The model as a last_n trial with ``n_trainable`` body groups leaves it at epoch 0."""
    groups = layer_groups(model)
    plan = create_strategy(strategy, num_groups=len(groups), epochs=2,
                           **({"n_groups": n_trainable} if strategy == "last_n" else {}))
    scales = plan.lr_scales(0)
    apply_plan(model, groups, scales, plan)
    set_train_mode(model, groups, scales)
    return groups


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"])
def test_the_cut_falls_where_the_frozen_groups_end_and_reproduces_the_model(arch):
    model = create_backbone(arch, 4, 32)
    num_groups = len(layer_groups(model))
    images = torch.rand(3, 3, 32, 32)
    for n in range(1, num_groups - 1):
        groups = _frozen_below(model, n)
        cut = cut_frozen_prefix(model, groups, EXAMPLE, num_images=100, budget_bytes=2**30)
        assert cut is not None, f"{arch}: last {n} groups train, the rest is a cacheable prefix"
        frozen = {id(p) for p in model.parameters() if not p.requires_grad}
        assert {id(p) for p in cut.prefix.parameters()} <= frozen
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert trainable <= {id(p) for p in cut.suffix.parameters()}, "the suffix trains the model's own parameters"
        with eval_mode(model), torch.no_grad():
            assert torch.equal(cut.suffix(cut.prefix(images)), model(images))
    _frozen_below(model, num_groups - 1)  # the whole body trains: nothing to cut
    assert cut_frozen_prefix(model, layer_groups(model), EXAMPLE, 100, 2**30) is None


def test_no_cut_through_random_or_batch_dependent_frozen_layers_nor_past_the_memory_budget():
    model = create_backbone("test_resnet", 4)
    groups = _frozen_below(model, 1)
    assert cut_frozen_prefix(model, groups, EXAMPLE, num_images=100, budget_bytes=2**30).boundary == "layer3"
    assert cut_frozen_prefix(model, groups, EXAMPLE, num_images=100, budget_bytes=1000) is None
    model.layer2.train()  # a frozen BatchNorm on batch statistics: its output depends on the batch
    assert cut_frozen_prefix(model, groups, EXAMPLE, 100, 2**30).boundary == "layer1"
    vit = create_backbone("test_vit", 4, 32)
    vit.blocks[2].drop_path1 = tlkit.engine.prefix.DropPath(0.1)  # stochastic depth in a frozen block
    groups = _frozen_below(vit, 1)
    assert cut_frozen_prefix(vit, groups, EXAMPLE, 100, 2**30).boundary == "blocks_1"


def test_eval_mode_puts_every_module_back_in_its_own_mode():
    model = create_backbone("test_resnet", 4)
    _frozen_below(model, 1)
    before = {name: m.training for name, m in model.named_modules()}
    assert not model.bn1.training and model.layer4.training
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert {name: m.training for name, m in model.named_modules()} == before


def _trainer(splits, strategy="last_n", cache=True, seed=0, epochs=3, augment=(), **params):
    torch.manual_seed(0)
    model = create_backbone("test_resnet", splits.num_classes)
    groups = layer_groups(model)
    plan = create_strategy(strategy, num_groups=len(groups), epochs=epochs, **params)
    recipe = Train(epochs=epochs, batch_size=16, image_size=16, augment=list(augment), cache_features=cache, lr=3e-3)
    return Trainer(model, groups, plan, splits, recipe, get_metric("accuracy"), seed=seed, **preprocessing(model))


@pytest.mark.parametrize("strategy,params", [("last_n", {"n_groups": 2}), ("gradual", {})])
def test_training_on_the_cached_prefix_matches_training_the_whole_model(splits, strategy, params, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path))
    cached, whole = _trainer(splits, strategy, **params), _trainer(splits, strategy, cache=False, **params)
    stem_statistics = cached.model.bn1.running_mean.clone()
    cached.fit(), whole.fit()
    assert all(r.features_cached for r in cached.history) and not any(r.features_cached for r in whole.history)
    for a, b in zip(cached.history, whole.history):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5) and a.val_metric == b.val_metric
    for (name, a), b in zip(cached.model.state_dict().items(), whole.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    assert torch.equal(cached.model.bn1.running_mean, stem_statistics), "the frozen stem kept its statistics"


def test_augmented_images_run_the_whole_model(splits):
    trainer = _trainer(splits, epochs=1)
    trainer.recipe.augment = ["hflip"]
    trainer.fit()
    assert not trainer.history[0].features_cached


@pytest.mark.parametrize("augment", ["random_resized_crop", "randaugment", "trivialaugment", "mixup", "cutmix"])
def test_every_augmentation_runs_the_whole_model_and_a_cached_probe_sees_none(splits, augment, monkeypatch):
    """The frozen prefix's output is cached only from un-augmented images, so any augmentation turns it off; a
    probe on cached features (``cache_features``) trains on the un-augmented images' features by design, so
    neither the images nor the batch are augmented or mixed there, and its loss is the plain cross-entropy."""
    mixed = []
    monkeypatch.setattr(tlkit.engine.loop, "mix_batch", lambda *a: mixed.append(1) or tlkit.data.augment.mix_batch(*a))
    trainer = _trainer(splits, epochs=1, augment=[augment])
    trainer.fit()
    assert not trainer.history[0].features_cached
    assert bool(mixed) == (augment in ("mixup", "cutmix"))
    probe, mixed[:] = _trainer(splits, "linear_probe", epochs=1, augment=[augment]), []
    probe.fit()
    assert probe.history[0].features_cached and not mixed


def test_a_second_trial_reads_the_prefix_output_the_first_computed(splits, tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path))
    calls = []
    real = tlkit.engine.evaluate.predict

    def counting(forward, data, **kwargs):
        if not isinstance(data, tuple):  # images through (part of) the model
            calls.append(len(data))
        return real(forward, data, **kwargs)

    for module in (tlkit.engine.evaluate, tlkit.engine.features):  # evaluation, and the features it caches
        monkeypatch.setattr(module, "predict", counting)
    first = _trainer(splits, n_groups=1)
    first.fit()
    assert calls == [len(splits.train), len(splits.val)]  # the prefix over each split, once for three epochs
    assert len(list(feature_dir().glob("*.pt"))) == 2
    second = _trainer(splits, seed=3, n_groups=1)  # another trial: another head and batch order, same prefix
    second.fit()
    assert calls[2:] == [1], "the second trial ran only one image through the prefix (checking the files' shape)"
    _trainer(splits, n_groups=2).fit()  # another cut: other features
    assert calls[3:] == [len(splits.train), len(splits.val)] and len(list(feature_dir().glob("*.pt"))) == 4


def test_a_resumed_trial_on_the_cached_prefix_ends_bit_for_bit_like_an_uninterrupted_one(splits, tmp_path,
                                                                                           monkeypatch):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path))
    whole = _trainer(splits, epochs=4, n_groups=2)
    whole.fit()
    first = _trainer(splits, epochs=4, n_groups=2)
    first.recipe.epochs = 2
    first.fit()
    weights, state = first.model.state_dict(), first.state_dict()
    resumed = _trainer(splits, epochs=4, n_groups=2)
    resumed.model.load_state_dict(weights)
    resumed.load_state_dict(state)
    resumed.fit()
    assert [r.val_loss for r in resumed.history] == [r.val_loss for r in whole.history]
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("strategy", ["lp_ft", "bitfit", "lora", "surgical"])
def test_other_strategies_train_the_same_with_and_without_the_cache(splits, strategy, tmp_path, monkeypatch):
    """Whatever else a strategy freezes (a probe phase, biases only) or changes (LoRA's adapters), cached inputs
    change nothing (last_n and gradual: above)."""
    from tlkit.strategies.base import prepare

    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path))
    histories = {}
    for cache in (True, False):
        torch.manual_seed(0)
        model = create_backbone("test_resnet", splits.num_classes)
        plan = create_strategy(strategy, num_groups=len(layer_groups(model)), epochs=3)
        model, groups = prepare(plan, model)
        recipe = Train(epochs=3, batch_size=16, image_size=16, augment=[], cache_features=cache, lr=3e-3)
        trainer = Trainer(model, groups, plan, splits, recipe, get_metric("accuracy"), seed=0,
                          **preprocessing(model))
        histories[cache] = trainer.fit()
    for a, b in zip(*histories.values()):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5) and a.val_metric == b.val_metric

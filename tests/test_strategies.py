"""Every registered strategy x four timm families: exactly the parameters a strategy says train are the ones that
change (of the model the strategy prepared: LoRA's adapters and the head, never the weights they adapt), frozen
BatchNorm statistics stay put, per-group learning rates follow the plan, and no autograd graph is built through a
frozen prefix. Then what the hooks beyond the plan promise: L2-SP's penalty, LoRA's merged export, surgical's choice,
and an exact resume of each."""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tlkit.models.backbones import create_backbone, layer_groups, preprocessing
from tlkit.data.tensors import make_splits
from tlkit.data.datasets import load_dataset
from tlkit.errors import TlkitError
from tlkit.config.experiment import Train
from tlkit.metrics import get_metric
from tlkit.strategies import STRATEGIES, Strategy, create_strategy, get_strategy, list_strategies, register_strategy
from tlkit.strategies.base import prepare
from tlkit.engine.loop import Callback, Trainer, apply_plan
from tlkit.testing import KillAt

ARCHS = ["test_resnet", "test_efficientnet", "test_vit", "test_convnext"]
REGISTERED = list_strategies()  # every built-in and installed plugin goes through the contract matrix
EPOCHS = 3
BASE_LR = 1e-2


@pytest.fixture(scope="module")
def splits():
    train, test = load_dataset("digits")
    return make_splits(train, test, classes=[0, 1, 2], val_fraction=0.3, seed=0, image_size=32,
                       train_per_class=30)


class Snapshots(Callback):
    """Parameters and BN statistics at the end of every epoch, plus each group's learning rate during it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = [self._params(model)]
        self.stats = [self._stats(model)]
        self.lrs: list[list[float]] = []

    @staticmethod
    def _params(model):
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    @staticmethod
    def _stats(model):
        return {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in model.named_modules()
                if isinstance(m, _BatchNorm) and m.running_mean is not None}

    def on_epoch_end(self, trainer, result):
        self.params.append(self._params(trainer.model))
        self.stats.append(self._stats(trainer.model))
        self.lrs.append(result.lrs)


def _pretend_pretrained(model: torch.nn.Module) -> torch.nn.Module:
    """timm zero-initialises the last BN scale of residual blocks, which makes the branch's gradients exactly zero
    at random init; pretrained weights have no such zeros, so give every BN scale a non-zero value."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.weight is not None:
                module.weight.uniform_(0.5, 1.5)
    return model


def _trainer(arch, strategy_name, splits, **params):
    torch.manual_seed(0)
    model = _pretend_pretrained(create_backbone(arch, splits.num_classes))
    strategy = create_strategy(strategy_name, num_groups=len(layer_groups(model)), epochs=EPOCHS, **params)
    model, groups = prepare(strategy, model)  # as the runner does: adapters in, starting weights remembered
    recipe = Train(epochs=EPOCHS, batch_size=16, lr=BASE_LR, weight_decay=0.0, scheduler="constant",
                   max_batches=2, image_size=32, cache_features=False)
    snaps = Snapshots(model)
    trainer = Trainer(model, groups, strategy, splits, recipe, get_metric("accuracy"), seed=0, callbacks=[snaps],
                      **preprocessing(model))
    return trainer, snaps


def _params_for(strategy_name: str, num_groups: int) -> dict:
    # Non-default values so every strategy shows its shape within 3 epochs.
    return {"last_n": {"n_groups": 2}, "gradual": {"unfreeze_every": 1, "lr_factor": 0.5},
            "lp_ft": {"probe_fraction": 0.34, "ft_lr_scale": 0.1}, "surgical": {"block": "middle"},
            "lora": {"rank": 4}, "l2_sp": {"alpha": 0.1}}.get(strategy_name, {})


def test_registry_lists_builtins():
    builtins = {"bitfit", "from_scratch", "full_finetune", "gradual", "l2_sp", "last_n", "layer_decay",
                "linear_probe", "lora", "lp_ft", "surgical"}
    assert builtins <= set(REGISTERED)
    assert list_strategies("l*") == ["l2_sp", "last_n", "layer_decay", "linear_probe", "lora", "lp_ft"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("strategy_name", REGISTERED)
def test_exactly_the_planned_parameters_train(arch, strategy_name, splits):
    probe = create_backbone(arch, splits.num_classes)
    params = _params_for(strategy_name, len(layer_groups(probe)))
    trainer, snaps = _trainer(arch, strategy_name, splits, **params)
    trainer.fit()
    groups, strategy, model = trainer.groups, trainer.strategy, trainer.model
    for epoch in range(EPOCHS):
        scales = strategy.lr_scales(epoch)
        planned = {n for g, s in zip(groups, scales) for n in g.params if s > 0 and strategy.trains_param(n, g.is_head)}
        before, after = snaps.params[epoch], snaps.params[epoch + 1]
        changed = {n for n in before if not torch.equal(before[n], after[n])}
        assert changed == planned, f"epoch {epoch}: unplanned {changed - planned}, unchanged {planned - changed}"
        # Per-group learning rates: base x multiplier (constant schedule), 0 for frozen groups.
        assert snaps.lrs[epoch] == pytest.approx([BASE_LR * s for s in scales])
        # BatchNorm layers with frozen weights keep their running statistics bit for bit.
        bn_frozen = {n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.weight is not None
                     and f"{n}.weight" not in planned}
        for name, (mean, var) in snaps.stats[epoch + 1].items():
            old_mean, old_var = snaps.stats[epoch][name]
            if name in bn_frozen:
                assert torch.equal(mean, old_mean) and torch.equal(var, old_var), f"frozen BN {name} moved"
            elif f"{name}.weight" in planned:
                assert not torch.equal(mean, old_mean), f"training BN {name} kept its statistics"


@pytest.mark.parametrize("arch", ARCHS)
def test_gradual_unfreezes_one_group_per_step_from_the_top(arch, splits):
    trainer, snaps = _trainer(arch, "gradual", splits, unfreeze_every=1, lr_factor=0.5)
    trainer.fit()
    n = len(trainer.groups)
    for epoch in range(EPOCHS):
        before, after = snaps.params[epoch], snaps.params[epoch + 1]
        trained = [g.index for g in trainer.groups if any(not torch.equal(before[p], after[p]) for p in g.params)]
        assert trained == list(range(n - 1 - epoch, n)), f"epoch {epoch}: groups {trained} trained"
        assert snaps.lrs[epoch][n - 1 - epoch] == pytest.approx(BASE_LR * 0.5 ** epoch)


@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_prefix_builds_no_autograd_graph(arch, splits):
    """With only the head training, a forward pass saves the head's tensors for backward and nothing else."""
    model = create_backbone(arch, splits.num_classes)
    groups = layer_groups(model)
    x = torch.randn(4, 3, 32, 32)

    def saved_tensors(strategy_name):
        strategy = create_strategy(strategy_name, num_groups=len(groups), epochs=1)
        apply_plan(model, groups, strategy.lr_scales(0), strategy)
        count = 0

        def pack(t):
            nonlocal count
            count += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x).sum().backward()
        return count

    full = saved_tensors("full_finetune")
    probe = saved_tensors("linear_probe")
    assert probe <= 3 < full, (probe, full)
    last_two = create_strategy("last_n", num_groups=len(groups), epochs=1, n_groups=1)
    apply_plan(model, groups, last_two.lr_scales(0), last_two)
    count = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: count.append(1) or t, lambda t: t):
        model(x).sum().backward()
    assert probe < len(count) < full


def test_strategy_arguments_are_checked():
    with pytest.raises(TlkitError, match=r"n_groups must be in \[0, 5\].*but got 9"):
        create_strategy("last_n", num_groups=6, epochs=2, n_groups=9)
    with pytest.raises(TlkitError, match="takes .*unfreeze_every.* but got \\['every'\\]"):
        create_strategy("gradual", num_groups=6, epochs=2, every=2)


def test_unknown_strategy_suggests_the_close_name():
    with pytest.raises(TlkitError, match=r"Unknown strategy 'lastn'\. Did you mean 'last_n'\? Available: .*linear"):
        get_strategy("lastn")


def test_duplicate_name_is_an_error_but_rerunning_a_file_is_not():
    @register_strategy("dup_probe_test")
    class First(Strategy):
        def lr_scales(self, epoch):
            return self._frozen_below(self.num_groups - 1)

    try:
        register_strategy("dup_probe_test")(First)  # the same class again: fine (a re-loaded file)
        with pytest.raises(TlkitError, match="already registered"):
            @register_strategy("dup_probe_test")
            class Second(Strategy):
                def lr_scales(self, epoch):
                    return [1.0] * self.num_groups
    finally:
        STRATEGIES._entries.pop("dup_probe_test", None)


def test_third_party_strategy_via_entry_point(tmp_path, monkeypatch):
    pkg = tmp_path / "tlkit_extra_strategy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from tlkit.strategies import Strategy

        class HeadAndStem(Strategy):
            def lr_scales(self, epoch):
                return [1.0] + [0.0] * (self.num_groups - 2) + [1.0]
    """))
    dist = tmp_path / "tlkit_extra_strategy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tlkit-extra-strategy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tlkit.strategies]\nhead_and_stem = tlkit_extra_strategy:HeadAndStem\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(STRATEGIES, "_entry_points_loaded", False)
    try:
        assert "head_and_stem" in list_strategies()
        strategy = create_strategy("head_and_stem", num_groups=4, epochs=1)
        assert strategy.lr_scales(0) == [1.0, 0.0, 0.0, 1.0]
    finally:
        STRATEGIES._entries.pop("head_and_stem", None)
        sys.modules.pop("tlkit_extra_strategy", None)


def test_experiment_file_can_register_its_own_strategy(tmp_path):
    from tlkit.config.loading import load_experiment
    from tlkit.testing import write_experiment

    prelude = textwrap.dedent("""
        @register_strategy("top_two_test")
        class TopTwo(Strategy):
            def lr_scales(self, epoch):
                return self._frozen_below(self.num_groups - 3)
    """)
    try:
        exp = load_experiment(write_experiment(tmp_path, strategies=["top_two_test"], prelude=prelude))
        assert exp.strategies == ["top_two_test"]
        assert get_strategy("top_two_test")(num_groups=5, epochs=1).lr_scales(0) == [0, 0, 1, 1, 1]
    finally:
        STRATEGIES._entries.pop("top_two_test", None)


# --- the hooks beyond the plan: L2-SP's penalty, LoRA's adapters and merged export, surgical's choice -------------

def test_l2_sp_adds_half_alpha_times_the_squared_distance_to_the_starting_body():
    model = create_backbone("test_resnet", 3)
    strategy = create_strategy("l2_sp", num_groups=len(layer_groups(model)), epochs=1, alpha=0.5)
    model, _ = prepare(strategy, model)
    assert strategy.loss_term(model).item() == 0.0
    conv = model.layer1[0].conv1.weight
    with torch.no_grad():
        conv[0, 0, 0, :2] += torch.tensor([0.3, -0.4])  # squared distance 0.09 + 0.16 = 0.25
        model.get_classifier().weight += 7.0  # the new head has no starting point: not penalised
    penalty = strategy.loss_term(model)
    assert penalty.item() == pytest.approx(0.5 / 2 * 0.25)
    penalty.backward()  # its gradient: alpha * (w - w0)
    assert conv.grad[0, 0, 0, :2].tolist() == pytest.approx([0.15, -0.2])
    assert model.get_classifier().weight.grad is None


def test_l2_sp_holds_the_body_nearer_its_starting_weights(splits):
    def drift(alpha):
        trainer, snaps = _trainer("test_resnet", "l2_sp", splits, alpha=alpha)
        trainer.fit()
        head = set(trainer.groups[-1].params)
        return sum(float((snaps.params[-1][n] - w0).pow(2).sum()) for n, w0 in snaps.params[0].items()
                   if n not in head)

    assert drift(100.0) < 0.5 * drift(0.0)


def test_lora_adapts_the_body_layers_peft_supports():
    from tlkit.strategies.lora import adapter_targets

    vit = adapter_targets(create_backbone("test_vit", 3))
    assert set(vit) == {f"blocks.{i}.{layer}" for i in range(6)
                        for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}  # not the patch embedding
    cnn = adapter_targets(create_backbone("test_efficientnet", 3))
    assert "blocks.3.0.conv_pw" in cnn and "conv_head" in cnn
    assert not {"conv_stem", "blocks.3.0.conv_dw", "classifier"} & set(cnn)  # stem, depthwise, head


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_trains_adapters_and_head_and_exports_the_merged_plain_timm_model(arch, splits):
    trainer, _ = _trainer(arch, "lora", splits, rank=4)
    history = trainer.fit()
    model = trainer.model
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    adapters = [n for n in sizes if ".lora_" in n]
    assert adapters and {r.trainable_params for r in history} == {
        sum(sizes[n] for n in adapters) + sum(sizes[n] for n in trainer.groups[-1].params)}
    exported = trainer.strategy.export_model(model)
    plain = create_backbone(arch, splits.num_classes)
    plain.load_state_dict(exported.state_dict())  # strictly: exactly a timm model's keys and shapes
    assert type(exported) is type(plain) and any(".lora_" in n for n, _ in model.named_parameters())  # a copy
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), model.eval()(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("block, trained", [("first", 0), ("middle", 2), ("last", 4)])
def test_surgical_trains_the_chosen_group_and_the_head(block, trained):
    strategy = create_strategy("surgical", num_groups=6, epochs=2, block=block)
    assert strategy.lr_scales(1) == [1.0 if i in (trained, 5) else 0.0 for i in range(6)]
    with pytest.raises(TlkitError, match="Did you mean 'first'"):
        create_strategy("surgical", num_groups=6, epochs=2, block="frist")


def test_prepare_refuses_a_model_change_the_plan_cannot_follow():
    class Swap(Strategy):
        name = "swap_prepare_test"
        defaults = {"to": None}

        def lr_scales(self, epoch):
            return [1.0] * self.num_groups

        def prepare_model(self, model):
            return self.params["to"]

    model = create_backbone("test_resnet", 3)
    with pytest.raises(TlkitError, match="prepare_model must return the model to train"):
        prepare(Swap(num_groups=6, epochs=1, to=None), model)
    with pytest.raises(TlkitError, match="changed the model's layer groups from 6 to 8"):
        prepare(Swap(num_groups=6, epochs=1, to=create_backbone("test_vit", 3)), model)


@pytest.mark.parametrize("strategy, arch, params", [("l2_sp", "test_resnet", {"alpha": 0.1}),
                                                    ("lora", "test_vit", {"rank": 4}),
                                                    ("surgical", "test_efficientnet", {"block": "first"})])
def test_a_killed_trial_resumes_to_the_same_result_and_saves_a_plain_model(tmp_path, splits, strategy, arch, params):
    from safetensors.torch import load_file

    from tlkit.engine.runner import TrialSpec, run_trial

    def spec(folder):
        return TrialSpec(backbone=arch, strategy=strategy, params=params, metric="accuracy", seed=1, folder=folder,
                         recipe=Train(epochs=3, batch_size=16, image_size=32, max_batches=3))

    cpu = torch.device("cpu")
    whole = run_trial(spec(tmp_path / "whole"), splits, cpu)
    with pytest.raises(KeyboardInterrupt):
        run_trial(spec(tmp_path / "killed"), splits, cpu, callbacks=[KillAt(epoch=1)])
    resumed = run_trial(spec(tmp_path / "killed"), splits, cpu)
    assert resumed.resumed_from_epoch == 1 and resumed.trainable_params == whole.trainable_params
    for key in ("train_loss", "val_loss", "val_metric", "trainable_params"):
        assert [h[key] for h in resumed.history] == [h[key] for h in whole.history], key
    best_whole, best_resumed = (load_file(str(tmp_path / f / "best.safetensors")) for f in ("whole", "killed"))
    assert best_whole.keys() == best_resumed.keys()
    assert all(torch.equal(best_whole[k], best_resumed[k]) for k in best_whole)
    create_backbone(arch, splits.num_classes, 32).load_state_dict(best_whole)  # LoRA's adapters merged away

"""The fit loop: one learning-rate path, weight decay by timm's rule, BatchNorm that follows the plan, checked
plans, the end-of-fit hook with every outcome, the feature cache, and an exact resume."""
from __future__ import annotations

import functools
import math

import pytest
import timm
import torch

from tlkit.models.backbones import create_backbone, layer_groups, preprocessing
from tlkit.data.tensors import make_splits
from tlkit.data.datasets import load_dataset
from tlkit.errors import TlkitError
from tlkit.config.experiment import Train
from tlkit.metrics import get_metric
from tlkit.strategies import Strategy, create_strategy
from tlkit.engine.loop import Callback, NonFiniteError, PruneTrial, Trainer, lr_factor, param_groups

BASE_LR = 1e-2


@pytest.fixture(scope="module")
def splits():
    train, test = load_dataset("digits")
    return make_splits(train, test, classes=[0, 1, 2], val_fraction=0.3, seed=0, image_size=16,
                       train_per_class=30)


def _trainer(splits, strategy="full_finetune", model=None, callbacks=(), **recipe):
    torch.manual_seed(0)
    model = model if model is not None else create_backbone("test_resnet", splits.num_classes)
    groups = layer_groups(model)
    plan = strategy if isinstance(strategy, Strategy) else create_strategy(strategy, num_groups=len(groups),
                                                                            epochs=recipe.get("epochs", 2))
    settings = {"epochs": 2, "batch_size": 16, "lr": BASE_LR, "image_size": 16, "max_batches": 3, **recipe}
    return Trainer(model, groups, plan, splits, Train(**settings), get_metric("accuracy"), seed=0,
                   callbacks=list(callbacks), **preprocessing(model))


class StepLRs(Callback):
    """Every param group's learning rate at every step (what the optimizer used for that step)."""

    def __init__(self):
        self.steps: list[list[float]] = []

    def on_batch_end(self, trainer, batch, num_batches):
        self.steps.append([g["lr"] for g in trainer.optimizer.param_groups])


def test_every_step_uses_base_x_schedule_x_plan(splits):
    """Warm-up then cosine, times the strategy's per-group multiplier, set in one place before each step."""
    seen = StepLRs()
    trainer = _trainer(splits, "layer_decay", callbacks=[seen], epochs=3, warmup_epochs=1)
    trainer.fit()
    total, warmup = 3 * trainer.steps_per_epoch, trainer.steps_per_epoch
    scales = trainer.strategy.lr_scales(0)
    for step, lrs in enumerate(seen.steps):
        factor = lr_factor(step, total, warmup, "cosine")
        expected = [BASE_LR * factor * scales[g["layer_group"]] for g in trainer.optimizer.param_groups]
        assert lrs == pytest.approx(expected, rel=1e-12), step
    assert seen.steps[0][-1] == pytest.approx(BASE_LR / warmup)  # the first warm-up step, head group
    assert trainer.step == total


def test_newly_unfrozen_groups_follow_the_schedule(splits):
    """The bug users hit elsewhere: a group unfrozen late starts at the full base rate instead of where the cosine
    schedule stands. Here it joins at base x multiplier x the current schedule factor."""
    model = create_backbone("test_resnet", splits.num_classes)
    strategy = create_strategy("gradual", num_groups=len(layer_groups(model)), epochs=4, unfreeze_every=2,
                               lr_factor=1.0)
    trainer = _trainer(splits, strategy, model=model, epochs=4)
    trainer.fit()
    steps, below_head = trainer.steps_per_epoch, len(trainer.groups) - 2
    unfreeze_lr = trainer.history[2].lrs[below_head]  # the group below the head joins at epoch 2
    assert trainer.history[1].lrs[below_head] == 0.0
    assert unfreeze_lr == pytest.approx(BASE_LR * lr_factor(2 * steps, 4 * steps, 0, "cosine"))
    assert unfreeze_lr < BASE_LR * 0.6


def test_weight_decay_skips_biases_norms_and_what_the_model_exempts():
    model = create_backbone("test_vit", 3, image_size=32)
    groups = layer_groups(model)
    pg = param_groups(model, groups, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in pg if g["weight_decay"] > 0 for p in g["params"]}
    exempt = {names[id(p)] for g in pg if g["weight_decay"] == 0 for p in g["params"]}
    assert not decayed & exempt and len(decayed | exempt) == len(names)  # every parameter exactly once
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "head.bias"} <= exempt
    assert {"blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "head.weight"} <= decayed
    for g in pg:  # a param group never mixes layer groups
        assert {names[id(p)] for p in g["params"]} <= set(groups[g["layer_group"]].params)


def test_weightless_batchnorm_follows_the_plan(splits):
    """BatchNorm without weights keeps its statistics only while its layer group is frozen."""
    def stats_move(strategy):
        torch.manual_seed(0)
        model = timm.create_model("test_resnet", num_classes=3,
                                  norm_layer=functools.partial(torch.nn.BatchNorm2d, affine=False))
        before = model.layer1[0].bn1.running_mean.clone()
        _trainer(splits, strategy, model=model, epochs=1).fit()
        return not torch.equal(before, model.layer1[0].bn1.running_mean)

    assert stats_move("full_finetune")
    assert not stats_move("linear_probe")


class BadPlan(Strategy):
    name = "bad_plan_test"
    defaults = {"plan": None}

    def lr_scales(self, epoch):
        return self.params["plan"]


@pytest.mark.parametrize("plan, message", [
    ([1.0, 1.0], r"must return 6 multipliers .*but got 2"),
    ([1.0, 1.0, -0.5, 1.0, 1.0, 1.0], r"must be finite and >= 0 .*but got \[1\.0, 1\.0, -0\.5"),
    ([1.0, 1.0, math.nan, 1.0, 1.0, 1.0], r"must be finite and >= 0 .*but got .*nan"),
    (["fast"] * 6, r"must return numbers"),
])
def test_a_strategy_plan_is_checked_every_epoch(splits, plan, message):
    trainer = _trainer(splits, BadPlan(num_groups=6, epochs=2, plan=plan))
    with pytest.raises(TlkitError, match=r"Strategy 'bad_plan_test' at epoch 0: lr_scales " + message):
        trainer.fit()


def test_lr_scales_is_abstract():
    class NoPlan(Strategy):
        pass

    with pytest.raises(TypeError, match="abstract"):
        NoPlan(num_groups=3, epochs=1)


class Outcome(Callback):
    def __init__(self, raise_at_epoch=None, error=None):
        self.raise_at_epoch, self.error = raise_at_epoch, error
        self.outcome, self.epochs = None, []

    def on_epoch_end(self, trainer, result):
        self.epochs.append(result.epoch)
        if result.epoch == self.raise_at_epoch and self.error is not None:
            raise self.error

    def on_fit_end(self, trainer, outcome):
        self.outcome = outcome


@pytest.mark.parametrize("error, outcome", [(None, "completed"), (PruneTrial("median"), "pruned"),
                                            (RuntimeError("disk full"), "failed"),
                                            (KeyboardInterrupt(), "interrupted")])
def test_the_end_of_fit_hook_always_runs_with_the_outcome(splits, error, outcome):
    raiser, watcher = Outcome(0, error), Outcome()
    trainer = _trainer(splits, callbacks=[raiser, watcher])
    if error is None:
        trainer.fit()
    else:
        with pytest.raises(type(error)):
            trainer.fit()
    assert raiser.outcome == watcher.outcome == outcome
    # A prune requested by the first callback still lets the second one see the epoch; a crash does not.
    assert watcher.epochs == {"completed": [0, 1], "pruned": [0]}.get(outcome, [])


def test_a_nan_loss_prunes_the_trial(splits):
    model = create_backbone("test_resnet", splits.num_classes)
    with torch.no_grad():
        model.fc.weight.fill_(math.nan)
    trainer = _trainer(splits, model=model)
    with pytest.raises(NonFiniteError, match="non-finite training loss"):
        trainer.fit()
    assert issubclass(NonFiniteError, PruneTrial)


def test_linear_probe_caches_features_and_matches_the_uncached_run(splits):
    """The cached path (backbone run once per trial) trains the head to the same result as the per-epoch path."""
    results = {}
    for cache in (True, False):
        trainer = _trainer(splits, "linear_probe", augment=[], cache_features=cache, max_batches=None)
        history = trainer.fit()
        results[cache] = (history, trainer.model.get_classifier().weight.detach().clone())
    assert all(r.features_cached for r in results[True][0])
    assert not any(r.features_cached for r in results[False][0])
    assert torch.allclose(results[True][1], results[False][1], atol=1e-5)
    assert results[True][0][-1].val_metric == pytest.approx(results[False][0][-1].val_metric)


def test_a_trainer_resumed_from_its_state_ends_bit_for_bit_like_an_uninterrupted_one(splits):
    from tlkit.engine.checkpoint import rng_state, set_rng_state

    whole = _trainer(splits, "gradual", epochs=4)
    whole.fit()
    first = _trainer(splits, "gradual", epochs=4)
    stop = Outcome(1, KeyboardInterrupt())
    first.callbacks = [stop]
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    weights, state, rng = first.model.state_dict(), first.state_dict(), rng_state()
    second = _trainer(splits, "gradual", epochs=4)
    second.model.load_state_dict(weights)
    second.load_state_dict(state)
    set_rng_state(rng)
    second.fit()
    assert [r.val_metric for r in second.history] == [r.val_metric for r in whole.history]
    assert all(torch.equal(a, b) for a, b in zip(second.model.state_dict().values(),
                                                 whole.model.state_dict().values()))

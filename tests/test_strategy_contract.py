"""The strategy contract kit (``tlkit.testing.check_strategy``): every shipped strategy keeps the contract, and a
strategy that breaks it is caught, with the rule it breaks named. Fast: timm's tiny models, one step per epoch."""
from __future__ import annotations

import pytest
import torch
from optuna.distributions import IntDistribution

from tlkit import Strategy
from tlkit.models.backbones import layer_groups
from tlkit.strategies import list_strategies
from tlkit.testing import CONTRACT_BACKBONES, StrategyContractError, check_strategy


@pytest.mark.parametrize("name", list_strategies())
def test_every_shipped_strategy_keeps_the_contract(name: str) -> None:
    check_strategy(name)


class TrainsAll(Strategy):
    """A correct base for the broken ones below: everything trains."""

    def lr_scales(self, epoch: int) -> list[float]:
        return [1.0] * self.num_groups


def test_a_correct_strategy_outside_the_registry_passes() -> None:
    check_strategy(TrainsAll, backbones=CONTRACT_BACKBONES[:2], epochs=1)


class DetachedStem(TrainsAll):
    """Says the stem trains but cuts it off the backward pass (a memory saving gone wrong)."""

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        first = next(n for n in layer_groups(model)[0].params if "." in n).rpartition(".")[0]  # a module's
        model.get_submodule(first).register_forward_hook(lambda module, args, out: out.detach())
        return model


class LearnedPenalty(TrainsAll):
    """Keeps a trainable weight of its own, outside the model: no param group holds it, so it never trains."""

    def __init__(self, num_groups: int, epochs: int, **params: object) -> None:
        super().__init__(num_groups, epochs, **params)
        self.weight = torch.nn.Parameter(torch.tensor(1e-3))

    def loss_term(self, model: torch.nn.Module) -> torch.Tensor | None:
        return self.weight * sum(p.pow(2).sum() for p in model.parameters())


class UnfreezesBehindThePlan(Strategy):
    """Probes the head only, but its penalty switches every parameter back on."""

    def lr_scales(self, epoch: int) -> list[float]:
        return self._frozen_below(self.num_groups - 1)

    def loss_term(self, model: torch.nn.Module) -> torch.Tensor | None:
        for p in model.parameters():
            p.requires_grad_(True)
        return None


class BadSearchSpace(TrainsAll):
    """Searches a parameter it does not take, with a range that is not a distribution."""

    @classmethod
    def search_space(cls, num_groups: int, epochs: int) -> dict:
        return {"depth": (1, num_groups), "lr": IntDistribution(1, 2)}


class RangeTooWide(Strategy):
    """Searches a range one end of which its own constructor refuses: some trials would crash."""

    defaults = {"n_groups": 1}

    def __init__(self, num_groups: int, epochs: int, **params: object) -> None:
        super().__init__(num_groups, epochs, **params)
        if not 1 <= self.params["n_groups"] < num_groups:
            raise ValueError(f"n_groups must be in [1, {num_groups - 1}] but got {self.params['n_groups']}.")

    @classmethod
    def search_space(cls, num_groups: int, epochs: int) -> dict:
        return {"n_groups": IntDistribution(0, num_groups - 1)}

    def lr_scales(self, epoch: int) -> list[float]:
        return self._frozen_below(self.num_groups - 1 - self.params["n_groups"])


class FreezesEverything(TrainsAll):
    def lr_scales(self, epoch: int) -> list[float]:
        return [0.0] * self.num_groups


class MergesInPlace(TrainsAll):
    """Exports by changing the model being trained."""

    def export_model(self, model: torch.nn.Module) -> torch.nn.Module:
        with torch.no_grad():
            model.get_classifier().weight.mul_(0.5)
        return model


@pytest.mark.parametrize("broken, rule", [
    (DetachedStem, "got no gradient from a training step"),
    (LearnedPenalty, "in no optimizer param group"),
    (UnfreezesBehindThePlan, "something changes requires_grad behind the plan"),
    (BadSearchSpace, "not a FloatDistribution, IntDistribution or CategoricalDistribution"),
    (BadSearchSpace, "a train field"),
    (RangeTooWide, "can give {'n_groups': 0}, but then: ValueError: n_groups must be in"),
    (FreezesEverything, "nothing trains"),
    (MergesInPlace, "export_model changed the model being trained"),
])
def test_a_broken_strategy_fails_with_the_rule_it_breaks(broken: type[Strategy], rule: str) -> None:
    with pytest.raises(StrategyContractError) as caught:
        check_strategy(broken, backbones=("test_resnet", "test_vit"), epochs=2)
    assert any(rule in p for p in caught.value.problems), str(caught.value)
    assert f"Strategy {broken.__name__!r} breaks the strategy contract" in str(caught.value)


def test_the_kit_names_the_backbone_epoch_and_group() -> None:
    with pytest.raises(StrategyContractError) as caught:
        check_strategy(DetachedStem, backbones=("test_resnet",), epochs=1)
    assert caught.value.problems[0].startswith("test_resnet (epoch 0): ")
    assert "group 0 (conv1+bn1)" in caught.value.problems[0]


def test_a_name_that_is_no_strategy_is_refused() -> None:
    with pytest.raises(Exception, match="lastn"):
        check_strategy("lastn")
    with pytest.raises(TypeError, match="Strategy subclass"):
        check_strategy(torch.nn.Linear)  # type: ignore[arg-type]

"""The one trial runner: a plain spec in, a result out, resumable, replayable, and free of Optuna."""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import numpy as np
import torch
from safetensors.torch import load_file

import tlkit
from tlkit.data.tensors import make_splits
from tlkit.data.datasets import load_dataset
from tlkit.config.experiment import Runtime, Train
from tlkit.engine.runner import TrialSpec, read_outcome, run_trial
from tlkit.engine.loop import Callback, PruneTrial
from tlkit.testing import KillAt

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits():
    train, test = load_dataset("digits")
    return make_splits(train, test, classes=[5, 6, 7], val_fraction=0.25, seed=0, image_size=16,
                       train_per_class=40)


def _spec(folder: Path, strategy: str = "gradual", epochs: int = 3, **recipe) -> TrialSpec:
    return TrialSpec(backbone="test_resnet", strategy=strategy, params={}, metric="accuracy", seed=3,
                     recipe=Train(epochs=epochs, batch_size=16, image_size=16, **recipe), folder=folder)


def test_a_trial_runs_records_its_outcome_and_keeps_only_its_best_weights(tmp_path, splits):
    result = run_trial(_spec(tmp_path / "t"), splits, CPU)
    assert result.state == "COMPLETE" and result.epochs_run == 3 and not result.replayed
    assert result.value == max(h["val_metric"] for h in result.history)
    assert result.best_epoch == max(range(3), key=lambda e: (result.history[e]["val_metric"], -e))
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["best.safetensors", "outcome.json",
                                                                 "trial.json"]
    assert json.loads((tmp_path / "t" / "outcome.json").read_text())["value"] == result.value
    trial = json.loads((tmp_path / "t" / "trial.json").read_text())
    assert trial["seed"] == 3 and trial["strategy"].startswith("gradual(") and trial["groups"][-1] == "head"
    assert 0 < result.trainable_params < result.total_params  # 3 epochs unfreeze 2 of 5 body groups


def test_a_finished_trial_is_replayed_not_retrained(tmp_path, splits, monkeypatch):
    first = run_trial(_spec(tmp_path / "t"), splits, CPU)
    monkeypatch.setattr(tlkit.engine.runner.Trainer, "fit", lambda self: pytest.fail("trained again"))
    again = run_trial(_spec(tmp_path / "t"), splits, CPU)
    assert again.replayed and again.value == first.value and again.history == first.history


def test_a_killed_trial_resumes_from_its_checkpoint_to_the_same_result(tmp_path, splits):
    whole = run_trial(_spec(tmp_path / "whole"), splits, CPU)
    with pytest.raises(KeyboardInterrupt):
        run_trial(_spec(tmp_path / "killed"), splits, CPU, callbacks=[KillAt(epoch=2)])
    assert read_outcome(tmp_path / "killed") is None
    resumed = run_trial(_spec(tmp_path / "killed"), splits, CPU)
    assert resumed.resumed_from_epoch == 2 and not resumed.replayed
    assert resumed.history == [{**h, "images_per_s": r["images_per_s"], "seconds": r["seconds"]}
                               for h, r in zip(whole.history, resumed.history)]
    a, b = load_file(str(tmp_path / "whole/best.safetensors")), load_file(str(tmp_path / "killed/best.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("recipe", [{"augment": ["randaugment", "mixup"]}, {"augment": "trivialaugment+cutmix"},
                                    {"ema_decay": 0.9}], ids=["randaugment+mixup", "trivialaugment+cutmix", "ema"])
def test_a_killed_trial_with_a_new_recipe_piece_resumes_to_the_same_result(tmp_path, splits, recipe):
    """Their draws are seeded by (trial seed, epoch, batch) and the EMA weights travel in the checkpoint: a resumed
    trial equals the uninterrupted one to the bit; ``full_finetune`` so the augmented images reach the model."""
    whole = run_trial(_spec(tmp_path / "whole", strategy="full_finetune", **recipe), splits, CPU)
    torch.manual_seed(123), np.random.seed(123)  # another process's global RNG state: no draw may depend on it
    with pytest.raises(KeyboardInterrupt):
        run_trial(_spec(tmp_path / "killed", strategy="full_finetune", **recipe), splits, CPU,
                  callbacks=[KillAt(epoch=2)])
    resumed = run_trial(_spec(tmp_path / "killed", strategy="full_finetune", **recipe), splits, CPU)
    assert resumed.resumed_from_epoch == 2
    assert resumed.history == [{**h, "images_per_s": r["images_per_s"], "seconds": r["seconds"]}
                               for h, r in zip(whole.history, resumed.history)]
    a, b = load_file(str(tmp_path / "whole/best.safetensors")), load_file(str(tmp_path / "killed/best.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = run_trial(_spec(tmp_path / "plain", strategy="full_finetune"), splits, CPU)
    assert [h["val_loss"] for h in plain.history] != [h["val_loss"] for h in whole.history], "it did something"


def test_with_ema_the_averaged_weights_are_validated_and_kept_as_the_best(tmp_path, splits):
    from tlkit.engine.loop import Trainer

    seen = {}

    class Keep(Callback):
        def on_epoch_end(self, trainer: Trainer, result):
            if trainer.best_epoch == result.epoch:
                seen["ema"] = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
                seen["model"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    run_trial(_spec(tmp_path / "t", strategy="full_finetune", ema_decay=0.5), splits, CPU, callbacks=[Keep()])
    best = load_file(str(tmp_path / "t/best.safetensors"))
    assert all(torch.equal(best[k], seen["ema"][k]) for k in best)
    assert not all(torch.equal(best[k], seen["model"][k]) for k in best if best[k].is_floating_point())


def test_a_prune_request_and_a_diverging_loss_end_as_pruned(tmp_path, splits):
    class PruneAtOne(Callback):
        def on_epoch_end(self, trainer, result):
            if result.epoch == 1:
                raise PruneTrial("MedianPruner at epoch 1")

    pruned = run_trial(_spec(tmp_path / "p"), splits, CPU, callbacks=[PruneAtOne()])
    assert (pruned.state, pruned.reason, pruned.epochs_run, pruned.value) == \
        ("PRUNED", "MedianPruner at epoch 1", 2, None)
    assert read_outcome(tmp_path / "p").state == "PRUNED"
    diverged = run_trial(_spec(tmp_path / "d", strategy="full_finetune", lr=1e12, optimizer="sgd"), splits, CPU)
    assert diverged.state == "PRUNED" and "non-finite" in diverged.reason


def test_a_damaged_outcome_is_set_aside_and_the_trial_runs_again(tmp_path, splits, caplog):
    first = run_trial(_spec(tmp_path / "t", epochs=2), splits, CPU)
    (tmp_path / "t" / "outcome.json").write_text("{not json")
    again = run_trial(_spec(tmp_path / "t", epochs=2), splits, CPU)
    assert not again.replayed and again.value == first.value
    assert (tmp_path / "t" / "outcome.json.bad").is_file() and "set aside" in caplog.text


def test_the_runner_imports_nothing_of_optuna():
    """Optuna stays at the edge (tlkit.search): the runner and the loop it drives never import it."""
    root = Path(tlkit.__file__).parent
    for module in ("engine/runner.py", "engine/loop.py", "engine/checkpoint.py", "models/backbones.py",
                   "data/tensors.py"):
        tree = ast.parse((root / module).read_text())
        imported = {n.name for node in ast.walk(tree) if isinstance(node, ast.Import) for n in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {m for m in imported if m.split(".")[0] == "optuna"}, module


def test_a_kill_between_the_last_epoch_and_its_outcome_reruns_only_that_epoch(tmp_path, splits, monkeypatch):
    """The last epoch writes no checkpoint (its outcome, written next, ends the trial; retention would delete it at
    once): a kill in between re-runs that epoch from the one before, to the same result."""
    whole = run_trial(_spec(tmp_path / "whole"), splits, CPU)

    def killed(spec, result):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(tlkit.engine.runner, "_finish", killed)
        with pytest.raises(KeyboardInterrupt):
            run_trial(_spec(tmp_path / "killed"), splits, CPU)
    assert sorted(p.name for p in (tmp_path / "killed").glob("epoch_*.pt")) == ["epoch_0000.pt", "epoch_0001.pt"]
    resumed = run_trial(_spec(tmp_path / "killed"), splits, CPU)
    assert resumed.resumed_from_epoch == 2
    assert resumed.history == [{**h, "images_per_s": r["images_per_s"], "seconds": r["seconds"]}
                               for h, r in zip(whole.history, resumed.history)]
    a, b = load_file(str(tmp_path / "whole/best.safetensors")), load_file(str(tmp_path / "killed/best.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_best_weights_are_a_second_name_for_their_epoch_checkpoint_not_a_second_write(tmp_path, splits):
    spec = dataclasses.replace(_spec(tmp_path / "t", strategy="full_finetune", epochs=2),
                               runtime=Runtime(keep_checkpoints="last"))
    result = run_trial(spec, splits, CPU)
    best = tmp_path / "t" / "best.safetensors"
    assert best.samefile(tmp_path / "t" / f"epoch_{result.best_epoch:04d}.safetensors")
    with open(best, "rb") as fh:  # and it says which epoch it is, as before
        assert f'"epoch":"{result.best_epoch}"' in fh.read(4096).decode("latin-1")


# --- how often a trial checkpoints: every CHECKPOINT_EVERY_S seconds of training, not every epoch ------------------

class _Slow(Callback):
    """Makes every epoch count as ``seconds`` of training (the checkpointer reads the trainer's elapsed time)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_epoch_end(self, trainer, result):
        trainer.elapsed += self.seconds


def _writes(monkeypatch) -> list[str]:
    """The names of the weights files the runner writes, in order."""
    import tlkit.engine.checkpoint

    written: list[str] = []
    real = tlkit.engine.checkpoint.save_tensors

    def spy(path, tensors, metadata=None):
        written.append(Path(path).name)
        real(path, tensors, metadata)

    monkeypatch.setattr(tlkit.engine.checkpoint, "save_tensors", spy)
    monkeypatch.setattr(tlkit.engine.runner, "save_tensors", spy)
    return written


def test_short_epochs_are_not_checkpointed_and_the_best_weights_are_written_once(tmp_path, splits, monkeypatch):
    """With the real default (10 s) a trial of short epochs writes one file of weights, its best, at the end; the
    result and the weights are those of a trial checkpointed every epoch."""
    every = run_trial(_spec(tmp_path / "every", strategy="linear_probe", epochs=4), splits, CPU)
    monkeypatch.setattr(tlkit.engine.runner, "CHECKPOINT_EVERY_S", 10.0)
    written = _writes(monkeypatch)
    lazy = run_trial(_spec(tmp_path / "lazy", strategy="linear_probe", epochs=4), splits, CPU)
    assert written == ["best.safetensors"]
    assert lazy.value == every.value and lazy.best_epoch == every.best_epoch
    a, b = load_file(str(tmp_path / "every/best.safetensors")), load_file(str(tmp_path / "lazy/best.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_is_due_after_its_seconds_of_training_and_a_kill_resumes_from_it(tmp_path, splits,
                                                                                      monkeypatch):
    """Epochs of 6 s with checkpoints every 10 s: epoch 1 is checkpointed (12 s), epochs 0 and 2 are not; a kill in
    epoch 3 resumes from epoch 1's checkpoint and re-runs epoch 2, to the uninterrupted result."""
    whole = run_trial(_spec(tmp_path / "whole", epochs=4), splits, CPU)
    monkeypatch.setattr(tlkit.engine.runner, "CHECKPOINT_EVERY_S", 10.0)
    with pytest.raises(KeyboardInterrupt):
        run_trial(_spec(tmp_path / "killed", epochs=4), splits, CPU, callbacks=[_Slow(6.0), KillAt(epoch=3)])
    assert sorted(p.name for p in (tmp_path / "killed").glob("epoch_*.pt")) == ["epoch_0001.pt"]
    resumed = run_trial(_spec(tmp_path / "killed", epochs=4), splits, CPU)
    assert resumed.resumed_from_epoch == 2
    assert [h["val_metric"] for h in resumed.history] == [h["val_metric"] for h in whole.history]
    a, b = load_file(str(tmp_path / "whole/best.safetensors")), load_file(str(tmp_path / "killed/best.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_kill_before_any_checkpoint_starts_the_trial_again_to_the_same_result(tmp_path, splits, monkeypatch):
    whole = run_trial(_spec(tmp_path / "whole"), splits, CPU)
    monkeypatch.setattr(tlkit.engine.runner, "CHECKPOINT_EVERY_S", 10.0)
    with pytest.raises(KeyboardInterrupt):
        run_trial(_spec(tmp_path / "killed"), splits, CPU, callbacks=[KillAt(epoch=2)])
    assert not list((tmp_path / "killed").glob("*.safetensors"))  # neither a checkpoint nor a best yet
    resumed = run_trial(_spec(tmp_path / "killed"), splits, CPU)
    assert resumed.resumed_from_epoch is None and resumed.history[-1]["val_metric"] == whole.history[-1]["val_metric"]
    a, b = load_file(str(tmp_path / "whole/best.safetensors")), load_file(str(tmp_path / "killed/best.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_spent_time_budget_checkpoints_the_epoch_before_it_stops(tmp_path, splits, monkeypatch):
    from tlkit.engine.runner import TimeUp

    monkeypatch.setattr(tlkit.engine.runner, "CHECKPOINT_EVERY_S", 10.0)
    with pytest.raises(TimeUp):
        run_trial(_spec(tmp_path / "t"), splits, CPU, deadline=0.0)  # spent before the first epoch ends
    assert sorted(p.name for p in (tmp_path / "t").glob("epoch_*.pt")) == ["epoch_0000.pt"]
    assert run_trial(_spec(tmp_path / "t"), splits, CPU).resumed_from_epoch == 1


def test_a_pruned_trial_keeps_the_best_weights_it_held_in_memory(tmp_path, splits, monkeypatch):
    class PruneAtTwo(Callback):
        def on_epoch_end(self, trainer, result):
            if result.epoch == 2:
                raise PruneTrial("pruned at epoch 2")

    monkeypatch.setattr(tlkit.engine.runner, "CHECKPOINT_EVERY_S", 10.0)
    pruned = run_trial(_spec(tmp_path / "p", epochs=4), splits, CPU, callbacks=[PruneAtTwo()])
    assert pruned.state == "PRUNED" and not list((tmp_path / "p").glob("epoch_*"))
    with open(tmp_path / "p" / "best.safetensors", "rb") as fh:
        assert f'"epoch":"{pruned.best_epoch}"' in fh.read(4096).decode("latin-1")


def test_a_spec_can_carry_the_strategy_class_itself_registered_or_not(tmp_path, splits):
    """The sweep resolves a strategy once and hands the class on; a user's own unregistered class runs too."""

    class HeadOnly(tlkit.Strategy):
        name = "head_only_unregistered"

        def lr_scales(self, epoch: int) -> list[float]:
            return [0.0] * (self.num_groups - 1) + [1.0]

    assert "head_only_unregistered" not in tlkit.list_strategies()
    result = run_trial(dataclasses.replace(_spec(tmp_path / "t", epochs=1), strategy=HeadOnly), splits, CPU)
    trial = json.loads((tmp_path / "t" / "trial.json").read_text())
    assert result.state == "COMPLETE" and trial["strategy"].startswith("head_only_unregistered")
    assert result.trainable_params < result.total_params / 2

"""Frozen features computed once per (weights, images, preprocessing): reused across trials, keyed by content,
identical to computing them again, and set aside when damaged."""
from __future__ import annotations

import pytest
import torch

import tlkit.engine.evaluate
import tlkit.engine.features
from tlkit.models.backbones import create_backbone, layer_groups, preprocessing
from tlkit.data.tensors import make_splits
from tlkit.data.datasets import load_dataset
from tlkit.config.experiment import Train
from tlkit.engine.features import feature_dir, features_key
from tlkit.metrics import get_metric
from tlkit.strategies import create_strategy
from tlkit.engine.loop import Trainer


@pytest.fixture(scope="module")
def splits():
    train, test = load_dataset("digits")
    return make_splits(train, test, classes=[0, 1, 2], val_fraction=0.3, seed=0, image_size=16,
                       train_per_class=30)


def _probe(splits, seed=0, body_seed=0):
    torch.manual_seed(body_seed)
    model = create_backbone("test_resnet", splits.num_classes)
    groups = layer_groups(model)
    strategy = create_strategy("linear_probe", num_groups=len(groups), epochs=2)
    recipe = Train(epochs=2, batch_size=16, image_size=16, augment=[])
    return Trainer(model, groups, strategy, splits, recipe, get_metric("accuracy"), seed=seed,
                   **preprocessing(model))


def test_the_key_follows_the_body_the_images_and_the_feeding_not_the_head(splits):
    model = create_backbone("test_resnet", 3)
    kwargs = {"batch_size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3, "image_size": 16, "device": "cpu"}
    key = features_key(model, splits.train, kwargs)
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    assert features_key(model, splits.train, kwargs) == key  # a new head sees the same features
    assert features_key(model, splits.val, kwargs) != key
    assert features_key(model, splits.train, {**kwargs, "image_size": 32}) != key
    with torch.no_grad():
        model.layer1[0].conv1.weight.mul_(1.01)
    assert features_key(model, splits.train, kwargs) != key


def test_a_second_trial_reads_the_features_the_first_computed(splits, tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path))
    calls = []
    real = tlkit.engine.evaluate.predict

    def counting(forward, data, **kwargs):
        if not isinstance(data, tuple):  # images through the body; a tuple is cached features through the head
            calls.append(len(data))
        return real(forward, data, **kwargs)

    for module in (tlkit.engine.evaluate, tlkit.engine.features):  # evaluation, and the features it caches
        monkeypatch.setattr(module, "predict", counting)
    first = _probe(splits, seed=0)
    first.fit()
    assert len(calls) == 2 and len(list(feature_dir().glob("*.pt"))) == 2  # train and val, once
    second = _probe(splits, seed=5)  # another trial: another head and batch order, the same frozen body
    second.fit()
    assert calls == [63, 27, 1], "the second trial computed no features (one image checks the files' shape)"
    other_body = _probe(splits, seed=5, body_seed=1)
    other_body.fit()
    assert calls[3:] == [63, 27] and len(list(feature_dir().glob("*.pt"))) == 4
    # Reading them back gives exactly what computing them again gives.
    uncached = _probe(splits, seed=5)
    uncached.features.on_disk = False
    uncached.fit()
    assert [r.val_metric for r in uncached.history] == [r.val_metric for r in second.history]
    assert torch.equal(uncached.model.fc.weight, second.model.fc.weight)


def test_a_damaged_feature_file_is_set_aside_and_computed_again(splits, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path))
    _probe(splits).fit()
    for path in feature_dir().glob("*.pt"):
        path.write_bytes(path.read_bytes()[:50])
    again = _probe(splits)
    again.fit()
    assert len(list(feature_dir().glob("*.pt.bad"))) == 2 and "set aside" in caplog.text
    assert len(list(feature_dir().glob("*.pt"))) == 2


@pytest.mark.parametrize("tamper", ["narrower", "fewer_rows", "float64", "other_labels", "not_a_dict"])
def test_a_feature_file_of_another_shape_is_set_aside_and_computed_again(splits, tmp_path, monkeypatch, caplog,
                                                                         tamper):
    """A file that loads but is not what computing gives (edited, or left by another version) would fail every later
    trial with a shape mismatch: it is set aside like a damaged one."""
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path))
    first = _probe(splits)
    first.fit()
    for path in feature_dir().glob("*.pt"):
        blob = torch.load(path, weights_only=True)
        features, labels = blob["features"], blob["labels"]
        blob = {"narrower": {"features": features[:, :3], "labels": labels},
                "fewer_rows": {"features": features[:-1], "labels": labels[:-1]},
                "float64": {"features": features.double(), "labels": labels},
                "other_labels": {"features": features, "labels": labels.flip(0)},
                "not_a_dict": [features, labels]}[tamper]
        torch.save(blob, path)
    again = _probe(splits)
    again.fit()
    assert len(list(feature_dir().glob("*.pt.bad"))) == 2 and "cannot be used" in caplog.text
    assert [r.val_metric for r in again.history] == [r.val_metric for r in first.history]
    assert all(torch.load(p, weights_only=True)["features"].shape[1] > 3 for p in feature_dir().glob("*.pt"))


def test_damaged_features_in_a_read_only_cache_only_cost_speed(splits, tmp_path, monkeypatch, caplog, make_read_only):
    """The cache's promise: a file that cannot be set aside (or written) is a warning; the trial trains as usual."""
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path))
    first = _probe(splits)
    first.fit()
    for path in feature_dir().glob("*.pt"):
        path.write_bytes(path.read_bytes()[:50])
    make_read_only(feature_dir())
    again = _probe(splits)
    again.fit()
    assert [r.val_metric for r in again.history] == [r.val_metric for r in first.history]
    assert "stays where it is" in caplog.text and not list(feature_dir().glob("*.bad"))

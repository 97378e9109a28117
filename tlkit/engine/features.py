"""Frozen-backbone features, computed once per (weights, images, preprocessing) and kept on disk.

While only the head trains, the backbone's pre-logit features of the un-augmented train and val images are a fixed
function of three things: the frozen body's weights, the images, and how they are fed (size, normalisation,
precision). A linear probe's every trial, a repeat, the probe phase of LP-FT and the first epochs of gradual
unfreezing of the same backbone all need the same features, so they are computed once and kept under
``$TLKIT_CACHE/features/<key>.pt``, the key a SHA-256 of those three things (any change gives a new key; the folder
is safe to delete). The features are the same bits as computing them again, so cached and uncached trials agree.
The same cache holds the output of a frozen prefix (``tlkit.engine.prefix``): the frozen groups below the trainable
ones, when the images are not augmented.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from tlkit.data.tensors import Splits, cache_dir
from tlkit.engine.evaluate import eval_mode, predict
from tlkit.errors import describe_error
from tlkit.utils.files import set_aside, torch_save, write_cache

__all__ = ["FeatureCache", "features_key", "feature_dir"]


def feature_dir() -> Path:
    return cache_dir() / "features"


def _tensor_digest(digest: Any, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too


def features_key(model: torch.nn.Module, split: Any, predict_kwargs: dict[str, Any]) -> str:
    """The identity of one split's features: what computes them (a model's body, without its head; or a frozen
    prefix cut out of a model, ``tlkit.engine.prefix``, whose code says where the cut is): its layers as printed,
    weights and buffers; the images and labels; and how they are fed to the model."""
    cut = isinstance(model, torch.fx.GraphModule)
    head = set() if cut else {id(p) for p in model.get_classifier().parameters()}
    digest = hashlib.sha256(type(model).__qualname__.encode())
    digest.update((model.code if cut else repr(model)).encode())
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in head:
            digest.update(name.encode())
            _tensor_digest(digest, tensor)
    if getattr(split, "mapped", False):  # the store's identity and the rows, not gigabytes of pixels
        digest.update(f"{split.source}:{tuple(split.images.shape)}:{split.size}".encode())
        _tensor_digest(digest, split.index if split.index is not None else torch.arange(len(split.images)))
    else:
        _tensor_digest(digest, split.images)
    _tensor_digest(digest, split.labels)
    fed = {k: v for k, v in predict_kwargs.items() if k != "device"}
    digest.update(repr(sorted(fed.items())).encode())
    digest.update(str(torch.device(predict_kwargs.get("device", "cpu")).type).encode())
    return digest.hexdigest()[:24]


class FeatureCache:
    """What the trainable part of the model sees of the un-augmented train and val splits, computed once (in memory,
    and on disk when ``on_disk``): the frozen backbone's pre-logit features while only the head trains, or the
    output of a frozen ``prefix`` (``tlkit.engine.prefix``). ``clear()`` once they go stale."""

    def __init__(self, model: torch.nn.Module, splits: Splits, on_disk: bool = True,
                 prefix: torch.fx.GraphModule | None = None, **predict_kwargs: Any) -> None:
        self.model = model
        self.prefix = prefix
        self.splits = splits
        self.on_disk = on_disk
        self.predict_kwargs = predict_kwargs
        self._features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._feature: tuple[tuple[int, ...], torch.dtype] | None = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prefix is not None:
            return self.prefix(x)
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def get(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self._features:
            self._features[split] = self._load_or_compute(getattr(self.splits, split))
        return self._features[split]

    def clear(self) -> None:
        self._features.clear()
        self._feature = None

    def _load_or_compute(self, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        key = features_key(self.model if self.prefix is None else self.prefix, data, self.predict_kwargs)
        path = feature_dir() / f"{key}.pt" if self.on_disk else None
        cached = self._load(path, data) if path is not None and path.is_file() else None
        if cached is not None:
            return cached
        features, labels = self._compute(data)
        if path is not None:
            blob = {"features": features.cpu(), "labels": labels.cpu()}
            write_cache(path, lambda tmp: torch_save(blob, tmp), "features")
        return features, labels

    def _compute(self, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with eval_mode(self.model):
            return predict(self._forward, data, **self.predict_kwargs)

    def _load(self, path: Path, data: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached features, or None once a file that cannot be read, or is not what computing them would give,
        is set aside (a damaged cache file is computed again, never trusted: a wrong shape would otherwise fail
        every later trial)."""
        device = torch.device(self.predict_kwargs.get("device", "cpu"))
        try:
            blob = torch.load(path, map_location=device, weights_only=True)
            self._check(blob, data)
        except Exception as err:  # noqa: BLE001 - truncated, corrupt, or another shape
            set_aside(path, f"cached features {path} cannot be used ({describe_error(err)})", "computed again")
            return None
        return blob["features"], blob["labels"]

    def _check(self, blob: Any, data: Any) -> None:
        """Raise ValueError unless ``blob`` holds features of the shape and dtype computing them gives (one image
        through the frozen part says which) and exactly the split's labels."""
        if not isinstance(blob, dict) or not all(isinstance(blob.get(k), torch.Tensor) for k in ("features", "labels")):
            raise ValueError("not a dict of 'features' and 'labels' tensors")
        features, labels = blob["features"], blob["labels"]
        shape, dtype = self._one_feature(data)
        want = (len(data), *shape)
        if tuple(features.shape) != want or features.dtype != dtype:
            raise ValueError(f"features {tuple(features.shape)} {features.dtype}, but computing them gives {want} "
                             f"{dtype}")
        if labels.dtype != data.labels.dtype or not torch.equal(labels.cpu(), data.labels.cpu()):
            raise ValueError("its labels are not the split's")

    def _one_feature(self, data: Any) -> tuple[tuple[int, ...], torch.dtype]:
        """The shape and dtype of one image's features, from one image through the frozen part (once per cache:
        every split gives the same)."""
        if self._feature is None:
            one, _ = self._compute(data.subset(torch.arange(1)))
            self._feature = tuple(one.shape[1:]), one.dtype
        return self._feature

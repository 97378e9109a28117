"""Training augmentation beyond crop and flip: torchvision's per-image policies and timm's Mixup/CutMix, how they
are named and searched, and that their draws are seeded (the same epoch augments the same way, the global RNGs are
left alone)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from optuna.distributions import CategoricalDistribution, IntDistribution
from torchvision.transforms import v2

from tlkit.config.experiment import Experiment, Train
from tlkit.data.augment import augment_batch, make_mixer, mix_batch
from tlkit.errors import TlkitError

POLICIES = ["random_resized_crop", "randaugment:12", "trivialaugment"]


def _same_images(n: int = 16) -> torch.Tensor:
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return image.expand(n, -1, -1, -1).contiguous()


def test_torchvision_v2_draws_once_per_batch_which_is_why_tlkit_calls_it_per_image():
    images = _same_images()
    torch.manual_seed(0)
    whole = v2.RandomResizedCrop(16, antialias=True)(images)
    assert all(torch.equal(whole[0], whole[i]) for i in range(len(whole))), "one crop for the whole batch"
    ours = augment_batch(images, ["random_resized_crop"], 4, torch.Generator().manual_seed(0))
    assert len({ours[i].numpy().tobytes() for i in range(len(ours))}) > 1, "one crop per image"


@pytest.mark.parametrize("name", POLICIES)
def test_each_policy_draws_per_image_from_the_batch_generator_and_leaves_the_global_rng_alone(name):
    images = _same_images()
    before = torch.get_rng_state()
    a = augment_batch(images, [name, "hflip"], 4, torch.Generator().manual_seed(1))
    b = augment_batch(images, [name, "hflip"], 4, torch.Generator().manual_seed(1))
    c = augment_batch(images, [name, "hflip"], 4, torch.Generator().manual_seed(2))
    assert torch.equal(before, torch.get_rng_state())
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({a[i].numpy().tobytes() for i in range(len(a))}) > 1


def test_crop_and_flip_alone_draw_what_they_always_did():
    """Adding the policies did not move the generator's draws of a crop+hflip trial: the same numbers as before."""
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    gen = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 5, (2,), generator=gen), torch.randint(0, 5, (2,), generator=gen)
    flip = torch.rand(2, generator=gen) < 0.5
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    expected = torch.stack([padded[i, :, dy[i]:dy[i] + 4, dx[i]:dx[i] + 4] for i in range(2)])
    expected = torch.where(flip[:, None, None, None], expected.flip(3), expected)
    assert torch.equal(augment_batch(images, ["crop", "hflip"], 2, torch.Generator().manual_seed(0)), expected)


@pytest.mark.parametrize("augment", [["mixup"], ["cutmix:0.5"], ["mixup:0.2", "cutmix"]])
def test_mixing_gives_seeded_soft_targets_with_label_smoothing(augment):
    mixer = make_mixer(augment, num_classes=5, label_smoothing=0.1)
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 5
    state = np.random.get_state()[1].copy()
    (xa, ta), (xb, tb) = mix_batch(mixer, x.clone(), y, (0, 1, 2)), mix_batch(mixer, x.clone(), y, (0, 1, 2))
    assert np.array_equal(state, np.random.get_state()[1]), "NumPy's global RNG is restored"
    assert torch.equal(xa, xb) and torch.equal(ta, tb)
    assert ta.shape == (8, 5) and torch.allclose(ta.sum(1), torch.ones(8))
    assert ta.min() >= 0.1 / 5 - 1e-6, "label smoothing reaches every class"
    assert any(not torch.equal(*mix_batch(mixer, x.clone(), y, (0, 1, s))) for s in range(3, 8))
    odd_x, odd_t = mix_batch(mixer, x[:7].clone(), y[:7], (0, 1, 2))
    assert len(odd_x) == len(odd_t) == 6, "an odd batch leaves its last image out"
    assert make_mixer(["crop", "randaugment"], 5, 0.1) is None


def test_names_values_and_the_searchable_string_form():
    assert Train(augment="randaugment:12+mixup:0.2").augment == ["randaugment:12", "mixup:0.2"]
    assert Train(augment="none").augment == [] == Train(augment="").augment
    Experiment(backbones=["test_vit"], strategies=["bitfit"], search={"augment": CategoricalDistribution(
        ["crop+hflip", "randaugment+mixup", "trivialaugment+cutmix:1.0", "none"])})


@pytest.mark.parametrize("augment, message", [
    (["randaugmnt"], r"Unknown augmentation in train\.augment 'randaugmnt'\. Did you mean 'randaugment'"),
    ("crop+flip", r"Unknown augmentation in train\.augment 'flip'\. Did you mean 'hflip'"),
    (["randaugment:31"], r"'randaugment:31': the value of 'randaugment' must be a magnitude, an int in \[0, 30\]"),
    (["random_resized_crop:0"], r"must be the smallest area kept, in \(0, 1\], e\.g\. 'random_resized_crop:0\.08'"),
    (["mixup:x"], r"the value of 'mixup' must be Beta's alpha"),
    (["hflip:1"], r"'hflip' takes none: write 'hflip'"),
    (["mixup", "mixup:0.2"], r"names 'mixup' more than once"),
])
def test_a_wrong_augmentation_is_refused_with_the_fix(augment, message):
    with pytest.raises(TlkitError, match=message):
        Train(augment=augment)


def test_mixing_needs_an_even_batch_fixed_or_searched():
    with pytest.raises(TlkitError, match=r"needs an even train\.batch_size but got 33\. HINT: set train\.batch_size=34"):
        Train(augment=["cutmix"], batch_size=33)
    with pytest.raises(TlkitError, match=r"search can give train\.augment='crop\+mixup' with train\.batch_size=17"):
        Experiment(backbones=["test_vit"], strategies=["bitfit"],
                   search={"augment": CategoricalDistribution(["crop", "crop+mixup"]),
                           "batch_size": IntDistribution(16, 64)})
    Experiment(backbones=["test_vit"], strategies=["bitfit"], train=Train(augment=["mixup"]),
               search={"batch_size": IntDistribution(16, 64, step=16)})


@pytest.mark.parametrize("value, message", [(1.0, r"train\.ema_decay must be None or in \(0, 1\)"),
                                            (0.0, r"train\.ema_decay must be None or in \(0, 1\)")])
def test_ema_decay_is_a_fraction(value, message):
    with pytest.raises(TlkitError, match=message):
        Train(ema_decay=value)


@pytest.mark.slow
def test_a_sweep_searches_augment_lists_given_as_strings(tmp_path):
    """Each trial samples one '+'-joined choice; its recipe (trial.json) holds the list it trained with."""
    import json

    from tlkit.testing import run_tiny_sweep

    choices = ["crop+hflip", "randaugment+mixup:0.2", "none"]
    out = run_tiny_sweep(tmp_path, tmp_path / "cache", strategies=["full_finetune"], trials=3,
                         train={"epochs": 1, "batch_size": 16}, search={"augment": CategoricalDistribution(choices)})
    recipes = [json.loads(p.read_text())["recipe"] for p in out.rglob("trial.json")]
    assert len(recipes) >= 3
    assert all(r["augment"] in ([], ["crop", "hflip"], ["randaugment", "mixup:0.2"]) for r in recipes)

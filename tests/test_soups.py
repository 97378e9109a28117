"""Model soups and ensembles of a cell's trials: the arithmetic by hand, BatchNorm statistics recomputed, the greedy
rule, refusals with their reason, and a real tiny sweep's soups.csv."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from tlkit.data.tensors import ImageSet
from tlkit.engine.soup import WeightSum, greedy_order, greedy_soup, recompute_batchnorm
from tlkit.testing import run_tiny_sweep


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 2), value), "bn.num_batches_tracked": torch.tensor(int(value * 10))}


def test_a_soup_is_the_mean_of_its_ingredients_and_a_soup_of_one_is_that_ingredient():
    one = WeightSum()
    one.add(_state(0.5))
    assert torch.equal(one.mean(_state(0.5))["w"], _state(0.5)["w"])
    three = one.plus(_state(1.0)).plus(_state(3.0))
    assert one.count == 1 and three.count == 3  # plus leaves the sum it started from as it was
    soup = three.mean(_state(0.5))
    torch.testing.assert_close(soup["w"], torch.full((2, 2), 1.5))  # (0.5 + 1 + 3) / 3
    assert soup["w"].dtype == torch.float32 and soup["bn.num_batches_tracked"].item() == 5  # counts: the first's


def test_ingredients_of_different_architectures_are_refused_with_the_reason():
    soup = WeightSum()
    soup.add(_state(1.0))
    with pytest.raises(ValueError, match="not one architecture"):
        soup.add({"other": torch.zeros(2)})


def test_greedy_order_is_best_validation_first_and_minimised_metrics_turn_it():
    assert greedy_order([0.5, 0.9, 0.7, 0.9], maximize=True) == [1, 3, 2, 0]
    assert greedy_order([0.5, 0.9, 0.7], maximize=False) == [0, 2, 1]


def test_the_greedy_soup_keeps_an_ingredient_only_when_validation_does_not_drop(tmp_path):
    paths = []
    for i, value in enumerate([1.0, 3.0, 0.0, 2.0]):
        paths.append(tmp_path / f"{i}.safetensors")
        save_file({"w": torch.full((1,), value)}, str(paths[-1]))
    # validation score of a soup: closeness of its weight to 1.5 (the first ingredient, 1.0, scores -0.5)
    score = lambda weights, n: -abs(float(weights["w"]) - 1.5)  # noqa: E731
    kept, weights, best = greedy_soup(paths, score, maximize=True)
    # +3.0: mean 2.0 scores -0.5 = not worse, kept; +0.0: mean 4/3 scores -0.17, kept; +2.0: mean 1.5 scores 0, kept
    assert kept == [0, 1, 2, 3] and float(weights["w"]) == pytest.approx(1.5) and best == pytest.approx(0.0)
    score_far = lambda weights, n: -abs(float(weights["w"]) - 0.9)  # noqa: E731
    kept, weights, best = greedy_soup(paths, score_far, maximize=True)
    # +3.0: mean 2.0 scores -1.1 < -0.1, dropped; +0.0: mean 0.5 scores -0.4, dropped; +2.0: 1.5, -0.6, dropped
    assert kept == [0] and float(weights["w"]) == 1.0 and best == pytest.approx(-0.1)
    assert best >= score_far({"w": torch.tensor([1.0])}, 1)  # never below its first ingredient


def test_batchnorm_statistics_are_recomputed_on_the_training_images():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5))
    model[1].running_mean.fill_(7.0)
    model[1].running_var.fill_(7.0)
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    train = ImageSet(images, torch.zeros(10, dtype=torch.long), classes=["a"])
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    model.eval()
    assert recompute_batchnorm(model, train, batch_size=4, mean=mean, std=std, device=torch.device("cpu"))
    x = (images.float() / 255 - 0.5) / 0.25
    # momentum=None: the running statistics are the plain average of each batch's (batches of 4, 4 and 2 images)
    batches = [model[0](x[i:i + 4]).detach().transpose(0, 1).flatten(1) for i in (0, 4, 8)]  # channels x values
    torch.testing.assert_close(model[1].running_mean, torch.stack([b.mean(1) for b in batches]).mean(0))
    torch.testing.assert_close(model[1].running_var, torch.stack([b.var(1, unbiased=True) for b in batches]).mean(0))
    assert not model.training and not model[2].training and model[1].momentum == 0.1  # as it was
    assert not recompute_batchnorm(torch.nn.Linear(2, 2), train, batch_size=4, mean=mean, std=std,
                                   device=torch.device("cpu"))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("soups")
    return run_tiny_sweep(tmp, tmp / "cache", strategies=["linear_probe", "last_n", "from_scratch"], trials=3,
                          pretrained=True, source={"data": {"name": "digits", "classes": [0, 1, 2, 3, 4]},
                                                   "train": {"epochs": 2, "batch_size": 32, "image_size": 16}})


def test_a_sweep_makes_each_cells_soups_and_the_report_compares_them(study):
    soups = pd.read_csv(study / "soups.csv")
    lp = soups[soups.strategy == "linear_probe"].set_index("model")
    assert list(lp.index) == ["best trial", "uniform soup", "greedy soup", "ensemble"]
    assert lp.loc["uniform soup", "ingredients"] == 3 and lp.loc["ensemble", "ingredients"] == 3
    assert lp.loc["greedy soup", "val_accuracy"] >= lp.loc["best trial", "val_accuracy"] - 1e-12
    assert lp.loc["ensemble", "params"] == 3 * lp.loc["uniform soup", "params"]
    assert lp.loc["ensemble", "seconds_per_image"] == pytest.approx(3 * lp.loc["best trial", "seconds_per_image"])
    for model in ("uniform soup", "greedy soup", "ensemble"):
        row = lp.loc[model]
        assert row.difference == pytest.approx(lp.loc["best trial", "test_accuracy"] - row.test_accuracy)
        assert row.ci_low <= row.difference <= row.ci_high and row.verdict in (
            "better", "worse", "equivalent", "undecided")
    scratch = soups[soups.strategy == "from_scratch"]
    assert scratch.model.tolist() == ["best trial", "soups"]
    assert "different random weights" in scratch.note.iloc[1]
    assert "## Soups and ensembles" in (study / "report.md").read_text()


def test_a_greedy_soup_of_one_trial_is_that_trial(study):
    storage = f"sqlite:///{study / 'study.db'}"
    for name in ("tiny/test_resnet/linear_probe", "tiny/test_resnet/last_n"):
        s = optuna.load_study(study_name=name, storage=storage)
        greedy, best = s.user_attrs["soups"]["greedy"], s.user_attrs["best_test"]
        runs = {t.number: t.user_attrs["run"] for t in s.trials}
        assert greedy["runs"][0] == runs[s.best_trial.number]  # the best trial goes in first
        if len(greedy["runs"]) == 1:
            assert greedy["val_metric"] == pytest.approx(s.best_value)
            assert greedy["test_metric"] == pytest.approx(best["test_metric"])
            np.testing.assert_array_equal(json.dumps(greedy["predictions"]), json.dumps(best["predictions"]))
        exported = json.loads((study / "best" / "test_resnet" / name.split("/")[-1] / "soup" / "model.json")
                              .read_text())
        assert exported["model"] == "greedy soup" and exported["soup_of_runs"] == greedy["runs"]


def test_load_best_and_predict_take_the_soup(study, tmp_path):
    import subprocess
    import sys

    import tlkit
    from tlkit.errors import TlkitError

    soup = tlkit.load_best(study, "test_resnet", "last_n", model="soup")
    best = tlkit.load_best(study, "test_resnet", "last_n")
    assert soup.tlkit_info["model"] == "greedy soup" and "model" not in best.tlkit_info
    with pytest.raises(TlkitError, match="No greedy soup exported for test_resnet/from_scratch"):
        tlkit.load_best(study, "test_resnet", "from_scratch", model="soup")
    with pytest.raises(TlkitError, match="model must be one of best, soup"):
        tlkit.load_best(study, "test_resnet", "last_n", model="ensemble")
    image = tmp_path / "seven.png"
    from PIL import Image
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(image)
    out = tmp_path / "p.csv"
    proc = subprocess.run([sys.executable, "-m", "tlkit.predict", str(study), str(image), "--backbone", "test_resnet",
                           "--strategy", "last_n", "--model", "soup", "--out", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    x = soup.tlkit_transform.batch([str(image)])
    with torch.no_grad():
        expected = soup.tlkit_info["classes"][int(soup(x).argmax())]
    assert str(pd.read_csv(out).iloc[0, 1]) == str(expected)

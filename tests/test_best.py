"""The best model is one line away: ``tlkit.load_best`` rebuilds each cell's best trial, ready for inference."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import tlkit
from tlkit.data.datasets import load_dataset
from tlkit.predict import main as predict_main
from tlkit.sweep import main
from tlkit.testing import write_experiment

STRATEGIES = ["linear_probe", "last_n"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    exp = write_experiment(tmp, name="export", strategies=STRATEGIES, trials=2,
                           train={"epochs": 2}, runtime={"keep_checkpoints": "last"})
    out = tmp / "results"
    assert main([str(exp), "--out", str(out), "--quiet"]) == 0
    return exp, out


def _best_run(out, strategy: str) -> int:
    summary = pd.read_csv(out / "summary.csv").set_index("strategy")
    trials = pd.read_csv(out / "trials.csv").set_index(["strategy", "trial"])
    return int(trials.loc[(strategy, summary.best_trial[strategy]), "run"])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_load_best_returns_the_best_trials_model_in_eval_mode(study, strategy):
    exp, out = study
    model = tlkit.load_best(out, backbone="test_resnet", strategy=strategy)
    assert isinstance(model, torch.nn.Module) and not model.training
    assert not any(m.training for m in model.modules())
    best = out / f"trials/test_resnet/{strategy}/trial_{_best_run(out, strategy):04d}/best.safetensors"
    expected = load_file(str(best))
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    info = model.tlkit_info
    assert (info["backbone"], info["num_classes"], info["image_size"]) == ("test_resnet", 5, 16)
    assert len(info["mean"]) == len(info["std"]) == 3 and len(info["classes"]) == 5
    assert json.loads((out / f"best/test_resnet/{strategy}/model.json").read_text()) == info


def _test_images(folder: Path) -> list[tuple[Path, int]]:
    """The study's test split as the files a user would have: digits 5-9 as 8x8 PNGs, with their labels."""
    _, test = load_dataset("digits")
    keep = [(i, int(y) - 5) for i, y in enumerate(test.labels) if y >= 5]
    folder.mkdir()
    files = []
    for n, (i, label) in enumerate(keep):
        path = folder / f"{n:04d}.png"
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(path)
        files.append((path, label))
    return files


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_exported_preprocessing_reproduces_the_reported_test_score(study, strategy, tmp_path):
    """tlkit.predict on the test images as files, through model.tlkit_transform, gets exactly the summary's test
    accuracy: the preprocessing a user gets is the one the model was trained and scored with."""
    exp, out = study
    files = _test_images(tmp_path / "images")
    csv = tmp_path / "predictions.csv"
    assert predict_main([str(out), str(tmp_path / "images"), "--backbone", "test_resnet", "--strategy", strategy,
                         "--out", str(csv)]) == 0
    table = pd.read_csv(csv, dtype={"predicted": str})
    classes = tlkit.load_best(out, backbone="test_resnet", strategy=strategy).tlkit_info["classes"]
    assert table.path.tolist() == [str(p) for p, _ in files]
    accuracy = sum(classes.index(p) == y for p, (_, y) in zip(table.predicted, files)) / len(files)
    reported = pd.read_csv(out / "summary.csv").set_index("strategy").test_accuracy[strategy]
    assert accuracy == pytest.approx(reported, abs=1e-9)
    probabilities = table[[f"p_{c}" for c in classes]].to_numpy()
    assert probabilities.sum(1) == pytest.approx([1.0] * len(files), abs=1e-5)
    assert table.probability.to_numpy() == pytest.approx(probabilities.max(1))


def test_predict_reads_files_folders_and_globs_and_names_what_is_missing(study, tmp_path, capsys):
    _, out = study
    files = _test_images(tmp_path / "images")
    args = [str(out), str(files[0][0]), str(tmp_path / "images" / "000[1-2].png"), "--backbone", "test_resnet",
            "--strategy", "last_n"]
    assert predict_main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("path,predicted,probability,p_5") and len(printed) == 1 + 3
    assert predict_main([str(out), str(tmp_path / "nothing*.png"), "--backbone", "test_resnet", "--strategy",
                         "last_n"]) == 2
    assert "No image at" in capsys.readouterr().err


@pytest.mark.parametrize("content", [[], ["notes.txt"], ["sub/", "sub/labels.csv"]])
def test_predict_on_a_folder_without_images_is_refused_like_a_glob_without_matches(study, tmp_path, capsys,
                                                                                  content):
    _, out = study
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in content:
        if name.endswith("/"):
            (folder / name).mkdir()
        else:
            (folder / name).write_text("x")
    assert predict_main([str(out), str(folder), "--backbone", "test_resnet", "--strategy", "last_n"]) == 2
    captured = capsys.readouterr()
    assert f"No image in the folder '{folder}' or below it (looked for .jpg" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize("where", ["a_folder", "in_a_missing_folder", "under_a_file"])
def test_predict_refuses_an_out_it_cannot_write_before_any_inference(study, tmp_path, capsys, monkeypatch, where):
    import tlkit.predict

    _, out = study
    files = _test_images(tmp_path / "images")
    (tmp_path / "a_file").write_text("mine")
    target = {"a_folder": tmp_path / "images", "in_a_missing_folder": tmp_path / "missing" / "p.csv",
              "under_a_file": tmp_path / "a_file" / "p.csv"}[where]
    monkeypatch.setattr(tlkit.predict, "predict", lambda *a, **k: pytest.fail("inference ran first"))
    assert predict_main([str(out), str(files[0][0]), "--backbone", "test_resnet", "--strategy", "last_n", "--out",
                         str(target)]) == 2
    err = capsys.readouterr().err
    said = "is a folder, not a file. HINT: name the file to write" if where == "a_folder" else "does not exist (or is a file)"
    assert err.startswith(f"tlkit: error: --out '{target}' ") and said in err and "Traceback" not in err
    assert not (tmp_path / "missing").exists() and (tmp_path / "a_file").read_text() == "mine"


def test_keep_checkpoints_last_keeps_the_epoch_state_of_finished_trials(study):
    _, out = study
    folders = sorted(out.glob("trials/test_resnet/*/trial_*"))
    assert [f"{f.parent.name}/{f.name}" for f in folders] == [f"{s}/trial_{n:04d}" for s in sorted(STRATEGIES)
                                                             for n in (0, 1)]
    for folder in folders:
        assert {p.name for p in folder.glob("epoch_*")} == {"epoch_0000.pt", "epoch_0000.safetensors",
                                                             "epoch_0001.pt", "epoch_0001.safetensors"}, folder


def test_load_best_of_an_unknown_cell_names_the_cells_there_are(study):
    _, out = study
    with pytest.raises(tlkit.TlkitError, match="test_resnet/last_n") as err:
        tlkit.load_best(out, backbone="test_resnet", strategy="bitfit")
    assert "No exported best model for test_resnet/bitfit" in str(err.value)


def test_a_damaged_exported_model_is_reported_by_name(study, tmp_path):
    _, out = study
    copy = tmp_path / "results"
    for path in (out / "best").rglob("*"):
        if path.is_file():
            target = copy / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    weights = copy / "best/test_resnet/last_n/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(tlkit.TlkitError, match=str(weights)):
        tlkit.load_best(copy, backbone="test_resnet", strategy="last_n")


def test_damaged_best_weights_skip_that_export_and_the_sweep_goes_on(study, tmp_path, caplog):
    exp, out = study
    copy = tmp_path / "results"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "best")
    weights = copy / f"trials/test_resnet/last_n/trial_{_best_run(out, 'last_n'):04d}/best.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="tlkit"):
        assert main([str(exp), "--out", str(copy), "--quiet"]) == 0
    assert str(weights) in caplog.text
    assert (copy / "best/test_resnet/linear_probe/model.safetensors").is_file()
    assert not (copy / "best/test_resnet/last_n").exists()

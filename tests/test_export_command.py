"""``python -m tlkit.export``: a cell's best model as ONNX, TorchScript or a plain timm safetensors file, each
checked against the PyTorch model on the study's real test images, and bad input refused before anything is
written."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import onnx
import onnxruntime
import pytest
import timm
import torch
from safetensors.torch import load_file

import tlkit
import tlkit.export
from tlkit.data.datasets import load_dataset
from tlkit.export import OPSET, main
from tlkit.testing import run_tiny_sweep

ATOL = 1e-4  # the largest logit difference from PyTorch an exported model may show on the test images


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("export_command")
    return run_tiny_sweep(tmp / "study", tmp / "cache", name="digits", strategies=["linear_probe", "lora"])


def _test_batch(model: torch.nn.Module) -> torch.Tensor:
    """The study's test images (digits 5-9), through the preprocessing the model was trained with."""
    _, test = load_dataset("digits")
    keep = test.labels >= 5
    return model.tlkit_transform.batch([image.permute(1, 2, 0).numpy() for image in test.images[keep]])


def _pytorch(results: Path, strategy: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = tlkit.load_best(results, backbone="test_resnet", strategy=strategy)
    x = _test_batch(model)
    with torch.no_grad():
        return model, x, model(x)


def _export(results: Path, strategy: str, fmt: str, out: Path) -> dict:
    assert main([str(results), "--backbone", "test_resnet", "--strategy", strategy, "--format", fmt,
                 "--out", str(out)]) == 0
    return json.loads(out.with_name(out.name + ".json").read_text())


def test_onnx_matches_pytorch_on_the_test_images_at_any_batch_size(results, tmp_path, capsys):
    """Exported with a batch of 4, run by onnxruntime on all ~90 test images at once: the batch is dynamic."""
    model, x, expected = _pytorch(results, "lora")
    config = _export(results, "lora", "onnx", tmp_path / "digits.onnx")
    assert "largest logit difference from PyTorch" in capsys.readouterr().out
    graph = onnx.load(str(tmp_path / "digits.onnx"))
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [OPSET] == [config["opset"]]
    session = onnxruntime.InferenceSession(str(tmp_path / "digits.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str) and len(x) > 4
    got = torch.from_numpy(session.run([config["output_name"]], {config["input_name"]: x.numpy()})[0])
    difference = float((got - expected).abs().max())
    print(f"ONNX vs PyTorch on {len(x)} test images: max abs logit difference {difference:.2g}")
    assert difference <= ATOL and torch.equal(got.argmax(1), expected.argmax(1))


def test_torchscript_matches_pytorch_on_the_test_images(results, tmp_path):
    _, x, expected = _pytorch(results, "linear_probe")
    config = _export(results, "linear_probe", "torchscript", tmp_path / "digits.pt")
    with torch.no_grad():
        got = torch.jit.load(str(tmp_path / "digits.pt"))(x)
    assert float((got - expected).abs().max()) <= ATOL and torch.equal(got.argmax(1), expected.argmax(1))
    assert config["format"] == "torchscript" and config["check"]["max_abs_diff"] <= ATOL


def test_a_lora_cell_exports_a_plain_timm_state_dict_that_timm_loads(results, tmp_path):
    """The adapters are merged: the file is what timm.create_model builds, key for key, and gives the same
    logits."""
    _, x, expected = _pytorch(results, "lora")
    config = _export(results, "lora", "safetensors", tmp_path / "digits.safetensors")
    weights = load_file(str(tmp_path / "digits.safetensors"))
    assert not [k for k in weights if "lora" in k]
    fresh = timm.create_model(config["architecture"], num_classes=config["num_classes"], **config["model_args"])
    assert set(weights) == set(fresh.state_dict())
    fresh.load_state_dict(weights)  # strict
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), expected)


def test_the_json_is_timm_pretrained_cfg_style_with_the_cells_facts(results, tmp_path):
    config = _export(results, "lora", "torchscript", tmp_path / "digits.pt")
    info = json.loads((results / "best/test_resnet/lora/model.json").read_text())
    assert config["input_size"] == [3, 16, 16] and config["label_names"] == info["classes"] == list("56789")
    assert (config["mean"], config["std"], config["num_classes"]) == (info["mean"], info["std"], 5)
    data = timm.data.resolve_data_config({}, pretrained_cfg=config)  # timm reads it as its own
    assert data == {"input_size": [3, 16, 16], "interpolation": "bilinear", "mean": info["mean"], "std": info["std"],
                    "crop_pct": 1.0, "crop_mode": "squash"}
    assert {k: config[k] for k in ("backbone", "strategy", "metric", "test_metric", "params")} == {
        k: info[k] for k in ("backbone", "strategy", "metric", "test_metric", "params")}


def test_the_default_out_is_in_the_results_folder_and_formats_share_it(results):
    for fmt in ("torchscript", "safetensors"):
        assert main([str(results), "--backbone", "test_resnet", "--strategy", "linear_probe", "--format", fmt]) == 0
    folder = results / "export/test_resnet/linear_probe"
    try:
        assert sorted(p.name for p in folder.iterdir()) == ["model.pt", "model.pt.json", "model.safetensors",
                                                             "model.safetensors.json"]
    finally:
        shutil.rmtree(results / "export")


def _files(*folders: Path) -> set[Path]:
    return {p for folder in folders if folder.exists() for p in folder.rglob("*")}


def _refused(argv: list[str], capsys, *watched: Path) -> str:
    before = _files(*watched)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tlkit: error: ") and err.count("\n") == 1 and "HINT" in err, err
    assert _files(*watched) == before, "a refused export wrote something"
    return err


CELL = ["--backbone", "test_resnet", "--strategy", "lora"]


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("not_results", "No experiment.json"),
    ("no_best_yet", "has no best model yet"),
])
def test_a_folder_that_is_not_a_finished_results_folder_is_refused(results, tmp_path, capsys, case, expected):
    folder = tmp_path / "folder"
    if case != "missing":
        folder.mkdir()
    if case == "no_best_yet":  # the sweep has started (experiment.json) but finished no trial
        shutil.copy(results / "experiment.json", folder)
    err = _refused([str(folder), *CELL, "--format", "onnx"], capsys, tmp_path, results)
    assert expected in err and str(folder) in err


@pytest.mark.parametrize("flag, value, expected", [
    ("--backbone", "test_resnt", "Unknown backbone 'test_resnt'. Did you mean 'test_resnet'?"),
    ("--strategy", "lra", "Unknown strategy 'lra'. Did you mean 'lora'? Available: linear_probe, lora."),
])
def test_an_unknown_cell_is_refused_with_a_close_match_and_the_cells_there_are(results, capsys, flag, value,
                                                                               expected):
    argv = [str(results), *CELL, "--format", "onnx"]
    argv[argv.index(flag) + 1] = value
    err = _refused(argv, capsys, results)
    assert expected in err and "Cells with a best model: test_resnet/linear_probe, test_resnet/lora." in err


def test_an_unknown_format_is_refused_with_a_close_match(results, capsys):
    err = _refused([str(results), *CELL, "--format", "onx"], capsys, results)
    assert "Unknown format 'onx'. Did you mean 'onnx'? Available: onnx, safetensors, torchscript." in err


@pytest.mark.parametrize("case, expected", [("missing_folder", "does not exist"), ("a_folder", "is a folder")])
def test_an_out_that_cannot_take_the_file_is_refused(results, tmp_path, capsys, case, expected):
    out = tmp_path / "nowhere" / "model.onnx" if case == "missing_folder" else tmp_path
    err = _refused([str(results), *CELL, "--format", "onnx", "--out", str(out)], capsys, tmp_path, results)
    assert expected in err and str(out) in err


def test_onnx_without_the_export_extra_names_the_install(results, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name))
    err = _refused([str(results), *CELL, "--format", "onnx", "--out", str(tmp_path / "m.onnx")], capsys, tmp_path,
                   results)
    assert "needs onnxruntime" in err and 'pip install "tlkit[export]"' in err


def test_an_export_that_does_not_reproduce_pytorch_leaves_nothing(results, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tlkit.export, "TOLERANCE", -1.0)  # any difference, even 0, is too much
    err = _refused([str(results), *CELL, "--format", "torchscript", "--out", str(tmp_path / "m.pt")], capsys,
                   tmp_path, results)
    assert "does not reproduce the PyTorch model" in err

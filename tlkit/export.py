"""``python -m tlkit.export RESULTS --backbone B --strategy S --format onnx|torchscript|safetensors [--out PATH]``.

A cell's best model (what :func:`tlkit.load_best` loads) as a file another runtime reads, with a JSON beside it
(``PATH.json``, e.g. ``model.onnx.json``) that says how to feed it: timm's ``pretrained_cfg`` fields (``input_size``,
``mean``, ``std``, ``interpolation``, ``crop_pct``, ``num_classes``, ``label_names``) and tlkit's own (backbone,
strategy, metric, scores, the best trial's parameters). The model takes normalised float images ``(batch, 3, H, W)``
(RGB scaled to [0, 1], then ``(x - mean) / std``) and returns logits; the batch size is free.

Before the file replaces anything it is run against the PyTorch model on a few images and refused when its logits
differ by more than ``TOLERANCE``; the difference found is in the JSON (``check``).

Example:
    python -m tlkit.export results/digits --backbone test_resnet --strategy last_n --format onnx
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from tlkit.errors import TlkitError, did_you_mean
from tlkit.models.backbones import model_kwargs
from tlkit.utils.files import atomic_write, check_out_file, read_json, write_json

__all__ = ["FORMATS", "OPSET", "TOLERANCE", "EXTRAS", "export", "check_request", "model_config", "main"]

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
"""Format -> the suffix of the default file name."""

OPSET = 18
"""ONNX opset: the one torch's exporter translates to natively (``TORCHLIB_OPSET``), read by onnxruntime >= 1.14."""

TOLERANCE = 1e-4
"""Largest logit difference from PyTorch an exported file may show, times ``max(1, largest |logit|)``."""

EXTRAS = {"onnx": ("onnx", "onnxscript", "onnxruntime")}
"""Format -> the packages it needs beyond tlkit's own (the ``export`` extra)."""

INPUT, OUTPUT = "image", "logits"


def _results_folder(results: Path) -> dict[str, Any]:
    """The folder's ``experiment.json``: what says it is a sweep's results folder, and which cells it has."""
    if not results.is_dir():
        raise TlkitError(f"The results folder {str(results)!r} does not exist. HINT: pass the folder the sweep wrote "
                         f"(its --out, by default results/<study>).")
    if not (results / "experiment.json").is_file():
        raise TlkitError(f"No experiment.json in {str(results)!r}: it does not look like a results folder of "
                         f"`python -m tlkit.sweep`. HINT: pass the folder the sweep wrote (its --out, by default "
                         f"results/<study>).")
    return read_json(results / "experiment.json", "run the sweep command that made this folder again: it writes "
                                                   "experiment.json anew and keeps every finished trial.")


def _check_cell(results: Path, experiment: dict[str, Any], backbone: str, strategy: str) -> None:
    """An unknown backbone or strategy is named with a close match; a known cell without an exported model is
    told to wait for (or run) the sweep."""
    exported = sorted(str(p.parent.relative_to(results / "best"))
                      for p in (results / "best").glob("*/*/model.json"))
    cells = f" Cells with a best model: {', '.join(exported) or 'none yet'}."
    for name, what, plural in ((backbone, "backbone", "backbones"), (strategy, "strategy", "strategies")):
        known = experiment.get(plural)
        if isinstance(known, list) and name not in known:
            raise TlkitError(f"{did_you_mean(name, map(str, known), what)}{cells} HINT: pass one of the study's "
                             f"{plural} with --{what}.")
    if f"{backbone}/{strategy}" not in exported:
        raise TlkitError(f"{backbone}/{strategy} in {str(results)!r} has no best model yet (no "
                         f"best/{backbone}/{strategy}/model.json): its sweep has not finished a trial.{cells} HINT: "
                         f"run (or let finish) the sweep that writes this folder, then export again.")


def _check_extras(fmt: str) -> None:
    if fmt == "onnx" and "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise TlkitError(f"--format onnx needs torch >= 2.5 (its dynamo exporter) but torch is {torch.__version__}. "
                         f"HINT: pip install \"torch>=2.5\", or export --format torchscript or safetensors.")
    missing = [name for name in EXTRAS.get(fmt, ()) if importlib.util.find_spec(name) is None]
    if missing:
        raise TlkitError(f"--format {fmt} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                         f"not installed. HINT: pip install \"tlkit[export]\" (or pip install "
                         f"{' '.join(EXTRAS[fmt])}).")


def _config_path(out: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``: each format's JSON has its own name, so exports can share a folder."""
    return out.with_name(out.name + ".json")


def check_request(results: Path, backbone: str, strategy: str, fmt: str, out: Path | None) -> Path:
    """Every check that needs no model, in the order a user would fix them; returns the file to write. The default
    is ``RESULTS/export/<backbone>/<strategy>/model<suffix>``, whose folders are made when it is written."""
    if fmt not in FORMATS:
        raise TlkitError(f"{did_you_mean(fmt, FORMATS, 'format')} HINT: pass --format {' or '.join(FORMATS)}.")
    experiment = _results_folder(results)
    _check_cell(results, experiment, backbone, strategy)
    _check_extras(fmt)
    if out is None:
        out = results / "export" / backbone / strategy / f"model{FORMATS[fmt]}"
        folder = next(p for p in (out.parent, *out.parents) if p.exists())
        if not os.access(folder, os.W_OK | os.X_OK):
            raise TlkitError(f"The results folder {str(results)!r} is read-only. HINT: pass --out in a folder you "
                             f"can write.")
        return out
    check_out_file(out, str(out / f"model{FORMATS[fmt]}"))  # before the model is even loaded
    return out


def model_config(model: torch.nn.Module, fmt: str) -> dict[str, Any]:
    """The JSON beside an exported model, in timm's ``pretrained_cfg`` words where timm has one.

    tlkit's preprocessing is a bilinear resize of the whole image to ``input_size`` (``crop_pct`` 1.0, the image
    squashed) or, for a dataset with a decode size, of its centred square crop (timm's ``crop_mode`` "center").
    """
    info = model.tlkit_info
    size = info["image_size"]
    config = {
        "architecture": info["backbone"], "num_classes": info["num_classes"], "label_names": list(info["classes"]),
        "input_size": [3, size, size], "mean": list(info["mean"]), "std": list(info["std"]),
        "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center" if info.get("decode_size") else "squash",
        "model_args": model_kwargs(info["backbone"], size), "format": fmt,
        **({"opset": OPSET, "input_name": INPUT, "output_name": OUTPUT} if fmt == "onnx" else {}),
    }
    tlkit_fields = ("backbone", "strategy", "metric", "val_metric", "test_metric", "test_loss", "trial",
                    "decode_size", "params")
    return {**config, **{key: info.get(key) for key in tlkit_fields}}


def _sample(model: torch.nn.Module, n: int = 4) -> torch.Tensor:
    """Normalised images of the model's input size for the output check (seeded: the same check each time)."""
    size = model.tlkit_info["image_size"]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _write_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch's dynamo exporter (``dynamo=True``, torch's default since 2.9; it needs onnx and onnxscript, both in
    the extra, and nothing online). The TorchScript-based ``dynamo=False`` also works offline but is deprecated and
    to be removed. Weights go inside the file (``external_data=False``): one file to move, replaced atomically."""
    import onnxruntime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's notes on the graph: nothing a user acts on
        torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=OPSET, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_shapes=({0: torch.export.Dim("batch")},),
                          external_data=False, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: torch.from_numpy(session.run([OUTPUT], {INPUT: batch.numpy()})[0])


def _write_torchscript(model: torch.nn.Module, x: torch.Tensor, path: Path
                       ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.jit.trace``: timm models are plain feed-forward graphs, so tracing records all of them (scripting
    fails on some). torch 2.14 marks torch.jit deprecated; the file is for runtimes that still read it (LibTorch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, x)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))
    return loaded


def _write_safetensors(model: torch.nn.Module, x: torch.Tensor, path: Path
                       ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The plain timm state dict (a LoRA cell's adapters are already merged into it by ``load_best``), read back
    into a fresh ``timm.create_model(architecture, num_classes=N, **model_args)``."""
    import timm
    from safetensors.torch import load_file, save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"format": "pt"})
    info = model.tlkit_info
    fresh = timm.create_model(info["backbone"], pretrained=False, num_classes=info["num_classes"],
                              **model_kwargs(info["backbone"], info["image_size"]))
    fresh.load_state_dict(load_file(str(path)))
    return fresh.eval()


WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "safetensors": _write_safetensors}


def _difference(expected: torch.Tensor, got: torch.Tensor, where: Path) -> float:
    """The largest logit difference; raises when it is over ``TOLERANCE`` (scaled by the logits' size)."""
    diff = float((expected - got.float()).abs().max())
    limit = TOLERANCE * max(1.0, float(expected.abs().max()))
    if not diff <= limit:  # NaN fails too
        raise TlkitError(f"The exported {where.name} does not reproduce the PyTorch model: its logits differ by "
                         f"{diff:.3g} (more than {limit:.3g}); nothing was written. HINT: report it with the backbone "
                         f"name, torch and onnxruntime versions; --format safetensors is exact.")
    return diff


def export(results: Path, backbone: str, strategy: str, fmt: str, out: Path | None = None
           ) -> tuple[Path, dict[str, Any]]:
    """Write the cell's best model in ``fmt`` to ``out`` and its JSON beside it; returns the file and the JSON.

    Example:
        path, config = export(Path("results/digits"), "test_resnet", "last_n", "onnx")
        print(path, config["check"]["max_abs_diff"])
    """
    out = check_request(Path(results), backbone, strategy, fmt, out)
    from tlkit.search.best import load_best  # torch and timm: only once the request is known to be good

    model = load_best(results, backbone=backbone, strategy=strategy)
    x = _sample(model)
    with torch.no_grad():
        expected = model(x).float()
    check: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        with torch.no_grad():
            run = WRITERS[fmt](model, x, tmp)
            check["max_abs_diff"] = _difference(expected, run(x), out)

    atomic_write(out, write)
    config = {**model_config(model, fmt), "check": {**check, "tolerance": TOLERANCE, "images": len(x)}}
    write_json(_config_path(out), config)
    return out, config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tlkit.export", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the results folder of a sweep, e.g. results/digits")
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--format", required=True, dest="fmt", metavar="{onnx,torchscript,safetensors}")
    parser.add_argument("--out", type=Path, help="the file to write (default: RESULTS/export/<backbone>/"
                                                 "<strategy>/model.<onnx|pt|safetensors>); its JSON goes beside it")
    args = parser.parse_args(argv)
    try:
        out, config = export(args.results, args.backbone, args.strategy, args.fmt, args.out)
    except TlkitError as err:
        print(f"tlkit: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.backbone}/{args.strategy} as {args.fmt}: {out} (config {_config_path(out)}); "
          f"largest logit difference from PyTorch on {config['check']['images']} images: "
          f"{config['check']['max_abs_diff']:.2g} (tolerance {TOLERANCE:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

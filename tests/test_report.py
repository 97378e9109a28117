"""The results folder people read: tables from the storage, plots, report.md, and an identical rebuild."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from PIL import Image

from tlkit.report import PLOTS, main, winners
from tlkit.testing import run_tiny_sweep

BACKBONES = ["test_resnet", "test_vit"]
STRATEGIES = ["linear_probe", "last_n"]
REPORT_FILES = ["trials.csv", "history.csv", "summary.csv", "report.md", *PLOTS.values()]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny sweep (2 backbones x 2 strategies x 2 trials x 2 epochs) shared by the tests of this module."""
    return run_tiny_sweep(tmp_path_factory.mktemp("report"), tmp_path_factory.getbasetemp() / "tlkit-cache",
                          backbones=BACKBONES, strategies=STRATEGIES, trials=2, pruner="none",
                          data={"test_per_class": 20})


def _storage(results: Path) -> str:
    return f"sqlite:///{results / 'study.db'}"


def _trials(results: Path) -> list[tuple[str, str, optuna.trial.FrozenTrial]]:
    out = []
    for b in BACKBONES:
        for s in STRATEGIES:
            study = optuna.load_study(study_name=f"tiny/{b}/{s}", storage=_storage(results))
            out += [(b, s, t) for t in study.trials]
    return out


def test_tables_match_the_storage(results: Path) -> None:
    trials = pd.read_csv(results / "trials.csv")
    stored = _trials(results)
    assert len(trials) == len(stored) == 8
    for b, s, t in stored:
        row = trials[(trials.backbone == b) & (trials.strategy == s) & (trials.trial == t.number)].iloc[0]
        assert row.state == "COMPLETE" and row.val_accuracy == pytest.approx(t.value)
        assert row.params_lr == pytest.approx(t.params["lr"]) and row.epochs_run == 2 and row.run == t.number

    history = pd.read_csv(results / "history.csv")
    assert len(history) == 8 * 2  # every epoch of every trial
    for column in ("train_loss", "val_loss", "val_accuracy", "lr_group0", "trainable_params", "images_per_s"):
        assert history[column].notna().all(), column
    for b, s, t in stored:
        mine = history[(history.backbone == b) & (history.strategy == s) & (history.trial == t.number)]
        assert list(mine.epoch) == [0, 1]
        assert list(mine.val_accuracy) == pytest.approx([h["val_metric"] for h in t.user_attrs["history"]])
        groups = [c for c in history.columns if c.startswith("lr_group")]
        stored_lrs = [[h.get(c) for c in groups if c in h] for h in t.user_attrs["history"]]
        for (_, row), lrs in zip(mine[groups].iterrows(), stored_lrs):
            assert list(row.dropna()) == pytest.approx(lrs)
    probe = history[history.strategy == "linear_probe"]
    assert (probe.lr_group0 == 0).all()  # the frozen stem's learning rate, per epoch

    summary = pd.read_csv(results / "summary.csv")
    assert len(summary) == 4
    for _, cell in summary.iterrows():
        study = optuna.load_study(study_name=f"tiny/{cell.backbone}/{cell.strategy}", storage=_storage(results))
        assert cell.best_trial == study.best_trial.number
        assert cell.best_val_accuracy == pytest.approx(study.best_value)
        assert cell.test_accuracy == pytest.approx(study.user_attrs["best_test"]["test_metric"])
        assert json.loads(cell.best_params) == pytest.approx(study.best_params)
        assert (cell.trials_complete, cell.trials_pruned, cell.trials_failed) == (2, 0, 0)
        assert cell.trainable_params == study.best_trial.user_attrs["trainable_params"]


def test_report_md_compares_cells_and_embeds_the_plots(results: Path) -> None:
    text = (results / "report.md").read_text()
    summary = pd.read_csv(results / "summary.csv")
    header = next(line for line in text.splitlines() if line.startswith("| backbone | linear_probe"))
    assert header == "| backbone | linear_probe | last_n |"  # strategies in the experiment's order
    for b in BACKBONES:
        row = next(line for line in text.splitlines() if line.startswith(f"| {b} | ") and line.count("|") == 4)
        cells = summary[summary.backbone == b].set_index("strategy")
        shown = [c.strip().strip("*") for c in row.split("|")[2:4]]
        assert shown == [f"{cells.test_accuracy[s]:.4f}" for s in STRATEGIES]
        win = cells.best_val_accuracy.idxmax() if cells.best_val_accuracy.nunique() > 1 else None
        if win is not None:
            assert f"**{cells.test_accuracy[win]:.4f}**" in row
    assert "## Winner per backbone" in text and "## Best configuration of each cell" in text
    done = int(summary.trials_complete.sum()), int(summary.trials_pruned.sum())
    assert f"{len(summary)} cells ({len(BACKBONES)} backbones x {len(STRATEGIES)} strategies)" in text
    assert f"({done[0]} complete, {done[1]} pruned, 0 failed)" in text
    assert f"The trials ran {summary.cell_time_s.sum() / 60:.1f} min in all" in text
    for name in PLOTS.values():
        assert f"]({name})" in text
        with Image.open(results / name) as image:
            assert image.format == "PNG" and image.width >= 800 and image.height >= 300


def test_rebuild_is_byte_identical(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = {name: (results / name).read_bytes() for name in REPORT_FILES}
    for name in REPORT_FILES:
        (results / name).unlink()
    for _ in range(2):
        assert main([str(results)]) == 0
        assert {name: (results / name).read_bytes() for name in REPORT_FILES} == written
    assert "report.md" in capsys.readouterr().out


def test_report_cli_module(results: Path) -> None:
    before = (results / "summary.csv").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "tlkit.report", str(results)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (results / "summary.csv").read_bytes() == before


def test_errors_name_the_fix(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert "No experiment.json" in capsys.readouterr().err
    assert main([str(results), "--study", "nope"]) == 2
    assert "No study 'nope'" in capsys.readouterr().err
    (tmp_path / "experiment.json").write_text(json.dumps({"name": "tiny", "metric": "accuracy"}))
    assert main([str(tmp_path)]) == 2
    assert "--storage" in capsys.readouterr().err
    assert not (tmp_path / "study.db").exists()  # a reader never creates an empty study


def test_winner_is_chosen_on_validation_with_ties_to_fewer_parameters() -> None:
    summary = pd.DataFrame({
        "backbone": ["a", "a", "a", "b"], "strategy": ["full", "probe", "last", "full"],
        "best_val_accuracy": [0.9, 0.9, 0.8, 0.5], "test_accuracy": [0.85, 0.80, 0.95, 0.5],
        "trainable_params": [1000, 10, 500, 1000],
    })
    won = winners(summary, "accuracy")
    assert dict(zip(won.backbone, won.strategy)) == {"a": "probe", "b": "full"}

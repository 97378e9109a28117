"""Progress while a sweep runs: a live display on a terminal, plain log lines otherwise, silence with --quiet."""
from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from tlkit.experiment import load_experiment
from tlkit.progress import SweepProgress, format_duration
from tlkit.study import Cell
from tlkit.sweep import run_sweep
from tlkit.testing import write_experiment

DATA = {"train_per_class": 20, "test_per_class": 10}
TINY = {"strategies": ["last_n"], "trials": 2, "pruner": "none", "data": DATA}


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.4, 45, 185, 7620, float("inf"))] == \
        ["0 s", "45 s", "3 min 05 s", "2 h 07 min", "?"]


def test_mode_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert SweepProgress.for_stderr().mode == "rich"
    assert SweepProgress.for_stderr(quiet=True).mode == "off"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert SweepProgress.for_stderr().mode == "log"
    with pytest.raises(ValueError, match="but got 'fancy'"):
        SweepProgress("fancy")


def test_time_left_counts_the_epochs_still_to_run() -> None:
    progress = SweepProgress("off")
    progress.start(total_cells=2, trials_per_cell=3, epochs=4, metric="accuracy")
    assert progress.seconds_left() == float("inf")  # no rate yet
    progress.cell, progress.done, progress.epoch = Cell("a", "b"), 2, 1  # third trial of six, its epoch 2 next
    progress.epoch_seconds = [2.0, 4.0]
    assert progress.seconds_left() == 3.0 * (3 + 3 * 4)  # 3 epochs of this trial, 3 more trials of 4 epochs


def test_status_follows_the_trial() -> None:
    progress = SweepProgress("off")
    progress.start(total_cells=4, trials_per_cell=3, epochs=5, metric="accuracy")
    study = SimpleNamespace(best_value=0.75, get_trials=lambda deepcopy, states: [None])  # one trial finished
    progress.update(1, Cell("test_vit", "gradual"), study)
    trainer = SimpleNamespace(epoch=2, steps_per_epoch=8, recipe=SimpleNamespace(epochs=5))  # resumed at epoch 2
    progress.fit_started(trainer)
    progress.batch_done(trainer, 3, 8)
    assert progress.status() == ("4/12 trials · cell 2/4 · ~? left · best accuracy 0.7500 (test_vit/gradual)",
                                 "epoch 3/5 · batch 4/8 · test_vit/gradual trial 2/3")
    result = SimpleNamespace(epoch=2, train_loss=0.5, val_loss=0.6, val_metric=0.7)
    progress.epoch_done(trainer, result)
    assert progress.status()[1] == "epoch 4/5 · batch 0/8 · test_vit/gradual trial 2/3"
    assert progress.status()[0].startswith("4/12 trials · cell 2/4 · ~")
    assert "~? left" not in progress.status()[0]  # one epoch gave a rate


def test_log_lines_when_not_a_terminal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    exp = load_experiment(write_experiment(tmp_path, **TINY))
    caplog.set_level(logging.INFO, logger="tlkit")
    run_sweep(exp, tmp_path / "out", progress=SweepProgress("log"))
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert len(lines) == 2 * 2  # one per epoch of each trial
    assert lines[0].startswith("  test_resnet/last_n trial 1/2 epoch 1/2: train loss ")
    assert "| 0/2 trials done, best - |" in lines[0]
    assert re.search(r"trial 2/2 epoch 2/2: .*\| 1/2 trials done, best 0\.\d{4} \(test_resnet/last_n\) \| ~\d+ s left",
                     lines[-1]), lines[-1]


def test_live_display_on_a_terminal(tmp_path: Path) -> None:
    exp = load_experiment(write_experiment(tmp_path, **TINY))
    screen = io.StringIO()
    progress = SweepProgress("rich", console=Console(file=screen, force_terminal=True, width=120,
                                                     color_system=None))
    run_sweep(exp, tmp_path / "out", progress=progress)
    progress.close()
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    last = [line.strip() for line in frames.splitlines() if line.strip()][-2:]
    assert re.fullmatch(r"sweep ━+ 2/2 trials · cell 1/1 · ~0 s left · best accuracy 0\.\d{4} "
                        r"\(test_resnet/last_n\)", last[0]), last
    assert last[1].endswith("done · test_resnet/last_n trial 2/2"), last


def test_quiet_cli_prints_nothing(tmp_path: Path) -> None:
    exp = write_experiment(tmp_path, strategies=["linear_probe"], trials=1, data=DATA)
    env = {**os.environ, "TLKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}  # warnings not hidden
    quiet = subprocess.run([sys.executable, "-m", "tlkit.sweep", str(exp), "--out", str(tmp_path / "q"), "--quiet"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "" and quiet.stderr == ""
    assert (tmp_path / "q" / "report.md").is_file()

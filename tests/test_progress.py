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

from tlkit.config.loading import load_experiment
from tlkit.output.progress import SweepProgress, format_duration
from tlkit.search.study import Cell
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


def test_time_left_is_each_remaining_trial_at_its_backbones_mean_trial_time() -> None:
    progress = SweepProgress("off")
    cells = [Cell("a", "x"), Cell("a", "y"), Cell("b", "x")]
    progress.start(cells, trials_per_cell=3, epochs=4, metric="accuracy", repeats=1)
    assert progress.seconds_left() == float("inf")  # nothing finished: no estimate yet
    progress.cell_index = 1
    progress.finished = {cells[0]: 3, cells[1]: 1}
    progress._seen = {cells[0]: [10.0, 20.0, 30.0], cells[1]: [40.0]}
    progress.durations = {"a": [10.0, 20.0, 30.0, 40.0]}
    # Cell a/y: 2 trials + 1 repeat left at a's mean (25 s); cell b/x: 3 trials + 1 repeat, b unseen: the mean of all.
    assert progress.seconds_left() == pytest.approx(3 * 25.0 + 4 * 25.0)


def test_status_and_lines_use_the_files_numbers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tlkit")
    progress = SweepProgress("log")
    cell = Cell("test_vit", "gradual")
    progress.start([Cell("test_vit", "last_n"), cell], trials_per_cell=3, epochs=5, metric="accuracy")
    progress.cell, progress.cell_index = cell, 1
    hooks = progress.callbacks(cell, "t3", {"lr": 0.00123, "unfreeze_every": 2})[0]
    trainer = SimpleNamespace(epoch=2, steps_per_epoch=8, elapsed=12.0, best_metric=0.8, best_epoch=1,
                              stop_reason="MedianPruner at epoch 2")  # resumed at epoch 2
    hooks.on_fit_start(trainer)
    hooks.on_batch_end(trainer, 3, 8)
    assert progress.status()[1] == "test_vit/gradual trial 3 · epoch 2 of 5 · batch 4/8"
    hooks.on_epoch_end(trainer, SimpleNamespace(epoch=2, train_loss=0.5, val_loss=0.6, val_metric=0.7))
    trainer.epoch = 3
    hooks.on_fit_end(trainer, "pruned")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "test_vit/gradual trial 3 resumes at epoch 2 (its checkpoint of epoch 1)"
    assert lines[1].startswith("  test_vit/gradual trial 3 epoch 2: train loss 0.5000, val loss 0.6000, val "
                               "accuracy 0.7000 | ")
    assert lines[2] == "test_vit/gradual trial 3 pruned after epoch 2: MedianPruner at epoch 2"
    fresh = progress.callbacks(cell, "t4-seed1", {"lr": 0.01, "repeat": 1})[0]
    fresh.on_fit_start(SimpleNamespace(epoch=0, steps_per_epoch=8, elapsed=0.0))
    assert caplog.records[-1].getMessage() == ("test_vit/gradual repeat 1 of trial 4's configuration starts: "
                                               "lr=0.01")


def test_log_lines_when_not_a_terminal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    exp = load_experiment(write_experiment(tmp_path, **TINY))
    caplog.set_level(logging.INFO, logger="tlkit")
    run_sweep(exp, tmp_path / "out", progress=SweepProgress("log"))
    lines = [r.getMessage() for r in caplog.records]
    epochs = [line for line in lines if " epoch " in line and line.startswith("  ")]
    assert len(epochs) == 2 * 2  # one per epoch of each trial
    assert epochs[0].startswith("  test_resnet/last_n trial 0 epoch 0: train loss ")
    assert "| 0/2 trials · cell 1/1 · ~? left · best val accuracy -" in epochs[0]
    assert re.search(r"trial 1 epoch 1: .*\| 1/2 trials · cell 1/1 · ~\d+ s left · best val accuracy 0\.\d{4} "
                     r"\(test_resnet/last_n trial [01]\)", epochs[-1]), epochs[-1]
    assert any(line.startswith("test_resnet/last_n trial 0 starts: lr=") for line in lines)
    assert any(re.match(r"test_resnet/last_n trial 1 done: best val accuracy 0\.\d{4} at epoch \d", line)
               for line in lines)


def test_live_display_on_a_terminal(tmp_path: Path) -> None:
    exp = load_experiment(write_experiment(tmp_path, **TINY))
    screen = io.StringIO()
    progress = SweepProgress("rich", console=Console(file=screen, force_terminal=True, width=140,
                                                     color_system=None))
    run_sweep(exp, tmp_path / "out", progress=progress)
    progress.close()
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    last = [line.strip() for line in frames.splitlines() if line.strip()][-2:]
    assert re.fullmatch(r"sweep ━+ 2/2 trials · cell 1/1 · ~0 s left · best val accuracy 0\.\d{4} "
                        r"\(test_resnet/last_n trial [01]\)", last[0]), last
    assert re.fullmatch(r"trial ━+ test_resnet/last_n trial 1 · epoch 2 of 2 · batch \d+/\d+", last[1]), last


def test_quiet_keeps_the_answer_and_ctrl_c_prints_only_tlkits_message(tmp_path: Path) -> None:
    """--quiet: no progress, no warnings, but the final table and where the results are. Ctrl-C mid-trial: one line
    from tlkit, no traceback and no warning from Optuna."""
    exp = write_experiment(tmp_path, strategies=["linear_probe"], trials=1, data=DATA)
    env = {**os.environ, "TLKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}  # warnings not hidden
    quiet = subprocess.run([sys.executable, "-m", "tlkit.sweep", str(exp), "--out", str(tmp_path / "q"), "--quiet"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    lines = quiet.stdout.splitlines()
    assert lines[0].split() == ["backbone", "strategy", "done", "pruned", "seeds", "val_accuracy_mean",
                                "test_accuracy_mean", "95%", "CI", "vs", "best"]
    assert lines[-1].startswith(f"Results in {tmp_path / 'q'}/ (")
    interrupt = ("import os, signal\nimport tlkit.engine.loop\n_real = tlkit.engine.loop.Trainer._run_epoch\n"
                 "def _run_epoch(self, epoch):\n    if epoch == 1:\n        os.kill(os.getpid(), signal.SIGINT)\n"
                 "    return _real(self, epoch)\ntlkit.engine.loop.Trainer._run_epoch = _run_epoch\n")
    exp = write_experiment(tmp_path, name="ctrl_c", strategies=["last_n"], trials=1, data=DATA, prelude=interrupt)
    stopped = subprocess.run([sys.executable, "-m", "tlkit.sweep", str(exp), "--out", str(tmp_path / "c")],
                             capture_output=True, text=True, env=env, timeout=300)
    assert stopped.returncode == 130
    assert "Traceback" not in stopped.stderr and "WARNING" not in stopped.stderr, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == ("tlkit: interrupted. Finished trials are saved; run the same "
                                                       "command again to resume.")


def test_a_sweep_plans_each_cell_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A strategy is looked up and its search space computed once per cell (``plan_cell``), not per trial."""
    import tlkit.search.objective as objective
    calls = []
    real = objective.search_space
    monkeypatch.setattr(objective, "search_space", lambda *a: calls.append(a[1].name) or real(*a))
    exp = load_experiment(write_experiment(tmp_path, **TINY))
    run_sweep(exp, tmp_path / "out", progress=SweepProgress("off"))
    assert calls == ["last_n"]

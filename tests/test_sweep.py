"""A real tiny study through the CLI: the results folder contract, repeatability, and continuing a study."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pandas as pd
import pytest

from tlkit.models.backbones import create_backbone
from tlkit.sweep import main
from tlkit.testing import write_experiment


def _env(tmp_path):
    return {**os.environ, "TLKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_cli_runs_a_study_end_to_end(tmp_path):
    exp = write_experiment(tmp_path, name="mini", backbones=["test_resnet", "test_vit"],
                           strategies=["linear_probe", "last_n"], trials=2)
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "tlkit.sweep", str(exp), "--out", str(out), "--set", "train.epochs=2"],
                          capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in ("experiment.json", "study.db", "trials.csv", "summary.csv"):
        assert (out / name).is_file(), name
    assert json.loads((out / "experiment.json").read_text())["backbones"] == ["test_resnet", "test_vit"]

    trials = pd.read_csv(out / "trials.csv")
    history = pd.read_csv(out / "history.csv")
    summary = pd.read_csv(out / "summary.csv")
    assert len(trials) == 8 and set(trials.state) <= {"COMPLETE", "PRUNED"}
    assert set(zip(trials.backbone, trials.strategy)) == {(b, s) for b in ("test_resnet", "test_vit")
                                                          for s in ("linear_probe", "last_n")}
    for column in ("trial", "val_accuracy", "params_lr", "params_weight_decay", "epochs_run", "trainable_params",
                   "total_params", "wall_time_s"):
        assert column in trials.columns, column
    for row in trials.itertuples():  # a trial's value is its best epoch; its epochs are all in history.csv
        epochs = history[(history.backbone == row.backbone) & (history.strategy == row.strategy)
                         & (history.trial == row.trial)]
        assert epochs.epoch.tolist() == list(range(row.epochs_run))
        if row.state == "COMPLETE":
            assert row.val_accuracy == pytest.approx(epochs.val_accuracy.max())
    for backbone in ("test_resnet", "test_vit"):  # a linear probe trains exactly the new head
        head = sum(p.numel() for p in create_backbone(backbone, 5, 16).get_classifier().parameters())
        probe = trials[(trials.strategy == "linear_probe") & (trials.backbone == backbone)]
        assert (probe.trainable_params == head).all(), (backbone, head)
    last_n = trials[trials.strategy == "last_n"]
    probes = trials[trials.strategy == "linear_probe"]
    assert last_n.params_n_groups.notna().all() and probes.params_n_groups.isna().all()

    assert len(summary) == 4 and (summary.trials_complete + summary.trials_pruned == 2).all()
    for cell in summary.itertuples():  # the summary names the cell's best complete trial and its parameters
        mine = trials[(trials.backbone == cell.backbone) & (trials.strategy == cell.strategy)
                      & (trials.state == "COMPLETE")]
        best = mine.loc[mine.val_accuracy.idxmax()]
        assert (cell.best_trial, cell.best_val_accuracy) == (best.trial, best.val_accuracy)
        assert json.loads(cell.best_params)["lr"] == pytest.approx(best.params_lr)
        assert 0 <= cell.test_accuracy <= 1
    # Each cell is its own Optuna study, all in one storage.
    names = {s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{out / 'study.db'}")
             if ":repeats/" not in s.study_name}
    assert names == {f"mini/{b}/{s}" for b in ("test_resnet", "test_vit") for s in ("linear_probe", "last_n")}


def test_same_command_twice_gives_the_same_numbers(tmp_path):
    exp = write_experiment(tmp_path, strategies=["last_n", "gradual"], trials=2)
    tables = []
    for run in ("a", "b"):
        assert main([str(exp), "--out", str(tmp_path / run), "--quiet"]) == 0
        tables.append(pd.read_csv(tmp_path / run / "trials.csv"))
    columns = ["backbone", "strategy", "trial", "state", "val_accuracy", "params_lr", "params_n_groups"]
    pd.testing.assert_frame_equal(tables[0][columns], tables[1][columns])
    summaries = [pd.read_csv(tmp_path / run / "summary.csv") for run in ("a", "b")]
    assert summaries[0].test_accuracy.tolist() == summaries[1].test_accuracy.tolist()


def test_rerunning_continues_the_study(tmp_path):
    exp = write_experiment(tmp_path, trials=1)
    out = tmp_path / "out"
    assert main([str(exp), "--out", str(out), "--quiet"]) == 0
    first = pd.read_csv(out / "trials.csv")
    assert main([str(exp), "--out", str(out), "--quiet", "--trials", "3"]) == 0
    more = pd.read_csv(out / "trials.csv")
    assert len(more) == 3 and more.trial.tolist() == [0, 1, 2]
    assert more.iloc[0].val_accuracy == first.iloc[0].val_accuracy  # trial 0 kept, not re-run
    assert more.params_lr.nunique() == 3  # new trials sample new values
    assert main([str(exp), "--out", str(out), "--quiet", "--trials", "3"]) == 0  # nothing left to do
    assert len(pd.read_csv(out / "trials.csv")) == 3


def test_defaults_study_name_and_out_folder(tmp_path, monkeypatch):
    exp = write_experiment(tmp_path / "exps", name="named_study")
    monkeypatch.chdir(tmp_path)
    assert main([str(exp), "--quiet"]) == 0
    assert (tmp_path / "results" / "named_study" / "summary.csv").is_file()
    assert main([str(exp), "--quiet", "--study", "other"]) == 0
    assert (tmp_path / "results" / "other" / "study.db").is_file()


def test_adding_a_strategy_adds_cells_to_the_same_study(tmp_path):
    exp = write_experiment(tmp_path, strategies=["last_n"])
    out = tmp_path / "out"
    assert main([str(exp), "--out", str(out), "--quiet"]) == 0
    before = pd.read_csv(out / "trials.csv")
    assert main([str(exp), "--out", str(out), "--quiet", "--set", 'strategies=["last_n", "linear_probe"]']) == 0
    after = pd.read_csv(out / "trials.csv")
    assert after.strategy.tolist() == ["last_n", "linear_probe"]
    assert after.val_accuracy.iloc[0] == before.val_accuracy.iloc[0]
    # ... while changing what a trial computes is refused (see test_bad_input for the message).
    assert main([str(exp), "--out", str(out), "--quiet", "--set", "train.epochs=3"]) == 2


def test_a_crashed_trial_is_resumed_with_its_parameters_by_the_rerun(tmp_path):
    marker = tmp_path / "crashed-once"
    prelude = f'''
from pathlib import Path
from tlkit.strategies.last_n import LastN

@register_strategy("crash_once_test")
class CrashOnce(LastN):
    def lr_scales(self, epoch):
        if epoch == 1 and not Path({str(marker)!r}).exists():
            Path({str(marker)!r}).touch()
            raise RuntimeError("simulated out-of-memory")
        return super().lr_scales(epoch)
'''
    exp = write_experiment(tmp_path, strategies=["crash_once_test"], train={"epochs": 3}, prelude=prelude)
    out = tmp_path / "out"
    env = {**os.environ, "TLKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    first = subprocess.run([sys.executable, "-m", "tlkit.sweep", str(exp), "--out", str(out), "--quiet"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode != 0 and "simulated out-of-memory" in first.stderr
    second = subprocess.run([sys.executable, "-m", "tlkit.sweep", str(exp), "--out", str(out), "--quiet"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr
    trials = pd.read_csv(out / "trials.csv")
    assert trials.state.tolist() == ["FAIL", "COMPLETE"]
    assert trials.note[0].startswith("crashed (RuntimeError: simulated out-of-memory)")
    assert trials.params_lr[0] == trials.params_lr[1] and trials.params_n_groups[0] == trials.params_n_groups[1]
    assert trials.resumed_from_trial[1] == 0 and trials.resumed_from_epoch[1] == 1
    assert pd.read_csv(out / "summary.csv").trials_failed.tolist() == [0]


def test_optuna_is_quiet_during_a_sweep_and_as_before_after_it(tmp_path):
    from tlkit.config.loading import load_experiment
    from tlkit.engine.loop import Callback
    from tlkit.sweep import run_sweep

    seen = []

    class Watch(Callback):
        def on_fit_start(self, trainer) -> None:
            seen.append(optuna.logging.get_verbosity())

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        exp = load_experiment(write_experiment(tmp_path, name="quiet", train={"epochs": 1}))
        run_sweep(exp, tmp_path / "results", callbacks=lambda cell, name, params: [Watch()])
        assert seen and set(seen) == {optuna.logging.ERROR}
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.set_verbosity(before)

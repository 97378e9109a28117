"""Repeat runs through the real CLI: the same seeds in every cell, recorded in the storage, resumed after SIGKILL to
the uninterrupted numbers, and raising K later trains only the missing seeds."""
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tlkit.search.records import repeats_study_name
from tlkit.search.repeats import REPEAT_SEED_OFFSET
from tlkit.search.study import Cell
from tlkit.testing import kill_prelude, sweep_command, write_experiment
from tlkit.utils.files import sha256

STRATEGIES = ["linear_probe", "last_n"]

# SIGKILL the process once, right after the checkpoint of epoch 1 of repeat seed 1 of last_n is saved.
KILL_PRELUDE = kill_prelude('folder.name == "seed_1" and "last_n" in folder.parts and epoch == 1')


def _sweep(exp: Path, out: Path, tmp: Path, *args: str, kill: bool = False) -> subprocess.CompletedProcess:
    return sweep_command(exp, out, tmp / "cache", *args, kill_marker=tmp / "killed" if kill else None)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repeats")
    exp = write_experiment(tmp, name="rep", strategies=STRATEGIES, repeats=2, train={"epochs": 3},
                           prelude=KILL_PRELUDE)
    proc = _sweep(exp, tmp / "out", tmp)
    assert proc.returncode == 0, proc.stderr
    return exp, tmp / "out"


@pytest.mark.slow
def test_repeats_share_their_seeds_across_cells_and_live_in_the_storage(reference):
    _, out = reference
    repeats = pd.read_csv(out / "repeats.csv")
    assert len(repeats) == 2 * 2 and set(repeats.state) == {"COMPLETE"}
    for strategy in STRATEGIES:
        mine = repeats[repeats.strategy == strategy]
        assert mine.seed.tolist() == [REPEAT_SEED_OFFSET, REPEAT_SEED_OFFSET + 1]
        study = optuna.load_study(study_name=repeats_study_name("rep", Cell("test_resnet", strategy)),
                                  storage=f"sqlite:///{out / 'study.db'}")
        stored = {t.user_attrs["repeat"]: t for t in study.trials}
        for row in mine.itertuples():
            assert stored[row.repeat].value == pytest.approx(row.val_accuracy)
            assert stored[row.repeat].user_attrs["test_metric"] == pytest.approx(row.test_accuracy)
            folder = out / f"repeats/test_resnet/{strategy}/run_{row.config_trial:04d}/seed_{row.repeat}"
            assert json.loads((folder / "trial.json").read_text())["seed"] == row.seed
    # The best configuration, not a new sample: every repeat runs the cell's best trial's parameters.
    trials = pd.read_csv(out / "trials.csv").set_index(["strategy", "trial"])
    for row in repeats.itertuples():
        params = json.loads((out / f"repeats/test_resnet/{row.strategy}/run_{row.config_trial:04d}/seed_"
                             f"{row.repeat}/trial.json").read_text())["recipe"]
        assert params["lr"] == pytest.approx(trials.loc[(row.strategy, row.config_trial), "params_lr"])
    assert (out / "tb_trials/last_n/test_resnet/t0-seed1").is_dir()


@pytest.mark.slow
def test_a_killed_repeat_resumes_to_the_uninterrupted_numbers_and_more_seeds_add_only_the_missing(reference,
                                                                                                   tmp_path):
    exp, ref = reference
    out = tmp_path / "out"
    first = _sweep(exp, out, tmp_path, kill=True)
    assert first.returncode == -signal.SIGKILL and (tmp_path / "killed").exists(), first.stderr
    second = _sweep(exp, out, tmp_path, kill=True)
    assert second.returncode == 0, second.stderr
    columns = ["backbone", "strategy", "repeat", "seed", "state", "val_accuracy", "test_accuracy", "test_loss",
               "epochs_run", "best_epoch"]
    mine, theirs = pd.read_csv(out / "repeats.csv"), pd.read_csv(ref / "repeats.csv")
    pd.testing.assert_frame_equal(mine[columns], theirs[columns])
    assert mine.resumed_from_trial.notna().sum() == 1  # the killed repeat was taken up once
    for folder in sorted(ref.glob("repeats/*/*/*/seed_*")):
        assert sha256(out / folder.relative_to(ref) / "best.safetensors") == sha256(folder / "best.safetensors")
    pd.testing.assert_frame_equal(pd.read_csv(out / "comparisons.csv"), pd.read_csv(ref / "comparisons.csv"))

    kept = {p: p.stat().st_mtime_ns for p in out.glob("repeats/*/*/*/seed_*/best.safetensors")}
    third = _sweep(exp, out, tmp_path, "--repeats", "3")
    assert third.returncode == 0, third.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "finished seeds are not trained again"
    grown = pd.read_csv(out / "repeats.csv")
    assert grown.groupby("strategy").seed.apply(list).tolist() == [[REPEAT_SEED_OFFSET + i for i in range(3)]] * 2
    assert "t over 3 seeds" in (out / "report.md").read_text()

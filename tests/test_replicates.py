"""Replicates of the whole study (``Experiment.replicates``): each its own split, search and seeds, shared by the
cells of a backbone; replicate 0 is the study a single run gives; a killed replicate resumes to the uninterrupted
numbers; raising R trains only the new replicates."""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from tlkit.config.loading import load_experiment
from tlkit.engine.splits import splits_for
from tlkit.search.study import REPLICATE_SEED_OFFSET, Cell, replicate_seed
from tlkit.search.cells import replicate_splits
from tlkit.testing import kill_prelude, sweep_command, write_experiment
from tlkit.utils.files import sha256

STRATEGIES = ["linear_probe", "last_n"]

# SIGKILL the process once, right after the checkpoint of epoch 1 of a last_n trial of replicate 1.
KILL_PRELUDE = kill_prelude('"replicate_1" in folder.parts and "last_n" in folder.parts and epoch == 1')


def _sweep(exp: Path, out: Path, tmp: Path, *args: str, kill: bool = False) -> subprocess.CompletedProcess:
    return sweep_command(exp, out, tmp / "cache", *args, kill_marker=tmp / "killed" if kill else None)


def test_each_replicate_has_its_own_split_of_the_same_data_and_replicate_0_is_the_experiments(tmp_path,
                                                                                               monkeypatch):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    exp = load_experiment(write_experiment(tmp_path, replicates=3, data={"train_per_class": None}))
    first = splits_for(exp.data, exp.train.image_size, exp.seed)
    splits_of = replicate_splits(exp, first, torch.device("cpu"))
    assert splits_of(0) is first and replicate_seed(exp.seed, 0) == exp.seed
    one, two = splits_of(1), splits_of(2)
    assert replicate_seed(exp.seed, 2) == exp.seed + 2 * REPLICATE_SEED_OFFSET
    for a, b in ((first, one), (one, two)):
        assert len(a.train) == len(b.train) and len(a.val) == len(b.val)
        assert not torch.equal(a.train.images, b.train.images), "a replicate draws its own train/validation split"
        torch.testing.assert_close(a.test.images, b.test.images)  # the test set is the dataset's: the same
        # uncapped, the same images in all: a replicate re-divides the training pool (train_per_class would also
        # draw its own subset of it)
        pool = lambda s: sorted(map(bytes, torch.cat([s.train.images, s.val.images]).flatten(1).numpy()))  # noqa
        assert pool(a) == pool(b)
    again = splits_for(exp.data, exp.train.image_size, replicate_seed(exp.seed, 2))
    torch.testing.assert_close(two.train.images, again.train.images)  # seeded: the same on every run
    assert splits_of(2) is two  # built once per replicate while it runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicates")
    exp = write_experiment(tmp, name="rep", strategies=STRATEGIES, trials=2, replicates=2, train={"epochs": 3},
                           prelude=KILL_PRELUDE)
    proc = _sweep(exp, tmp / "out", tmp)
    assert proc.returncode == 0, proc.stderr
    return exp, tmp / "out"


@pytest.mark.slow
def test_replicates_share_seeds_across_cells_and_are_recorded(reference):
    _, out = reference
    table = pd.read_csv(out / "replicates.csv")
    assert table[["strategy", "replicate"]].values.tolist() == [["last_n", 0], ["last_n", 1], ["linear_probe", 0],
                                                                ["linear_probe", 1]]
    assert table.seed.tolist() == [0, REPLICATE_SEED_OFFSET] * 2
    trials = pd.read_csv(out / "trials.csv")
    assert trials.groupby(["strategy", "replicate"]).size().tolist() == [2, 2, 2, 2]
    # one sampler seed per replicate, shared by the cells: the shared hyperparameters are drawn alike
    lr = trials.pivot_table(index=["replicate", "trial"], columns="strategy", values="params_lr")
    np.testing.assert_allclose(lr["last_n"], lr["linear_probe"])
    assert lr.loc[0].values.tolist() != lr.loc[1].values.tolist(), "each replicate runs its own search"
    storage = f"sqlite:///{out / 'study.db'}"
    for row in table.itertuples():
        study = optuna.load_study(study_name=Cell("test_resnet", row.strategy, row.replicate).study_name("rep"),
                                  storage=storage)
        assert study.best_trial.value == pytest.approx(row.best_val_accuracy)
        assert study.user_attrs["best_test"]["test_metric"] == pytest.approx(row.test_accuracy)
        assert (out / "trials" / Cell("test_resnet", row.strategy, row.replicate).folder / "trial_0000"
                / "best.safetensors").is_file()
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("best/*/*")) == [
        "best/test_resnet/last_n", "best/test_resnet/linear_probe"]  # only replicate 0 exports its best model
    summary = pd.read_csv(out / "summary.csv")
    assert summary.trials_complete.tolist() == [2, 2]  # the search columns are replicate 0's


@pytest.mark.slow
def test_one_replicate_is_the_study_as_before(reference, tmp_path):
    exp, ref = reference
    out = tmp_path / "out"
    proc = _sweep(exp, out, tmp_path, "--replicates", "1")
    assert proc.returncode == 0, proc.stderr
    assert not (out / "replicates.csv").exists()
    for name in ("trials.csv", "history.csv", "repeats.csv", "predictions.csv"):
        assert "replicate" not in pd.read_csv(out / name).columns, name
    assert not list(out.glob("trials/*/*/replicate_*"))
    # replicate 0 of the replicated study is this study, trial for trial
    mine = pd.read_csv(out / "trials.csv")
    theirs = pd.read_csv(ref / "trials.csv").query("replicate == 0").drop(columns="replicate")
    columns = ["backbone", "strategy", "trial", "state", "val_accuracy", "params_lr", "epochs_run", "best_epoch"]
    pd.testing.assert_frame_equal(mine[columns], theirs[columns].reset_index(drop=True))

    kept = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/*/trial_*/best.safetensors")}
    grown = _sweep(exp, out, tmp_path, "--replicates", "2")
    assert grown.returncode == 0, grown.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "replicate 0 is not trained again"
    pd.testing.assert_frame_equal(pd.read_csv(out / "replicates.csv"), pd.read_csv(ref / "replicates.csv"))


@pytest.mark.slow
def test_a_killed_replicate_resumes_to_the_uninterrupted_numbers(reference, tmp_path):
    exp, ref = reference
    out = tmp_path / "out"
    first = _sweep(exp, out, tmp_path, kill=True)
    assert first.returncode == -signal.SIGKILL and (tmp_path / "killed").exists(), first.stderr
    second = _sweep(exp, out, tmp_path, kill=True)
    assert second.returncode == 0, second.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out / "replicates.csv"), pd.read_csv(ref / "replicates.csv"))
    columns = ["backbone", "strategy", "replicate", "run", "state", "val_accuracy", "params_lr", "epochs_run"]
    mine, theirs = pd.read_csv(out / "trials.csv"), pd.read_csv(ref / "trials.csv")
    resumed = mine[mine.resumed_from_epoch.notna()]
    assert len(resumed) == 1 and resumed.replicate.item() == 1 and resumed.strategy.item() == "last_n"
    finished = mine[mine.state == "COMPLETE"].sort_values(["strategy", "replicate", "run"])  # not the killed attempt
    pd.testing.assert_frame_equal(finished[columns].reset_index(drop=True), theirs[columns])
    for path in sorted(ref.glob("trials/*/*/replicate_1/trial_*/best.safetensors")):
        assert sha256(out / path.relative_to(ref)) == sha256(path)


def test_auto_races_stops_worse_cells_and_ends_at_max_replicates(tmp_path, monkeypatch):
    """The loop of ``--replicates auto`` with scripted verdicts: from the 4th replicate on, a cell decided worse
    gets no more replicates; with one comparison left undecided it runs to max_replicates."""
    import tlkit.sweep
    from tlkit.sweep import run_sweep

    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    exp = load_experiment(write_experiment(tmp_path, strategies=["linear_probe", "last_n", "bitfit"],
                                           replicates="auto", max_replicates=6, train={"epochs": 1}))
    asked = []

    def scripted(storage, e, upto):
        asked.append((len({s.replicate for s in map(_cell, optuna.get_all_study_summaries(storage))}), upto))
        return {Cell("test_resnet", "linear_probe"): "worse", Cell("test_resnet", "last_n"): "best",
                Cell("test_resnet", "bitfit"): "undecided"}

    monkeypatch.setattr(tlkit.sweep, "_verdicts", scripted)
    out = run_sweep(exp, tmp_path / "out")
    assert asked == [(4, 3), (5, 4), (6, 5)]  # decided after replicates 4, 5 and 6 were trained, on those
    auto = __import__("json").loads((out / "experiment.json").read_text())["replicates_auto"]
    assert auto == {"replicates": 6, "reason": "max_replicates=6 reached", "cell_replicates": 3 * 4 + 2 * 2,
                    "full_grid": 18, "max_replicates": 6, "stopped_as_worse": {"test_resnet/linear_probe": 4}}
    names = {s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{out / 'study.db'}")}
    assert "tiny/test_resnet/linear_probe/replicate_3" in names
    assert "tiny/test_resnet/linear_probe/replicate_4" not in names and "tiny/test_resnet/bitfit/replicate_5" in names


def _cell(summary) -> Cell:
    from tlkit.search.study import study_cell
    return study_cell(summary)


@pytest.mark.slow
def test_auto_stops_once_every_comparison_is_decided(tmp_path):
    """With a rope of the whole accuracy range every difference is practically equivalent as soon as it can be
    tested: auto stops at its first decision, 4 replicates, and the report says so."""
    exp = write_experiment(tmp_path, name="auto", strategies=STRATEGIES, train={"epochs": 1})
    proc = _sweep(exp, tmp_path / "out", tmp_path, "--replicates", "auto", "--max-replicates", "6",
                  "--set", "rope=1.0")
    assert proc.returncode == 0, proc.stderr
    facts = __import__("json").loads((tmp_path / "out" / "experiment.json").read_text())
    assert facts["replicates_auto"]["replicates"] == 4
    assert facts["replicates_auto"]["reason"] == "every comparison decided"
    comparisons = pd.read_csv(tmp_path / "out" / "comparisons.csv")
    assert comparisons.verdict.tolist() == ["equivalent"]
    assert comparisons.method.item().startswith("paired t-test over 2 replicates (1, 3)")
    assert "4 replicates" in (tmp_path / "out" / "report.md").read_text()

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

from tlkit.output.plots import plot_critical_difference
from tlkit.report import PLOTS, TABLES, main
from tlkit.testing import run_tiny_sweep

BACKBONES = ["test_resnet", "test_vit"]
STRATEGIES = ["linear_probe", "last_n"]
DRAWN = [name for key, name in PLOTS.items() if key != "critical_difference"]  # needs 3 backbones
REPORT_FILES = [*TABLES, "report.md", *DRAWN]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny sweep (2 backbones x 2 strategies x 2 trials x 2 epochs, 2 repeats) shared by this module's tests."""
    return run_tiny_sweep(tmp_path_factory.mktemp("report"), tmp_path_factory.getbasetemp() / "tlkit-cache",
                          backbones=BACKBONES, strategies=STRATEGIES, trials=2, repeats=2, pruner="none",
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


def test_report_md_shows_intervals_verdicts_and_the_tests(results: Path) -> None:
    text = (results / "report.md").read_text()
    summary = pd.read_csv(results / "summary.csv")
    comparisons = pd.read_csv(results / "comparisons.csv")
    header = next(line for line in text.splitlines() if line.startswith("| backbone | linear_probe"))
    assert header == "| backbone | linear_probe | last_n |"  # strategies in the experiment's order
    assert "(t over 2 seeds)" in text
    for b in BACKBONES:
        row = next(line for line in text.splitlines() if line.startswith(f"| {b} | ") and line.count("|") == 4)
        cells = summary[summary.backbone == b].set_index("strategy")
        test = comparisons[comparisons.backbone == b].iloc[0]
        for shown, strategy in zip(row.split("|")[2:4], STRATEGIES):
            c = cells.loc[strategy]
            interval = f"{c.test_accuracy_mean:.4f} [{c.test_accuracy_ci_low:.4f}, {c.test_accuracy_ci_high:.4f}]"
            mark = {"equivalent": " ≈", "undecided": " ?", "better": " ↑"}.get(test.verdict, "")
            expected = f"**{interval}**" if strategy == test.best else interval + mark
            assert shown.strip() == expected
        assert f"**{b}** (best on validation: {test.best})" in text
        assert {"equivalent": "are practically equivalent", "undecided": "undecided on test accuracy",
                "worse": f"{test.best} beats", "better": "did not hold up on test"}[test.verdict] in text
    for name in ("## Winner per backbone", "## Which differences are real", "## Across backbones",
                 "## Best configuration of each cell", "Needs 3 or more backbones"):
        assert name in text, name
    done = int(summary.trials_complete.sum()), int(summary.trials_pruned.sum())
    assert f"{len(summary)} cells ({len(BACKBONES)} backbones x {len(STRATEGIES)} strategies)" in text
    assert f"({done[0]} complete, {done[1]} pruned, 0 failed)" in text
    for name in DRAWN:
        assert f"]({name})" in text
        with Image.open(results / name) as image:
            assert image.format == "PNG" and image.width >= 800 and image.height >= 300


def test_budget_curves_come_from_the_complete_trials(results: Path) -> None:
    """budget.csv is the expected best of each cell's complete trials (tlkit.analysis.budget), and report.md gives
    each cell's verdict in the experiment's order."""
    trials = pd.read_csv(results / "trials.csv")
    budget = pd.read_csv(results / "budget.csv")
    assert list(budget.columns) == ["backbone", "strategy", "trials", "expected_best", "sd", "complete"]
    for (b, s), cell in budget.groupby(["backbone", "strategy"]):
        values = trials[(trials.backbone == b) & (trials.strategy == s) & (trials.state == "COMPLETE")].val_accuracy
        assert cell.trials.tolist() == list(range(1, len(values) + 1))
        assert cell.expected_best.iloc[0] == pytest.approx(values.mean())  # one trial: the mean
        assert cell.expected_best.iloc[-1] <= values.max() + 1e-12
    text = (results / "report.md").read_text()
    section = text[text.index("## Budget curves"):]
    rows = [line for line in section.splitlines() if line.startswith("| test_")]
    assert [tuple(r.split(" | ")[:2]) for r in rows] == [(f"| {b}", s) for b in BACKBONES for s in STRATEGIES]
    assert all(r.rstrip(" |").rsplit(" | ", 1)[1] in ("flat", "still rising: more trials may help") for r in rows)


def test_repeats_and_predictions_tables_match_the_storage(results: Path) -> None:
    repeats = pd.read_csv(results / "repeats.csv")
    assert len(repeats) == 4 * 2 and set(repeats.state) == {"COMPLETE"}
    assert sorted(set(repeats.seed)) == [100_000, 100_001]  # the same seeds in every cell: paired
    summary = pd.read_csv(results / "summary.csv").set_index(["backbone", "strategy"])
    for (b, s), mine in repeats.groupby(["backbone", "strategy"]):
        assert summary.loc[(b, s), "test_accuracy_mean"] == pytest.approx(mine.test_accuracy.mean())
        assert summary.loc[(b, s), "repeats"] == 2
    predictions = pd.read_csv(results / "predictions.csv")
    models = predictions.groupby(["backbone", "strategy", "model", "repeat"], dropna=False)
    assert len(models) == 4 * 3  # each cell: the search's best trial and 2 repeats
    for (b, s, model, repeat), rows in models:
        assert rows.example.tolist() == list(range(100))  # test_per_class=20 x 5 classes
        accuracy = (rows.pred == rows.label).mean()
        if model == "repeat":
            stored = repeats[(repeats.backbone == b) & (repeats.strategy == s) & (repeats.repeat == repeat)]
            assert accuracy == pytest.approx(stored.test_accuracy.iloc[0])
        else:
            assert accuracy == pytest.approx(summary.loc[(b, s), "test_accuracy"])
        assert ((rows.label_rank == 0) == (rows.pred == rows.label)).all()
        assert rows.p_label.between(0, 1).all()


def test_a_critical_difference_diagram_is_drawn_from_the_ranks(tmp_path: Path) -> None:
    friedman = {"ranks": {"a": 1.2, "b": 1.9, "c": 3.4, "d": 3.5}, "cd": 1.48, "p": 0.01, "backbones": 10,
                "statistic": 20.0}
    assert plot_critical_difference(friedman, tmp_path / "cd.png")
    with Image.open(tmp_path / "cd.png") as image:
        assert image.format == "PNG" and image.width >= 600
    assert not plot_critical_difference(None, tmp_path / "none.png")


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


def test_the_report_command_imports_no_torch() -> None:
    """Rebuilding a report reads the storage and tables: ``python -m tlkit.report --help`` took ~8 s on a 2-core
    host importing torch and timm for nothing. Checked in a fresh interpreter (this one has imported everything)."""
    code = ("import sys, tlkit.report\n"
            "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"
    help_run = subprocess.run([sys.executable, "-m", "tlkit.report", "--help"], capture_output=True, text=True,
                              timeout=120)
    assert help_run.returncode == 0 and "results" in help_run.stdout


def test_errors_name_the_fix(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert "No experiment.json" in capsys.readouterr().err
    assert main([str(results), "--study", "nope"]) == 2
    assert "No study 'nope'" in capsys.readouterr().err
    (tmp_path / "experiment.json").write_text(json.dumps({"name": "tiny", "metric": "accuracy"}))
    assert main([str(tmp_path)]) == 2
    assert "--storage" in capsys.readouterr().err
    assert not (tmp_path / "study.db").exists()  # a reader never creates an empty study


def test_optuna_dashboard_shows_every_cell(results: Path) -> None:
    """Optuna's own dashboard on the study storage: the real server, read through its API as its web page is."""
    import json as json_module
    import shutil
    import socket
    import time
    import urllib.request

    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    assert dashboard, "optuna-dashboard is a dev dependency (pip install -e '.[dev]')"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([dashboard, f"sqlite:///{results / 'study.db'}", "--host", "127.0.0.1", "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    payload = json_module.loads(response.read())
                studies = payload.get("study_summaries", payload.get("studies"))  # 0.21 / older dashboards
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "the dashboard did not answer within 60 s"
        by_name = {s["study_name"]: s for s in studies}
        for b in BACKBONES:
            for s in STRATEGIES:
                assert by_name[f"tiny/{b}/{s}"]["directions"] == ["maximize"]
                assert f"tiny:repeats/{b}/{s}" in by_name  # the repeat runs too
        study_id = by_name[f"tiny/{BACKBONES[0]}/{STRATEGIES[0]}"]["study_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study_id}", timeout=10) as response:
            detail = json_module.loads(response.read())
        assert len(detail["trials"]) == 2 and {t["state"] for t in detail["trials"]} == {"Complete"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_report_says_when_the_validation_pick_loses_on_test() -> None:
    """Issue 27: a strategy significantly better than the pick on test is marked ↑ and listed as better, never worse;
    issue 23: an equivalent one is marked ≈, an undecided one ?."""
    from tlkit import report

    strategies = ["lp_ft", "last_n", "bitfit", "gradual"]
    summary = pd.DataFrame({"backbone": ["b"] * 4, "strategy": strategies,
                            "test_accuracy_mean": [0.928, 0.994, 0.93, 0.93],
                            "test_accuracy_ci_low": [0.9, 0.99, 0.9, 0.9],
                            "test_accuracy_ci_high": [0.95, 0.998, 0.95, 0.95]})
    comparisons = pd.DataFrame({"backbone": ["b"] * 3, "best": ["lp_ft"] * 3, "strategy": strategies[1:],
                                "verdict": ["better", "equivalent", "undecided"], "rope": [0.01] * 3})
    won = report.winners(summary, comparisons, "accuracy")
    assert (won.best[0], won.better[0], won.equivalent[0], won.undecided[0], won.worse[0]) == (
        "lp_ft", ["last_n"], ["bitfit"], ["gradual"], [])
    header, _, row = report._main_table(summary, won, "accuracy", ["b"], strategies)
    assert row == ("| b | **0.9280 [0.9000, 0.9500]** | 0.9940 [0.9900, 0.9980] ↑ | 0.9300 [0.9000, 0.9500] ≈ "
                   "| 0.9300 [0.9000, 0.9500] ? |")

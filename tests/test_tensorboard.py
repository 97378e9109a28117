"""TensorBoard as a user opens it, read back with TensorBoard's own readers: ``tb_trials/`` with one run per trial
and its scalars, ``tb/`` with one run per cell, both HParams dashboards with Backbone and Strategy first; and no
duplicate or missing epoch when a trial resumes or is pruned."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from tlkit.search.study import Cell
from tlkit.output.boards import CELLS_DIR, TRIALS_DIR, lr_tag, run_dir
from tlkit.output.tensorboard import TensorBoardLogger
from tlkit.testing import run_tiny_sweep
from tlkit.engine.loop import EpochResult

STRATEGIES = ["linear_probe", "last_n"]
EPOCHS = 3


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_tiny_sweep(tmp_path_factory.mktemp("tb"), tmp_path_factory.getbasetemp() / "tlkit-cache",
                          strategies=STRATEGIES, trials=2, pruner="none", train={"epochs": EPOCHS},
                          data={"test_per_class": 10})


def _stored(results: Path, strategy: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=f"tiny/test_resnet/{strategy}",
                             storage=f"sqlite:///{results / 'study.db'}").trials


def _raw_counts(folder: Path) -> Counter:
    """(tag, step) -> how many times it was written, over every event file of the run (no dedup, no purge)."""
    counts: Counter = Counter()
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                counts[(value.tag, event.step)] += 1
    return counts


def test_one_run_per_trial_with_its_scalars(results: Path) -> None:
    root = results / TRIALS_DIR
    runs = sorted({str(p.parent.relative_to(root)) for p in root.rglob("events.out.tfevents.*")})
    # "." is the root's own run: the HParams columns every trial shares (write_hparams_config).
    assert runs == [".", *(f"{s}/test_resnet/t{n}" for s in sorted(STRATEGIES) for n in (0, 1))]
    for strategy in STRATEGIES:
        for trial in _stored(results, strategy):
            run = trial.user_attrs["run"]
            folder = root / strategy / "test_resnet" / f"t{run}"
            acc = EventAccumulator(str(folder))
            acc.Reload()
            history = trial.user_attrs["history"]

            def values(tag: str) -> list[float]:
                events = acc.Scalars(tag)
                assert [e.step for e in events] == list(range(EPOCHS)), tag  # each epoch once, in order
                return [e.value for e in events]

            assert values("loss/train") == pytest.approx([h["train_loss"] for h in history], rel=1e-6)
            assert values("loss/val") == pytest.approx([h["val_loss"] for h in history], rel=1e-6)
            assert values("val/accuracy") == pytest.approx([h["val_metric"] for h in history], rel=1e-6)
            assert values("params/trainable") == [h["trainable_params"] for h in history]
            assert values("throughput/images_per_s") == pytest.approx([h["images_per_s"] for h in history], rel=1e-6)
            assert values("hparams/best_val_accuracy")[-1] == pytest.approx(trial.value, rel=1e-6)
            n = trial.user_attrs["num_groups"]
            lr_tags = {t for t in acc.Tags()["scalars"] if t.startswith("lr/")}
            assert lr_tags == {lr_tag(i, n) for i in range(n)} and "lr/head" in lr_tags
            for i in range(n):
                assert values(lr_tag(i, n)) == pytest.approx([h[f"lr_group{i}"] for h in history], rel=1e-6)
            if strategy == "linear_probe":
                assert values(lr_tag(0, n)) == [0.0] * EPOCHS  # frozen stem
            assert all(count == 1 for count in _raw_counts(folder).values())


def _hparams_tab(logdir: Path):
    """What TensorBoard's HParams dashboard would show: its columns and its rows (session groups by name)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(logdir=str(logdir),
                               data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)), multiplexer=mux)
    backend = backend_context.Context(tb)
    request_context = context.RequestContext()
    experiment = get_experiment.Handler(request_context, backend, "", api_pb2.GetExperimentRequest()).run()
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, allowed_statuses=[
        api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING])
    response = list_session_groups.Handler(request_context, backend, "", request).run()
    return experiment, {g.name: g for g in response.session_groups}, api_pb2


def test_hparams_dashboard_lists_every_trial(results: Path) -> None:
    experiment, groups, api_pb2 = _hparams_tab(results / TRIALS_DIR)
    names = [h.name for h in experiment.hparam_infos]
    assert names[:2] == ["Backbone", "Strategy"]  # the columns TensorBoard shows first
    assert set(names) >= {"lr", "weight_decay", "n_groups"}  # what every strategy searches, not the first trial's
    assert "hparams/best_val_accuracy" in {m.name.tag for m in experiment.metric_infos}
    assert len(groups) == 4
    for strategy in STRATEGIES:
        for trial in _stored(results, strategy):
            group = groups[f"{strategy}/test_resnet/t{trial.user_attrs['run']}"]
            assert group.hparams["Backbone"].string_value == "test_resnet"
            assert group.hparams["Strategy"].string_value == strategy
            for name, value in trial.params.items():
                assert group.hparams[name].number_value == pytest.approx(value), name
            metrics = {m.name.tag: m.value for m in group.metric_values}
            assert metrics["hparams/best_val_accuracy"] == pytest.approx(trial.value, rel=1e-6)
            assert metrics["hparams/epochs_run"] == EPOCHS
            assert [s.status for s in group.sessions] == [api_pb2.STATUS_SUCCESS]


def test_the_comparison_board_has_one_run_per_cell_with_its_test_interval(results: Path) -> None:
    """``tb/``: what a newcomer opens first; each cell's row carries the summary table's numbers."""
    import pandas as pd

    summary = pd.read_csv(results / "summary.csv").set_index("strategy")
    experiment, groups, _ = _hparams_tab(results / CELLS_DIR)
    assert [h.name for h in experiment.hparam_infos][:2] == ["Backbone", "Strategy"]
    assert sorted(groups) == [f"{s}/test_resnet" for s in sorted(STRATEGIES)]
    for strategy in STRATEGIES:
        metrics = {m.name.tag: m.value for m in groups[f"{strategy}/test_resnet"].metric_values}
        row = summary.loc[strategy]
        assert metrics["hparams/test_accuracy_mean"] == pytest.approx(row["test_accuracy_mean"], rel=1e-6)
        assert metrics["hparams/test_accuracy_ci_low"] == pytest.approx(row["test_accuracy_ci_low"], rel=1e-6)
        acc = EventAccumulator(str(results / CELLS_DIR / strategy / "test_resnet"))
        acc.Reload()
        assert [e.step for e in acc.Scalars("val/accuracy")] == list(range(EPOCHS))  # the best trial's epochs


def _epoch(e: int) -> EpochResult:
    return EpochResult(epoch=e, train_loss=1.0 / (e + 1), val_loss=2.0 / (e + 1), val_metric=0.1 * (e + 1),
                       lrs=[0.0, 0.01], trainable_params=100, images_per_s=50.0, seconds=1.0)


def _trainer(history: list[EpochResult]) -> SimpleNamespace:
    """What the logger reads from a Trainer: its layer groups, history, next epoch and best metric."""
    return SimpleNamespace(groups=[SimpleNamespace(name="stem"), SimpleNamespace(name="head")],
                           history=list(history), epoch=len(history), best_metric=0.0)


def _run(logger: TensorBoardLogger, trainer: SimpleNamespace, epochs: range, value: float) -> None:
    for e in epochs:
        trainer.history.append(_epoch(e))
        trainer.history[-1].val_metric = value + e
        logger.on_epoch_end(trainer, trainer.history[-1])


def test_a_resumed_trial_shows_each_epoch_once_with_the_resumed_values(tmp_path: Path) -> None:
    cell = Cell("test_resnet", "last_n")
    first = TensorBoardLogger(tmp_path, cell, "trial_0007", {"lr": 0.01}, "accuracy")
    trainer = _trainer([])
    first.on_fit_start(trainer)
    _run(first, trainer, range(3), value=100.0)  # epochs 0..2 logged, epoch 2's checkpoint never saved
    first.writer.flush()  # then the process dies: no close, no session end

    resumed = TensorBoardLogger(tmp_path, cell, "trial_0007", {"lr": 0.01}, "accuracy")
    trainer = _trainer([_epoch(0), _epoch(1)])  # the checkpoint of epoch 1: epoch 2 runs again
    resumed.on_fit_start(trainer)
    _run(resumed, trainer, range(2, 5), value=200.0)
    resumed.on_fit_end(trainer, "completed")

    folder = run_dir(tmp_path, cell, "trial_0007")
    assert folder == tmp_path / "last_n" / "test_resnet" / "trial_0007"
    acc = EventAccumulator(str(folder))
    acc.Reload()
    shown = [(e.step, e.value) for e in acc.Scalars("val/accuracy")]
    assert shown == [(0, 100.0), (1, 101.0), (2, 202.0), (3, 203.0), (4, 204.0)]  # the dead epoch 2 is purged
    counts = _raw_counts(folder)
    assert counts[("_hparams_/session_start_info", 0)] == 1 and counts[("_hparams_/session_end_info", 0)] == 1


def test_a_trial_restarted_from_scratch_is_shown_once(tmp_path: Path) -> None:
    """A process that died before its first checkpoint: the rerun starts at epoch 0 and hides all it wrote."""
    cell = Cell("test_vit", "gradual")
    first = TensorBoardLogger(tmp_path, cell, "trial_0000", {}, "accuracy")
    trainer = _trainer([])
    first.on_fit_start(trainer)
    _run(first, trainer, range(1), value=50.0)
    first.writer.flush()
    again = TensorBoardLogger(tmp_path, cell, "trial_0000", {}, "accuracy")
    trainer = _trainer([])
    again.on_fit_start(trainer)
    _run(again, trainer, range(2), value=60.0)
    again.on_fit_end(trainer, "pruned")
    acc = EventAccumulator(str(run_dir(tmp_path, cell, "trial_0000")))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("val/accuracy")] == [(0, 60.0), (1, 61.0)]
    assert [e.value for e in acc.Scalars("lr/head")] == pytest.approx([0.01, 0.01])


@pytest.mark.parametrize("outcome, ends", [("completed", 1), ("pruned", 1), ("interrupted", 0), ("failed", 0)])
def test_only_a_finished_trial_gets_its_hparams_status(tmp_path: Path, outcome: str, ends: int) -> None:
    """A trial that will resume (interrupted, crashed) must not be shown as ended."""
    cell = Cell("test_resnet", "bitfit")
    logger = TensorBoardLogger(tmp_path, cell, "trial_0003", {"lr": 0.1}, "accuracy")
    trainer = _trainer([])
    logger.on_fit_start(trainer)
    _run(logger, trainer, range(1), value=0.5)
    logger.on_fit_end(trainer, outcome)
    logger.on_fit_end(trainer, outcome)  # a second call does nothing
    counts = _raw_counts(run_dir(tmp_path, cell, "trial_0003"))
    assert counts[("_hparams_/session_end_info", 0)] == ends and counts[("val/accuracy", 0)] == 1


def test_two_rebuilds_of_the_comparison_board_at_once_both_finish_whole(results: Path, tmp_path: Path) -> None:
    """Two sweeps (or reports) of one results folder rebuild ``tb/`` at the same moment: neither may fail on an event
    file the other deleted, and what is left is one whole board with no temporary folder beside it."""
    import shutil
    import threading

    import pandas as pd

    from tlkit.output.boards import write_cell_boards

    shutil.copytree(results / CELLS_DIR, tmp_path / CELLS_DIR)
    summary, history = pd.read_csv(results / "summary.csv"), pd.read_csv(results / "history.csv")
    start, errors = threading.Barrier(2), []

    def rebuild() -> None:
        try:
            for _ in range(8):
                start.wait()
                write_cell_boards(tmp_path / CELLS_DIR, summary, history, "accuracy")
        except Exception as err:  # noqa: BLE001 - reported below, with the other thread's
            errors.append(err)
            start.abort()

    threads = [threading.Thread(target=rebuild) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not [e for e in errors if not isinstance(e, threading.BrokenBarrierError)], errors
    assert [p.name for p in tmp_path.iterdir()] == [CELLS_DIR], "no temporary folder left"
    _, groups, _ = _hparams_tab(tmp_path / CELLS_DIR)
    assert sorted(groups) == [f"{s}/test_resnet" for s in sorted(STRATEGIES)]
    for strategy in STRATEGIES:
        acc = EventAccumulator(str(tmp_path / CELLS_DIR / strategy / "test_resnet"))
        acc.Reload()
        assert [e.step for e in acc.Scalars("val/accuracy")] == list(range(EPOCHS))

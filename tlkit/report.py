"""What a sweep leaves for people: tables, plots and ``report.md``, all rebuilt from the study storage.

The storage is the source of truth, so ``python -m tlkit.report results/<study>`` rebuilds every file, even while a
sweep is still running or after it ran on other machines; running it twice gives byte-identical files (sorted rows,
fixed number formats, no timestamps, PNGs without a software stamp).

Example:
    python -m tlkit.report results/digits
    python -m tlkit.report results/digits --storage postgresql://user@host/tlkit
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from tlkit import _optuna
from tlkit.checkpoint import atomic_write, read_json
from tlkit.errors import TlkitError
from tlkit.study import cell_studies

__all__ = ["trials_table", "history_table", "summary_table", "write_report", "write_csv",
           "report_markdown", "main"]

PLOTS = {
    "test_by_strategy": "test_by_strategy.png",
    "accuracy_vs_params": "accuracy_vs_params.png",
    "accuracy_vs_time": "accuracy_vs_time.png",
    "learning_curves": "learning_curves.png",
}


# ----------------------------------------------------------------------------------------------------------- tables

def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Atomically: a reader never sees half a table."""
    atomic_write(Path(path), lambda tmp: df.to_csv(tmp, index=False, lineterminator="\n"))


def _studies(storage: Any, study: str) -> list[optuna.Study]:
    return [optuna.load_study(study_name=name, storage=storage) for name in sorted(cell_studies(storage, study))]


def _best(s: optuna.Study) -> FrozenTrial | None:
    """Optuna's own best trial, so the table names the same trial ``evaluate_best`` scored on the test split."""
    try:
        return s.best_trial
    except ValueError:
        return None


def _ints(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Counts stay integers in the CSV (``12``, not ``12.0``) even when some rows have none."""
    for c in columns:
        if c in df.columns:
            df[c] = df[c].astype("Int64")
    return df


def trials_table(storage: Any, study: str, metric: str) -> pd.DataFrame:
    """One row per trial of every cell."""
    rows = []
    for s in _studies(storage, study):
        for t in s.get_trials(deepcopy=False):
            u = t.user_attrs
            rows.append({
                "backbone": s.user_attrs.get("backbone"), "strategy": s.user_attrs.get("strategy"),
                "trial": t.number, "state": t.state.name, f"val_{metric}": t.value,
                **{f"params_{k}": v for k, v in sorted(t.params.items())},
                "epochs_run": u.get("epochs_run", 0), "best_epoch": u.get("best_epoch"),
                "trainable_params": u.get("trainable_params"), "total_params": u.get("total_params"),
                "wall_time_s": u.get("wall_time"), "resumed_from_trial": u.get("resumed_from_trial"),
                "resumed_from_epoch": u.get("resumed_from_epoch"),
                "note": u.get("pruned_reason") or u.get("failure_reason") or "",
                "weights": u.get("weights"), "bn_policy": u.get("bn_policy"), "run": u.get("run", t.number),
            })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    fixed = [c for c in df.columns if not c.startswith("params_")]
    params = sorted(c for c in df.columns if c.startswith("params_"))
    order = fixed[:5] + params + fixed[5:]
    df = df[order].sort_values(["backbone", "strategy", "trial"], kind="stable").reset_index(drop=True)
    return _ints(df, ["epochs_run", "best_epoch", "trainable_params", "total_params", "resumed_from_trial",
                      "resumed_from_epoch", "run"])


def history_table(storage: Any, study: str, metric: str) -> pd.DataFrame:
    """One row per epoch of every trial: losses, metric, per-group learning rates, trainable params, images/s.

    A trial that resumed another (after a crash) carries the epochs it inherited, so each trial's rows are its
    whole learning curve.
    """
    rows = []
    for s in _studies(storage, study):
        for t in s.get_trials(deepcopy=False):
            for epoch in t.user_attrs.get("history") or []:
                row = {"backbone": s.user_attrs.get("backbone"), "strategy": s.user_attrs.get("strategy"),
                       "trial": t.number, "state": t.state.name, **epoch}
                row[f"val_{metric}"] = row.pop("val_metric")
                rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    lrs = sorted((c for c in df.columns if c.startswith("lr_group")), key=lambda c: int(c[len("lr_group"):]))
    order = ["backbone", "strategy", "trial", "state", "epoch", "train_loss", "val_loss", f"val_{metric}", *lrs,
             "trainable_params", "images_per_s", "seconds", "features_cached"]
    df = df[[c for c in order if c in df.columns]]
    df = df.sort_values(["backbone", "strategy", "trial", "epoch"], kind="stable").reset_index(drop=True)
    return _ints(df, ["epoch", "trainable_params"])


def summary_table(storage: Any, study: str, metric: str) -> pd.DataFrame:
    """One row per (backbone, strategy) cell: budget spent, the best trial, and its test score."""
    rows = []
    for s in _studies(storage, study):
        trials = s.get_trials(deepcopy=False)
        count = {state: sum(t.state == state for t in trials) for state in TrialState}
        retried = {n for t in trials for n in _optuna.earlier_attempts(t)}
        failed = sum(t.state == TrialState.FAIL and t.number not in retried for t in trials)
        best = _best(s)
        test = s.user_attrs.get("best_test") or {}
        ok = best is not None and test.get("trial") == best.number
        rows.append({
            "backbone": s.user_attrs.get("backbone"), "strategy": s.user_attrs.get("strategy"),
            "trials_complete": count[TrialState.COMPLETE], "trials_pruned": count[TrialState.PRUNED],
            "trials_failed": failed,
            "best_trial": best.number if best else None, f"best_val_{metric}": best.value if best else None,
            f"test_{metric}": test.get("test_metric") if ok else None,
            "test_loss": test.get("test_loss") if ok else None,
            "trainable_params": best.user_attrs.get("trainable_params") if best else None,
            "total_params": best.user_attrs.get("total_params") if best else None,
            "train_time_s": best.user_attrs.get("wall_time") if best else None,
            "cell_time_s": round(sum(t.user_attrs.get("wall_time") or 0.0 for t in trials), 3),
            "best_params": json.dumps(best.params, sort_keys=True) if best else "",
            "weights": best.user_attrs.get("weights") if best else None,
            "best_epoch": best.user_attrs.get("best_epoch") if best else None,
        })
    return _ints(pd.DataFrame(rows), ["best_trial", "trainable_params", "total_params", "best_epoch"])


def _order(summary: pd.DataFrame, experiment: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Backbones and strategies in the experiment file's order (how its author thinks of them), then any others."""
    def ordered(column: str, key: str) -> list[str]:
        given = [x for x in experiment.get(key, []) if x in set(summary[column])] if not summary.empty else []
        rest = sorted(set(summary[column]) - set(given)) if not summary.empty else []
        return given + rest
    return ordered("backbone", "backbones"), ordered("strategy", "strategies")


def _colors(strategies: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(strategies) <= 10 else "tab20"]
    return {s: cmap(i % cmap.N) for i, s in enumerate(strategies)}


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")


def _short(v: float) -> str:
    """Tick labels people read: 300, 1k, 2.5M, 0.5."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def _save(fig: Any, path: Path) -> None:
    """PNG without the matplotlib version stamp, so a rebuild is byte-identical."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def plot_test_by_strategy(summary: pd.DataFrame, metric: str, backbones: list[str], strategies: list[str],
                          path: Path) -> bool:
    """One panel per backbone: test score of each strategy's best trial (bars), its validation score (ticks)."""
    from matplotlib.figure import Figure

    test, val = f"test_{metric}", f"best_val_{metric}"
    if summary.empty or summary[test].isna().all():
        return False
    colors = _colors(strategies)
    ncols = min(3, len(backbones))
    nrows = math.ceil(len(backbones) / ncols)
    fig = Figure(figsize=(5.2 * ncols, max(3.0, 0.42 * len(strategies) + 1.6) * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    for ax, backbone in zip(axes.flat, backbones):
        cell = summary[summary["backbone"] == backbone].set_index("strategy").reindex(strategies)
        y = list(range(len(strategies)))
        scores, vals = cell[test].astype(float), cell[val].astype(float)
        ax.barh(y, scores.fillna(0.0), color=[colors[s] for s in strategies], height=0.7)
        ax.plot(vals, y, "k|", markersize=14, markeredgewidth=2)
        for yi, score, v in zip(y, scores, vals):
            right = max(0.0 if math.isnan(score) else score, 0.0 if math.isnan(v) else v)
            ax.text(right + 0.02, yi, "n/a" if math.isnan(score) else f"{score:.3f}", va="center", fontsize=9)
        ax.set_yticks(y, strategies)
        ax.invert_yaxis()
        top = max(1.0, float(pd.concat([scores, vals]).max(skipna=True) or 0.0))
        ax.set_xlim(0, top * 1.15)
        ax.set_title(backbone, fontsize=12)
        ax.set_xlabel(f"test {metric}")
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(backbones):]:
        ax.set_visible(False)
    fig.suptitle(f"Test {metric} of each cell's best trial (| = its validation {metric})", fontsize=12)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_scatter(summary: pd.DataFrame, metric: str, backbones: list[str], strategies: list[str], x: str,
                 what: str, unit: str, path: Path) -> bool:
    """Test score against a cost (trainable parameters, training time): colour = strategy, marker = backbone."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    test = f"test_{metric}"
    data = summary.dropna(subset=[test, x]) if not summary.empty else summary
    if data.empty:
        return False
    colors = _colors(strategies)
    markers = {b: MARKERS[i % len(MARKERS)] for i, b in enumerate(backbones)}
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    for row in data.itertuples(index=False):
        ax.scatter(float(getattr(row, x)), float(getattr(row, test)), s=90, color=colors[row.strategy],
                   marker=markers[row.backbone], edgecolors="black", linewidths=0.6, zorder=3)
    xs = data[x].astype(float)
    log = bool(xs.min() > 0 and xs.max() / xs.min() >= 20)
    if log:  # spans orders of magnitude: log scale, with plain tick labels (1k, 100k) rather than 10^3
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
    ax.set_xlabel(", ".join([f"{what} ({unit}" if unit else what] + (["log scale"] if log else []))
                  + (")" if unit else ""))
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3, which="both")
    used = [s for s in strategies if s in set(data["strategy"])]
    by_strategy = ax.legend(handles=[Line2D([], [], linestyle="", marker="o", markersize=9, color=colors[s], label=s)
                                     for s in used], title="strategy", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                            fontsize=10, frameon=False)
    ax.add_artist(by_strategy)
    ax.legend(handles=[Line2D([], [], linestyle="", marker=markers[b], markersize=9, markerfacecolor="white",
                              markeredgecolor="black", label=b) for b in backbones if b in set(data["backbone"])],
              title="backbone", loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=10, frameon=False)
    ax.set_title(f"Test {metric} against {what} (best trial of each cell)", fontsize=12)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_learning_curves(summary: pd.DataFrame, history: pd.DataFrame, metric: str, backbones: list[str],
                         strategies: list[str], path: Path) -> bool:
    """Per backbone: validation metric, validation loss and training loss per epoch of each cell's best trial."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    if summary.empty or history.empty or summary["best_trial"].isna().all():
        return False
    colors = _colors(strategies)
    panels = [(f"val_{metric}", f"validation {metric}"), ("val_loss", "validation loss"),
              ("train_loss", "training loss")]
    fig = Figure(figsize=(15, 3.6 * len(backbones)))
    axes = fig.subplots(len(backbones), 3, squeeze=False)
    for r, backbone in enumerate(backbones):
        for strategy in strategies:
            best = summary[(summary["backbone"] == backbone) & (summary["strategy"] == strategy)]["best_trial"]
            if best.empty or pd.isna(best.iloc[0]):
                continue
            h = history[(history["backbone"] == backbone) & (history["strategy"] == strategy)
                        & (history["trial"] == best.iloc[0])]
            for ax, (column, _) in zip(axes[r], panels):
                ax.plot(h["epoch"].astype(int), h[column].astype(float), marker="o", markersize=3,
                        color=colors[strategy], linewidth=1.6)
        for ax, (_, label) in zip(axes[r], panels):
            ax.set_title(f"{backbone}: {label}", fontsize=11)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[s], linewidth=2.5, label=s) for s in strategies]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(strategies), 8), fontsize=10, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.6 * len(backbones))))
    _save(fig, path)
    return True


def write_plots(out: Path, summary: pd.DataFrame, history: pd.DataFrame, metric: str,
                experiment: dict[str, Any]) -> dict[str, bool]:
    """Every plot of the report; returns which ones had data to draw (a plot without data is removed).

    Figures are drawn without pyplot and under matplotlib's default style, so neither the caller's backend nor
    their style changes the files.
    """
    import matplotlib.style

    out = Path(out)
    backbones, strategies = _order(summary, experiment)
    drawn = {k: False for k in PLOTS}
    if backbones:
        with matplotlib.style.context("default"):
            drawn = {
                "test_by_strategy": plot_test_by_strategy(summary, metric, backbones, strategies,
                                                          out / PLOTS["test_by_strategy"]),
                "accuracy_vs_params": plot_scatter(summary, metric, backbones, strategies, "trainable_params",
                                                   "trainable parameters", "", out / PLOTS["accuracy_vs_params"]),
                "accuracy_vs_time": plot_scatter(summary, metric, backbones, strategies, "train_time_s",
                                                 "training time", "s", out / PLOTS["accuracy_vs_time"]),
                "learning_curves": plot_learning_curves(summary, history, metric, backbones, strategies,
                                                        out / PLOTS["learning_curves"]),
            }
    for key, ok in drawn.items():
        if not ok:
            (out / PLOTS[key]).unlink(missing_ok=True)
    return drawn


# --------------------------------------------------------------------------------------------------------- markdown

def _num(x: Any, fmt: str = ".4f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA else format(x, fmt)


def _params(best_params: str) -> str:
    if not best_params:
        return "—"
    items = json.loads(best_params).items()
    return ", ".join(f"{k}={format(v, '.4g') if isinstance(v, float) else v}" for k, v in sorted(items))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, right: int | None = None) -> list[str]:
    """A Markdown table: the first ``left`` columns (names) left-aligned, numbers right-aligned up to ``right``."""
    right = len(header) if right is None else right
    align = ["---:" if left <= i < right else "---" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(r) + " |" for r in rows)]


def winners(summary: pd.DataFrame, metric: str, direction: str = "maximize") -> pd.DataFrame:
    """The winning strategy of each backbone, chosen on validation like every other choice in tlkit.

    Ties go to fewer trainable parameters (the cheaper model), then to the strategy name. The test score is only
    reported: choosing on it would make it an optimistic estimate.
    """
    val = f"best_val_{metric}"
    done = summary.dropna(subset=[val])
    if done.empty:
        return done
    ranked = done.assign(_p=done["trainable_params"].astype("Float64").fillna(math.inf)).sort_values(
        ["backbone", val, "_p", "strategy"], ascending=[True, direction == "minimize", True, True], kind="stable")
    return ranked.groupby("backbone", sort=False).head(1).drop(columns="_p")


def _trainable(row: Any) -> str:
    if pd.isna(row["trainable_params"]):
        return "—"
    total = row["total_params"]
    share = f" ({100 * row['trainable_params'] / total:.3g}%)" if pd.notna(total) and total else ""
    return f"{int(row['trainable_params']):,}{share}"


def _data_text(data: dict[str, Any]) -> str:
    classes = f" classes {data['classes']}" if data.get("classes") else ""
    cap = f", at most {data['train_per_class']} training images per class" if data.get("train_per_class") else ""
    return f"{data.get('name')}{classes}{cap}"


def budget_text(summary: pd.DataFrame, experiment: dict[str, Any], backbones: list[str],
                strategies: list[str]) -> str:
    """What the comparison cost: cells, trials, epochs, data, and the summed trial time (from the storage)."""
    complete, pruned, failed = (int(summary[c].sum()) for c in ("trials_complete", "trials_pruned", "trials_failed"))
    train = experiment.get("train", {})
    text = (f"{len(summary)} cells ({len(backbones)} backbones x {len(strategies)} strategies), "
            f"{experiment.get('trials', '?')} finished trials per cell ({complete} complete, {pruned} pruned, "
            f"{failed} failed), up to {train.get('epochs', '?')} epochs per trial at {train.get('image_size', '?')} "
            f"px. Target: {_data_text(experiment.get('data', {}))}, "
            f"{experiment.get('data', {}).get('val_fraction', '?')} of them held out for validation.")
    source = experiment.get("source")
    if source:
        text += (f" Source task (pretraining each backbone once): {_data_text(source['data'])}, "
                 f"{source['train']['epochs']} epochs.")
    minutes = float(summary["cell_time_s"].sum()) / 60.0
    return text + (f" The trials ran {minutes:.1f} min in all (summed trial wall time; source pretraining and test "
                   f"scoring not included).")


def report_markdown(study: str, metric: str, summary: pd.DataFrame, experiment: dict[str, Any],
                    plots: dict[str, bool]) -> str:
    """``report.md``: the comparison first (backbone x strategy test scores, winners), then the details."""
    test, val = f"test_{metric}", f"best_val_{metric}"
    lines = [f"# Study `{study}`: which strategy transfers best", ""]
    if summary.empty:
        return "\n".join(lines + ["No cell has started yet.", ""])
    backbones, strategies = _order(summary, experiment)
    won = winners(summary, metric, experiment.get("metric_direction", "maximize"))
    winner = dict(zip(won["backbone"], won["strategy"]))
    cell = summary.set_index(["backbone", "strategy"])
    lines += [f"Test {metric} of each cell's best trial. Each cell's best trial is chosen on validation {metric}; "
              f"the test split is scored once, for that trial only. **Bold**: the winner of the backbone (highest "
              f"validation {metric}; ties go to fewer trainable parameters).", ""]
    rows = []
    for b in backbones:
        row = [b]
        for s in strategies:
            score = cell[test].get((b, s)) if (b, s) in cell.index else None
            text = _num(score)
            row.append(f"**{text}**" if winner.get(b) == s and text != "—" else text)
        rows.append(row)
    lines += _table(["backbone", *strategies], rows) + [""]
    lines += ["## Budget", "", budget_text(summary, experiment, backbones, strategies), ""]
    lines += ["## Winner per backbone", ""]
    lines += _table(["backbone", "strategy", f"test {metric}", f"val {metric}", "trainable params", "train time (s)"],
                    [[r["backbone"], r["strategy"], _num(r[test]), _num(r[val]), _trainable(r),
                      _num(r["train_time_s"], ".1f")] for _, r in won.iterrows()], left=2) + [""]
    figures = [("test_by_strategy", f"Test {metric} by strategy"),
               ("accuracy_vs_params", f"Test {metric} against trainable parameters"),
               ("accuracy_vs_time", f"Test {metric} against training time")]
    lines += [f"![{alt}]({PLOTS[key]})\n" for key, alt in figures if plots.get(key)]
    lines += ["## Best configuration of each cell", ""]
    rows = []
    for b in backbones:
        for s in strategies:
            if (b, s) not in cell.index:
                continue
            r = cell.loc[(b, s)]
            rows.append([b, s, _num(r["best_trial"], "d"), _num(r[val]), _num(r[test]), _trainable(r),
                         _num(r["train_time_s"], ".1f"), f"{r['trials_complete']}/{r['trials_pruned']}/"
                         f"{r['trials_failed']}", _params(r["best_params"])])
    lines += _table(["backbone", "strategy", "best trial", f"val {metric}", f"test {metric}", "trainable params",
                     "train time (s)", "complete/pruned/failed", "parameters"], rows, left=2, right=8) + [""]
    if plots.get("learning_curves"):
        lines += ["## Learning curves of each cell's best trial", "", f"![Learning curves]({PLOTS['learning_curves']})",
                  ""]
    lines += ["## Files", "",
              "`summary.csv` (one row per cell), `trials.csv` (one row per trial), `history.csv` (one row per trial "
              "and epoch); `tensorboard --logdir tb` for every trial's curves and the HParams dashboard. "
              "Rebuild this report with `python -m tlkit.report <this folder>`.", ""]
    return "\n".join(lines)


def write_report(out: Path, storage: Any, study: str, metric: str) -> None:
    """Every table, plot and ``report.md`` of a results folder, from the storage.

    The order of backbones and strategies in the report comes from ``experiment.json`` in ``out`` when present.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    experiment_file = out / "experiment.json"
    experiment = json.loads(experiment_file.read_text(encoding="utf-8")) if experiment_file.is_file() else {}
    summary = summary_table(storage, study, metric)
    history = history_table(storage, study, metric)
    write_csv(trials_table(storage, study, metric), out / "trials.csv")
    write_csv(history, out / "history.csv")
    write_csv(summary, out / "summary.csv")
    plots = write_plots(out, summary, history, metric, experiment)
    text = report_markdown(study, metric, summary, experiment, plots)
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# -------------------------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tlkit.report",
        description="Rebuild the tables (trials.csv, history.csv, summary.csv), plots and report.md of a results "
                    "folder from its study storage. Safe while a sweep runs; the same storage gives the same files.")
    p.add_argument("results", type=Path, help="the results folder of a sweep, e.g. results/digits")
    p.add_argument("--storage", help="Optuna storage URL, e.g. postgresql://user@host/db (default: the SQLite "
                                     "file study.db in the results folder)")
    p.add_argument("--study", help="study name (default: the name in the folder's experiment.json)")
    return p


def _resolve(args: argparse.Namespace) -> tuple[str, str, str]:
    """Study name, metric and storage URL of a results folder, or a TlkitError saying what is missing."""
    from tlkit.study import default_storage

    folder: Path = args.results
    experiment_file = folder / "experiment.json"
    if not experiment_file.is_file():
        raise TlkitError(f"No experiment.json in {folder}: it does not look like a results folder of "
                         f"`python -m tlkit.sweep`. HINT: pass the folder the sweep wrote (its --out, by default "
                         f"results/<study>).")
    experiment = read_json(experiment_file, "run the sweep command that made this folder again: it writes "
                                            "experiment.json anew and keeps every finished trial.")
    study = args.study or experiment.get("name")
    if not study:
        raise TlkitError(f"{experiment_file} has no study name. HINT: pass --study NAME.")
    if args.storage:
        return study, experiment.get("metric", "accuracy"), args.storage
    if not (folder / "study.db").is_file():
        raise TlkitError(f"No study.db in {folder}: the study lives elsewhere. HINT: pass the sweep's storage, "
                         f"e.g. --storage postgresql://user@host/db.")
    return study, experiment.get("metric", "accuracy"), default_storage(folder)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tlkit.report RESULTS_DIR [--storage URL] [--study NAME]``."""
    from tlkit.study import open_storage

    args = build_parser().parse_args(argv)
    try:
        study, metric, url = _resolve(args)
        with warnings.catch_warnings():  # heartbeats are Optuna-experimental; a reader has nothing to do about it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = open_storage(url)
        if not cell_studies(storage, study):
            names = sorted({s.study_name.split("/")[0] for s in optuna.get_all_study_summaries(storage, False)})
            raise TlkitError(f"No study {study!r} in {url}. Studies there: {', '.join(names) or 'none'}. "
                             f"HINT: pass --study NAME.")
        write_report(args.results, storage, study, metric)
    except TlkitError as err:
        print(f"tlkit: error: {err}", file=sys.stderr)
        return 2
    print(f"Report in {args.results / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

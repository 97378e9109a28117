"""``python -m tlkit.rank EXPERIMENT``: rank the backbones in seconds, before any training.

Which of 20 backbones is worth fine-tuning at all? Each backbone's pre-logit features of the target's training split
(its starting weights, eval mode, un-augmented images: exactly what the linear probe's feature cache computes) are
scored three ways, each higher-is-better: LogME (You et al. 2021), the validation accuracy of a k-nearest-neighbour
vote (k = 5, cosine similarity) and the H-score (Bao et al. 2019) with Ledoit-Wolf shrinkage; the estimators are in
``tlkit.analysis.ranking``.

This command prints the ranking without training. Every sweep with pretrained weights writes it to
``ranking.csv``, and its report says how well it predicted the fine-tuned order (Kendall's tau over backbones, per
strategy). ``Experiment(keep_top_backbones=k)`` searches only the k best backbones by LogME.

Example:
    python -m tlkit.rank experiments/digits.py
    python -m tlkit.rank experiments/cifar_split.py --data-dir ../shared/datasets --out results/cifar_split
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from tlkit.utils.files import check_writable
from tlkit.analysis.agreement import ESTIMATORS, KNN_K, RANKING
from tlkit.analysis.ranking import rank_backbones
from tlkit.cli import add_experiment_arguments, log_to, pick_device, prepare, resolve_experiment
from tlkit.config.experiment import Experiment
from tlkit.data.tensors import to_device
from tlkit.engine.source import resolve_pretrained, source_weights_path
from tlkit.errors import TlkitError
from tlkit.output.tables import write_csv

__all__ = ["build_parser", "main", "format_ranking"]

log = logging.getLogger("tlkit")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tlkit.rank",
        description="Rank the backbones of EXPERIMENT before training: LogME, a k-NN accuracy and the H-score of "
                    "each backbone's frozen features of the training split. Nothing is trained (except a source "
                    "task's pretraining, once, cached for the sweep).")
    add_experiment_arguments(p)
    p.add_argument("--out", type=Path, help=f"also write {RANKING} into this folder")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tlkit.rank EXPERIMENT [--data-dir DIR] [--weights B=PATH] [--set K=V] [--device D] [--out DIR]``."""
    args = build_parser().parse_args(argv)
    log_to(logging.StreamHandler(sys.stderr), logging.INFO)
    try:
        if args.out is not None:  # before the ranking, which can take minutes, not after it
            check_writable(args.out, "The --out folder")
        exp = resolve_experiment(args)
        if not exp.pretrained:
            raise TlkitError(f"Experiment {exp.name!r} has pretrained=False: every backbone would start from random "
                             f"weights, and ranking random initialisations tells nothing. HINT: rank with pretrained "
                             f"weights (--set pretrained=True, with weights files, a source task or hub names).")
        device = pick_device(exp.runtime.device)
        splits, _ = prepare(exp)
        splits = to_device(splits, device)
        if exp.source is not None:
            missing = [b for b in exp.backbones if not source_weights_path(exp, b).is_file()]
            if missing:
                log.info("the source task's weights of %s are not trained yet: training them first (cached, so the "
                         "sweep reuses them)", ", ".join(missing))
        pretrained = {b: resolve_pretrained(exp, b, splits.num_classes, device) for b in exp.backbones}
        ranking = rank_backbones(exp, splits, pretrained, device)
    except TlkitError as err:
        print(f"tlkit: error: {err}", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv(ranking, args.out / RANKING)
    print(format_ranking(ranking, exp))
    return 0


def format_ranking(ranking: pd.DataFrame, exp: Experiment) -> str:
    """The ranking as printed by the CLI: one line per backbone, best LogME first."""
    table = pd.DataFrame({"backbone": ranking["backbone"]})
    for name, label in ESTIMATORS.items():
        table[label] = [f"{v:.4f} ({r})" for v, r in zip(ranking[name], ranking[f"{name}_rank"])]
    table["seconds"] = [f"{s:.2f}" for s in ranking["seconds"]]
    n = int(ranking["train_images"].iloc[0])
    return (f"Backbones of {exp.name!r} ranked before training, from the frozen features of {n} training images "
            f"(higher is better; rank in brackets; kNN: k={KNN_K}, cosine, on the validation split):\n\n"
            + table.to_string(index=False)
            + f"\n\nSeconds per backbone: its features and all three estimates "
              f"({ranking['seconds'].sum():.1f} s in all). Nothing was trained.")


if __name__ == "__main__":
    sys.exit(main())

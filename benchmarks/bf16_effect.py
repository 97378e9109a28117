"""What bf16 autocast does to a trained model's answers on CPU: the same weights scored on the test split in float32
and under bf16 autocast, paired per example.

``Train(cpu_amp=True)`` is opt-in because it changes the numbers; this script says by how much for evaluation and
feature extraction (the forward passes it speeds up most). It prints both accuracies, how many test predictions
change, an exact McNemar test on the examples where exactly one of the two is right (``scipy.stats.binomtest``),
the largest logit difference and each pass's images/s.

    python benchmarks/bf16_effect.py EXPERIMENT RESULTS --backbone resnet18 --strategy full_finetune

EXPERIMENT is the experiment file the RESULTS folder was swept from (its data are the test split used), e.g. the
folder ``benchmarks/peers.py --works finetune --bench DIR`` leaves as ``DIR/out_finetune``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("results", type=Path)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--strategy", required=True)
    args = parser.parse_args()

    import torch
    from scipy.stats import binomtest

    import tlkit
    from tlkit.engine.compute import cpu_has_native_bf16, set_memory_format
    from tlkit.config.loading import load_experiment
    from tlkit.metrics import get_metric
    from tlkit.cli import prepare
    from tlkit.engine.evaluate import evaluate

    exp = load_experiment(args.experiment)
    splits, _ = prepare(exp)
    model = tlkit.load_best(args.results, args.backbone, args.strategy)
    device = torch.device("cpu")
    channels_last = set_memory_format(model, device, exp.train)
    info = model.tlkit_info
    scores, seconds = {}, {}
    for name, amp in (("float32", False), ("bf16 autocast", True)):
        start = time.perf_counter()
        scores[name] = evaluate(model, splits.test, metric=get_metric("accuracy"), batch_size=exp.train.batch_size,
                                mean=info["mean"], std=info["std"], device=device, amp=amp,
                                image_size=exp.train.image_size, channels_last=channels_last)
        seconds[name] = time.perf_counter() - start
    fp32, bf16 = scores["float32"], scores["bf16 autocast"]
    right32 = fp32.logits.argmax(1) == fp32.labels
    right16 = bf16.logits.argmax(1) == bf16.labels
    only32, only16 = int((right32 & ~right16).sum()), int((right16 & ~right32).sum())
    changed = int((fp32.logits.argmax(1) != bf16.logits.argmax(1)).sum())
    n = len(fp32.labels)
    p = binomtest(only32, only32 + only16, 0.5).pvalue if only32 + only16 else 1.0
    print(f"{args.backbone}/{args.strategy}, {n} test images, {channels_last=}, native bf16: {cpu_has_native_bf16()}")
    for name, s in scores.items():
        print(f"{name:14s} accuracy {s.metric:.4f}  loss {s.loss:.4f}  {n / seconds[name]:7.0f} img/s")
    print(f"predictions changed by bf16: {changed} of {n} ({changed / n:.2%}); right only in float32: {only32}, "
          f"right only in bf16: {only16}; exact McNemar p = {p:.3g}")
    print(f"largest logit difference {float((fp32.logits - bf16.logits).abs().max()):.4f} "
          f"(logits span {float(fp32.logits.min()):.2f} to {float(fp32.logits.max()):.2f})")


if __name__ == "__main__":
    main()

"""Answers that survive a rerun of the whole study, offline on CIFAR-10: the task of ``cifar_split.py`` (each backbone
pretrained by tlkit on classes 0-4, transferred to classes 5-9 with 1,000 training images per class), run as 6
replicates (5 epochs per trial, half of ``cifar_split.py``'s). Each replicate draws its own train/validation split of the 5,000 training images, runs each cell's
4-trial search with its own sampler seed and trains with its own seeds; every cell of a backbone shares replicate r,
so the comparisons are paired over replicates. The best strategy of a backbone is chosen on replicates 0, 2, 4 and
tested against the others on replicates 1, 3, 5 (docs/results.md, "Verdicts").

    python -m tlkit.sweep experiments/replicates_cifar.py --data-dir ../shared/datasets
    python -m tlkit.sweep experiments/replicates_cifar.py --data-dir ../shared/datasets --replicates auto

Smaller than ``cifar_split.py`` (2 backbones x 3 strategies, no repeats, 5 epochs) so that 6 replicates fit in
about an hour on 2 CPU cores.
"""
import cifar_task  # beside this file: the task the CIFAR experiments share (and its cached source weights)
from tlkit import Experiment, Train

experiment = Experiment(
    data=cifar_task.target(),
    source=cifar_task.source(),
    backbones=["test_resnet", "test_efficientnet"],
    strategies=["linear_probe", "last_n", "full_finetune"],
    train=Train(epochs=5, batch_size=128, image_size=32),
    trials=4,
    repeats=0,  # replicates replace repeats here: each replicate's best trial is its measurement
    replicates=6,
    rope=0.01,  # differences within +-1 point of accuracy are practically equivalent
    seed=0,
)

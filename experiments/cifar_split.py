"""Fully offline transfer on CIFAR-10 alone, in the spirit of Yosinski et al. (2014).

Each backbone is pretrained by tlkit on classes 0-4 (airplane, automobile, bird, cat, deer) and transferred to
classes 5-9 (dog, frog, horse, ship, truck) with 1,000 training images per class, under every built-in strategy,
next to a from-scratch control. Tiny timm models keep it to about 75 minutes on 2 CPU cores (73 min 44 s measured on
a 2-core development host: results/cifar_split/README.md):

    python -m tlkit.sweep experiments/cifar_split.py --data-dir ../shared/datasets
"""
import cifar_task  # beside this file: the task both CIFAR experiments share
from tlkit import Experiment, Train

experiment = Experiment(
    data=cifar_task.target(),
    source=cifar_task.source(),
    backbones=["test_resnet", "test_efficientnet", "test_convnext", "test_vit"],
    strategies=["linear_probe", "last_n", "gradual", "lp_ft", "layer_decay", "bitfit", "full_finetune",
                "from_scratch"],
    train=Train(epochs=10, batch_size=128, image_size=32),
    trials=4,
    repeats=3,  # each cell's best configuration trained again with 3 shared seeds: tests over seeds
    seed=0,
)

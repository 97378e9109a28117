"""Quickstart: scikit-learn's 8x8 digits, fully offline, a few minutes on 2 CPU cores (the README gives the time
measured on each development host).

Each tiny timm backbone is first pretrained by tlkit on digits 0-4 (the source task), then transferred to digits
5-9 under every built-in strategy, with a from-scratch control to show what the transfer bought.
"""
from optuna.distributions import FloatDistribution

from tlkit import Data, Experiment, Source, Train

experiment = Experiment(
    data=Data("digits", classes=[5, 6, 7, 8, 9], val_fraction=0.25),
    source=Source(
        data=Data("digits", classes=[0, 1, 2, 3, 4]),
        train=Train(epochs=15, batch_size=64, lr=3e-3, image_size=32, augment=["crop"]),
    ),
    backbones=["test_resnet", "test_efficientnet", "test_vit"],
    strategies=["linear_probe", "last_n", "gradual", "lp_ft", "layer_decay", "bitfit", "full_finetune",
                "from_scratch"],
    train=Train(epochs=8, batch_size=64, image_size=32, augment=["crop"]),
    search={"lr": FloatDistribution(3e-4, 3e-2, log=True), "weight_decay": FloatDistribution(1e-5, 1e-1, log=True)},
    trials=4,
    repeats=1,  # one repeat per cell keeps the quickstart short; its report tests over test examples
    seed=0,
)

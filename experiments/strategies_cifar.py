"""Beyond freezing, offline on CIFAR-10: L2-SP, LoRA and surgical fine-tuning beside the freezing strategies.

The set-up of ``cifar_split.py`` (each backbone pretrained by tlkit on classes 0-4, transferred to classes 5-9 with
1,000 training images per class), so the source weights are shared with it and trained once. Every backbone is
also ranked before training (LogME, a 5-NN accuracy, the H-score: ``ranking.csv``), and the report says how well
that ranking predicted the fine-tuned order.

    python -m tlkit.sweep experiments/strategies_cifar.py --data-dir ../shared/datasets
    python -m tlkit.rank experiments/strategies_cifar.py --data-dir ../shared/datasets   # the ranking alone
"""
import cifar_task  # beside this file: the task both CIFAR experiments share
from tlkit import Experiment, Train

experiment = Experiment(
    data=cifar_task.target(),
    source=cifar_task.source(),
    backbones=["test_resnet", "test_efficientnet", "test_convnext", "test_vit"],
    strategies=["linear_probe", "last_n", "full_finetune",  # freezing, for reference (all of them: cifar_split.py)
                "l2_sp", "lora", "surgical"],  # beyond freezing: a penalty, adapters, one chosen block
    train=Train(epochs=10, batch_size=128, image_size=32),
    trials=4,
    repeats=3,  # each cell's best configuration trained again with 3 shared seeds: tests over seeds
    seed=0,
)

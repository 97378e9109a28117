"""The offline CIFAR-10 transfer task shared by ``cifar_split.py`` and ``strategies_cifar.py`` (not an experiment):
pretrain on classes 0-4 (airplane, automobile, bird, cat, deer), transfer to classes 5-9 (dog, frog, horse, ship,
truck) with 1,000 training images per class. One definition, so both studies share one source-task cache entry.
Functions, not objects: each experiment gets its own copy to change (``--data-dir`` sets ``data.root``)."""
from tlkit import Data, Source, Train


def target() -> Data:
    return Data("cifar10", classes=[5, 6, 7, 8, 9], train_per_class=1000, val_fraction=0.2)


def source() -> Source:
    return Source(data=Data("cifar10", classes=[0, 1, 2, 3, 4], val_fraction=0.1),
                  train=Train(epochs=15, batch_size=128, lr=2e-3, weight_decay=0.05, image_size=32))

"""CIFAR-10 with ImageNet-pretrained timm backbones: a ResNet, an EfficientNet, a ConvNeXt and a ViT of small size.

Meant for a GPU. Online, tlkit downloads CIFAR-10 (torchvision) and the weights (timm / Hugging Face hub, cached).
Offline, pass the data and the weights:

    python -m tlkit.sweep experiments/cifar.py --data-dir ~/data \
        --weights resnet18.a1_in1k=~/weights/resnet18.safetensors ...

``--data-dir`` holds torchvision's ``cifar-10-batches-py/`` or an ImageFolder copy (``train/<class>/*.jpg``,
``test/<class>/*.jpg``) as a folder or a ``.zip``. Images are upscaled to 128 px (per batch, on the device) because
ImageNet features are poor at 32 px.
"""
from tlkit import Data, Experiment, Train

experiment = Experiment(
    data=Data("cifar10", val_fraction=0.1),
    backbones=[
        "resnet18.a1_in1k",
        "efficientnet_b0.ra_in1k",
        "convnext_atto.d2_in1k",
        "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    ],
    strategies=["linear_probe", "last_n", "gradual", "lp_ft", "layer_decay", "bitfit", "full_finetune",
                "from_scratch"],
    train=Train(epochs=10, batch_size=128, image_size=128, augment=["crop", "hflip"], crop_padding=4),
    trials=4,
    repeats=3,
    seed=0,
)

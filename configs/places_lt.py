"""Places-LT with the RIDE ImageNet-LT recipe (not an official RIDE config).

    python -m ride_jax.main --config=configs/places_lt.py --workdir=runs/places_r50_ride3
    python -m ride_jax.main --config=configs/places_lt.py:image_root=/data/places365_standard --workdir=...
    python -m ride_jax.main --config=configs/places_lt.py:backbone=rx50,experts=4 --workdir=...

Arguments: backbone r10|r50|rx50 (default r50), experts 1..6 (default 3), loss
ride|ldam_drw|ce|focal, stage train|router|distill|crt|eval, image_root (the Places365-Standard "easy format" folder: the
most faithful and fastest source), data_dir (tfds data folder for ``places365_small``,
used when image_root is not given). No smoke variant: the data cannot be had offline.

RIDE does not support Places-LT (docs/parity.md; it appears only as list files in
the ResLT repo; 365 classes, 62,500 train, 36,500 test). ResLT ships no Places recipe
either (none of its scripts is for Places-LT), and the usual literature setting (an ImageNet-pretrained ResNet-152,
decoupling/OLTR style) needs weights this project does not have. So this is the
ImageNet-LT RIDE recipe unchanged (RIDE configs/config_imagenet_lt_resnet50_ride.json), trained from scratch: RIDE
ResNet-50 (reduced experts, NormedLinear s = 30), global batch 256, 100 epochs, lr 0.1
Nesterov, wd 2e-4, warmup 5, LR x0.1 after epochs 60 and 80, loss switch from epoch
81, lambda -0.2, reweight factor 0.02 (ImageNet-LT's). Results are therefore not
comparable with the ~40 % top-1 quoted for pretrained ResNet-152 models (e.g. RIDE's 40.3 in the SADE README's Places-LT table).

Augmentation (RandomResizedCrop 224, flip, ColorJitter 0.4, as ImageNet-LT) and the test
transform are done by the streaming loader, so ``data.augment`` is ``'none'``.
"""

from ride_jax.configlib import parse_arg

from configs import common
from configs.imagenet_lt import apply_imagenet_recipe

NUM_CLASSES = 365


def get_config(arg=None):
    a = parse_arg(arg, backbone="r50", experts=3, loss="ride", image_root="", data_dir="",
                  stage="train")
    c = common.get_base_config()
    c.dataset.name = "places_lt"
    args = {}
    if a.image_root:
        args["image_root"] = a.image_root
    if a.data_dir:
        args["data_dir"] = a.data_dir
    c.dataset.args = args
    apply_imagenet_recipe(c, backbone=a.backbone, experts=a.experts, loss=a.loss,
                          stage=a.stage)
    c.lock()
    return c

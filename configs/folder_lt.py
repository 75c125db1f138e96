"""Your own ImageNet-style folder with the ImageNet-LT pipeline and networks.

    python -m ride_jax.main --config=configs/folder_lt.py:path=/data/my_lt --workdir=runs/mine
    python -m ride_jax.main --config=configs/folder_lt.py:path=/data/imgs.zip,ratio=100 --workdir=...
    python -m ride_jax.main --config=configs/folder_lt.py:path=/data/my_lt,backbone=r10,image_size=64 --workdir=...
    python -m ride_jax.main --config=configs/folder_lt.py:path=/data/my_lt,loss=ldam_drw,epochs=30 --workdir=...
    python -m ride_jax.main --config=configs/folder_lt.py:path=/data/my_lt,smoke --workdir=/tmp/folder_smoke

Arguments: path (required: a folder or ``.zip`` laid out ``train/<class>/<image>`` and
``test/<class>/<image>`` or ``val/<class>/<image>``), ratio (n_max / n_min of the
official long-tailed selection of the training files; 0, the default: the training
folder as it is, already long-tailed), img_max (head-class images with a ratio; 0: the
training files / C), image_size (the crop size; default 224, e.g. 64 for small images on
a CPU; the evaluation resize is ``round(image_size * 256 / 224)``), backbone r10|r50|rx50
(default r50), experts 1..6 (default 3), loss (ride|ldam_drw|ce|focal|logit_adjusted|
balanced_softmax or your own ``module:attribute``; not ResLT, whose ImageNet-LT and iNat
scripts fix their class groups by count for those datasets), stage
train|router|distill|crt|eval, epochs N (the recipe's schedule compressed to N epochs,
``common.apply_epoch_budget``), smoke (2 epochs of batch 16 at ``image_size=32`` with
ResNet-10: checks that a folder trains, in minutes on a CPU).

The recipe is ImageNet-LT's (``configs/imagenet_lt.py``: RIDE
configs/config_imagenet_lt_resnet50_ride.json; global batch 256, 100 epochs, SGD lr 0.1
Nesterov, wd 2e-4, warm-up 5, LR x0.1 after epochs 60 and 80, DRW from epoch 81) and
its input pipeline: the image files are read by grain when a batch needs them
(``ride_jax.data.folder_stream``, ``ride_jax.data.grain_loader``; no TensorFlow),
transformed with the official torchvision transforms on PIL images (RandomResizedCrop,
flip, ColorJitter 0.4; Resize + CenterCrop) and normalised with the ImageNet constants.
``--config.data.workers=N`` reads with N worker processes per process (default 0:
reader threads).
"""

import os

from ride_jax.configlib import parse_arg

from configs import common
from configs.imagenet_lt import apply_imagenet_recipe

SMOKE_IMAGE_SIZE = 32
SMOKE_BATCH = 16


def get_config(arg=None):
    a = parse_arg(arg, path="", ratio=0.0, img_max=0.0, image_size=224, backbone="r50",
                  experts=3, loss="ride", stage="train", epochs=0, smoke=False)
    if not a.path:
        raise ValueError("config argument path= must name your folder or .zip "
                         "(train/<class>/<image> and test/ or val/<class>/<image>)")
    if a.ratio and a.ratio < 1:
        raise ValueError(f"config argument ratio={a.ratio} must be >= 1 (0 or absent: the "
                         "training folder as it is)")
    if a.img_max < 0:
        raise ValueError(f"config argument img_max={a.img_max} must be > 0 (0 or absent: "
                         "the training files / C)")
    if a.loss in ("reslt", "ride_reslt"):
        raise ValueError(f"config argument loss={a.loss}: ResLT's large-dataset recipes "
                         "fix their class groups for ImageNet-LT and iNat only; valid "
                         "choices here are ride, ldam_drw, ce, focal, logit_adjusted, "
                         "balanced_softmax or 'module:attribute'")
    if a.epochs and a.smoke:
        raise ValueError("config arguments smoke and epochs= exclude each other: smoke has "
                         "its own two-epoch schedule")
    c = common.get_base_config()
    c.dataset.name = "image_folder_stream"
    args = {"path": os.path.expanduser(a.path),
            "image_size": SMOKE_IMAGE_SIZE if a.smoke else int(a.image_size)}
    if a.ratio:
        args["ratio"] = float(a.ratio)
    if a.img_max:
        args["img_max"] = float(a.img_max)
    c.dataset.args = args
    backbone = "r10" if a.smoke else a.backbone
    apply_imagenet_recipe(c, backbone=backbone, experts=a.experts, loss=a.loss,
                          stage=a.stage)
    if a.epochs:
        common.apply_epoch_budget(c, a.epochs)
    if a.smoke:
        common.apply_smoke(c)      # 2 epochs, the loss switch and an LR step inside them
        c.data.batch_size = c.data.eval_batch_size = SMOKE_BATCH
        c.log_every_steps = 2
    c.lock()
    return c

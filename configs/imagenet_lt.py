"""ImageNet-LT, the official RIDE recipe (RIDE
configs/config_imagenet_lt_{resnet10,resnet50,resnext50}_ride.json).

    python -m ride_jax.main --config=configs/imagenet_lt.py --workdir=runs/inlt_r50_ride3
    python -m ride_jax.main --config=configs/imagenet_lt.py:backbone=rx50,experts=4 --workdir=...
    python -m ride_jax.main --config=configs/imagenet_lt.py:backbone=r10 --workdir=...
    python -m ride_jax.main --config=configs/imagenet_lt.py:data_dir=/data/tfds --workdir=...

    # ResLT: ResNeXt-50 (X50.sh), ResNet-10 (R10.sh), RIDE ResNeXt-50 + ResLT (57.6 %)
    python -m ride_jax.main --config=configs/imagenet_lt.py:loss=reslt,backbone=rx50 --workdir=...
    python -m ride_jax.main --config=configs/imagenet_lt.py:loss=reslt,backbone=r10 --workdir=...
    python -m ride_jax.main --config=configs/imagenet_lt.py:loss=ride_reslt,backbone=rx50 --workdir=...

Arguments: backbone r10|r50|rx50 (RIDE ResNet-10 | ResNet-50 | ResNeXt-50 32x4d; default
r50), experts 1..6 (default 3), loss ride|ldam_drw|ce|focal|reslt|ride_reslt|logit_adjusted|balanced_softmax|sade (ResLT:
``ride_jax/methods/reslt.py``), stage
train|router|distill|crt|eval (``configs/common.py``: ``apply_stage``), data_dir (tfds
data folder;
default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). No smoke variant: the data
cannot be had offline (use configs/cifar100_lt.py:smoke to check an install).

Official settings (configs/imagenet_lt_{resnet10,resnet50,resnext50}_ride.json): global
batch 256, 100 epochs, SGD lr 0.1 momentum 0.9 Nesterov, wd 2e-4, warmup 5 epochs, LR
x0.1 after epochs 60 and 80; the loss switch (DRW + class temperatures) from epoch 81,
with the second LR decay; RIDE loss lambda -0.2 (code default), reweight factor 0.02;
reduced experts with NormedLinear heads (s = 30). Test batch 128 (test.py).

Augmentation (RandomResizedCrop 224, flip, ColorJitter 0.4) and the test transform
(Resize 256, CenterCrop 224) are done by the streaming loader
(``ride_jax.data.streaming``), so ``data.augment`` is ``'none'``: nothing is added on
top. The official runs used DataParallel over 4 (R10) or 8 GPUs, so BatchNorm saw 64 or
32 images per shard; here BN statistics are over the whole global batch.
"""

from ride_jax import methods
from ride_jax.configlib import check_choice, parse_arg

from configs import common

NUM_CLASSES = 1000
BACKBONES = {"r10": "resnet10", "r50": "resnet50", "rx50": "resnext50"}


def apply_imagenet_recipe(c, *, backbone, experts, loss, batch_size=256, lr=0.1,
                          reweight_factor=0.02, stage="train"):
    """The RIDE ImageNet-LT / iNat stage-1 recipe on ``c``, then the method's preset.

    Used by imagenet_lt.py, inat2018.py and places_lt.py. The method (``loss``) changes
    what goes with it (``ride_jax.methods``: its file's ``preset``); ResLT's presets
    (``reslt`` / ``ride_reslt``) are ResLT's own scripts.
    """
    check_choice("backbone", backbone, tuple(BACKBONES))
    check_choice("experts", experts, range(1, 7))
    method = methods.get(loss)
    c.model.arch = BACKBONES[backbone]
    c.data.batch_size = batch_size
    c.data.eval_batch_size = 128          # official test.py
    c.epochs = 100
    c.optim.lr = lr
    c.optim.weight_decay = 2e-4
    c.optim.nesterov = True
    c.optim.warmup_epochs = 5
    c.optim.step1 = 60
    c.optim.step2 = 80
    c.optim.gamma = 0.1
    c.loss.reweight_epoch = 80            # switch from epoch 81, with the 2nd LR decay
    c.loss.diversity_factor = -0.2        # RIDELoss default (not set by the configs)
    c.loss.reweight_factor = reweight_factor
    # RIDE runs no validation on these datasets; evaluating the big test set every
    # epoch would cost time for nothing (the test set does not steer training).
    c.eval_every_epochs = 5
    # RIDE-EA top_choices_num: 30 for ResNet-10, 50 for ResNet-50 / ResNeXt-50 (and iNat).
    c.router.top_k = 30 if backbone == "r10" else 50
    methods.apply_preset(method, c, methods.Recipe(family="imagenet", dataset=c.dataset.name,
                                                   experts=experts, backbone=backbone))
    # The streaming loader does the official augmentation itself.
    c.data.augment = "none"
    common.apply_stage(c, stage)
    if stage in ("router", "crt", "eval"):
        c.eval_every_epochs = 1


def get_config(arg=None):
    a = parse_arg(arg, backbone="r50", experts=3, loss="ride", data_dir="", stage="train")
    c = common.get_base_config()
    c.dataset.name = "imagenet_lt"
    c.dataset.args = {"data_dir": a.data_dir} if a.data_dir else {}
    apply_imagenet_recipe(c, backbone=a.backbone, experts=a.experts, loss=a.loss,
                          stage=a.stage)
    c.lock()
    return c

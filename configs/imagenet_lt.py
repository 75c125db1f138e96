"""ImageNet-LT, the official RIDE recipe (ride-spec.md §1.2, §3, §6.2).

    python -m ride_jax.main --config=configs/imagenet_lt.py --workdir=runs/inlt_r50_ride3
    python -m ride_jax.main --config=configs/imagenet_lt.py:backbone=rx50,experts=4 --workdir=...
    python -m ride_jax.main --config=configs/imagenet_lt.py:backbone=r10 --workdir=...
    python -m ride_jax.main --config=configs/imagenet_lt.py:data_dir=/data/tfds --workdir=...

    # ResLT: ResNeXt-50 (X50.sh), ResNet-10 (R10.sh), RIDE ResNeXt-50 + ResLT (57.6 %)
    python -m ride_jax.main --config=configs/imagenet_lt.py:loss=reslt,backbone=rx50 --workdir=...
    python -m ride_jax.main --config=configs/imagenet_lt.py:loss=reslt,backbone=r10 --workdir=...
    python -m ride_jax.main --config=configs/imagenet_lt.py:loss=ride_reslt,backbone=rx50 --workdir=...

Arguments: backbone r10|r50|rx50 (RIDE ResNet-10 | ResNet-50 | ResNeXt-50 32x4d; default
r50), experts 1..6 (default 3), loss ride|ldam_drw|ce|focal|reslt|ride_reslt (ResLT:
``apply_reslt_recipe``), stage
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

from ride_jax.configlib import METHODS, check_choice, parse_arg
from ride_jax.losses import RESLT_FREQUENCY_GROUPS
from ride_jax.models.reslt import RESLT_EVAL_GAMMA

from configs import common

NUM_CLASSES = 1000
BACKBONES = {"r10": "resnet10", "r50": "resnet50", "rx50": "resnext50"}


def apply_imagenet_recipe(c, *, backbone, experts, loss, batch_size=256, lr=0.1,
                          reweight_factor=0.02, stage="train"):
    """The RIDE ImageNet-LT / iNat stage-1 recipe on ``c`` (ride-spec.md §6.2).

    Used by imagenet_lt.py, inat2018.py and places_lt.py. ``loss`` ``reslt`` /
    ``ride_reslt`` take :func:`apply_reslt_recipe` instead.
    """
    check_choice("backbone", backbone, tuple(BACKBONES))
    check_choice("experts", experts, range(1, 7))
    if check_choice("loss", loss, METHODS) in ("reslt", "ride_reslt"):
        apply_reslt_recipe(c, backbone=backbone, experts=experts, ride=loss == "ride_reslt",
                           stage=stage)
        return
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
    common.apply_loss_preset(c, loss)     # ldam_drw/ce/focal: 1 expert, no nesterov, ...
    if loss == "ride":
        c.model.num_experts = experts
    # The streaming loader does the official augmentation itself.
    c.data.augment = "none"
    # RIDE runs no validation on these datasets; evaluating the big test set every
    # epoch would cost time for nothing (the test set does not steer training).
    c.eval_every_epochs = 5
    # RIDE-EA top_choices_num: 30 for ResNet-10, 50 for ResNet-50 / ResNeXt-50 (and iNat).
    c.router.top_k = 30 if backbone == "r10" else 50
    common.apply_stage(c, stage)
    if stage in ("router", "crt", "eval"):
        c.eval_every_epochs = 1


# ResLT's scripts per dataset (ride-spec.md §8.4); the groups by training frequency are
# ride_jax.losses.RESLT_FREQUENCY_GROUPS.
RESLT_RECIPES = {
    "imagenet_lt": dict(epochs=180, lr=0.1, batch_size=256, weight_decay=5e-4, beta=0.99,
                        fused_ce="eps", warmup_epochs=5),
    "inat2018": dict(epochs=200, lr=0.1, batch_size=256, weight_decay=1e-4, beta=0.85,
                     fused_ce="plain", warmup_epochs=0),
}


def apply_reslt_recipe(c, *, backbone, experts, ride, stage="train"):
    """ResLT's ImageNet-LT / iNat scripts on ``c`` (ride-spec.md §8.4), ``c.dataset.name`` set.

    * ImageNet-LT ``loss=reslt``: ResNet-10 (``R10.sh``: gamma 0.3, pool before the 1x1
      block in training too) or ResNeXt-50 (``X50.sh``: gamma 0.7, ``--after_1x1conv``);
      ResNet-50 is not in the scripts and gets the ResNeXt-50 settings. Batch 256, lr 0.1,
      180 epochs, wd 5e-4, SGD 0.9 without Nesterov, warm-up 5 + cosine, beta 0.99, the
      1e-7 fused CE, groups 825 / 220 rarest classes.
    * ImageNet-LT ``loss=ride_reslt`` (``X50_bt128_reslt_ride.sh``): RIDE's reduced
      experts (``experts``, official 3) each with a ResLT head, batch 128, lr 0.05,
      gamma 0.7.
    * iNat ``loss=reslt`` (``R50.sh``): ResNet-50, two branches (H, M: the 6600 rarest
      classes), batch 256, lr 0.1, 200 epochs, wd 1e-4, beta 0.85, gamma 0.3, cosine
      from epoch 0 without warm-up. ``loss=ride_reslt`` (``R50_ride_reslt.sh``): RIDE
      experts NOT reduced, warm-up 5 + cosine.

    The training set is read with ``drop_last`` (``data.remainder='drop'``) and the test
    set every 5 epochs (the official scripts evaluate every epoch and keep the best).
    """
    name = c.dataset.name
    if name not in RESLT_RECIPES:
        raise ValueError(f"loss=reslt/ride_reslt: ResLT ships recipes for "
                         f"{sorted(RESLT_RECIPES)} (and the CIFAR-style configs), not {name!r}")
    r = RESLT_RECIPES[name]
    groups = RESLT_FREQUENCY_GROUPS[name]
    tail = -1 if groups["tail_size"] is None else groups["tail_size"]   # -1: two branches
    c.model.arch = BACKBONES[backbone]
    c.model.head = "reslt"
    c.model.use_norm = False
    c.model.num_experts = experts if ride else 1
    c.model.reduce_dimension = ride and name == "imagenet_lt"
    c.model.reslt_branches = 2 if tail < 0 else 3
    gamma_key = f"{name}_{'ride_' if ride else ''}{c.model.arch}"
    c.model.reslt_eval_gamma = RESLT_EVAL_GAMMA.get(
        gamma_key, RESLT_EVAL_GAMMA["imagenet_lt_resnext50"])
    # Only the ResNet-10 script trains without --after_1x1conv.
    c.model.reslt_train_order = "pool_conv" if backbone == "r10" and not ride else "conv_pool"
    c.model.reslt_eval_order = "pool_conv"
    c.loss.name = "reslt"
    c.loss.reslt_beta = r["beta"]
    c.loss.reslt_groups = "frequency"
    c.loss.reslt_medium_tail = groups["medium_tail_size"]
    c.loss.reslt_tail = tail
    c.loss.reslt_fused_ce = r["fused_ce"]
    c.loss.label_smoothing = 0.0
    c.data.batch_size = 128 if ride and name == "imagenet_lt" else r["batch_size"]
    c.data.eval_batch_size = 128
    c.data.augment = "none"               # the streaming loader augments
    c.data.remainder = "drop"
    c.epochs = r["epochs"]
    c.optim.lr = 0.05 if ride and name == "imagenet_lt" else r["lr"]
    c.optim.weight_decay = r["weight_decay"]
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    warmup = 5 if ride else r["warmup_epochs"]
    c.optim.schedule = "warmup_cosine" if warmup else "cosine"
    c.optim.warmup_epochs = warmup
    c.eval_every_epochs = 5
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

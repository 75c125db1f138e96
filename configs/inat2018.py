"""iNaturalist 2018, the official RIDE recipe (RIDE
configs/config_iNaturalist_resnet50_ride.json).

    python -m ride_jax.main --config=configs/inat2018.py --workdir=runs/inat_r50_ride3
    python -m ride_jax.main --config=configs/inat2018.py:experts=4 --workdir=...
    python -m ride_jax.main --config=configs/inat2018.py:data_dir=/data/tfds --workdir=...

    # ResLT ResNet-50 (R50.sh: two branches) and RIDE ResNet-50 + ResLT (72.9 %)
    python -m ride_jax.main --config=configs/inat2018.py:loss=reslt --workdir=runs/inat_reslt
    python -m ride_jax.main --config=configs/inat2018.py:loss=ride_reslt --workdir=...

Arguments: experts 1..6 (default 3), loss ride|ldam_drw|ce|focal|reslt|ride_reslt|logit_adjusted|balanced_softmax|sade
(ResLT: ``ride_jax/methods/reslt.py``), stage
train|router|distill|crt|eval, backbone r50 (official;
r10|rx50 also accepted), data_dir (tfds data folder; default ``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``). No smoke variant: the data cannot be had offline.

Official settings (configs/iNaturalist_resnet50_ride.json): RIDE ResNet-50 (reduced
experts, NormedLinear s = 30), 8142 classes, global batch 512, 100 epochs, SGD lr 0.2
momentum 0.9 Nesterov, wd 2e-4, warmup 5, LR x0.1 after epochs 60 and 80, loss switch
from epoch 81; RIDE loss lambda -0.2, reweight factor 0.015. Test = val2018 (24,426
images), batch 128.

Augmentation (RandomResizedCrop 224, flip; no ColorJitter) and the test transform are
done by the streaming loader, so ``data.augment`` is ``'none'``. Official BN ran per
GPU shard of 64 images (DataParallel, 8 GPUs); here it is over the global batch.
"""

from ride_jax.configlib import parse_arg

from configs import common
from configs.imagenet_lt import apply_imagenet_recipe

NUM_CLASSES = 8142


def get_config(arg=None):
    a = parse_arg(arg, backbone="r50", experts=3, loss="ride", data_dir="", stage="train")
    c = common.get_base_config()
    c.dataset.name = "inat2018"
    c.dataset.args = {"data_dir": a.data_dir} if a.data_dir else {}
    apply_imagenet_recipe(c, backbone=a.backbone, experts=a.experts, loss=a.loss,
                          batch_size=512, lr=0.2, reweight_factor=0.015, stage=a.stage)
    c.lock()
    return c

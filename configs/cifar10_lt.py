"""CIFAR-10-LT with the official CIFAR-100-LT RIDE recipe (RIDE's
configs/config_imbalance_cifar100_ride.json; RIDE ships no CIFAR-10 config).

    python -m ride_jax.main --config=configs/cifar10_lt.py --workdir=runs/c10_ride3
    python -m ride_jax.main --config=configs/cifar10_lt.py:ratio=50,experts=4 --workdir=...
    python -m ride_jax.main --config=configs/cifar10_lt.py:loss=ldam_drw --workdir=...
    python -m ride_jax.main --config=configs/cifar10_lt.py:smoke --workdir=/tmp/c10_smoke

Arguments: ratio 100|50|10, experts 1..6, loss ride|ldam_drw|ce|focal|reslt|ride_reslt|logit_adjusted|balanced_softmax|sade
(ResLT: the CIFAR-10 groups and beta, ``ride_jax/methods/reslt.py``: ``apply_cifar``), stage
train|router|distill|crt|eval (as in cifar100_lt.py; the router sees all 10 sorted
logits, top_k = 10), smoke (two
epochs on a head class of 200 images and ratio 10, whatever ``ratio`` says: an install
check), epochs N (the recipe's schedule compressed to N epochs, ``common.apply_epoch_budget``;
not an official recipe: a budget-limited comparison).

RIDE ships no CIFAR-10 config (its CIFAR-10 loader is fixed at ratio 100): this is the
CIFAR-100-LT recipe unchanged (batch 128, 200 epochs, lr 0.1, wd 5e-4, Nesterov, warmup
5, steps 160/180, gamma 0.01, loss switch at epoch 161, lambda -0.45, reweight factor
0.05), with the CIFAR-10 images (tfds ``cifar10``, the official selection).
"""

from configs import common

NUM_CLASSES = 10
SMOKE_IMG_MAX = 200.0
SMOKE_RATIO = 10.0


def get_config(arg=None):
    a = common.parse_small_image_arg(arg)
    return common.small_image_config(a, "cifar10_lt", {"ratio": float(a.ratio)},
                                     {"ratio": SMOKE_RATIO, "img_max": SMOKE_IMG_MAX},
        router_top_k=NUM_CLASSES)

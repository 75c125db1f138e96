"""CIFAR-100-LT, the official RIDE recipe (ride-spec.md §1.1, §6.2).

    python -m ride_jax.main --config=configs/cifar100_lt.py --workdir=runs/c100_ride3
    python -m ride_jax.main --config=configs/cifar100_lt.py:ratio=50,experts=4 --workdir=...
    python -m ride_jax.main --config=configs/cifar100_lt.py:loss=ldam_drw --workdir=...

Arguments: ratio 100|50|10, experts 1..6, loss ride|ldam_drw|ce|focal, smoke (2 epochs
on a ratio-10 subset with 20 head images, for checking an install; ratio is ignored).
"""

from configs import common

NUM_CLASSES = 100


def get_config(arg=None):
    a = common.parse_small_image_arg(arg)
    # smoke: about a minute on a 2-core CPU: ratio 10 from 20 head images (782).
    return common.small_image_config(a, "cifar100_lt", {"ratio": float(a.ratio)},
                                     {"ratio": 10.0, "img_max": 20.0})

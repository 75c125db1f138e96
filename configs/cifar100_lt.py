"""CIFAR-100-LT, the official RIDE recipe (ride-spec.md §1.1, §6.2).

    python -m ride_jax.main --config=configs/cifar100_lt.py --workdir=runs/c100_ride3
    python -m ride_jax.main --config=configs/cifar100_lt.py:ratio=50,experts=4 --workdir=...
    python -m ride_jax.main --config=configs/cifar100_lt.py:loss=ldam_drw --workdir=...

Arguments: ratio 100|50|10, experts 1..6, loss ride|ldam_drw|ce|focal, smoke (2 epochs
on a ratio-10 subset with 20 head images, for checking an install; ratio is ignored).
"""

from ride_jax.configlib import check_choice, parse_arg

from configs import common

NUM_CLASSES = 100


def get_config(arg=None):
    a = parse_arg(arg, ratio=100, experts=3, loss="ride", smoke=False)
    check_choice("ratio", a.ratio, (100, 50, 10))
    check_choice("experts", a.experts, range(1, 7))
    c = common.get_base_config()
    c.dataset.name = "cifar100_lt"
    c.dataset.args = {"ratio": float(a.ratio)}
    common.apply_loss_preset(c, a.loss)
    if a.loss == "ride":
        c.model.num_experts = a.experts
    if a.smoke:  # about a minute on a 2-core CPU: ratio 10 from 20 head images (782)
        common.apply_smoke(c)
        c.dataset.args = {"ratio": 10.0, "img_max": 20.0}
    c.lock()
    return c

"""CIFAR-100-LT, the official RIDE recipe (RIDE configs/config_imbalance_cifar100_ride.json).

    python -m ride_jax.main --config=configs/cifar100_lt.py --workdir=runs/c100_ride3
    python -m ride_jax.main --config=configs/cifar100_lt.py:ratio=50,experts=4 --workdir=...
    python -m ride_jax.main --config=configs/cifar100_lt.py:loss=ldam_drw --workdir=...

Beyond stage 1 (``stage`` argument, see ``configs/common.py``: ``apply_stage``):

    # RIDE-EA stage 2: train the router on a frozen stage-1 run, then routed evaluation
    python -m ride_jax.main --config=configs/cifar100_lt.py:stage=router \\
        --config.init_from=runs/c100_ride3 --workdir=runs/c100_ride3_ea
    # self-distillation: a 6-expert teacher, then a 3-expert student
    python -m ride_jax.main --config=configs/cifar100_lt.py:experts=6 --workdir=runs/c100_t6
    python -m ride_jax.main --config=configs/cifar100_lt.py:stage=distill \\
        --config.distill.teacher=runs/c100_t6 --workdir=runs/c100_ride3_distill
    # cRT (fresh heads on frozen features) and evaluation only (tau-normalised CE heads)
    python -m ride_jax.main --config=configs/cifar100_lt.py:stage=crt \\
        --config.init_from=runs/c100_ride3 --workdir=runs/c100_ride3_crt
    python -m ride_jax.main --config=configs/cifar100_lt.py:loss=ce,stage=eval \\
        --config.init_from=runs/c100_ce --config.tau=1.0 --workdir=runs/c100_ce_tau1

    # ResLT (ResLTResNet32, beta 0.995 at ratio 100) and RIDE-3 experts with ResLT heads
    python -m ride_jax.main --config=configs/cifar100_lt.py:loss=reslt --workdir=runs/c100_reslt
    python -m ride_jax.main --config=configs/cifar100_lt.py:loss=ride_reslt --workdir=...

Arguments: ratio 100|50|10, experts 1..6, loss ride|ldam_drw|ce|focal|reslt|ride_reslt|logit_adjusted|balanced_softmax|sade
(``configs/common.py``: ``apply_loss_preset``; ``ride_jax/methods/``), stage
train|router|distill|crt|eval, smoke (2 epochs on a ratio-10 subset with 20 head
images, for checking an install; ratio is ignored), epochs N (the recipe's schedule compressed to N epochs, ``common.apply_epoch_budget``;
not an official recipe: a budget-limited comparison).
"""

from configs import common

NUM_CLASSES = 100


def get_config(arg=None):
    a = common.parse_small_image_arg(arg)
    # smoke: about a minute on a 2-core CPU: ratio 10 from 20 head images (782).
    return common.small_image_config(a, "cifar100_lt", {"ratio": float(a.ratio)},
                                     {"ratio": 10.0, "img_max": 20.0},
                                     reslt_groups="cifar100")

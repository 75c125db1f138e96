"""Synthetic long-tailed data (no download): for tests, benchmarks and trying the loop.

    python -m ride_jax.main --config=configs/synthetic_lt.py:smoke --workdir=runs/synthetic
    python -m ride_jax.main --config=configs/synthetic_lt.py:experts=2,loss=ldam_drw --workdir=...

Arguments: experts 1..6, loss ride|ldam_drw|ce|focal|reslt|ride_reslt|logit_adjusted|balanced_softmax|sade, stage
train|router|distill|crt|eval (``configs/common.py``: ``apply_stage``), smoke (16x16
images, 2 epochs of a few steps, and a ResNet-8, ``model.cifar_blocks=1``: one block per
stage of the CIFAR ResNet-32, which compiles several times faster; seconds after
compilation. ``--config.model.cifar_blocks=5`` gives the ResNet-32 back).
"""

from ride_jax.configlib import check_choice, parse_arg

from configs import common


def get_config(arg=None):
    a = parse_arg(arg, experts=3, loss="ride", smoke=False, stage="train")
    check_choice("experts", a.experts, range(1, 7))
    c = common.get_base_config()
    c.dataset.name = "synthetic_lt"
    c.dataset.args = {"num_classes": 10, "img_max": 500, "ratio": 100.0, "image_size": 32,
                      "test_per_class": 100, "seed": 0}
    common.apply_loss_preset(c, a.loss, ratio=100, reslt_groups="cifar10",
                             experts=a.experts)
    c.router.top_k = 10                     # = the number of classes
    common.apply_stage(c, a.stage, distill_warmup_epochs=20)   # CIFAR-style
    if a.smoke:
        common.apply_smoke(c)
        c.epochs = 0 if a.stage == "eval" else c.epochs
        c.dataset.args.update({"img_max": 40, "ratio": 10.0, "image_size": 16,
                               "test_per_class": 8})
        c.data.batch_size = 32
        c.data.eval_batch_size = 64
        c.log_every_steps = 2
        c.model.cifar_blocks = 1     # a ResNet-8: this recipe tests code, not the network
    c.lock()
    return c

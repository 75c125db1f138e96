"""ResLT (Cui et al., TPAMI 2022): residual learning over head / medium / tail branches.

Network: ``model.head='reslt'``: each expert's classifier gives K branch logits
(``outputs['branch_logits']`` ``[E, K, B, C]``); one expert without dimension reduction
is the official single ResLT network. Loss: ``beta`` times the per-branch cross-entropy
on each branch's class group plus ``1 - beta`` times the cross-entropy of the summed
branches (official ResLT ``main.py`` training loop), summed over the experts (RIDE+ResLT,
:mod:`ride_jax.methods.ride_reslt`). Evaluation: the model's own test-time classifier
(``model.reslt_eval_gamma``). Recipes: the official CIFAR scripts
(``CIFAR{10,100}LT_imf*.sh``) and the ImageNet-LT / iNat scripts (``R10.sh``, ``X50.sh``,
``R50.sh``; RIDE+ResLT ``X50_bt128_reslt_ride.sh``, ``R50_ride_reslt.sh``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ride_jax import losses
from ride_jax.losses import RESLT_CIFAR_GROUPS, RESLT_FREQUENCY_GROUPS
from ride_jax.methods.base import Method, Recipe
from ride_jax.models.reslt import RESLT_EVAL_GAMMA

# ResLT's --beta per CIFAR imbalance ratio; 10-class data use CIFAR-10's.
RESLT_CIFAR_BETA = {"cifar100": {100: 0.995, 50: 0.99, 10: 0.72},
                    "cifar10": {100: 0.998, 50: 0.998, 10: 0.96}}
# ResLT's scripts per large dataset; the groups by training frequency are
# ride_jax.losses.RESLT_FREQUENCY_GROUPS.
RESLT_RECIPES = {
    "imagenet_lt": dict(epochs=180, lr=0.1, batch_size=256, weight_decay=5e-4, beta=0.99,
                        fused_ce="eps", warmup_epochs=5),
    "inat2018": dict(epochs=200, lr=0.1, batch_size=256, weight_decay=1e-4, beta=0.85,
                     fused_ce="plain", warmup_epochs=0),
}


def reslt_groups(loss_cfg, train_counts) -> losses.ResLTGroups:
    """The ResLT class groups ``loss.reslt_groups`` names (index or training frequency)."""
    kind = losses.check_choice("loss.reslt_groups", loss_cfg.reslt_groups,
                               ("index", "frequency"))
    tail = None if loss_cfg.reslt_tail < 0 else int(loss_cfg.reslt_tail)
    num_classes = len(train_counts)
    try:
        if kind == "index":
            return losses.reslt_index_groups(num_classes, int(loss_cfg.reslt_medium_tail), tail)
        return losses.reslt_frequency_groups(train_counts, int(loss_cfg.reslt_medium_tail),
                                             tail)
    except ValueError as e:
        raise ValueError(f"loss.reslt_medium_tail={loss_cfg.reslt_medium_tail}, "
                         f"loss.reslt_tail={loss_cfg.reslt_tail} ({kind} groups of "
                         f"{num_classes} classes): {e}") from None


def make_loss(config, class_counts):
    loss_cfg = config.loss
    groups = reslt_groups(loss_cfg, class_counts)
    beta = float(loss_cfg.reslt_beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"loss.reslt_beta={beta} must lie in [0, 1]")
    fused = losses.check_choice("loss.reslt_fused_ce", loss_cfg.reslt_fused_ce,
                                losses.RESLT_FUSED_CE)
    smoothing = float(loss_cfg.label_smoothing)

    def loss_fn(outputs, labels, epoch):
        if "branch_logits" not in outputs:
            raise ValueError("loss.name='reslt' needs a ResLT network: set "
                             "model.head='reslt' (and model.use_norm=False)")
        medium_tail, tail = losses.reslt_example_masks(groups, labels)
        per_expert = jax.vmap(lambda z: losses.reslt_loss(
            z, labels, medium_tail, tail, beta, fused_ce=fused,
            label_smoothing=smoothing)[0])(outputs["branch_logits"].astype(jnp.float32))
        return jnp.sum(per_expert), {}
    return loss_fn


def check(config) -> None:
    """The ResLT loss and network settings agree (the head's own options are checked
    when the network is built)."""
    m, loss = config.model, config.loss
    if m.head != "reslt":
        raise ValueError(f"loss.name='reslt' trains ResLT branches: set "
                         f"--config.model.head=reslt (model.head is {m.head!r})")
    two = loss.reslt_tail < 0
    if two != (m.reslt_branches == 2):
        raise ValueError(f"loss.reslt_tail={loss.reslt_tail} and model.reslt_branches="
                         f"{m.reslt_branches} disagree: 3 branches need a tail group "
                         "(reslt_tail >= 0), 2 branches (H, M) need reslt_tail=-1")


def apply_cifar(config, *, ratio: float, groups: str, ride: bool) -> None:
    """ResLT's CIFAR scripts (``CIFAR{10,100}LT_imf*.sh``).

    ``ResLTResNet32`` (16/32/64, three branch BNs, one shared linear classifier), batch
    128, 200 epochs, SGD lr 0.1 momentum 0.9 Nesterov, wd 5e-4, warm-up over 5 epochs
    from lr/3 (``warmup_from``), LR x0.1 from epoch 161 and x0.01 from 181; crop + flip
    (no rotation), ``drop_last=True``; beta per ratio (:data:`RESLT_CIFAR_BETA`) and the
    index groups (:data:`ride_jax.losses.RESLT_CIFAR_GROUPS`; the same for every ratio).
    ``ride=True`` (not in the official code): RIDE's reduced experts (24/48 wide), each
    with the ResLT head, the ResLT loss summed over experts.
    """
    c = config
    losses.check_choice("reslt groups", groups, tuple(RESLT_CIFAR_BETA))
    ratio = losses.check_choice("ratio", int(ratio), tuple(RESLT_CIFAR_BETA[groups]))
    g = RESLT_CIFAR_GROUPS[groups]
    c.loss.name = "reslt"
    c.loss.reslt_beta = RESLT_CIFAR_BETA[groups][ratio]
    c.loss.reslt_groups = "index"
    c.loss.reslt_medium_tail = g["medium_start"]
    c.loss.reslt_tail = g["tail_start"]
    c.loss.reslt_fused_ce = "plain"
    c.model.head = "reslt"
    c.model.reslt_branches = 3
    c.model.use_norm = False
    c.model.reduce_dimension = ride
    if not ride:
        c.model.num_experts = 1
    c.data.augment = "ldam"
    c.data.remainder = "drop"
    c.optim.lr = 0.1
    c.optim.weight_decay = 5e-4
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.schedule = "custom"
    c.optim.warmup_epochs = 5
    c.optim.warmup_from = 1 / 3
    c.optim.step1 = 160
    c.optim.step2 = 180
    c.optim.gamma = 0.1


def apply_imagenet(config, *, experts: int, ride: bool) -> None:
    """ResLT's ImageNet-LT / iNat scripts on ``config`` (``model.arch`` and
    ``dataset.name`` set by the recipe).

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
    c = config
    name = c.dataset.name
    if name not in RESLT_RECIPES:
        raise ValueError(f"loss=reslt/ride_reslt: ResLT ships recipes for "
                         f"{sorted(RESLT_RECIPES)} (and the CIFAR-style configs), not {name!r}")
    r = RESLT_RECIPES[name]
    groups = RESLT_FREQUENCY_GROUPS[name]
    tail = -1 if groups["tail_size"] is None else groups["tail_size"]   # -1: two branches
    c.model.head = "reslt"
    c.model.use_norm = False
    c.model.num_experts = experts if ride else 1
    c.model.reduce_dimension = ride and name == "imagenet_lt"
    c.model.reslt_branches = 2 if tail < 0 else 3
    gamma_key = f"{name}_{'ride_' if ride else ''}{c.model.arch}"
    c.model.reslt_eval_gamma = RESLT_EVAL_GAMMA.get(
        gamma_key, RESLT_EVAL_GAMMA["imagenet_lt_resnext50"])
    # Only the ResNet-10 script trains without --after_1x1conv.
    c.model.reslt_train_order = ("pool_conv" if c.model.arch == "resnet10" and not ride
                                 else "conv_pool")
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


def preset(config, recipe: Recipe, *, ride: bool = False) -> None:
    if recipe.family == "imagenet":
        apply_imagenet(config, experts=recipe.experts, ride=ride)
    else:
        apply_cifar(config, ratio=recipe.ratio, groups=recipe.reslt_groups, ride=ride)
        if ride:
            config.model.num_experts = recipe.experts


def describe(config) -> str:
    return f"reslt (beta {config.loss.reslt_beta}, {config.loss.reslt_groups} groups)"


METHOD = Method(name="reslt", make_loss=make_loss, preset=preset, check=check,
                describe=describe)

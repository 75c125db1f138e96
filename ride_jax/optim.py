"""The official RIDE optimiser: coupled weight decay + (nesterov) SGD, per-epoch LR.

``CustomLR`` (official RIDE train.py: the CustomLR lr_lambda) is a LambdaLR stepped once
per epoch: at 1-indexed epoch ``e`` with ``e0 = e - 1``, the factor is ``gamma**2`` if ``e0 >= step2``, ``gamma``
if ``e0 >= step1``, else 1, times ``(e0 + 1) / warmup`` while ``e0 < warmup``; the LR is
constant within an epoch (no per-iteration warmup). Here it is a pure function of the
optimiser step: ``e0 = step // steps_per_epoch``. ResLT's CIFAR scripts warm up from a
third instead, ``1/3 * (1 - f) + f`` with ``f = (e0 + 1) / warmup``
(``warmup_from=1/3``; ResLT's cifarTrain_reslt_cifar100.py), and decay by ``gamma = 0.1``.

PyTorch SGD with ``weight_decay`` is coupled L2 (``g + wd * theta`` before momentum),
i.e. ``optax.add_decayed_weights(wd)`` BEFORE ``optax.sgd`` (torch.optim.SGD semantics);
every parameter is
decayed (BN scale/bias too), as in the official code.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
import optax

from ride_jax.losses._checks import check_choice


def lr_factor(epoch0: Any, *, warmup_epochs: int, step1: int, step2: int, gamma: float,
              warmup_from: float = 0.0, xp: Any = jnp):
    """CustomLR factor at 0-indexed epoch ``epoch0`` (``xp``: ``jnp`` in jit, ``np`` on host).

    Warm-up factor ``warmup_from * (1 - f) + f``, ``f = (e0 + 1) / warmup_epochs``:
    ``warmup_from=0`` is RIDE's ``CustomLR``, ``1/3`` ResLT's CIFAR scripts.
    """
    e0 = xp.asarray(epoch0)
    factor = xp.where(e0 >= step2, gamma ** 2, xp.where(e0 >= step1, gamma, 1.0))
    if warmup_epochs > 0:
        f = (e0 + 1) / warmup_epochs
        factor = factor * xp.where(e0 < warmup_epochs, warmup_from * (1 - f) + f, 1.0)
    return factor


def epoch_lr(base_lr: float, epoch: int, *, warmup_epochs: int, step1: int, step2: int,
             gamma: float, warmup_from: float = 0.0) -> float:
    """LR of 1-indexed ``epoch`` (host side, for logs and tables)."""
    return float(base_lr * lr_factor(epoch - 1, warmup_epochs=warmup_epochs, step1=step1,
                                     step2=step2, gamma=gamma, warmup_from=warmup_from,
                                     xp=np))


def custom_lr_schedule(base_lr: float, steps_per_epoch: int, *, warmup_epochs: int = 5,
                       step1: int = 160, step2: int = 180, gamma: float = 0.01,
                       warmup_from: float = 0.0) -> Callable[[Any], Any]:
    """optax schedule: optimiser step -> LR of the epoch it belongs to."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")

    def schedule(step):
        e0 = jnp.asarray(step) // steps_per_epoch
        return base_lr * lr_factor(e0, warmup_epochs=warmup_epochs, step1=step1,
                                   step2=step2, gamma=gamma, warmup_from=warmup_from)
    return schedule


def cosine_epoch_schedule(base_lr: float, steps_per_epoch: int, epochs: int
                          ) -> Callable[[Any], Any]:
    """CosineAnnealingLR(T_max=epochs) stepped per epoch (RIDE-EA router stage: the
    CosineAnnealingLR of RIDE's *_ride_ea.json)."""
    def schedule(step):
        e0 = jnp.asarray(step) // steps_per_epoch
        return base_lr * 0.5 * (1 + jnp.cos(jnp.pi * e0 / epochs))
    return schedule


def warmup_cosine_epoch_schedule(base_lr: float, steps_per_epoch: int, epochs: int,
                                 warmup_epochs: int) -> Callable[[Any], Any]:
    """ResLT's ImageNet-LT / iNat ``adjust_learning_rate``, per epoch (ResLT
    ImageNetLT/ImageNetTrain_reslt.py, Inat/iNaturalTrain_reslt.py).

    ``lr * (e0 + 1) / W`` for ``e0 < W``, then
    ``lr * 0.5 * (1 + cos(pi * (e0 - W + 1) / (epochs - W + 1)))``. (The official code
    writes pi as 3.1415926, a relative difference below 1e-7 in the cosine's argument.)
    With ``W = 0`` this is NOT :func:`cosine_epoch_schedule` (``(e0 + 1) / (epochs + 1)``
    instead of ``e0 / epochs``); ResLT's no-warm-up iNat script uses the latter.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if not 0 <= warmup_epochs < epochs:
        raise ValueError(f"warmup_epochs={warmup_epochs} must lie in [0, epochs={epochs})")

    def schedule(step):
        e0 = jnp.asarray(step) // steps_per_epoch
        cos = 0.5 * (1 + jnp.cos(jnp.pi * (e0 - warmup_epochs + 1)
                                 / (epochs - warmup_epochs + 1)))
        if warmup_epochs == 0:
            return base_lr * cos
        return base_lr * jnp.where(e0 < warmup_epochs, (e0 + 1) / warmup_epochs, cos)
    return schedule


def make_optimizer(schedule: Callable[[Any], Any], *, weight_decay: float,
                   momentum: float = 0.9, nesterov: bool = True
                   ) -> optax.GradientTransformation:
    """``chain(add_decayed_weights(wd), sgd(schedule, momentum, nesterov))``: torch SGD."""
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(schedule, momentum=momentum, nesterov=nesterov))


SCHEDULES = ("custom", "cosine", "warmup_cosine")


def schedule_from_config(o, steps_per_epoch: int, epochs: int) -> Callable[[Any], Any]:
    """The LR schedule ``optim.schedule`` names (``o``: the config's ``optim`` block):
    ``custom`` (official RIDE ``CustomLR``), ``cosine`` (per epoch: RIDE-EA, cRT,
    ResLT iNat) or ``warmup_cosine`` (ResLT ImageNet-LT); ``epochs`` is the run's."""
    check_choice("optim.schedule", o.schedule, SCHEDULES)
    if o.schedule == "cosine":
        return cosine_epoch_schedule(o.lr, steps_per_epoch, max(epochs, 1))
    if o.schedule == "warmup_cosine":
        return warmup_cosine_epoch_schedule(o.lr, steps_per_epoch,
                                            max(epochs, o.warmup_epochs + 1), o.warmup_epochs)
    return custom_lr_schedule(o.lr, steps_per_epoch, warmup_epochs=o.warmup_epochs,
                              step1=o.step1, step2=o.step2, gamma=o.gamma,
                              warmup_from=o.warmup_from)


def optimizer_from_config(o, schedule) -> optax.GradientTransformation:
    """:func:`make_optimizer` (coupled weight decay + SGD) with the ``optim`` block's
    settings."""
    return make_optimizer(schedule, weight_decay=o.weight_decay, momentum=o.momentum,
                          nesterov=o.nesterov)

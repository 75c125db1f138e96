"""What each stage of a run is, as data (``config.stage``).

A :class:`Stage` says what trains, the BatchNorm mode, whether the run starts from
``config.init_from`` (a finished run's workdir), which extra outputs the forward pass
adds for its loss, and which loss it trains with. The trainer reads these fields; a new
stage is a new entry in :data:`STAGES`.

* ``train``: stage 1, every parameter from scratch, the method's loss.
* ``distill``: stage 1 with a frozen teacher (``distill.teacher``): its mean logits are
  ``outputs['teacher_logits']`` and the method's distillation loss trains (RIDE's
  ``RIDELossWithDistill``).
* ``router``: RIDE-EA stage 2: only the router trains on the frozen network (BatchNorm
  in inference mode), with the routing BCE on ``outputs['router_logits']``.
* ``crt``: classifier re-training (Kang et al. 2020): fresh classifier heads on the
  frozen features, the method's loss.
* ``eval``: evaluate ``init_from`` as it is (no training: ``epochs = 0``).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ride_jax import losses

LOSS_KINDS = ("method", "distill", "router", "none")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage.

    Attributes:
      name: ``config.stage``.
      trainable: None (every parameter trains) or the paths of the ``params`` subtrees
        that do; the rest is frozen (no gradient, no weight decay).
      bn_train: BatchNorm normalises with batch statistics and updates its running ones;
        False: inference mode, statistics unchanged.
      from_init: starts from ``config.init_from`` (required then, refused otherwise).
      teacher: ``outputs['teacher_logits']``: the mean logits of the frozen
        ``distill.teacher`` network (no gradient).
      router: ``outputs['router_logits']`` ``[B, E-1]``, every expert running (the
        model must have >= 2 experts).
      fresh_heads: re-initialise the classifier heads of the ``init_from`` network.
      loss: ``'method'`` (the method's ``make_loss``), ``'distill'`` (its
        ``distill_loss``), ``'router'`` (:func:`router_loss`) or ``'none'``.
    """
    name: str
    trainable: tuple[tuple[str, ...], ...] | None
    bn_train: bool
    from_init: bool
    loss: str
    teacher: bool = False
    router: bool = False
    fresh_heads: bool = False


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("train", trainable=None, bn_train=True, from_init=False, loss="method"),
    Stage("distill", trainable=None, bn_train=True, from_init=False, loss="distill",
          teacher=True),
    Stage("router", trainable=(("router",),), bn_train=False, from_init=True,
          loss="router", router=True),
    Stage("crt", trainable=(("experts", "linear"),), bn_train=False, from_init=True,
          loss="method", fresh_heads=True),
    Stage("eval", trainable=(), bn_train=False, from_init=True, loss="none"),
)}
NAMES = tuple(STAGES)


def get(name: str) -> Stage:
    return STAGES[losses.check_choice("stage", name, NAMES)]


def router_loss(config, class_counts):
    """RIDE-EA's router loss: weighted BCE (``router.pos_weight``) of each router
    output against whether the experts so far already get the example right."""
    pos_weight = config.router.pos_weight

    def loss_fn(outputs, labels, epoch):
        targets = losses.routing_targets(outputs["expert_logits"].astype(jnp.float32), labels)
        return losses.routing_loss(outputs["router_logits"].astype(jnp.float32), targets,
                                   pos_weight), {}
    return loss_fn


def _no_loss(config, class_counts):
    def loss_fn(outputs, labels, epoch):
        return jnp.zeros((), jnp.float32), {}
    return loss_fn


def _check_distill(stage: Stage, method, config) -> None:
    if stage.loss == "distill" and method.distill_loss is None:
        raise ValueError(f"stage {stage.name!r} needs a method with a distillation loss "
                         f"(RIDE: official RIDELossWithDistill); loss.name is "
                         f"{config.loss.name!r}")


def make_loss(stage: Stage, method, config, class_counts):
    """The loss ``stage`` trains with: ``(outputs, labels, epoch) -> (loss, aux)``."""
    if stage.loss == "method":
        return method.make_loss(config, class_counts)
    if stage.loss == "distill":
        _check_distill(stage, method, config)
        return method.distill_loss(config, class_counts)
    if stage.loss == "router":
        return router_loss(config, class_counts)
    return _no_loss(config, class_counts)


def check(stage: Stage, method, config) -> None:
    """The settings ``stage`` needs agree (before anything is built or written)."""
    if stage.from_init and not config.init_from:
        raise ValueError(f"stage {stage.name!r} starts from a trained run: set "
                         "--config.init_from=<its workdir>")
    if config.init_from and not stage.from_init:
        starts = [s.name for s in STAGES.values() if s.from_init]
        raise ValueError(f"init_from is for the stages {tuple(starts)}; stage "
                         f"{stage.name!r} trains from scratch")
    if stage.teacher and not config.distill.teacher:
        raise ValueError(f"stage {stage.name!r} needs a teacher: set "
                         "--config.distill.teacher=<workdir of a trained teacher run>")
    if config.distill.teacher and not stage.teacher:
        raise ValueError(f"distill.teacher is only used by stage 'distill', not "
                         f"{stage.name!r}")
    _check_distill(stage, method, config)
    if stage.router and config.model.num_experts < 2:
        raise ValueError(f"stage {stage.name!r} needs a model with >= 2 experts, this one "
                         f"has {config.model.num_experts}")
    if stage.loss == "method" and method.check is not None:
        method.check(config)

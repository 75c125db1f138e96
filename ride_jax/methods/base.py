"""The method interface: what a long-tailed method gives the trainer.

A :class:`Method` is plain data (a frozen dataclass of functions); the trainer calls
its fields and never looks at its name. Built-in methods live one per file in
:mod:`ride_jax.methods`; your own is ``loss.name='package.module:attribute'``, where the
attribute is a :class:`Method` or just its ``make_loss`` (README: "Your own method").

The loss contract (every method, built in or not)::

    loss_fn = make_loss(config, class_counts)   # built-ins: the whole run config
    loss, aux = loss_fn(outputs, labels, epoch)

* ``outputs``: the network's dict (:data:`OUTPUT_KEYS`), plus ``router_logits`` or
  ``teacher_logits`` in the stages that add them (:mod:`ride_jax.stages`);
* ``labels``: ``int32 [B]``; ``epoch``: the traced 1-indexed epoch (an int32 scalar);
* ``loss``: a float32 scalar; ``aux``: a dict of float32 scalars, logged as
  ``train/<key>`` beside ``train/loss``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

LossFn = Callable[[Mapping[str, jax.Array], jax.Array, jax.Array],
                  tuple[jax.Array, Mapping[str, jax.Array]]]

# What the networks put in ``outputs`` (``ride_jax.models``), for the loss contract.
OUTPUT_KEYS = {
    "logits": "[B, C] the prediction: the mean of the experts' logits (one expert: its "
              "logits; cosine heads include the scale s)",
    "expert_logits": "[E, B, C] each expert's logits (E = model.num_experts, 1 for a "
                     "single model)",
    "features": "[E, B, D] each expert's pooled features, before its classifier",
    "branch_logits": "[E, K, B, C] ResLT heads only (model.head='reslt'): each expert's "
                     "K branch logits (K = model.reslt_branches)",
}
# Metric names the trainer writes itself: an ``aux`` key may not take them.
RESERVED_AUX = ("loss", "accuracy", "lr", "steps_per_s", "images_per_s", "epoch")

# The recipe families a preset is asked for (``Recipe.family``).
FAMILIES = ("small_image", "imagenet")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a recipe file tells a method's preset about the run it is building.

    family: ``'small_image'`` (the CIFAR-style ResNet-32 recipes: CIFAR-10/100-LT,
      Fashion-MNIST-LT, CIFAR-10-JPEG-LT, synthetic) or ``'imagenet'`` (ImageNet-LT,
      iNaturalist 2018, Places-LT with the RIDE ImageNet recipe).
    dataset: ``config.dataset.name``.
    experts: the recipe's ``experts=`` argument.
    ratio: the imbalance ratio (small images).
    reslt_groups: the ResLT group/beta table of a small-image dataset (``cifar100`` or
      ``cifar10``).
    backbone: the ImageNet recipe's ``backbone=`` argument (``r10``, ``r50``, ``rx50``).
    """
    family: str
    dataset: str
    experts: int = 3
    ratio: float = 100
    reslt_groups: str = "cifar100"
    backbone: str = "r50"


def _no_preset(config: ml_collections.ConfigDict, recipe: Recipe) -> None:
    """The recipe as it is (RIDE's network: ``recipe.experts`` reduced cosine experts)."""
    config.model.num_experts = recipe.experts


@dataclasses.dataclass(frozen=True)
class Method:
    """A long-tailed method, as the trainer and the recipes use it.

    Attributes:
      name: what ``loss.name`` (and a recipe's ``loss=``) calls it.
      make_loss: ``(config, class_counts [C]) -> loss_fn`` (the module docstring's
        contract); ``config`` is the whole run config, ``class_counts`` the training
        counts per class (NumPy).
      preset: ``(config, recipe) -> None``: the recipe changes that go with the method
        (model settings such as the head and the experts, optimiser, augmentation);
        called by the recipe files before the stage's changes.
      check: ``(config) -> None``: cross-field checks of a training config, before
        anything is built (a ``ValueError`` naming the keys).
      distill_loss: ``(config, class_counts) -> loss_fn`` for stage ``distill``
        (``outputs['teacher_logits']`` holds the teacher's); None: no distillation.
      eval_transform: ``(config, class_counts) -> (outputs -> outputs)`` applied to the
        network's outputs before the evaluation predicts ``argmax(outputs['logits'])``;
        None: predict from the logits as they are.
      test_time: ``(config) -> ride_jax.test_time.Settings``: the method's test-time
        aggregation of its experts (SADE's), which the shift analysis runs per test
        distribution by default; None: none unless asked for (``shift --tta``).
      describe: ``(config) -> str``: the loss line of the run's log.
    """
    name: str
    make_loss: Callable[[ml_collections.ConfigDict, np.ndarray], LossFn]
    preset: Callable[[ml_collections.ConfigDict, Recipe], None] = _no_preset
    check: Callable[[ml_collections.ConfigDict], None] | None = None
    distill_loss: Callable[[ml_collections.ConfigDict, np.ndarray], LossFn] | None = None
    eval_transform: Callable[[ml_collections.ConfigDict, np.ndarray],
                             Callable[[dict], dict]] | None = None
    test_time: Callable[[ml_collections.ConfigDict], Any] | None = None
    describe: Callable[[ml_collections.ConfigDict], str] | None = None


def logits_loss(fn: Callable[[jax.Array, jax.Array], jax.Array]) -> LossFn:
    """The loss_fn of a single-head loss ``fn(logits [B, C] float32, labels [B]) ->
    scalar`` of ``outputs['logits']``, without aux (CE, focal, the prior-corrected ones)."""
    def loss_fn(outputs, labels, epoch):
        return fn(outputs["logits"].astype(jnp.float32), labels), {}
    return loss_fn


def checked(loss_fn: LossFn, what: str) -> LossFn:
    """``loss_fn`` whose result is checked when it is traced: a wrong return is a
    ``TypeError`` naming ``what`` (the method) and what was expected."""

    def fn(outputs, labels, epoch):
        out = loss_fn(outputs, labels, epoch)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping)):
            raise TypeError(f"{what}: loss_fn returned {_kind(out)}; expected (loss, aux) "
                            "with loss a float32 scalar and aux a dict of float32 scalars")
        loss, aux = out
        if jnp.shape(loss) != () or not jnp.issubdtype(jnp.result_type(loss), jnp.floating):
            raise TypeError(f"{what}: loss_fn's loss is {_kind(loss)}; expected a float32 "
                            "scalar (the batch mean)")
        for key, value in aux.items():
            if not isinstance(key, str) or key in RESERVED_AUX:
                raise TypeError(f"{what}: loss_fn's aux key {key!r} is not allowed "
                                f"(a string other than {list(RESERVED_AUX)})")
            if jnp.shape(value) != ():
                raise TypeError(f"{what}: loss_fn's aux[{key!r}] is {_kind(value)}; "
                                "expected a float32 scalar (it is logged as "
                                f"train/{key})")
        return (jnp.asarray(loss, jnp.float32),
                {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()})
    return fn


def _kind(x: Any) -> str:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"an array of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"a {type(x).__name__}"

"""SADE (Zhang et al., "Self-Supervised Aggregation of Diverse Experts for Test-Agnostic
Long-Tailed Recognition", NeurIPS 2022; official Vanint/SADE-AgnosticLT, commit
``cba11b8b``): three skill-diverse experts on RIDE's network, trained with
:func:`ride_jax.losses.sade_loss`.

Network: RIDE's, unchanged (the official ``model/fb_resnets/Expert_ResNet.py`` and
``Expert_ResNeXt.py`` are RIDE's ``RIDEResNet.py`` / ``RIDEResNeXt.py``;
``model/ldam_drw_resnets/expert_resnet_cifar.py`` differs from RIDE's CIFAR model only in
its return value): a shared trunk, per-expert deep stages with reduced widths
(``reduce_dimension``: 24/48 on CIFAR, planes 192/384 on ImageNet size) and NormedLinear
(cosine) classifiers scaled by s = 30, exactly **3** experts in fixed order: 0 = forward
(plain softmax), 1 = uniform (Balanced Softmax), 2 = backward (inverse prior)
(``model/loss.py:270-272``). No diversity KL, no LDAM margin, no DRW, no router.

Loss: ``sade_loss(outputs['expert_logits'], labels, class_counts, lam)``, lambda =
``loss.sade_lambda`` (the official ``loss.args.tau``). The per-expert terms are
logged as ``train/expert0`` (forward), ``train/expert1`` (uniform), ``train/expert2``
(backward).

Prediction: the argmax of the uniform mean of the raw expert logits
(``expert_resnet_cifar.py:196``, ``Expert_ResNet.py:234``), which is the network's
``outputs['logits']`` already: no evaluation transform.

Test-time self-supervised aggregation (``test_training_*.py``): ``test_time`` gives its
settings (:func:`ride_jax.test_time.settings_from_config`: the training lr / weight
decay, batch 128, 5 epochs, the iNat entropy term); ``python -m ride_jax.analysis shift``
runs it per test distribution for every SADE run and reports both predictions.

Recipes (official ``configs/config_*_sade.json``, ``train.py:23-47``; SGD momentum 0.9,
Nesterov, coupled weight decay on every parameter):

* CIFAR-style (``config_cifar100_ir{100,50,10}_sade.json``): ResNet-32, batch 128,
  200 epochs, lr 0.1, wd 5e-4, CustomLR warm-up 5 and x0.1 after epochs 160 and 180,
  crop + flip + rotation 15 (``data.augment='ride'``), lambda 2 for every ratio. For
  ``cifar10_lt`` the author's advice (SADE issue #11; no config is shipped):
  ``reduce_dimension=False`` and lr 0.05.
* ``imagenet_lt`` (``config_imagenet_lt_resnext50_sade.json``): batch 64, 180 epochs,
  lr 0.025, wd 5e-4, cosine over the run (T_max = 180) without warm-up, lambda 2; the
  official backbone is ResNeXt-50 (``backbone=rx50``; the recipe's ``backbone`` argument
  is kept). Other ImageNet-family folders (``folder_lt``) get this recipe too.
* ``inat2018`` (``config_iNaturalist_resnet50_sade.json``): ResNet-50, batch 512,
  100 epochs, lr 0.2, wd 2e-4, CustomLR warm-up 5 and x0.1 after 60 and 80, lambda 1.
* ``places_lt``: refused. The official recipe fine-tunes an ImageNet-pretrained
  ResNet-152 (shared trunk copied into every expert) with per-group learning rates
  (``train_places.py:67-84``), none of which this project can express.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ride_jax import losses, test_time
from ride_jax.methods.base import Method, Recipe

NUM_EXPERTS = 3
# lambda (official loss.args.tau) per dataset; CIFAR-style and other datasets: 2.
SADE_LAMBDA = {"imagenet_lt": 2.0, "inat2018": 1.0, "places_lt": 1.0}
DEFAULT_LAMBDA = 2.0


def make_loss(config, class_counts):
    lam = float(config.loss.sade_lambda)
    try:                                     # the counts and lambda, checked once here
        losses.sade_adjustments(class_counts, lam)
    except (TypeError, ValueError) as e:
        raise ValueError(f"loss.name='sade': {e}") from None
    counts = jnp.asarray(np.asarray(class_counts), jnp.float32)

    def loss_fn(outputs, labels, epoch):
        return losses.sade_loss(outputs["expert_logits"].astype(jnp.float32), labels,
                                counts, lam)
    return loss_fn


def check(config) -> None:
    """SADE's loss reads exactly three experts of a plain (non-ResLT) head."""
    m = config.model
    if m.num_experts != NUM_EXPERTS:
        raise ValueError(f"loss.name='sade' trains exactly 3 experts (forward, uniform, "
                         f"backward): set --config.model.num_experts=3 (it is "
                         f"{m.num_experts})")
    if m.head != "plain":
        raise ValueError(f"loss.name='sade' trains RIDE's experts: set "
                         f"--config.model.head=plain (model.head is {m.head!r})")


def _small_image(c, recipe: Recipe) -> None:
    c.data.batch_size = 128
    c.data.augment = "ride"                  # crop, flip, RandomRotation(15)
    c.epochs = 200
    c.optim.lr = 0.1
    c.optim.weight_decay = 5e-4
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.schedule = "custom"
    c.optim.warmup_epochs = 5
    c.optim.warmup_from = 0.0
    c.optim.step1 = 160
    c.optim.step2 = 180
    c.optim.gamma = 0.1
    c.loss.sade_lambda = DEFAULT_LAMBDA
    if recipe.dataset == "cifar10_lt":       # SADE issue #11 (no shipped config)
        c.model.reduce_dimension = False
        c.optim.lr = 0.05


def _imagenet(c, recipe: Recipe) -> None:
    name = recipe.dataset
    if name == "places_lt":
        raise ValueError("loss=sade on places_lt: SADE's Places-LT recipe fine-tunes an "
                         "ImageNet-pretrained ResNet-152 with per-group learning rates "
                         "(config_places_lt_resnet152_sade.json, train_places.py), which "
                         "this project cannot express; SADE recipes exist here for the "
                         "CIFAR-style configs, imagenet_lt, inat2018 and folder_lt")
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.warmup_from = 0.0
    c.loss.sade_lambda = SADE_LAMBDA.get(name, DEFAULT_LAMBDA)
    if name == "inat2018":
        c.data.batch_size = 512
        c.epochs = 100
        c.optim.lr = 0.2
        c.optim.weight_decay = 2e-4
        c.optim.schedule = "custom"
        c.optim.warmup_epochs = 5
        c.optim.step1 = 60
        c.optim.step2 = 80
        c.optim.gamma = 0.1
    else:                                    # ImageNet-LT's recipe
        c.data.batch_size = 64
        c.epochs = 180
        c.optim.lr = 0.025
        c.optim.weight_decay = 5e-4
        c.optim.schedule = "cosine"          # CosineAnnealingLR(T_max=180), per epoch
        c.optim.warmup_epochs = 0


def preset(config, recipe: Recipe) -> None:
    if recipe.experts != NUM_EXPERTS:
        raise ValueError(f"loss=sade has exactly 3 experts (forward, uniform, backward); "
                         f"got experts={recipe.experts}")
    c = config
    c.loss.name = "sade"
    c.model.num_experts = NUM_EXPERTS
    c.model.head = "plain"
    c.model.use_norm = True                  # NormedLinear, s = 30
    c.model.scale = 30.0
    c.model.reduce_dimension = True
    c.data.sampler = "shuffle"
    if recipe.family == "imagenet":
        _imagenet(c, recipe)
    else:
        _small_image(c, recipe)


def describe(config) -> str:
    return f"sade (forward / uniform / backward experts, lambda {config.loss.sade_lambda})"


METHOD = Method(name="sade", make_loss=make_loss, preset=preset, check=check,
                test_time=test_time.settings_from_config,
                describe=describe)

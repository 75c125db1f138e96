"""RIDE + ResLT: RIDE's experts, each with a ResLT head, trained with the ResLT loss
summed over the experts (official RIDE+ResLT scripts on ImageNet-LT and iNat; on the
CIFAR-style recipes, not official: RIDE's reduced ResNet-32 experts with ResLT's CIFAR
recipe). The preset sets ``loss.name='reslt'``: the run trains :mod:`ride_jax.methods.reslt`.
"""

from __future__ import annotations

import functools

from ride_jax.methods import reslt
from ride_jax.methods.base import Method

METHOD = Method(name="ride_reslt", make_loss=reslt.make_loss,
                preset=functools.partial(reslt.preset, ride=True), check=reslt.check,
                describe=reslt.describe)

"""Networks built from configs, and the checks that another run's network fits.

``model_from_config`` turns a config's ``model`` block (or the JSON block saved with a
run) into the :class:`~ride_jax.models.RIDEModel`; ``check_same_model`` and
``check_same_data`` refuse an ``init_from`` run or a teacher trained with another
network or on other classes.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
from absl import logging

from ride_jax.models import create_model

DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
# Model settings a stage started from ``init_from`` (or a teacher) must share with it.
MODEL_KEYS = ("arch", "num_experts", "reduce_dimension", "use_norm", "scale", "head",
              "reslt_branches", "cifar_blocks")
# Values of model keys added after the first runs, for reading those runs' configs.
MODEL_DEFAULTS = {"head": "plain", "reslt_branches": 3, "reslt_eval_gamma": -1.0,
                  "reslt_train_order": "", "reslt_eval_order": "", "cifar_blocks": 5}


def model_from_config(m: ml_collections.ConfigDict | dict, num_classes: int,
                fusion_barriers: bool = False):
    """The network of a config's ``model`` block (a run's saved JSON block too).

    ``fusion_barriers``: ``create_model``'s (the same function; see
    :func:`fusion_barriers`)."""
    m = {**MODEL_DEFAULTS, **dict(m)}
    reslt = {}
    if m["head"] == "reslt":
        gamma = float(m["reslt_eval_gamma"])
        reslt = dict(reslt_branches=int(m["reslt_branches"]),
                     reslt_eval_gamma=gamma if gamma >= 0 else None,
                     reslt_train_order=m["reslt_train_order"] or None,
                     reslt_eval_order=m["reslt_eval_order"] or None)
        if m["arch"] == "resnet32":       # the CIFAR head has no pooling-order choice
            for key in ("reslt_train_order", "reslt_eval_order"):
                if reslt[key] is not None:
                    raise ValueError(f"model.{key}={m[key]!r}: the CIFAR ResLT head "
                                     "(arch resnet32) pools after its branch BNs; "
                                     "leave it ''")
    return create_model(m["arch"], num_classes=num_classes, num_experts=m["num_experts"],
                        reduce_dimension=m["reduce_dimension"], use_norm=m["use_norm"],
                        scale=m["scale"], expert_impl=m["expert_impl"],
                        dtype=DTYPES[m["dtype"]], head=m["head"],
                        fusion_barriers=fusion_barriers and m["arch"] == "resnet32",
                        cifar_blocks=int(m["cifar_blocks"]), **reslt)


def fusion_barriers(config, platform: str) -> bool:
    """``config.cpu_fusion_barriers`` (default True) on a CPU, else False."""
    value = config.get("cpu_fusion_barriers", True)
    if not isinstance(value, bool):
        raise ValueError(f"cpu_fusion_barriers must be True or False, got {value!r}")
    return value and platform == "cpu"


def check_same_model(config: ml_collections.ConfigDict, other: dict, what: str,
                      keys=MODEL_KEYS) -> None:
    theirs = {**MODEL_DEFAULTS, **other["model"]}
    diff = {k: (theirs.get(k), config.model[k]) for k in keys
            if theirs.get(k) != config.model[k]}
    if diff:
        detail = ", ".join(f"model.{k}={a!r} there but {b!r} here" for k, (a, b) in diff.items())
        raise ValueError(f"{what} has another network: {detail}; use the same settings "
                         f"(e.g. --config.model.num_experts=...)")


def check_same_data(mine: dict, info: dict | None, what: str) -> None:
    """``mine``, ``info``: ``describe()`` of this run's dataset and of the other run's."""
    if info is None:
        return
    if info.get("num_classes") != mine["num_classes"]:
        raise ValueError(f"{what} was trained on {info.get('num_classes')} classes, this "
                         f"dataset has {mine['num_classes']}")
    mine = mine.get("fingerprint")
    if info.get("fingerprint") and mine and info["fingerprint"] != mine:
        logging.warning("%s was trained on another training subset (fingerprint %s, here "
                        "%s)", what, info["fingerprint"][:16], mine[:16])

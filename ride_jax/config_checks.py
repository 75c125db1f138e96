"""Every config key's valid values, checked before a run builds, compiles or writes anything.

:data:`RULES` is the schema: one rule per dotted key of ``configs/common.py``'s base
config (a test keeps the two the same). :func:`check_config` applies it and raises one
:class:`ValueError` whose message names the key, the bad value and what is valid
(``model.num_experts=0 is invalid: expected an integer >= 1``). :func:`unknown_key`
gives the message for a key the config does not have, listing the valid keys of its
section. ``dataset.args`` is free-form: its keys are checked against the dataset
builder's arguments (:func:`ride_jax.data.registry.load_dataset` lists them).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from ride_jax.compiler import CPU_CONVOLUTIONS
from ride_jax import methods
from ride_jax.configlib import SCHEDULES, STAGES
from ride_jax.data.augment import AUGMENTATIONS
from ride_jax.data.loader import REMAINDERS, SAMPLERS
from ride_jax.data.registry import DATASETS
from ride_jax.losses import RESLT_FUSED_CE, TEMPERATURE_FORMULAS
from ride_jax.models import ARCHS, EXPERT_IMPLS, HEADS
from ride_jax.models.reslt import POOL_ORDERS

DTYPE_NAMES = ("float32", "bfloat16")
SEED_MAX = 2 ** 32 - 1

# A rule: ('int', lo, hi) / ('float', lo, hi, lo_open, hi_open) with None = unbounded,
# ('bool',), ('str',), ('choice', values), ('dict',), ('method',) (a built-in method or
# 'package.module:attribute', imported to check it), ('checkpoint',) (latest | best | a
# step number).


def _int(lo=None, hi=None):
    return ("int", lo, hi)


def _float(lo=None, hi=None, *, lo_open=False, hi_open=False):
    return ("float", lo, hi, lo_open, hi_open)


def _choice(values):
    return ("choice", tuple(values))


_BOOL, _STR = ("bool",), ("str",)

RULES: dict[str, tuple] = {
    "seed": _int(0, SEED_MAX),
    "dataset.name": _choice(DATASETS),
    "dataset.args": ("dict",),
    "dataset.cache": _STR,
    "data.batch_size": _int(1),
    "data.eval_batch_size": _int(1),
    "data.augment": _choice(sorted(AUGMENTATIONS)),
    "data.sampler": _choice(SAMPLERS),
    "data.remainder": _choice(REMAINDERS),
    "data.workers": _int(0, 1024),
    "data.fuse_input": _BOOL,
    "model.arch": _choice(ARCHS),
    "model.num_experts": _int(1),
    "model.reduce_dimension": _BOOL,
    "model.use_norm": _BOOL,
    "model.scale": _float(0, lo_open=True),
    "model.expert_impl": _choice(EXPERT_IMPLS),
    "model.dtype": _choice(DTYPE_NAMES),
    "model.head": _choice(HEADS),
    "model.reslt_branches": _choice((2, 3)),
    "model.reslt_eval_gamma": _float(),
    "model.reslt_train_order": _choice(("",) + POOL_ORDERS),
    "model.reslt_eval_order": _choice(("",) + POOL_ORDERS),
    "model.cifar_blocks": _int(1),
    "loss.name": ("method",),
    "loss.reweight_epoch": _int(0),
    "loss.max_margin": _float(0),
    "loss.drw_beta": _float(0, 1, hi_open=True),
    "loss.diversity_factor": _float(),
    "loss.reweight_factor": _float(),
    "loss.base_temperature": _float(0, lo_open=True),
    "loss.base_loss_factor": _float(),
    "loss.temperature_formula": _choice(TEMPERATURE_FORMULAS),
    "loss.focal_gamma": _float(0),
    "loss.reslt_beta": _float(0, 1),
    "loss.reslt_groups": _choice(("index", "frequency")),
    "loss.reslt_medium_tail": _int(0),
    "loss.reslt_tail": _int(-1),
    "loss.reslt_fused_ce": _choice(RESLT_FUSED_CE),
    "loss.label_smoothing": _float(0, 1, hi_open=True),
    "loss.logit_adjust_tau": _float(),
    "loss.sade_lambda": _float(0),
    "optim.lr": _float(0, lo_open=True),
    "optim.weight_decay": _float(0),
    "optim.momentum": _float(0, 1, hi_open=True),
    "optim.nesterov": _BOOL,
    "optim.warmup_epochs": _int(0),
    "optim.step1": _int(0),
    "optim.step2": _int(0),
    "optim.gamma": _float(0, lo_open=True),
    "optim.warmup_from": _float(0, 1),
    "optim.schedule": _choice(SCHEDULES),
    "stage": _choice(STAGES),
    "init_from": _STR,
    "init_from_checkpoint": ("checkpoint",),
    "router.top_k": _int(1),
    "router.hidden": _int(1),
    "router.pos_weight": _float(0, lo_open=True),
    "router.num_buckets": _int(1),
    "router.force_all": _BOOL,
    "distill.teacher": _STR,
    "distill.temperature": _float(0, lo_open=True),
    "distill.factor": _float(),
    "distill.teacher_bn": _choice(("train", "eval")),
    "distill.teacher_checkpoint": ("checkpoint",),
    "tau": _float(),
    "eval.logit_adjust_tau": _float(0),
    "epochs": _int(0),
    "max_steps": _int(0),
    "eval_every_epochs": _int(1),
    "checkpoint_every_epochs": _int(1),
    "keep_checkpoints": _int(1),
    "log_every_steps": _int(1),
    "resume_with_different_config": _BOOL,
    "distributed": _BOOL,
    "cpu_convolutions": _choice(CPU_CONVOLUTIONS),
    "cpu_fusion_barriers": _BOOL,
    "steps_per_call": _int(0),
}

# What a bound means, for the messages of keys whose 0 or -1 is special.
_NOTES = {
    "max_steps": " (0: no limit)",
    "steps_per_call": " (0: a whole epoch per call)",
    "loss.reslt_tail": " (-1: no tail group)",
    "epochs": " (0: evaluate only)",
    "keep_checkpoints": " (the newest checkpoints kept; 0 would delete every one)",
    "eval.logit_adjust_tau": " (0: no post-hoc adjustment)",
}

# Keys added after the first runs, with the value that reproduces those runs: a run
# whose config.json lacks one resumes as if it held this value.
ADDED_KEYS = {"data.workers": 0, "data.fuse_input": False, "loss.logit_adjust_tau": 1.0,
              "loss.sade_lambda": 2.0, "eval.logit_adjust_tau": 0.0,
              "init_from_checkpoint": "latest", "distill.teacher_checkpoint": "latest",
              "model.cifar_blocks": 5}


# Keys (or whole sections) that do not change the trajectory of a run: a resumed run
# may change them.
RUNTIME_KEYS = ("max_steps", "resume_with_different_config", "log_every_steps",
                "eval_every_epochs", "checkpoint_every_epochs", "keep_checkpoints",
                "distributed", "cpu_convolutions", "cpu_fusion_barriers", "steps_per_call",
                "eval", "data.workers", "data.fuse_input")


def sections(keys=RULES) -> dict[str, list[str]]:
    """``{'': top-level keys, 'optim': its keys, ...}`` of the dotted ``keys``."""
    out: dict[str, list[str]] = {}
    for key in keys:
        head, _, tail = key.rpartition(".")
        out.setdefault(head, []).append(tail)
    return out


def unknown_key(key: str) -> str:
    """The message for a dotted config key that does not exist (valid keys listed)."""
    secs = sections()
    head, _, _ = key.rpartition(".")
    while head and head not in secs:          # a misspelt section: list the top level
        head = head.rpartition(".")[0]
    subsections = [s.rpartition(".")[2] for s in secs
                   if s and s.rpartition(".")[0] == head]
    valid = sorted(secs.get(head, []) + subsections)
    where = f"of '{head}' " if head else ""
    return f"unknown config key {key!r}; valid keys {where}are {valid}"


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{'optim.lr': 0.1, ..., 'dataset.args': {...}}`` of a config (ConfigDict or its
    JSON dict): one entry per key of :data:`RULES`, ``dataset.args`` kept whole."""
    out = {}
    for k, v in node.items():
        key = prefix + str(k)
        if isinstance(v, Mapping) or hasattr(v, "to_dict"):
            if key in RULES:            # a free-form dict value (dataset.args)
                out[key] = v
            else:
                out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _range(lo, hi, lo_open=False, hi_open=False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return "finite"


def check_value(key: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``key``, ``value`` and what is valid, if it is bad."""
    rule = RULES[key]
    kind, note = rule[0], _NOTES.get(key, "")
    bad = f"{key}={value!r} is invalid: expected"
    if kind == "int":
        lo, hi = rule[1], rule[2]
        if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
                or (lo is not None and value < lo) or (hi is not None and value > hi)):
            raise ValueError(f"{bad} an integer {_range(lo, hi)}{note}")
    elif kind == "float":
        lo, hi, lo_open, hi_open = rule[1:]
        ok = (isinstance(value, (int, float, np.integer, np.floating))
              and not isinstance(value, (bool, np.bool_)) and np.isfinite(value))
        if ok and lo is not None:
            ok = value > lo if lo_open else value >= lo
        if ok and hi is not None:
            ok = value < hi if hi_open else value <= hi
        if not ok:
            raise ValueError(f"{bad} a number {_range(lo, hi, lo_open, hi_open)}{note}")
    elif kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{bad} True or False")
    elif kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"{bad} a string")
    elif kind == "dict":
        if not (isinstance(value, Mapping) or hasattr(value, "to_dict")):
            raise ValueError(f"{bad} a dict of dataset builder arguments")
    elif kind == "method":
        if not isinstance(value, str):
            raise ValueError(f"{bad} a method name {list(methods.NAMES)} or "
                             "'package.module:attribute'")
        methods.get(value)
    elif kind == "checkpoint":
        from ride_jax.checkpointing import check_which   # (it imports this module)
        check_which(value, key)
    elif kind == "choice":
        ok = isinstance(value, (str, int)) and not isinstance(value, bool)
        if not ok or value not in rule[1]:
            raise ValueError(f"{key}={value!r} is not supported; valid choices are "
                             f"{list(rule[1])}")


def check_config(config: Any) -> None:
    """Check every value of ``config`` (a ConfigDict or dict): pure, nothing is built.

    Raises:
      ValueError: the first bad value (key, value, what is valid), an unknown key (the
        valid keys of its section) or a missing one.
    """
    flat = flatten(config)
    for key in flat:
        if key not in RULES:
            raise ValueError(unknown_key(key))
    missing = sorted(set(RULES) - set(flat))
    if missing:
        raise ValueError(f"the config lacks the key(s) {missing}: start recipes from "
                         "configs/common.py's get_base_config()")
    for key, value in flat.items():
        check_value(key, value)
    if flat["optim.step2"] < flat["optim.step1"]:
        raise ValueError(f"optim.step2={flat['optim.step2']} is invalid: expected >= "
                         f"optim.step1={flat['optim.step1']} (the second LR step comes later)")
    if flat["model.cifar_blocks"] != 5 and flat["model.arch"] != "resnet32":
        raise ValueError(f"model.cifar_blocks={flat['model.cifar_blocks']} sets the depth of "
                         f"the CIFAR ResNet (model.arch='resnet32'); model.arch="
                         f"{flat['model.arch']!r} has its own depth: leave it 5")
    if flat["tau"] >= 0 and flat["model.use_norm"]:
        raise ValueError(f"tau={flat['tau']}: tau-normalisation applies to linear heads "
                         "(model.use_norm=False); this model has cosine heads")
    cache = flat["dataset.cache"]
    if cache and not (os.path.isfile(cache)
                      or os.path.isfile(os.path.join(cache, "dataset.json"))):
        raise ValueError(f"dataset.cache={cache!r} is invalid: expected an existing .npz "
                         "file or a prepared records folder (python -m ride_jax.data.prepare "
                         "writes both)")


def check_resumable(workdir: str, cfg: dict, allow: bool) -> None:
    """Refuse a workdir whose ``config.json`` differs from ``cfg`` in a trajectory key;
    the message names each differing key with both values."""
    path = os.path.join(workdir, "config.json")
    if allow or not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)

    mine = flatten(cfg)
    theirs = {**ADDED_KEYS, **flatten(old)}  # older runs
    diff = [k for k in sorted(set(mine) | set(theirs))
            if k.split(".")[0] not in RUNTIME_KEYS and k not in RUNTIME_KEYS
            and mine.get(k) != theirs.get(k)]
    if diff:
        detail = ", ".join(f"{k}={theirs.get(k)!r} there but {mine.get(k)!r} here"
                           for k in diff[:4]) + (", ..." if len(diff) > 4 else "")
        raise ValueError(f"{workdir!r} holds a run with a different config ({detail}); use "
                         "another --workdir, or --config.resume_with_different_config=True")

"""Config helpers: ``parse_arg`` for ``configs/X.py:arg`` strings, ``load`` for notebooks.

A config file defines ``get_config(arg: str | None) -> ml_collections.ConfigDict``; the
argument string is ``key=value`` pairs and bare flags separated by commas
(``'ratio=50,experts=4,smoke'``).
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any

import ml_collections

from ride_jax import methods, optim, stages
from ride_jax.losses._checks import check_choice  # re-exported for the config files

# The built-in methods (``config.loss.name`` and the recipes' ``loss=``; each a file of
# ride_jax.methods): a loss with its official model and optimiser settings. ``ride_reslt``
# is RIDE's experts, each with a ResLT head, trained with the ResLT loss.
METHODS = methods.NAMES
LOSSES = METHODS
# ``config.optim.schedule``: the official RIDE CustomLR (``custom``), a per-epoch cosine
# (``cosine``: RIDE-EA, cRT, ResLT iNat ResNet-50) and ResLT's warm-up + cosine
# (``warmup_cosine``: ResLT ImageNet-LT and the RIDE+ResLT scripts).
SCHEDULES = optim.SCHEDULES
# What a run does (``config.stage``: ride_jax.stages; configs/common.py's ``apply_stage``).
STAGES = stages.NAMES


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """``'ratio=50,smoke'`` -> ConfigDict(ratio=50, smoke=True, <other defaults>).

    Every key must be one of ``defaults`` (an unknown one is an error listing them); a
    value is converted to the type of its default (bools accept true/false/1/0).
    """
    out = dict(defaults)
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; valid arguments are "
                             f"{sorted(defaults)}")
        default = defaults[key]
        if not eq:
            if not isinstance(default, bool):
                raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
            out[key] = True
            continue
        value = value.strip()
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config argument {key}={value!r} must be true or false")
            out[key] = value.lower() in ("true", "1")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                out[key] = type(default)(ast.literal_eval(value))
            except (ValueError, SyntaxError):
                raise ValueError(f"config argument {key}={value!r} must be a number") from None
        else:
            out[key] = value
    return ml_collections.ConfigDict(out)


def load(path: str | os.PathLike, arg: str | None = None) -> ml_collections.ConfigDict:
    """Load ``get_config(arg)`` from a config file (what ``--config=path:arg`` does)."""
    path = os.fspath(path)
    if arg is None and ".py:" in path:      # the argument may hold paths: path=/a/b.zip
        path, arg = path.split(".py:", 1)
        path += ".py"
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(
        "ride_jax_config_" + os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def summary(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The run's config on one screen (the log's start); the full one is in config.json."""
    c, m, o = config, config.model, config.optim
    args = ", ".join(f"{k}={v}" for k, v in dict(c.dataset.args).items())
    data = f"cache {c.dataset.cache}" if c.dataset.cache else f"{c.dataset.name}({args})"
    head = ("cosine" if m.use_norm else "linear") + (" ResLT" if m.head == "reslt" else "")
    what = methods.describe(config)
    if o.schedule == "custom":
        sched = f"warm-up {o.warmup_epochs}, x{o.gamma} at epochs {o.step1} and {o.step2}"
    else:
        sched = f"{o.schedule}, warm-up {o.warmup_epochs}"
    stop = f", max_steps {c.max_steps}" if c.max_steps else ""
    lines = [
        f"run: stage {c.stage}, {c.epochs} epochs{stop}, seed {c.seed}, workdir {workdir}",
        f"data: {data}, batch {c.data.batch_size} (eval {c.data.eval_batch_size}), "
        f"augment {c.data.augment}, sampler {c.data.sampler}",
        f"model: {m.arch}, {m.num_experts} expert(s){', reduced' if m.reduce_dimension else ''}"
        f", {head} head, {m.dtype}",
        f"loss: {what}",
        f"optim: SGD lr {o.lr} ({sched}), momentum {o.momentum}"
        f"{' nesterov' if o.nesterov else ''}, weight decay {o.weight_decay}",
        f"every: eval {c.eval_every_epochs} epoch(s), checkpoint {c.checkpoint_every_epochs} "
        f"epoch(s) (keep {c.keep_checkpoints}), log {c.log_every_steps} steps",
    ]
    if c.init_from:
        lines.append(f"init_from: {c.init_from}")
    if c.distill.teacher:
        lines.append(f"teacher: {c.distill.teacher}")
    lines.append(f"full config: {workdir}/config.json")
    return "config:\n  " + "\n  ".join(lines)

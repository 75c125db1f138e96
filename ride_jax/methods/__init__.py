"""Long-tailed methods, one file each, and the registry the trainer and recipes use.

Built in: :mod:`~ride_jax.methods.ride`, :mod:`~ride_jax.methods.ldam_drw`,
:mod:`~ride_jax.methods.ce`, :mod:`~ride_jax.methods.focal`,
:mod:`~ride_jax.methods.reslt`, :mod:`~ride_jax.methods.ride_reslt`,
:mod:`~ride_jax.methods.logit_adjusted`, :mod:`~ride_jax.methods.balanced_softmax`,
:mod:`~ride_jax.methods.sade`.
Each module defines ``METHOD``, a :class:`Method`. Adding one: a new file and a line in
:data:`BUILTIN`; or, without editing ride_jax, ``loss.name='package.module:attribute'``
(:func:`get`).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import Any

import ml_collections

from ride_jax.methods import (balanced_softmax, ce, focal, ldam_drw, logit_adjusted, reslt,
                              ride, ride_reslt, sade)
from ride_jax.methods.base import (FAMILIES, OUTPUT_KEYS, RESERVED_AUX, LossFn, Method,
                                   Recipe, checked)

BUILTIN: dict[str, Method] = {m.name: m for m in (
    ride.METHOD, ldam_drw.METHOD, ce.METHOD, focal.METHOD, reslt.METHOD, ride_reslt.METHOD,
    logit_adjusted.METHOD, balanced_softmax.METHOD, sade.METHOD)}
NAMES = tuple(BUILTIN)

__all__ = ["BUILTIN", "FAMILIES", "NAMES", "OUTPUT_KEYS", "RESERVED_AUX", "LossFn",
           "Method", "Recipe", "apply_preset", "checked", "describe", "find", "get",
           "is_plugin"]


def is_plugin(name: str) -> bool:
    """``'package.module:attribute'`` (a method outside ride_jax) rather than a built-in."""
    return isinstance(name, str) and ":" in name


def get(name: str) -> Method:
    """The method ``name`` (``loss.name``, a recipe's ``loss=``).

    ``name`` is a built-in (:data:`NAMES`) or ``'package.module:attribute'``, importable
    from the current directory or ``sys.path``, whose attribute is a :class:`Method` or a
    ``make_loss(loss_cfg, class_counts) -> loss_fn`` (README: "Your own method").

    Raises:
      ValueError: an unknown name, a module that does not import, a missing attribute
        or one that is neither a Method nor callable (one line naming it).
    """
    if not is_plugin(name):
        if name not in BUILTIN:
            raise ValueError(f"loss.name={name!r} is not supported; valid choices are "
                             f"{list(NAMES)} or 'package.module:attribute' (your own)")
        return BUILTIN[name]
    where = f"loss.name={name!r}"
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{where}: expected 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:   # noqa: BLE001 - any import failure is the user's to see
        raise ValueError(f"{where}: module {module_name!r} does not import "
                         f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
                         ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{where}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, Method):
        return dataclasses.replace(
            obj, name=name, make_loss=_checked_factory(obj.make_loss, where),
            distill_loss=obj.distill_loss and _checked_factory(obj.distill_loss, where))
    if not callable(obj):
        kind = type(obj).__name__
        raise ValueError(f"{where}: {attr!r} (a{'n' if kind[0] in 'aeiou' else ''} {kind}) "
                         "is not callable; "
                         "expected make_loss(loss_cfg, class_counts) -> loss_fn or a "
                         "ride_jax.methods.Method")
    return Method(name=name, make_loss=_checked_factory(
        lambda config, counts: obj(config.loss, counts), where))


def find(name: str) -> Method | None:
    """:func:`get`, for reading a finished run: None (with a warning) for a plug-in that
    does not import here (e.g. one defined in a notebook's ``__main__``); an unknown
    built-in name still raises."""
    try:
        return get(name)
    except ValueError as e:
        if not is_plugin(name):
            raise
        logging.warning("method %r is not available here: %s", name, e)
        return None


def _checked_factory(make_loss, where: str):
    """``make_loss`` whose errors and result are reported as one line naming ``where``."""

    def factory(config, class_counts):
        try:
            loss_fn = make_loss(config, class_counts)
        except Exception as e:   # noqa: BLE001
            raise ValueError(f"{where}: make_loss raised {type(e).__name__}: {e}") from e
        if not callable(loss_fn):
            raise ValueError(f"{where}: make_loss returned a {type(loss_fn).__name__}; "
                             "expected loss_fn(outputs, labels, epoch) -> (loss, aux)")
        return _reporting(checked(loss_fn, where), where)
    return factory


def _reporting(loss_fn: LossFn, where: str) -> LossFn:
    def fn(outputs, labels, epoch):
        try:
            return loss_fn(outputs, labels, epoch)
        except TypeError as e:
            if str(e).startswith(where):
                raise
            raise TypeError(f"{where}: loss_fn raised TypeError: {e}") from e
        except KeyError as e:
            raise ValueError(f"{where}: loss_fn asked for outputs[{e}]; this network gives "
                             f"{sorted(outputs)}") from e
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{where}: loss_fn raised {type(e).__name__}: {e}") from e
    return fn


def apply_preset(method: Method, config: ml_collections.ConfigDict, recipe: Recipe) -> None:
    """A recipe's method: ``loss.name`` names it (a preset may rename it: ``ride_reslt``
    trains the ``reslt`` loss), then its preset makes the recipe changes."""
    config.loss.name = method.name
    method.preset(config, recipe)


def describe(config: ml_collections.ConfigDict) -> str:
    """The loss line of a run's log."""
    method = get(config.loss.name)
    return method.describe(config) if method.describe else config.loss.name

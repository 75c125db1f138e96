"""Input validation shared by the losses, the models and the trainer.

Two kinds of checks live here:

* **Static checks** look only at shapes, ranks and dtypes. They work on
  concrete arrays and on jax tracers alike (shapes are static under ``jit``),
  so they run at trace time inside a jitted function and cost nothing at run
  time.
* **Value checks** (label range, positivity of class counts) need the actual
  numbers. They run only when the array is concrete (not a
  :class:`jax.core.Tracer`); under ``jit``/``vmap``/``grad`` tracing they are
  skipped silently, because a traced value cannot be inspected without a host
  round trip.

Every failure raises :class:`ValueError` (or :class:`TypeError` for a wrong
dtype/type) with a message that names the argument, the offending value(s)
and what was expected, instead of a traceback from deep inside jax.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "is_concrete",
    "check_choice",
    "check_class_counts",
    "check_labels",
    "check_vector",
    "check_logits",
    "check_expert_logits",
    "float_dtype",
]

_MAX_LISTED = 10  # how many offending entries an error message lists


def is_concrete(x: Any) -> bool:
    """Whether ``x`` holds concrete values (is not a jax tracer).

    Args:
        x: Any python object or array.

    Returns:
        ``False`` if ``x`` is a :class:`jax.core.Tracer` (inside ``jit``,
        ``vmap``, ``grad``, ...), ``True`` otherwise.
    """
    return not isinstance(x, jax.core.Tracer)


def _list_entries(indices: np.ndarray, values: np.ndarray) -> str:
    """Formats ``index=value`` pairs, truncated to ``_MAX_LISTED`` entries."""
    pairs = [f"{int(i)}: {v!r}" for i, v in zip(indices[:_MAX_LISTED], values[:_MAX_LISTED].tolist())]
    more = "" if len(indices) <= _MAX_LISTED else f", ... ({len(indices) - _MAX_LISTED} more)"
    return "{" + ", ".join(pairs) + more + "}"


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Checks that an option (a string, a number, ...) is one of the allowed values.

    Args:
        name: Argument name used in the error message.
        value: The value given.
        choices: The allowed values.

    Returns:
        ``value`` unchanged.

    Raises:
        ValueError: ``value`` is not one of ``choices``; the message names the
            bad value and lists the valid choices.
    """
    choices = tuple(choices)
    try:
        valid = isinstance(value, (str, int, float)) and value in choices
    except TypeError:  # unhashable or array-like values are never a choice
        valid = False
    if not valid:
        raise ValueError(f"{name}={value!r} is not supported; valid choices are {choices!r}")
    return value


def check_class_counts(class_counts: Any, name: str = "class_counts") -> np.ndarray:
    """Validates per-class training-image counts and returns them as float64.

    Counts must be concrete (numpy array, python list, or a jax array outside
    of tracing): they are configuration, not data. Integer values are not
    required (e.g. effective numbers are fine), but every count must be finite
    and strictly positive.

    Args:
        class_counts: Counts n_c, shape ``[C]``.
        name: Argument name used in error messages.

    Returns:
        ``np.ndarray`` of dtype float64 and shape ``[C]``.

    Raises:
        TypeError: ``class_counts`` is a jax tracer (traced inside ``jit``).
        ValueError: not 1-D, empty, non-numeric, non-finite, or with entries
            <= 0 (the message lists the offending class indices and values).
    """
    if not is_concrete(class_counts):
        raise TypeError(
            f"{name} must be concrete (numpy array, list or an untraced jax array); got a jax tracer. "
            "Compute the per-class vectors outside jit and pass the resulting arrays in."
        )
    try:
        arr = np.asarray(class_counts, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric; got {class_counts!r}") from err
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with one count per class; got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must not be empty (need at least one class)")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} must be finite; non-finite entries (class: value) {_list_entries(bad, arr[bad])}")
    bad = np.flatnonzero(arr <= 0)
    if bad.size:
        raise ValueError(
            f"{name} must be > 0 for every class; offending entries (class: count) {_list_entries(bad, arr[bad])}"
        )
    return arr


def check_labels(
    labels: Any, num_classes: int, name: str = "labels", shape: tuple[int, ...] | None = None
) -> jax.Array:
    """Validates integer class labels.

    Static checks (always, also under ``jit``): integer dtype and, if given,
    the expected shape. Value check (only when ``labels`` is concrete):
    every label in ``[0, num_classes)``. Under ``jit`` an out-of-range label
    cannot be detected; ``jax.nn.one_hot`` then yields an all-zero row, so the
    sample silently contributes a wrong loss.

    Args:
        labels: Integer labels, any shape (typically ``[B]``).
        num_classes: Number of classes C.
        name: Argument name used in error messages.
        shape: Expected shape, or ``None`` to skip the shape check.

    Returns:
        ``labels`` as a jax array (tracers are returned unchanged).

    Raises:
        TypeError: ``labels`` is not of an integer dtype.
        ValueError: wrong shape, or (concrete only) labels out of range; the
            message lists the offending positions and labels.
    """
    labels = jnp.asarray(labels) if is_concrete(labels) else labels
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name} must have an integer dtype; got {labels.dtype}")
    if shape is not None and tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(labels.shape)} but shape {tuple(shape)} is expected")
    if is_concrete(labels):
        host = np.asarray(labels).reshape(-1)
        bad = np.flatnonzero((host < 0) | (host >= num_classes))
        if bad.size:
            raise ValueError(
                f"{name} must lie in [0, {num_classes}) (num_classes={num_classes}); out-of-range entries "
                f"(flat position: label) {_list_entries(bad, host[bad])}"
            )
    return labels


def check_vector(name: str, v: Any, num_classes: int, *, allow_scalar: bool = False) -> jax.Array:
    """Checks that a per-class vector has length C (static shape check).

    Args:
        name: Argument name used in error messages (e.g. ``"margins"``).
        v: The vector, shape ``[C]`` (or a scalar when ``allow_scalar``).
        num_classes: Expected length C.
        allow_scalar: Accept a 0-d value as well (broadcast by the caller).

    Returns:
        ``v`` as a jax array.

    Raises:
        ValueError: ``v`` is not 1-D (or 0-d when allowed) or its length is
            not C; the message names ``name``, the length got and C.
    """
    v = jnp.asarray(v) if is_concrete(v) else v
    if v.ndim == 0 and allow_scalar:
        return v
    if v.ndim != 1:
        what = "a scalar or " if allow_scalar else ""
        raise ValueError(
            f"{name} must be {what}a 1-D per-class vector of length {num_classes}; got shape {tuple(v.shape)}"
        )
    if v.shape[0] != num_classes:
        raise ValueError(f"{name} has length {v.shape[0]} but the logits have C={num_classes} classes")
    return v


def check_logits(name: str, x: Any, ndim: int | None = None, min_ndim: int | None = None) -> jax.Array:
    """Checks the rank of a logits array (static) and that it is floating point.

    Args:
        name: Argument name used in error messages.
        x: The array.
        ndim: Required rank, or ``None``.
        min_ndim: Minimum rank, or ``None``.

    Returns:
        ``x`` as a jax array.

    Raises:
        ValueError: wrong rank.
        TypeError: not a floating-point dtype.
    """
    x = jnp.asarray(x) if is_concrete(x) else x
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name} must be at least {min_ndim}-D; got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating-point dtype; got {x.dtype}")
    return x


def check_expert_logits(expert_logits: Any, num_experts: int | None = None, name: str = "expert_logits") -> jax.Array:
    """Checks per-expert logits of shape ``[E, B, C]``.

    Args:
        expert_logits: Per-expert logits, ``[E, B, C]``.
        num_experts: The configured number of experts E, or ``None``.
        name: Argument name used in error messages.

    Returns:
        ``expert_logits`` as a jax array.

    Raises:
        ValueError: not 3-D, E == 0, or E differs from ``num_experts``.
    """
    x = check_logits(name, expert_logits)
    if x.ndim != 3:
        raise ValueError(f"{name} must be 3-D [num_experts, batch, num_classes]; got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has 0 experts; need at least 1")
    if num_experts is not None and x.shape[0] != num_experts:
        raise ValueError(f"{name} has {x.shape[0]} experts but the config has {num_experts}")
    return x


def float_dtype(*arrays: Any) -> jnp.dtype:
    """The floating dtype in which to compute a loss.

    float64 if any input is float64 and x64 is enabled; float32 otherwise
    (half-precision inputs are computed in float32).

    Args:
        *arrays: The inputs (arrays or tracers).

    Returns:
        The computation dtype.
    """
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    return jnp.promote_types(dtype, jnp.float32)

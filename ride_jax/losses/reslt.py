"""ResLT loss and class groups (official ResLT ``crossEntropy`` / ``ResLTLoss``, e.g. in
``ImageNetLT/ImageNetTrain_reslt_ride.py``).

Shapes: K branches (3: head H, medium+tail M, tail T; or 2: H and M, the iNat
recipe), B samples, C classes. The branches share one classifier and their
logits are summed for the prediction.

    l(z, y)  = -log(softmax(z)_y + 1e-7)                 (official per-branch CE, softmax over all C)
    L_ice    = [ sum_i u_i l(z_H,i) + sum_i v_i l(z_M,i) + sum_i t_i l(z_T,i) ] / (sum u + sum v + sum t)
    L_fce    = (1/B) sum_i CE(z_H,i + z_M,i + z_T,i, y_i)
    L        = beta * L_ice + (1 - beta) * L_fce

u_i = 1 for every sample, v_i = 1[y_i in medium+tail], t_i = 1[y_i in tail]. A
branch with no sample of its group in the batch contributes 0 to both the
numerator and the denominator of L_ice (ResLT issue #1). The code's ``--beta``
is the README's alpha.

Class groups: CIFAR groups by class index (:data:`RESLT_CIFAR_GROUPS`,
:func:`reslt_index_groups`); ImageNet-LT / iNat by training frequency rank
(:data:`RESLT_FREQUENCY_GROUPS`, :func:`reslt_frequency_groups`). The groups are
per-class ``[C]`` masks; the loss takes per-example ``[B]`` masks, obtained by
indexing with the labels (:func:`reslt_example_masks`).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ride_jax.losses._checks import _list_entries, check_choice, check_labels, check_logits, float_dtype, is_concrete
from ride_jax.losses.classification import _nll

__all__ = [
    "RESLT_CIFAR_GROUPS",
    "RESLT_FREQUENCY_GROUPS",
    "RESLT_FUSED_CE",
    "ResLTGroups",
    "reslt_example_masks",
    "reslt_frequency_groups",
    "reslt_index_groups",
    "reslt_loss",
]

# Official CIFAR groups (by class index; class 0 is the head). The same for imbalance ratios 100, 50, 10.
RESLT_CIFAR_GROUPS = {
    "cifar10": {"num_classes": 10, "medium_start": 2, "tail_start": 4},
    "cifar100": {"num_classes": 100, "medium_start": 35, "tail_start": 70},
}

# Official frequency groups: the ``medium_tail_size`` (``tail_size``) rarest training classes form the
# medium+tail (tail) group. iNat uses two branches only (no tail group).
RESLT_FREQUENCY_GROUPS = {
    "imagenet_lt": {"medium_tail_size": 825, "tail_size": 220},
    "inat2018": {"medium_tail_size": 6600, "tail_size": None},
}

# The fused CE on the summed logits: "plain" = nn.CrossEntropyLoss (CIFAR, iNat);
# "eps" = the 1e-7 per-branch CE with the same label smoothing, batch mean (ImageNet-LT).
RESLT_FUSED_CE = ("plain", "eps")

_EPS = 1e-7  # the official epsilon inside the log: -log(softmax(z)_y + 1e-7)


class ResLTGroups(NamedTuple):
    """Per-class ResLT groups (numpy, concrete configuration).

    Attributes:
        medium_tail: bool ``[C]``, True for the classes the M branch is trained on.
        tail: bool ``[C]`` for the T branch, or ``None`` (two-branch recipe).
        class_map: int ``[C]``; ``class_map[c]`` is the label the official code gives class c
            (identity for CIFAR; ascending-frequency rank for ImageNet-LT / iNat). The masks are
            indexed by the ORIGINAL label c, so the loss needs no remapping.
    """

    medium_tail: np.ndarray
    tail: np.ndarray | None
    class_map: np.ndarray


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    """A python/numpy integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name}={int(value)} must lie in [{low}, {high}]")
    return int(value)


def reslt_index_groups(num_classes: int, medium_start: int, tail_start: int | None) -> ResLTGroups:
    """ResLT groups by class index, as the official CIFAR scripts.

    medium+tail = {c : c >= medium_start}, tail = {c : c >= tail_start}. Official values in
    :data:`RESLT_CIFAR_GROUPS` (CIFAR-100: 35 / 70; CIFAR-10: 2 / 4), e.g.
    ``reslt_index_groups(**RESLT_CIFAR_GROUPS['cifar100'])``.

    Args:
        num_classes: C >= 1.
        medium_start: First class of the medium+tail group, in ``[0, C]``.
        tail_start: First class of the tail group, in ``[medium_start, C]`` (the tail is a subset of
            medium+tail), or ``None`` for two branches (no tail group).

    Returns:
        :class:`ResLTGroups` with bool ``[C]`` masks and the identity ``class_map``.

    Raises:
        ValueError: a non-integer or out-of-range boundary, or ``tail_start < medium_start``.
    """
    num_classes = _check_int("num_classes", num_classes, 1, np.iinfo(np.int32).max)
    medium_start = _check_int("medium_start", medium_start, 0, num_classes)
    classes = np.arange(num_classes)
    tail = None
    if tail_start is not None:
        if isinstance(tail_start, numbers.Integral) and not isinstance(tail_start, bool) and tail_start < medium_start:
            raise ValueError(
                f"tail_start={int(tail_start)} < medium_start={medium_start}: the tail group must be a subset "
                "of the medium+tail group"
            )
        tail = classes >= _check_int("tail_start", tail_start, medium_start, num_classes)
    return ResLTGroups(classes >= medium_start, tail, classes)


def reslt_frequency_groups(
    train_counts: Any, medium_tail_size: int, tail_size: int | None = None
) -> ResLTGroups:
    """ResLT groups by training frequency, as the official ImageNet-LT / iNat scripts.

    The official code relabels the classes by ascending training count
    (``class_map[argsort(counts)[i]] = i``, label 0 = rarest class); medium+tail are the remapped
    labels ``< medium_tail_size`` and tail those ``< tail_size``, i.e. the ``medium_tail_size``
    (``tail_size``) rarest classes. Official sizes in :data:`RESLT_FREQUENCY_GROUPS` (ImageNet-LT
    825 / 220; iNat 6600 / none).

    Ties: the sort here is STABLE (``np.argsort(kind='stable')``), so classes with equal counts are
    ranked by their original index, the lower index first (counted as rarer). At a group boundary
    the lower-indexed of the tied classes therefore join the rarer group. The official code uses
    numpy's default (unstable) sort, whose order among tied counts is unspecified (it depends on
    the numpy version and CPU); group membership of classes tied across a boundary may then differ
    from the official run. Classes not tied across a boundary are unaffected.

    Args:
        train_counts: Training images per class ``[C]`` (finite, >= 0), concrete.
        medium_tail_size: Number of rarest classes in the medium+tail group, in ``[0, C]``.
        tail_size: Number of rarest classes in the tail group, in ``[0, medium_tail_size]``, or
            ``None`` for two branches (no tail group).

    Returns:
        :class:`ResLTGroups`: bool ``[C]`` masks indexed by ORIGINAL label, and ``class_map``
        (the rank of each class, = the official remapped label). In remapped-label space the masks
        are ``arange(C) < medium_tail_size`` and ``arange(C) < tail_size``.

    Raises:
        TypeError: ``train_counts`` is a jax tracer.
        ValueError: counts not 1-D, empty, non-numeric, non-finite or negative; sizes out of range.
    """
    if not is_concrete(train_counts):
        raise TypeError("train_counts must be concrete (numpy array, list or an untraced jax array); got a jax tracer")
    try:
        counts = np.asarray(train_counts, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"train_counts must be numeric; got {train_counts!r}") from err
    if counts.ndim != 1 or counts.shape[0] == 0:
        raise ValueError(f"train_counts must be 1-D and non-empty (one count per class); got shape {counts.shape}")
    bad = np.flatnonzero(~np.isfinite(counts) | (counts < 0))
    if bad.size:
        raise ValueError(
            f"train_counts must be finite and >= 0; offending entries (class: count) {_list_entries(bad, counts[bad])}"
        )
    num_classes = counts.shape[0]
    medium_tail_size = _check_int("medium_tail_size", medium_tail_size, 0, num_classes)
    order = np.argsort(counts, kind="stable")  # order[i] = class with rank i (ascending count)
    class_map = np.empty(num_classes, dtype=np.int64)
    class_map[order] = np.arange(num_classes)
    tail = None
    if tail_size is not None:
        if isinstance(tail_size, numbers.Integral) and not isinstance(tail_size, bool) and tail_size > medium_tail_size:
            raise ValueError(
                f"tail_size={int(tail_size)} > medium_tail_size={medium_tail_size}: the tail group must be a "
                "subset of the medium+tail group"
            )
        tail = class_map < _check_int("tail_size", tail_size, 0, medium_tail_size)
    return ResLTGroups(class_map < medium_tail_size, tail, class_map)


def reslt_example_masks(groups: ResLTGroups, labels: Any) -> tuple[jax.Array, jax.Array | None]:
    """Per-example masks v_i = medium_tail[y_i], t_i = tail[y_i] (gather-free, jit-safe).

    Args:
        groups: Per-class groups from :func:`reslt_index_groups` / :func:`reslt_frequency_groups`
            (any object with ``medium_tail`` and ``tail`` bool ``[C]`` fields).
        labels: Integer ``[B]`` in ORIGINAL label space.

    Returns:
        ``(medium_tail_mask, tail_mask)``: bool ``[B]`` each (``tail_mask`` is ``None`` when
        ``groups.tail`` is ``None``), the arguments of :func:`reslt_loss`.

    Raises:
        ValueError: a mask is not 1-D bool, the two masks differ in length, labels are not 1-D or
            (concrete) out of range.
    """
    mt = jnp.asarray(groups.medium_tail)
    masks = [mt] + ([] if groups.tail is None else [jnp.asarray(groups.tail)])
    for name, m in zip(("medium_tail", "tail"), masks):
        if m.ndim != 1 or m.dtype != jnp.bool_:
            raise ValueError(f"groups.{name} must be a 1-D bool [C] mask; got shape {tuple(m.shape)} dtype {m.dtype}")
    if len(masks) == 2 and masks[1].shape != mt.shape:
        raise ValueError(f"groups.tail has length {masks[1].shape[0]} but groups.medium_tail has {mt.shape[0]}")
    labels = check_labels(labels, mt.shape[0])
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D [B]; got shape {tuple(labels.shape)}")
    onehot = jax.nn.one_hot(labels, mt.shape[0], dtype=jnp.bool_)
    out = [jnp.any(onehot & m, axis=-1) for m in masks]
    return out[0], (out[1] if len(out) == 2 else None)


def _check_mask(name: str, mask: Any, batch: int) -> jax.Array:
    mask = jnp.asarray(mask) if is_concrete(mask) else mask
    if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.number)):
        raise TypeError(f"{name} must be bool or numeric; got dtype {mask.dtype}")
    if tuple(mask.shape) != (batch,):
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)} but ({batch},) is expected: one entry per example "
            "(index the per-class [C] mask with the labels, see reslt_example_masks)"
        )
    return mask


def reslt_loss(
    branch_logits: Any,
    labels: Any,
    medium_tail_mask: Any,
    tail_mask: Any,
    beta: Any,
    *,
    fused_ce: str = "plain",
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """ResLT loss of one model (official ``ResLTLoss``).

    L = beta * L_ice + (1 - beta) * L_fce, with

    L_ice = sum_k sum_i m_ki l(z_k,i, y_i) / sum_k sum_i m_ki,
    l(z, y) = -sum_c q_c log(softmax(z)_c + 1e-7), q = onehot(y) (or its smoothed version),
    m_H = 1 (all examples), m_M = ``medium_tail_mask``, m_T = ``tail_mask``;

    L_fce = mean_i CE(sum_k z_k,i, y_i): plain log-softmax CE (``fused_ce='plain'``, CIFAR and iNat)
    or the same 1e-7 l with the same smoothing (``'eps'``, ImageNet-LT).

    A branch whose mask is all zero in the batch adds 0 to the numerator and the denominator
    (no NaN; its logits get a zero gradient from L_ice). The denominator is at least B >= 1.
    With two branches (iNat) only H and M enter both terms. Several experts (ResLT on RIDE): the
    official loss is the SUM over experts of this loss, e.g.
    ``jax.vmap(reslt_loss, (0, None, None, None, None))(z_experts, ...)[0].sum()``.

    Args:
        branch_logits: ``[K, B, C]``, K = 3 (H, M, T) or 2 (H, M), in that order.
        labels: Integer ``[B]``.
        medium_tail_mask: v, ``[B]`` (bool or 0/1 numbers): example i belongs to the medium+tail
            group. From per-class masks: ``reslt_example_masks(groups, labels)``.
        tail_mask: t, ``[B]`` for K = 3; must be ``None`` for K = 2.
        beta: The weight of L_ice (code ``--beta``, README alpha), in [0, 1]; a python float or a
            jax scalar (its range is checked only when concrete).
        fused_ce: ``'plain'`` or ``'eps'`` (see above).
        label_smoothing: delta in [0, 1) (official ``--lsm``, default 0): target
            (1 - delta - delta/(C-1)) * onehot + delta/(C-1), i.e. 1 - delta on the label and
            delta/(C-1) elsewhere. Applies to every branch term and to the ``'eps'`` fused term,
            not to the ``'plain'`` one (as the official code). A python number.

    Returns:
        ``(loss, aux)``: scalar loss (in the float dtype of ``branch_logits``) and a dict with
        ``'ice'`` (L_ice), ``'fce'`` (L_fce), ``'branch_nll_sum'`` [K] (sum_i m_ki l_ki),
        ``'branch_count'`` [K] (sum_i m_ki) and ``'summed_logits'`` [B, C] (the prediction
        sum_k z_k).

    Raises:
        ValueError: ``branch_logits`` not 3-D, K not 2 or 3, B == 0, C < 2 with smoothing;
            labels or masks of the wrong shape (or labels out of range, concrete only);
            ``tail_mask`` missing for K = 3 or given for K = 2; beta not a scalar or outside
            [0, 1]; ``label_smoothing`` outside [0, 1); unknown ``fused_ce``.
        TypeError: non-floating logits, non-integer labels, non-numeric masks.
    """
    check_choice("fused_ce", fused_ce, RESLT_FUSED_CE)
    z = check_logits("branch_logits", branch_logits)
    if z.ndim != 3:
        raise ValueError(
            f"branch_logits must be 3-D [num_branches, batch, num_classes]; got shape {tuple(z.shape)}"
        )
    num_branches, batch, num_classes = z.shape
    if num_branches not in (2, 3):
        raise ValueError(
            f"branch_logits has {num_branches} branches; ResLT uses 3 (head, medium+tail, tail) or 2 "
            "(head, medium+tail; the iNat recipe)"
        )
    if batch == 0:
        raise ValueError("branch_logits has an empty batch (B = 0); the loss is undefined")
    labels = check_labels(labels, num_classes, shape=(batch,))
    masks = [_check_mask("medium_tail_mask", medium_tail_mask, batch)]
    if num_branches == 3:
        if tail_mask is None:
            raise ValueError("tail_mask is None but branch_logits has 3 branches; pass the [B] tail mask")
        masks.append(_check_mask("tail_mask", tail_mask, batch))
    elif tail_mask is not None:
        raise ValueError("tail_mask must be None with 2 branches (head, medium+tail): there is no tail branch")
    if jnp.ndim(beta) != 0:
        raise ValueError(f"beta must be a scalar; got shape {tuple(jnp.shape(beta))}")
    if is_concrete(beta) and not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta={float(beta)!r} must lie in [0, 1] (weight of the per-branch loss)")
    if not isinstance(label_smoothing, numbers.Real) or isinstance(label_smoothing, bool):
        raise ValueError(f"label_smoothing must be a python number in [0, 1); got {label_smoothing!r}")
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"label_smoothing={float(label_smoothing)!r} must lie in [0, 1)")
    if label_smoothing != 0 and num_classes < 2:
        raise ValueError("label_smoothing needs at least 2 classes (it spreads delta over the C - 1 others)")
    return _reslt_core(z, labels, tuple(masks), beta, dtype=float_dtype(z), fused_ce=fused_ce,
                       label_smoothing=float(label_smoothing))


def _eps_nll(logits: jax.Array, onehot: jax.Array, delta: float) -> jax.Array:
    """Official CE: -sum_c q_c log(softmax(z)_c + 1e-7); ``[..., C] -> [...]``."""
    p = jax.nn.softmax(logits, axis=-1)
    eps = jnp.asarray(_EPS, logits.dtype)
    if delta == 0:  # q = onehot: only the label's term (the others are 0 * finite in the official sum)
        return -jnp.log(jnp.sum(jnp.where(onehot > 0, p, 0.0), axis=-1) + eps)
    num_classes = logits.shape[-1]
    off = delta / (num_classes - 1)
    q = (1.0 - delta - off) * onehot + off
    return -jnp.sum(q * jnp.log(p + eps), axis=-1)


@functools.partial(jax.jit, static_argnames=("dtype", "fused_ce", "label_smoothing"))
def _reslt_core(z, labels, masks, beta, *, dtype, fused_ce, label_smoothing):
    """Jitted body of :func:`reslt_loss` (inputs already validated)."""
    z = z.astype(dtype)
    num_branches, batch, num_classes = z.shape
    onehot = jax.nn.one_hot(labels, num_classes, dtype=dtype)
    m = jnp.stack([jnp.ones((batch,), dtype)] + [mk.astype(dtype) for mk in masks])  # [K, B]
    nll = _eps_nll(z, onehot, label_smoothing)  # [K, B]
    # where, not m * nll: a masked-out term is exactly 0 and gets exactly 0 gradient.
    branch_nll_sum = jnp.sum(jnp.where(m != 0, m * nll, 0.0), axis=-1)
    branch_count = jnp.sum(m, axis=-1)
    ice = jnp.sum(branch_nll_sum) / jnp.sum(branch_count)
    summed = jnp.sum(z, axis=0)
    if fused_ce == "plain":
        fce = jnp.mean(_nll(summed, onehot))
    else:
        fce = jnp.mean(_eps_nll(summed, onehot, label_smoothing))
    beta = jnp.asarray(beta).astype(dtype)
    loss = beta * ice + (1 - beta) * fce
    aux = {
        "ice": ice,
        "fce": fce,
        "branch_nll_sum": branch_nll_sum,
        "branch_count": branch_count,
        "summed_logits": summed,
    }
    return loss, aux

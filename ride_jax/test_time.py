"""Test-time self-supervised aggregation of experts (SADE, Zhang et al., NeurIPS 2022, §4).

On an unlabelled test set, learn how much each frozen expert counts: one raw vector
``a [E]`` (initialised to ``1/E``; official ``test_training_cifar.py:312-313``), weights
``w = softmax(a)``, aggregated logits ``z = sum_k w_k v_k`` (logit space,
``test_training_cifar.py:367-369``). ``a`` maximises the "prediction stability" of two
random views x', x'' of every test image (:mod:`ride_jax.data.views`)::

    L = -(1/B) sum_i cos(softmax(z'_i), softmax(z''_i))          (cosine eps 1e-6)
        [ - entropy_weight * (mean_ic H'(p') + mean_ic H''(p'')) ]  (iNat only: 0.01)

with SGD (the TRAINING run's lr, momentum 0.9, Nesterov, coupled weight decay on ``a``;
no schedule), batch 128 shuffled each epoch with the last partial batch kept, 5 epochs,
stopping after an epoch once any weight, rounded to two decimals as the official script
prints and tests it, is under 0.05 (``test_training_cifar.py:317-320``). The network is
frozen in inference mode (BatchNorm running statistics): the expert logits of the views
are computed without gradients and only ``a`` is updated. The final prediction is
``argmax_c sum_k w_k v_k(x)`` on the CLEAN test images (sade-spec §4.3, pitfall 6.1).

Re-initialise per test distribution: :func:`fit_aggregation` starts from ``1/E`` every
call. The network side (two views, the frozen forward pass) is :func:`make_view_logits`
for device-resident small images (CIFAR-style, :mod:`ride_jax.data.views`) and
:func:`make_file_view_logits` for images read from files (ImageNet-LT, Places-LT, iNat:
SADE's PIL chain, :mod:`ride_jax.data.pil_views`); :func:`ride_jax.analysis.shift` runs
it per distribution.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ride_jax.data.views import SADE_CIFAR, ViewAugment, random_views
from ride_jax.optim import make_optimizer

COSINE_EPS = 1e-6
# Entropy weight of the iNaturalist objective (test_training_inat.py:366-368).
INAT_ENTROPY_WEIGHT = 0.01


@dataclasses.dataclass(frozen=True)
class Settings:
    """Test-time aggregation settings (official ``configs/test_time_*.json``).

    Attributes:
      lr, weight_decay, momentum, nesterov: the SGD of ``a`` (the training run's).
      batch_size: test images per step (official: 128, hard-coded).
      epochs: passes over the test set (official: 5).
      min_weight: stop after an epoch once a weight (rounded to 2 decimals) is below it.
      entropy_weight: the iNat entropy term's weight (0 elsewhere).
      views: the random view of device-resident small images
        (:class:`~ride_jax.data.views.ViewAugment`, :func:`make_view_logits`); images
        read from files take a PIL view spec separately (:func:`make_file_view_logits`,
        :func:`ride_jax.data.pil_views.view_spec`).
    """
    lr: float
    weight_decay: float
    momentum: float = 0.9
    nesterov: bool = True
    batch_size: int = 128
    epochs: int = 5
    min_weight: float = 0.05
    entropy_weight: float = 0.0
    views: ViewAugment = SADE_CIFAR

    def __post_init__(self):
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise ValueError(f"test-time aggregation needs lr > 0 and weight_decay >= 0, "
                             f"got lr={self.lr!r}, weight_decay={self.weight_decay!r}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError(f"batch_size and epochs must be >= 1, got "
                             f"{self.batch_size!r}, {self.epochs!r}")


def settings_from_config(config: Any) -> Settings:
    """The official settings for a run: its training ``optim.lr`` / ``weight_decay`` /
    ``momentum`` / ``nesterov``; the entropy term for ``inat2018``."""
    o = config.optim
    inat = config.dataset.name == "inat2018"
    return Settings(lr=float(o.lr), weight_decay=float(o.weight_decay),
                    momentum=float(o.momentum), nesterov=bool(o.nesterov),
                    entropy_weight=INAT_ENTROPY_WEIGHT if inat else 0.0)


def aggregate(raw: jax.Array, expert_logits: jax.Array) -> jax.Array:
    """``sum_k softmax(raw)_k * expert_logits[k]``: ``raw [E]``, ``expert_logits [E, B, C]``
    -> ``[B, C]``."""
    w = jax.nn.softmax(raw)
    return jnp.einsum("e,ebc->bc", w, expert_logits)


def stability_loss(raw: jax.Array, view1: jax.Array, view2: jax.Array,
                   mask: jax.Array | None = None, entropy_weight: float = 0.0) -> jax.Array:
    """SADE's test-time objective (to minimise).

    Args:
      raw: ``[E]`` the raw aggregation vector ``a``.
      view1, view2: ``[E, B, C]`` the experts' logits of the two views.
      mask: ``[B]`` bool, False for padding rows (None: all rows count).
      entropy_weight: weight of ``-(mean H(p') + mean H(p''))`` (means over B x C).

    Returns:
      ``-mean_i cos(p'_i, p''_i) - entropy_weight * (mean_ic(-p' log p') +
      mean_ic(-p'' log p''))`` over the unmasked rows, a float32 scalar.
    """
    p1 = jax.nn.softmax(aggregate(raw, view1.astype(jnp.float32)), axis=-1)
    p2 = jax.nn.softmax(aggregate(raw, view2.astype(jnp.float32)), axis=-1)
    n1 = jnp.maximum(jnp.linalg.norm(p1, axis=-1), COSINE_EPS)
    n2 = jnp.maximum(jnp.linalg.norm(p2, axis=-1), COSINE_EPS)
    cos = jnp.sum(p1 * p2, axis=-1) / (n1 * n2)                       # [B]
    m = jnp.ones(cos.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    rows = jnp.maximum(jnp.sum(m), 1.0)
    loss = -jnp.sum(m * cos) / rows
    if entropy_weight:
        ent = (-jnp.sum(p1 * jnp.log(p1), -1) - jnp.sum(p2 * jnp.log(p2), -1))    # [B]
        loss = loss - entropy_weight * jnp.sum(m * ent) / (rows * p1.shape[-1])
    return loss


def make_step(settings: Settings) -> tuple[optax.GradientTransformation, Callable]:
    """``(optimizer, step)``: ``step(raw, opt_state, view1, view2, mask) -> (raw,
    opt_state, loss)``, one jitted SGD step of :func:`stability_loss`."""
    opt = make_optimizer(lambda _: settings.lr, weight_decay=settings.weight_decay,
                         momentum=settings.momentum, nesterov=settings.nesterov)

    @jax.jit
    def step(raw, opt_state, view1, view2, mask):
        loss, grad = jax.value_and_grad(stability_loss)(raw, view1, view2, mask,
                                                         settings.entropy_weight)
        updates, opt_state = opt.update(grad, opt_state, raw)
        return optax.apply_updates(raw, updates), opt_state, loss
    return opt, step


ViewLogits = Callable[[jax.Array, np.ndarray], tuple[jax.Array, jax.Array]]


def fit_aggregation(view_logits: ViewLogits, num_examples: int, num_experts: int,
                    settings: Settings, seed: int = 0) -> dict[str, Any]:
    """Learn the expert weights on ``num_examples`` unlabelled test images.

    Args:
      view_logits: ``(key, positions [batch_size] int32) -> (view1, view2)``, each
        ``[E, batch_size, C]``: the experts' logits of two random views of the test
        images at those positions (0..num_examples-1; padding rows repeat position 0).
      num_examples: the test images.
      num_experts: E (>= 2).
      settings: :class:`Settings`.
      seed: the shuffles (NumPy) and the views' key.

    Returns:
      ``{'weights': [E] softmax(a), 'raw': [E] a, 'epochs': epochs run, 'losses': the
      mean loss of each epoch, 'stopped_early': bool}`` (lists of floats).
    """
    if num_experts < 2:
        raise ValueError(f"test-time aggregation weighs several experts; the run has "
                         f"{num_experts}")
    if num_examples < 1:
        raise ValueError("test-time aggregation needs at least one test image")
    opt, step = make_step(settings)
    raw = jnp.full((num_experts,), 1.0 / num_experts, jnp.float32)
    opt_state = opt.init(raw)
    rng = np.random.RandomState(seed)
    key = jax.random.PRNGKey(seed)
    bs = settings.batch_size
    losses, stopped, epochs = [], False, 0
    for epochs in range(1, settings.epochs + 1):
        order = rng.permutation(num_examples).astype(np.int32)
        total, seen = 0.0, 0
        for start in range(0, num_examples, bs):
            pos = order[start:start + bs]
            n = len(pos)
            mask = np.arange(bs) < n
            pos = np.concatenate([pos, np.zeros(bs - n, np.int32)])
            key, sub = jax.random.split(key)
            v1, v2 = view_logits(sub, pos)
            raw, opt_state, loss = step(raw, opt_state, v1, v2, jnp.asarray(mask))
            total += float(loss) * n
            seen += n
        losses.append(total / seen)
        weights = np.asarray(jax.nn.softmax(raw), np.float64)
        if np.any(np.round(weights, 2) < settings.min_weight):
            stopped = True
            break
    return {"weights": weights.tolist(),
            "raw": np.asarray(raw, np.float64).tolist(), "epochs": epochs,
            "losses": losses, "stopped_early": stopped}


def make_view_logits(apply: Callable[[Any, jax.Array], jax.Array], variables: Any,
                     images: Any, mean: Any, std: Any, *,
                     views: ViewAugment = SADE_CIFAR, dtype: Any = jnp.float32
                     ) -> Callable[[np.ndarray], ViewLogits]:
    """The network side of :func:`fit_aggregation` for device-resident small images.

    Args:
      apply: ``(variables, images [B, H, W, C]) -> expert_logits [E, B, C]``, the frozen
        network in inference mode.
      images: ``[N, H, W, C]`` uint8, the whole test set (put on the device once).
      mean, std: the dataset's normalisation.

    Returns:
      ``for_subset(indices [n] into images) -> view_logits`` (the two views go through
      the network as one batch of ``2 * batch_size``; compiled once for every subset).
    """
    source = jnp.asarray(images)

    @jax.jit
    def both(variables, key, rows):
        k1, k2 = jax.random.split(key)
        x = jnp.concatenate([random_views(k1, source, rows, mean, std, views, dtype),
                             random_views(k2, source, rows, mean, std, views, dtype)])
        v = jax.lax.stop_gradient(apply(variables, x)).astype(jnp.float32)
        return v[:, :rows.shape[0]], v[:, rows.shape[0]:]

    def for_subset(indices: np.ndarray) -> ViewLogits:
        indices = np.asarray(indices, np.int32)

        def view_logits(key, positions):
            return both(variables, key, jnp.asarray(indices[positions]))
        return view_logits
    return for_subset


def view_rng(key: jax.Array, *words: int) -> np.random.Generator:
    """A NumPy generator seeded from a JAX PRNG key (its raw words) and ``words``: the
    host-side views of :func:`make_file_view_logits` are a function of the key that
    :func:`fit_aggregation` passes."""
    data = np.asarray(jax.random.key_data(key)).astype(np.uint64).ravel()
    return np.random.default_rng([*(int(v) for v in data), *(int(w) for w in words)])


def make_file_view_logits(apply: Callable[[Any, jax.Array], jax.Array], variables: Any,
                          source: Any, mean: Any, std: Any, *, spec: Any, size: int,
                          dtype: Any = jnp.float32, threads: int | None = None
                          ) -> Callable[[np.ndarray], ViewLogits]:
    """The network side of :func:`fit_aggregation` for images read from files (ImageNet-LT,
    Places-LT, iNat): SADE's PIL views (:mod:`ride_jax.data.pil_views`) on the host.

    Args:
      apply: ``(variables, images [B, H, W, C]) -> expert_logits [E, B, C]``, the frozen
        network in inference mode.
      source: ``source.image(i) -> RGB PIL image`` (a
        :class:`~ride_jax.data.grain_pipeline.FileSource`), the rows ``indices`` refer to.
      mean, std: the dataset's normalisation (applied on the device).
      spec: the view (:class:`~ride_jax.data.pil_views.PilViewSpec`).
      size: the views' side (the network's input).
      threads: decoding threads (default: the machine's cores).

    Returns:
      ``for_subset(indices [n] into source) -> view_logits``. Each image of a batch is
      decoded once and gives both views; view ``v`` of batch row ``i`` draws from
      :func:`view_rng` ``(key, v, i)``, so the views are a function of the key alone
      (not of the thread schedule). The two views go through the network as one batch of
      ``2 * batch_size`` (compiled once).
    """
    import concurrent.futures
    import os

    from ride_jax.data import pil_views
    from ride_jax.data.augment import normalize

    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    size = int(size)

    @jax.jit
    def both(variables, images):
        x = normalize(images, mean, std, dtype)
        v = jax.lax.stop_gradient(apply(variables, x)).astype(jnp.float32)
        half = images.shape[0] // 2
        return v[:, :half], v[:, half:]

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1)

    def for_subset(indices: np.ndarray) -> ViewLogits:
        indices = np.asarray(indices, np.int64)

        def view_logits(key, positions):
            rows = indices[np.asarray(positions)]

            def two_views(i):
                image = source.image(int(rows[i]))
                return [pil_views.random_view(image, view_rng(key, v, i), spec, size)
                        for v in (0, 1)]
            views = list(pool.map(two_views, range(len(rows))))
            images = np.stack([v[0] for v in views] + [v[1] for v in views])
            return both(variables, jnp.asarray(images))
        return view_logits
    return for_subset


__all__ = ["INAT_ENTROPY_WEIGHT", "Settings", "aggregate", "fit_aggregation", "make_step",
           "make_file_view_logits", "make_view_logits", "settings_from_config",
           "stability_loss", "view_rng"]

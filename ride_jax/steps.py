"""The pure pieces of a train step: state, forward pass, trainable subtrees, steps.

A train state is ``{'params', 'batch_stats', 'opt_state', 'step', 'rng'}``. A stage
(:mod:`ride_jax.stages`) decides what trains (``trainable``), the BatchNorm mode and
the extra forward outputs; a method (:mod:`ride_jax.methods`) gives the loss. Nothing
here names either.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


def create_state(model, tx, rng: jax.Array, sample_images: jax.Array) -> dict[str, Any]:
    """The initial train state (pure: a function of ``rng`` and the shapes)."""
    init_rng, rng = jax.random.split(rng)
    variables = model.init(init_rng, sample_images)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"],
            "opt_state": tx.init(variables["params"]), "step": jnp.zeros((), jnp.int32),
            "rng": rng}


def init_state(model, tx, sample, stage, router, rng, loaded) -> dict[str, Any]:
    """The initial state of ``stage`` (a :class:`~ride_jax.stages.Stage`): fresh, or
    from a finished run's variables (``loaded``) with the stage's fresh heads and a new
    router (``router``, or None) where it needs them. ``sample``: ``[1, H, W, C]``."""
    if loaded is None:
        return create_state(model, tx, rng, sample)
    init_rng, rng = jax.random.split(rng)
    params = dict(loaded["params"])
    if stage.fresh_heads:      # cRT: fresh classifier heads on the trained features
        fresh = model.init(init_rng, sample)["params"]
        params = put_params(params, take_params(fresh, stage.trainable), stage.trainable)
    if router is not None and "router" not in params:
        params["router"] = router.init_params(jax.random.fold_in(init_rng, 1))
    return {"params": params, "batch_stats": loaded["batch_stats"],
            "opt_state": tx.init(take_params(params, stage.trainable)),
            "step": jnp.zeros((), jnp.int32), "rng": rng}


def take_params(params: dict, paths) -> dict:
    """The trainable part of ``params``: all of it (``paths=None``) or ``{'a/b': subtree}``."""
    if paths is None:
        return params
    return {"/".join(p): _get(params, p) for p in paths}


def put_params(params: dict, part: dict, paths) -> dict:
    """``params`` with the trainable part replaced by ``part`` (inverse of take_params)."""
    if paths is None:
        return part
    for p in paths:
        params = _set(params, p, part["/".join(p)])
    return params


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    if not path:
        return value
    return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def make_forward(model, *, bn_train: bool = True, router=None, teacher=None,
                 teacher_bn_train: bool = True) -> Callable:
    """``(params, batch_stats, images, consts) -> (outputs, new_batch_stats)``.

    Args:
      model: the network.
      bn_train: batch statistics and running-stat updates (stage 1) or a frozen network
        in inference mode (router, cRT: statistics unchanged).
      router: a :class:`~ride_jax.models.Router`: adds ``outputs['router_logits']``
        ``[B, E-1]`` (every expert runs, as in official EA training).
      teacher: the teacher network of self-distillation; its variables come in
        ``consts['teacher']`` and ``outputs['teacher_logits']`` is its mean logits
        (no gradient). The official teacher runs BatchNorm in training mode.
      teacher_bn_train: that quirk (True, official) or inference mode.
    """

    def forward(params, batch_stats, images, consts):
        variables = {"params": params, "batch_stats": batch_stats}
        if bn_train:
            out, new = model.apply(variables, images, train=True)
            new_stats = new["batch_stats"]
        else:
            out, new_stats = model.apply(variables, images, train=False), batch_stats
        if router is not None:
            out = dict(out, router_logits=router.all_logits(
                params["router"], out["expert_logits"], out["features"]))
        if teacher is not None:
            t = teacher.apply(consts["teacher"], images, train=teacher_bn_train)
            t = t[0] if teacher_bn_train else t
            out = dict(out, teacher_logits=jax.lax.stop_gradient(t["logits"]))
        return out, new_stats
    return forward


def make_train_step(model, tx, loss_fn, schedule, steps_per_epoch: int, *,
                    forward: Callable | None = None, trainable=None) -> Callable:
    """``(state, batch, consts=None) -> (state, metrics)``, pure; metrics are scalars:
    ``loss``, ``accuracy``, ``lr`` and the loss's ``aux`` scalars.

    Args:
      forward: :func:`make_forward`'s function (default: the network in training mode).
      trainable: ``None`` (every parameter trains) or the paths of the subtrees that do
        (:attr:`ride_jax.stages.Stage.trainable`); ``tx`` and ``state['opt_state']`` cover only those.
      consts: arrays the step reads but never changes (the distillation teacher).
    """
    forward = forward or make_forward(model)

    def step_fn(state, batch, consts=None):
        epoch = state["step"] // steps_per_epoch + 1
        part = take_params(state["params"], trainable)

        def objective(part):
            params = put_params(state["params"], part, trainable)
            out, batch_stats = forward(params, state["batch_stats"], batch["image"], consts)
            loss, aux = loss_fn(out, batch["label"], epoch)
            return loss, (batch_stats, out["logits"], aux)

        (loss, (batch_stats, logits, aux)), grads = jax.value_and_grad(
            objective, has_aux=True)(part)
        updates, opt_state = tx.update(grads, state["opt_state"], part)
        params = put_params(state["params"], optax.apply_updates(part, updates), trainable)
        new_state = {"params": params,
                     "batch_stats": batch_stats, "opt_state": opt_state,
                     "step": state["step"] + 1, "rng": state["rng"]}
        acc = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
        return new_state, {"loss": loss, "accuracy": acc, "lr": schedule(state["step"]),
                           **aux}
    return step_fn


def make_multi_step(step_fn: Callable, unroll: bool | int = 1) -> Callable:
    """``(state, batches, consts=None) -> (state, metrics)``: ``step_fn`` scanned over steps.

    ``batches``: ``{'image': [K, B, ...], 'label': [K, B]}`` (``DeviceLoader.epoch_calls``);
    returns the state after the K steps and each step's metrics stacked (``[K]`` each).
    The same function as K calls of ``step_fn``, compiled as one program (one dispatch
    per K steps; ``config.steps_per_call``). ``unroll``: as ``jax.lax.scan``'s
    (:func:`scan_unroll` says what the trainer uses).
    """

    def multi_fn(state, batches, consts=None):
        return jax.lax.scan(lambda st, batch: step_fn(st, batch, consts), state, batches,
                            unroll=unroll)
    return multi_fn


def scan_unroll(platform: str) -> bool | int:
    """How the trainer scans ``steps_per_call`` steps on ``platform``.

    CPU: fully unrolled (True). XLA:CPU compiles the convolutions inside a loop body
    differently (not in the layout its Eigen convolutions take): the rolled RIDE-3 step
    ran ~30x slower here (2.3 vs 67 images/s at batch 32), and its conv gradients
    drifted ~3% from the per-step ones in two steps; unrolled, the program is the
    per-step one repeated (equal to float32 rounding, tested), at K times the compile
    time. Other platforms: one rolled loop (compile time independent of K).
    """
    return True if platform == "cpu" else 1

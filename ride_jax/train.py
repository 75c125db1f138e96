"""``train_and_evaluate(config, workdir)``: the training system behind ``ride_jax.main``.

One state pytree ``{'params', 'batch_stats', 'opt_state', 'step', 'rng'}`` replicated
over a 1-D ``'data'`` mesh of all devices; batches sharded ``P('data')``; one jitted,
state-donating train step (a second compiled shape only for the official smaller last
batch of an epoch, ``data.remainder='partial'``). BatchNorm statistics are computed
over the GLOBAL batch (XLA all-reduces them); the official multi-GPU runs
(``DataParallel``) use per-GPU statistics, which only matters with several devices.

The LR (official per-epoch ``CustomLR``) and the DRW / class-temperature switch at
``loss.reweight_epoch`` are functions of the traced step, so nothing recompiles.

``config.stage`` picks what the run does (:data:`TRAINABLE`): ``train`` (stage 1),
``distill`` (stage 1 with a frozen teacher's soft targets), ``router`` (RIDE-EA stage 2:
only the router trains, the network frozen with BatchNorm in inference mode), ``crt``
(fresh classifier heads on the frozen network) and ``eval`` (evaluate ``init_from``).
A model with a router is evaluated with routed inference, per device shard.

Everything a run needs to resume is in ``workdir``: Orbax checkpoints (state + config),
``config.json``, ``dataset.json`` (class counts, subset fingerprint), ``metrics.jsonl``
(train and eval scalars), ``eval/epoch_NNNN.json`` (per-class and per-expert accuracy)
and ``results.json`` (best and last evaluation).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from ride_jax import compiler, config_checks, flops, losses, metrics, optim
from ride_jax.checkpointing import Checkpointer, NonFiniteState, abstract_like
from ride_jax.configlib import LOSSES, SCHEDULES, STAGES
from ride_jax.data import load_cache, load_dataset, make_loader
from ride_jax.data.base import ArrayDataset
from ride_jax.data.loader import DATA_AXIS, DeviceLoader, check_steps_per_call, data_mesh
from ride_jax.interrupt import GracefulStop
from ride_jax.metric_writer import MetricWriter
from ride_jax.models import create_model, make_router, routed_apply, tau_normalize
from ride_jax.workdir import WorkdirLock, check_workdir

DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
# Keys that do not change the trajectory of a run: a resumed run may change them.
RUNTIME_KEYS = ("max_steps", "resume_with_different_config", "log_every_steps",
                "eval_every_epochs", "checkpoint_every_epochs", "keep_checkpoints",
                "distributed", "cpu_convolutions", "cpu_fusion_barriers", "steps_per_call")
# What each stage trains: None = every parameter, else these subtrees of ``params``
# (the rest is frozen: no gradient, no weight decay, BatchNorm in inference mode).
TRAINABLE = {"train": None, "distill": None, "router": (("router",),),
             "crt": (("experts", "linear"),), "eval": ()}
# Stages that start from ``config.init_from`` (a finished run's workdir).
FROM_INIT = ("router", "crt", "eval")
# Model settings a stage started from ``init_from`` (or a teacher) must share with it.
MODEL_KEYS = ("arch", "num_experts", "reduce_dimension", "use_norm", "scale", "head",
              "reslt_branches")
# Values of model keys added after the first runs, for reading those runs' configs.
MODEL_DEFAULTS = {"head": "plain", "reslt_branches": 3, "reslt_eval_gamma": -1.0,
                  "reslt_train_order": "", "reslt_eval_order": ""}


# ------------------------------------------------------------------------------ pieces

def build_dataset(config: ml_collections.ConfigDict):
    """The dataset named by ``config.dataset`` (or its prepared cache)."""
    if config.dataset.cache:
        return load_cache(config.dataset.cache)
    return load_dataset(config.dataset.name, **config.dataset.args.to_dict())


def reslt_groups(loss_cfg: ml_collections.ConfigDict, train_counts: Any
                 ) -> losses.ResLTGroups:
    """The ResLT class groups ``loss.reslt_groups`` names (index or training frequency)."""
    kind = losses.check_choice("loss.reslt_groups", loss_cfg.reslt_groups,
                               ("index", "frequency"))
    tail = None if loss_cfg.reslt_tail < 0 else int(loss_cfg.reslt_tail)
    num_classes = len(train_counts)
    try:
        if kind == "index":
            return losses.reslt_index_groups(num_classes, int(loss_cfg.reslt_medium_tail), tail)
        return losses.reslt_frequency_groups(train_counts, int(loss_cfg.reslt_medium_tail),
                                             tail)
    except ValueError as e:
        raise ValueError(f"loss.reslt_medium_tail={loss_cfg.reslt_medium_tail}, "
                         f"loss.reslt_tail={loss_cfg.reslt_tail} ({kind} groups of "
                         f"{num_classes} classes): {e}") from None


def make_loss_fn(loss_cfg: ml_collections.ConfigDict, train_counts: Any, scale: float,
                 *, stage: str = "train", pos_weight: float = 100.0,
                 distill: ml_collections.ConfigDict | None = None) -> Callable:
    """``(outputs, labels, epoch) -> (loss, aux)``; ``epoch`` is the traced 1-indexed epoch.

    ``stage='router'``: the RIDE-EA router loss on ``outputs['router_logits']`` (weighted
    BCE, ``pos_weight``); ``stage='distill'``: the RIDE loss with self-distillation from
    ``outputs['teacher_logits']`` (``distill.temperature``, ``distill.factor``).
    ``loss.name='reslt'``: the ResLT loss of each expert's ``outputs['branch_logits']``
    ``[E, K, B, C]``, summed over the experts (official RIDE+ResLT; one expert: ResLT).
    """
    name = losses.check_choice("loss.name", loss_cfg.name, LOSSES)
    if stage == "router":
        def router_loss(outputs, labels, epoch):
            targets = losses.routing_targets(outputs["expert_logits"].astype(jnp.float32),
                                             labels)
            return losses.routing_loss(outputs["router_logits"].astype(jnp.float32),
                                       targets, pos_weight), {}
        return router_loss
    if stage == "distill" and name != "ride":
        raise ValueError(f"stage 'distill' trains with the RIDE loss (official "
                         f"RIDELossWithDistill); loss.name is {name!r}")
    if name == "reslt":
        groups = reslt_groups(loss_cfg, train_counts)
        beta = float(loss_cfg.reslt_beta)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"loss.reslt_beta={beta} must lie in [0, 1]")
        fused = losses.check_choice("loss.reslt_fused_ce", loss_cfg.reslt_fused_ce,
                                    losses.RESLT_FUSED_CE)
        smoothing = float(loss_cfg.label_smoothing)

        def reslt_loss(outputs, labels, epoch):
            if "branch_logits" not in outputs:
                raise ValueError("loss.name='reslt' needs a ResLT network: set "
                                 "model.head='reslt' (and model.use_norm=False)")
            medium_tail, tail = losses.reslt_example_masks(groups, labels)
            per_expert = jax.vmap(lambda z: losses.reslt_loss(
                z, labels, medium_tail, tail, beta, fused_ce=fused,
                label_smoothing=smoothing)[0])(outputs["branch_logits"].astype(jnp.float32))
            return jnp.sum(per_expert), {}
        return reslt_loss
    active = losses.ride_class_vectors(
        train_counts, max_margin=loss_cfg.max_margin, beta=loss_cfg.drw_beta,
        reweight_factor=loss_cfg.reweight_factor, base_temperature=loss_cfg.base_temperature,
        formula=loss_cfg.temperature_formula, dtype=jnp.float32)

    def loss_fn(outputs, labels, epoch):
        vec = losses.select_class_vectors(epoch, loss_cfg.reweight_epoch, active,
                                          loss_cfg.base_temperature)
        logits = outputs["logits"].astype(jnp.float32)
        if name == "ride":
            kwargs = dict(
                diversity_factor=loss_cfg.diversity_factor, margins=vec.margins,
                class_weights=vec.class_weights, temperatures=vec.temperatures, scale=scale,
                base_temperature=loss_cfg.base_temperature,
                base_loss_factor=loss_cfg.base_loss_factor)
            if stage == "distill":
                return losses.ride_distill_loss(
                    outputs["expert_logits"].astype(jnp.float32), labels,
                    outputs["teacher_logits"].astype(jnp.float32),
                    distill_temperature=distill.temperature, distill_factor=distill.factor,
                    **kwargs)
            return losses.ride_loss(outputs["expert_logits"].astype(jnp.float32), labels,
                                    **kwargs)
        if name == "ldam_drw":
            return losses.ldam_loss(logits, labels, vec.margins, scale,
                                    class_weights=vec.class_weights), {}
        if name == "focal":
            return losses.focal_loss(logits, labels, loss_cfg.focal_gamma), {}
        return losses.cross_entropy(logits, labels), {}
    return loss_fn


class StreamLoader:
    """The trainer's loader interface over a streamed dataset (tf.data).

    Epoch ``e`` is the first ``ceil(N / B)`` batches (the official epoch length) of a
    fresh endless stream seeded with ``(seed, e)``, so epochs are reproducible and a
    run resumes at any step (mid-epoch by reading past the batches already done).
    """

    def __init__(self, dataset, batch_size: int, eval_batch_size: int, mesh, seed: int,
                 sampler: str):
        self.dataset, self.mesh, self.seed, self.sampler = dataset, mesh, seed, sampler
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.steps_per_epoch = dataset.steps_per_epoch(batch_size)

    def epoch(self, epoch: int, start: int = 0):
        stream = self.dataset.train_iterator(
            self.batch_size, seed=int(np.random.default_rng([self.seed, 7, epoch])
                                      .integers(2 ** 31)),
            mesh=self.mesh, sampler=self.sampler)
        for step in range(self.steps_per_epoch):
            batch = next(stream)
            if step >= start:
                yield batch

    def eval_batches(self):
        return self.dataset.eval_iterator(self.eval_batch_size, mesh=self.mesh)


def _model_from(m: ml_collections.ConfigDict | dict, num_classes: int,
                fusion_barriers: bool = False):
    """The network of a config's ``model`` block (a run's saved JSON block too).

    ``fusion_barriers``: ``create_model``'s (the same function; see
    :func:`_fusion_barriers`)."""
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
                        fusion_barriers=fusion_barriers and m["arch"] == "resnet32", **reslt)


def _fusion_barriers(config, platform: str) -> bool:
    """``config.cpu_fusion_barriers`` (default True) on a CPU, else False."""
    value = config.get("cpu_fusion_barriers", True)
    if not isinstance(value, bool):
        raise ValueError(f"cpu_fusion_barriers must be True or False, got {value!r}")
    return value and platform == "cpu"


def create_state(model, tx, rng: jax.Array, sample_images: jax.Array) -> dict[str, Any]:
    """The initial train state (pure: a function of ``rng`` and the shapes)."""
    init_rng, rng = jax.random.split(rng)
    variables = model.init(init_rng, sample_images)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"],
            "opt_state": tx.init(variables["params"]), "step": jnp.zeros((), jnp.int32),
            "rng": rng}


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
    """``(state, batch, consts=None) -> (state, metrics)``, pure; metrics are scalars.

    Args:
      forward: :func:`make_forward`'s function (default: the network in training mode).
      trainable: ``None`` (every parameter trains) or the paths of the subtrees that do
        (:data:`TRAINABLE`); ``tx`` and ``state['opt_state']`` cover only those.
      consts: arrays the step reads but never changes (the distillation teacher).
    """
    forward = forward or make_forward(model)

    def step_fn(state, batch, consts=None):
        epoch = state["step"] // steps_per_epoch + 1
        part = take_params(state["params"], trainable)

        def objective(part):
            params = put_params(state["params"], part, trainable)
            out, batch_stats = forward(params, state["batch_stats"], batch["image"], consts)
            loss, _ = loss_fn(out, batch["label"], epoch)
            return loss, (batch_stats, out["logits"])

        (loss, (batch_stats, logits)), grads = jax.value_and_grad(
            objective, has_aux=True)(part)
        updates, opt_state = tx.update(grads, state["opt_state"], part)
        params = put_params(state["params"], optax.apply_updates(part, updates), trainable)
        new_state = {"params": params,
                     "batch_stats": batch_stats, "opt_state": opt_state,
                     "step": state["step"] + 1, "rng": state["rng"]}
        acc = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
        return new_state, {"loss": loss, "accuracy": acc, "lr": schedule(state["step"])}
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


def make_eval_step(model, *, tau: float = -1.0, router=None, mesh=None,
                   num_buckets: int = 4, force_all: bool = False) -> Callable:
    """``(state, batch) -> eval_counts`` (masked sums, see :mod:`ride_jax.metrics`).

    Args:
      tau: >= 0: evaluate with tau-normalised linear heads (:func:`tau_normalize`).
      router: evaluate with routed inference (:func:`routed_apply`, run per device
        shard over ``mesh``); the counts then hold the experts used (``'usage'``) and,
        under ``'all_experts'``, the counts of the same network with every expert.
      num_buckets, force_all: see :func:`routed_apply`.
    """

    def eval_fn(state, batch):
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        if tau >= 0:
            variables = tau_normalize(variables, tau)
        out = model.apply(variables, batch["image"], train=False)
        logits = out["logits"].astype(jnp.float32)
        extra = {}
        if router is not None:
            def routed(variables, images):
                r = routed_apply(model, router, variables, images,
                                 num_buckets=num_buckets, force_all=force_all)
                return r["logits"], r["num_experts"]
            if mesh is not None:
                routed = jax.shard_map(routed, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                                       out_specs=(P(DATA_AXIS), P(DATA_AXIS)),
                                       check_vma=False)   # lax.switch branches differ
            all_logits = logits
            logits, used = routed(variables, batch["image"])
            logits = logits.astype(jnp.float32)
            extra = {"num_used": used, "num_experts": model.num_experts}
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        counts = metrics.eval_counts(logits, batch["label"], batch.get("mask"),
                                     out["expert_logits"].astype(jnp.float32), loss, **extra)
        if router is not None:
            counts["all_experts"] = metrics.eval_counts(all_logits, batch["label"],
                                                        batch.get("mask"))
        return counts
    return eval_fn


def load_run(workdir: str) -> tuple[dict, dict, dict | None]:
    """``(config, variables, dataset_info)`` of the newest checkpoint of a run.

    Args:
      workdir: a run's workdir (or its ``checkpoints`` folder).

    Returns:
      The run's config (JSON dict), ``{'params', 'batch_stats'}`` as host arrays and its
      ``dataset.json`` (None if absent).
    """
    workdir = os.path.abspath(workdir)
    if os.path.basename(workdir) == "checkpoints":
        workdir = os.path.dirname(workdir)
    ckdir = os.path.join(workdir, "checkpoints")
    found = None
    if os.path.isdir(ckdir) and os.listdir(ckdir):   # (Checkpointer would create ckdir)
        ckpt = Checkpointer(workdir, asynchronous=False)
        try:     # another run's folder: a damaged newest checkpoint is skipped, not moved
            found = ckpt.restore_intact(quarantine=False)
        finally:
            ckpt.close()
    if found is None:
        raise FileNotFoundError(f"{workdir!r} holds no checkpoint: give the workdir of a "
                                "finished run (its checkpoints/ folder is read)")
    state, cfg, step = found
    info = None
    if os.path.exists(os.path.join(workdir, "dataset.json")):
        with open(os.path.join(workdir, "dataset.json")) as f:
            info = json.load(f)
    logging.info("loaded step %d of %s", step, workdir)
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    return cfg, jax.device_get(variables), info


def _check_reslt(config: ml_collections.ConfigDict) -> None:
    """The ResLT loss and network settings agree (before anything is built; the head's
    own options are checked by ``create_model``)."""
    m, loss = config.model, config.loss
    if loss.name != "reslt" or config.stage not in ("train", "crt"):
        return
    if m.head != "reslt":
        raise ValueError(f"loss.name='reslt' trains ResLT branches: set "
                         f"--config.model.head=reslt (model.head is {m.head!r})")
    two = loss.reslt_tail < 0
    if two != (m.reslt_branches == 2):
        raise ValueError(f"loss.reslt_tail={loss.reslt_tail} and model.reslt_branches="
                         f"{m.reslt_branches} disagree: 3 branches need a tail group "
                         "(reslt_tail >= 0), 2 branches (H, M) need reslt_tail=-1")


def _check_same_model(config: ml_collections.ConfigDict, other: dict, what: str,
                      keys=MODEL_KEYS) -> None:
    theirs = {**MODEL_DEFAULTS, **other["model"]}
    diff = {k: (theirs.get(k), config.model[k]) for k in keys
            if theirs.get(k) != config.model[k]}
    if diff:
        detail = ", ".join(f"model.{k}={a!r} there but {b!r} here" for k, (a, b) in diff.items())
        raise ValueError(f"{what} has another network: {detail}; use the same settings "
                         f"(e.g. --config.model.num_experts=...)")


def _check_same_data(mine: dict, info: dict | None, what: str) -> None:
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


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------- main

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Any = None, dataset: Any = None) -> dict[str, Any]:
    """Train and evaluate as ``config`` says, in ``workdir`` (resuming what is there).

    Every config value, the workdir and everything the run is built from (dataset,
    network, ``init_from``, teacher) is checked before anything is written: a mistake is
    a ``ValueError`` naming it, and leaves no file behind. The workdir is then locked
    (:class:`~ride_jax.workdir.WorkdirLock`) for the whole run.

    Args:
      config: a recipe (``configs/*.py``).
      workdir: output folder.
      devices: the devices of the data mesh (default: all).
      dataset: an ``ArrayDataset`` or ``StreamingDataset`` to use instead of the one
        ``config.dataset`` names (your own data, from a notebook).

    Returns:
      ``{'status': 'finished' | 'interrupted' | 'stopped_at_max_steps', 'step': int,
      'last': eval summary or None, 'best': eval summary or None}``.

    Raises:
      ValueError: a bad config value or workdir, a busy workdir, a workdir holding
        another config, or only damaged checkpoints.
      FloatingPointError: a non-finite loss or state (nothing non-finite is saved).
    """
    config_checks.check_config(config)
    workdir = check_workdir(workdir)
    is_main = jax.process_index() == 0
    cfg = json.loads(config.to_json())      # JSON-able: written, saved, compared
    _check_resumable(workdir, cfg, config.resume_with_different_config)

    mesh = data_mesh(devices)
    repl = NamedSharding(mesh, P())
    batch_sh = NamedSharding(mesh, P(DATA_AXIS))
    # Checked here, before the dataset is built: a typo fails at once.
    platform = mesh.devices.flat[0].platform
    xla_options = compiler.compiler_options(config.get("cpu_convolutions", "eigen"), platform)
    barriers = _fusion_barriers(config, platform)
    steps_per_call = check_steps_per_call(config.get("steps_per_call", 1))
    logging.info("devices: %d (%s), processes: %d", jax.device_count(),
                 jax.devices()[0].device_kind, jax.process_count())

    dataset = build_dataset(config) if dataset is None else dataset
    train_counts = dataset.train_counts
    described = dataset.describe()        # hashes the subset: once
    if isinstance(dataset, ArrayDataset):
        loader = make_loader(dataset, config.data.batch_size,
                             eval_batch_size=config.data.eval_batch_size, mesh=mesh,
                             augment=config.data.augment, sampler=config.data.sampler,
                             remainder=config.data.remainder, seed=config.seed,
                             dtype=DTYPES[config.model.dtype])
    else:   # streamed: the official transforms run in tf.data (data.augment unused)
        loader = StreamLoader(dataset, config.data.batch_size, config.data.eval_batch_size,
                              mesh, config.seed, config.data.sampler)
    if steps_per_call != 1 and not isinstance(loader, DeviceLoader):
        raise ValueError(f"steps_per_call={steps_per_call}: scanning several train steps "
                         "per call needs an in-memory dataset; streamed datasets "
                         f"({config.dataset.name!r}) take steps_per_call=1")
    spe = loader.steps_per_epoch

    stage = losses.check_choice("stage", config.stage, STAGES)
    _check_reslt(config)
    model = _model_from(config.model, dataset.num_classes, barriers)
    sample = jnp.zeros((1,) + dataset.image_shape, jnp.float32)

    loaded = None
    if stage in FROM_INIT:
        if not config.init_from:
            raise ValueError(f"stage {stage!r} starts from a trained run: set "
                             "--config.init_from=<its workdir>")
        init_cfg, loaded, init_info = load_run(config.init_from)
        _check_same_model(config, init_cfg, f"init_from {config.init_from!r}")
        _check_same_data(described, init_info, f"init_from {config.init_from!r}")
    elif config.init_from:
        raise ValueError(f"init_from is for the stages {FROM_INIT}; stage {stage!r} "
                         "trains from scratch")
    router = None
    if stage == "router" or (loaded is not None and "router" in loaded["params"]):
        if model.num_experts < 2:
            raise ValueError("stage 'router' needs a model with >= 2 experts, this one has "
                             f"{model.num_experts}")
        router = make_router(model, dataset.image_shape, top_k=config.router.top_k,
                             hidden=config.router.hidden)
    if config.tau >= 0 and config.model.use_norm:
        raise ValueError(f"tau={config.tau}: tau-normalisation applies to linear heads "
                         "(model.use_norm=False); this model has cosine heads")
    teacher, consts = None, None
    if stage == "distill":
        if not config.distill.teacher:
            raise ValueError("stage 'distill' needs a teacher: set "
                             "--config.distill.teacher=<workdir of a trained teacher run>")
        losses.check_choice("distill.teacher_bn", config.distill.teacher_bn,
                            ("train", "eval"))
        t_cfg, t_vars, t_info = load_run(config.distill.teacher)
        _check_same_data(described, t_info, f"teacher {config.distill.teacher!r}")
        teacher = _model_from(t_cfg["model"], dataset.num_classes, barriers)
        consts = {"teacher": jax.device_put(t_vars, repl)}
    elif config.distill.teacher:
        raise ValueError(f"distill.teacher is only used by stage 'distill', not {stage!r}")

    o = config.optim
    losses.check_choice("optim.schedule", o.schedule, SCHEDULES)
    if o.schedule == "cosine":
        schedule = optim.cosine_epoch_schedule(o.lr, spe, max(config.epochs, 1))
    elif o.schedule == "warmup_cosine":
        schedule = optim.warmup_cosine_epoch_schedule(
            o.lr, spe, max(config.epochs, o.warmup_epochs + 1), o.warmup_epochs)
    else:
        schedule = optim.custom_lr_schedule(o.lr, spe, warmup_epochs=o.warmup_epochs,
                                            step1=o.step1, step2=o.step2, gamma=o.gamma,
                                            warmup_from=o.warmup_from)
    tx = optim.make_optimizer(schedule, weight_decay=o.weight_decay, momentum=o.momentum,
                              nesterov=o.nesterov)
    loss_fn = make_loss_fn(config.loss, train_counts, config.model.scale, stage=stage,
                           pos_weight=config.router.pos_weight, distill=config.distill)
    trainable = TRAINABLE[stage]
    forward = make_forward(model, bn_train=stage in ("train", "distill"),
                           router=router if stage == "router" else None, teacher=teacher,
                           teacher_bn_train=config.distill.teacher_bn == "train")

    def init_fn(rng, loaded):
        if loaded is None:
            return create_state(model, tx, rng, sample)
        init_rng, rng = jax.random.split(rng)
        params = dict(loaded["params"])
        if stage == "crt":      # cRT: fresh classifier heads on the trained features
            fresh = model.init(init_rng, sample)["params"]
            params["experts"] = dict(params["experts"], linear=fresh["experts"]["linear"])
        if router is not None and "router" not in params:
            params["router"] = router.init_params(jax.random.fold_in(init_rng, 1))
        return {"params": params, "batch_stats": loaded["batch_stats"],
                "opt_state": tx.init(take_params(params, trainable)),
                "step": jnp.zeros((), jnp.int32), "rng": rng}

    init = jax.jit(init_fn, out_shardings=repl)
    rng = jax.random.key(config.seed)
    step_fn = make_train_step(model, tx, loss_fn, schedule, spe, forward=forward,
                              trainable=trainable)
    train_step = jax.jit(step_fn, in_shardings=(repl, batch_sh, repl),
                         out_shardings=(repl, repl), donate_argnums=0,
                         compiler_options=xla_options)
    multi_step = None
    if steps_per_call != 1:
        multi_step = jax.jit(make_multi_step(step_fn, scan_unroll(platform)),
                             in_shardings=(repl, loader.chunk_sharding(), repl),
                             out_shardings=(repl, repl), donate_argnums=0,
                             compiler_options=xla_options)
    eval_step = jax.jit(make_eval_step(model, tau=config.tau, router=router, mesh=mesh,
                                       num_buckets=config.router.num_buckets,
                                       force_all=config.router.force_all),
                        in_shardings=(repl, batch_sh), out_shardings=repl,
                        compiler_options=xla_options)
    macs = None
    if router is not None:
        macs = (flops.model_macs(model, image_shape=dataset.image_shape), router.macs)

    # Everything is checked: from here on the run writes to its workdir.
    lock = WorkdirLock(workdir) if is_main else None
    stop = GracefulStop()      # SIGTERM / Ctrl-C from here on: see ride_jax.interrupt
    with (lock or contextlib.nullcontext()), stop:
        if lock is not None:
            stop.at_forced_exit(lock.release)
        _check_resumable(workdir, cfg, config.resume_with_different_config)  # locked now
        if is_main:
            os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
            _write_json(os.path.join(workdir, "config.json"), cfg)
            _write_json(os.path.join(workdir, "dataset.json"), described)
            if getattr(dataset, "selected", None) is not None:
                np.save(os.path.join(workdir, "selected_indices.npy"), dataset.selected)
        ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
        writer = None
        try:
            found = ckpt.restore_intact(abstract_like(jax.eval_shape(init, rng, loaded), repl))
            if found is not None:
                state = found[0]
                stop.last_saved = found[2]
                logging.info("resumed from step %d in %s", found[2], ckpt.directory)
            else:
                state = init(rng, loaded)
                n = sum(x.size for x in jax.tree.leaves(take_params(state["params"],
                                                                    trainable)))
                logging.info("%s trainable parameters", f"{n:,}")
            step = int(jax.device_get(state["step"]))
            # Rows after the checkpoint (written before a kill) are redone: drop them.
            writer = MetricWriter(workdir, is_main, resume_step=step if found else -1)
            stop.at_forced_exit(writer.close)
            if step == 0:
                writer.hparams(cfg)
            return _train_loop(
                config, workdir, is_main, state, step, loader, train_step, multi_step,
                eval_step, consts, ckpt, writer, cfg, train_counts, macs, steps_per_call,
                stop)
        finally:
            ckpt.wait()
            ckpt.close()
            if writer is not None:
                writer.close()


def _eval_due(config, epoch: int) -> bool:
    return epoch == config.epochs or (epoch > 0 and epoch % config.eval_every_epochs == 0)


def _evals_between(config, step: int, end: int, spe: int) -> list[int]:
    """The epochs whose evaluation is still to run from ``step`` (an evaluation at
    ``step`` itself included: it comes after the step) up to step ``end``."""
    return [e for e in range(max(1, -(-step // spe)), config.epochs + 1)
            if _eval_due(config, e) and e * spe <= end]


def _check_resumable(workdir: str, cfg: dict, allow: bool) -> None:
    """Refuse a workdir whose ``config.json`` differs from ``cfg`` in a trajectory key;
    the message names each differing key with both values."""
    path = os.path.join(workdir, "config.json")
    if allow or not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)

    mine, theirs = config_checks.flatten(cfg), config_checks.flatten(old)
    diff = [k for k in sorted(set(mine) | set(theirs))
            if k.split(".")[0] not in RUNTIME_KEYS and mine.get(k) != theirs.get(k)]
    if diff:
        detail = ", ".join(f"{k}={theirs.get(k)!r} there but {mine.get(k)!r} here"
                           for k in diff[:4]) + (", ..." if len(diff) > 4 else "")
        raise ValueError(f"{workdir!r} holds a run with a different config ({detail}); use "
                         "another --workdir, or --config.resume_with_different_config=True")


def _train_loop(config, workdir, is_main, state, step, loader, train_step, multi_step,
                eval_step, consts, ckpt, writer, cfg, train_counts, macs, steps_per_call,
                stop: GracefulStop):
    """The epochs of a run from ``step`` on: train, log, evaluate, checkpoint, stop."""
    spe = loader.steps_per_epoch
    total_steps = config.epochs * spe
    results_path = os.path.join(workdir, "results.json")
    results = {"best": None, "last": None}
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    timing = {"eval_s": [], "excluded": 0.0}

    def last_good() -> str:
        ckpt.wait()
        latest = ckpt.latest_step()
        return ("there is no checkpoint yet" if latest is None else
                f"the last good checkpoint is step {latest} in {ckpt.directory}")

    def run_eval(epoch: int) -> dict[str, Any] | None:
        """The evaluation of ``epoch``; None if a stop was requested during it."""
        t0 = time.perf_counter()
        counts = None
        for batch in loader.eval_batches():
            counts = metrics.add_counts(counts, eval_step(state, batch))
            if stop.requested:
                logging.info("stop requested: evaluation of epoch %d abandoned (it runs "
                             "again on resume)", epoch)
                return None
        all_experts = counts.pop("all_experts", None)
        summary = metrics.summarize(counts, train_counts)
        summary.update(epoch=epoch, step=step)
        if all_experts is not None:      # routed inference: compute and the comparison
            full = metrics.summarize(all_experts, train_counts)
            summary["all_experts"] = {k: full[k] for k in
                                      ("accuracy", "many", "medium", "few")}
            summary["macs"] = flops.routed_macs(macs[0], macs[1],
                                                summary["experts_used"]["all"])
            logging.info("routed: mean experts %.3f, used %s, expected MACs %.4g (all "
                         "experts %.4g; all-experts accuracy %.4f)",
                         summary["mean_experts"], summary["experts_used"]["all"],
                         summary["macs"]["expected"], summary["macs"]["all_experts"],
                         full["accuracy"])
        if is_main:
            _write_json(os.path.join(workdir, "eval", f"epoch_{epoch:04d}.json"), summary)
            writer.scalars(step, {k: summary[k] for k in
                                  ("accuracy", "top5", "class_mean_accuracy", "many",
                                   "medium", "few", "loss", "mean_experts")
                                  if summary.get(k) is not None},
                           "eval")
            results["last"] = summary
            if results["best"] is None or summary["accuracy"] > results["best"]["accuracy"]:
                results["best"] = summary
            _write_json(results_path, results)
        groups = "  ".join(f"{g} {summary[g]:.4f}" for g in ("many", "medium", "few")
                           if summary.get(g) is not None)
        absent = [g for g in ("many", "medium", "few") if summary.get(g) is None]
        logging.info("eval epoch %d: accuracy %.4f  %s%s", epoch, summary["accuracy"], groups,
                     f"  (no {'/'.join(absent)}-shot classes)" if absent else "")
        dt = time.perf_counter() - t0
        timing["eval_s"].append(dt)
        timing["excluded"] += dt
        return summary

    def save(force: bool = False) -> None:
        t0 = time.perf_counter()
        try:
            ckpt.save(step, state, cfg, force=force)
        except NonFiniteState as e:
            raise NonFiniteState(f"{e}; {last_good()}") from None
        stop.last_saved = step
        timing["excluded"] += time.perf_counter() - t0

    status = "finished"
    pending: list[tuple[int, dict, int]] = []     # (first step, metrics, steps)
    t_last, step_last = time.perf_counter(), step
    show_bar = is_main and sys.stderr.isatty()

    def flush_metrics():
        nonlocal t_last, step_last
        if not pending:
            return
        got = jax.device_get([m for _, m, _ in pending])
        values = []     # one per step: a scanned call's metrics are [k] arrays
        for (s, _, k), v in zip(pending, got):
            values += ([(s, v)] if k == 1 else
                       [(s + i, {name: x[i] for name, x in v.items()}) for i in range(k)])
        for s, v in values:      # step s + 1 is the log's numbering (steps done)
            if not math.isfinite(float(v["loss"])):
                raise FloatingPointError(
                    f"non-finite loss {float(v['loss'])} at step {s + 1}/{total_steps} "
                    f"(epoch {s // spe + 1}); {last_good()}")
        now = time.perf_counter()
        train_s = max(now - t_last - timing["excluded"], 1e-9)
        rate = (step - step_last) / train_s
        eta = (total_steps - step) / rate if rate > 0 else float("nan")
        evals = len(_evals_between(config, step, total_steps, spe))
        if timing["eval_s"]:
            eta += evals * float(np.mean(timing["eval_s"]))
        # One row per log interval (a scanned call may hold several), and the rest.
        every = config.log_every_steps
        groups = [[]]
        for s, v in values:
            groups[-1].append(v)
            if (s + 1) % every == 0:
                groups.append([])
        end = values[0][0]
        for group in (g for g in groups if g):
            end += len(group)
            mean = {k: float(np.mean([v[k] for v in group])) for k in group[0]}
            mean.update(steps_per_s=rate, images_per_s=rate * config.data.batch_size,
                        epoch=end / spe)
            writer.scalars(end, mean, "train")
        eta_note = ("" if timing["eval_s"] or not evals else " + evaluations")
        msg = (f"step {step}/{total_steps} epoch {step / spe:.2f} loss {mean['loss']:.4f} "
               f"acc {mean['accuracy']:.3f} lr {mean['lr']:.4g} {rate:.2f} steps/s "
               f"ETA {eta / 60:.1f} min{eta_note}")
        if show_bar:
            sys.stderr.write("\r" + msg[:150].ljust(150))
            sys.stderr.flush()
        logging.info(msg)
        pending.clear()
        t_last, step_last = now, step
        timing["excluded"] = 0.0

    def should_stop() -> bool:
        return stop.requested or bool(config.max_steps and step >= config.max_steps)

    with jax.set_mesh(loader.mesh):
        try:
            start_epoch, offset = divmod(step, spe)
            if isinstance(loader, DeviceLoader):
                t0 = time.perf_counter()
                _precompile(config, loader, step, state, consts, train_step, multi_step,
                            eval_step, steps_per_call)
                logging.info("compiled in %.1f s", time.perf_counter() - t0)
            t_last = time.perf_counter()        # the first rate counts steps, not compiling
            interrupted_eval = False
            if config.epochs == 0:      # stage 'eval': evaluate init_from as it is
                interrupted_eval = run_eval(0) is None
            elif (offset == 0 and 0 < start_epoch and _eval_due(config, start_epoch)
                  and not os.path.exists(os.path.join(
                      workdir, "eval", f"epoch_{start_epoch:04d}.json"))):
                # The run was stopped during this evaluation: it runs first.
                interrupted_eval = run_eval(start_epoch) is None
            if interrupted_eval:
                stop.acknowledge()
                status = "interrupted"
            for epoch0 in range(start_epoch, config.epochs):
                if interrupted_eval:
                    break
                first = offset if epoch0 == start_epoch else 0
                if multi_step is None:
                    calls = ((1, batch) for batch in loader.epoch(epoch0, start=first))
                else:       # k > 1 steps scanned in one call; never past max_steps
                    calls = loader.epoch_calls(
                        epoch0, start=first, steps_per_call=steps_per_call,
                        stop=config.max_steps - epoch0 * spe if config.max_steps else None)
                for k, batch in calls:
                    state, m = (multi_step if k > 1 else train_step)(state, batch, consts)
                    stop.clean = False
                    pending.append((step, m, k))
                    step += k
                    if step // config.log_every_steps > (step - k) // config.log_every_steps:
                        flush_metrics()
                    if should_stop():
                        break
                epoch = epoch0 + 1
                if should_stop():
                    stop.acknowledge()
                    flush_metrics()
                    save(force=True)
                    status = "interrupted" if stop.requested else "stopped_at_max_steps"
                    logging.info("%s at step %d: checkpoint saved", status, step)
                    break
                flush_metrics()
                last = epoch == config.epochs
                if _eval_due(config, epoch) and run_eval(epoch) is None:
                    stop.acknowledge()
                    save(force=True)
                    status = "interrupted"
                    logging.info("interrupted at step %d (during the evaluation of epoch "
                                 "%d): checkpoint saved", step, epoch)
                    break
                if last or epoch % config.checkpoint_every_epochs == 0:
                    save(force=last)
        finally:
            if show_bar:
                sys.stderr.write("\n")
    return {"status": status, "step": step, "last": results["last"], "best": results["best"]}


def _precompile(config, loader: DeviceLoader, step: int, state, consts, train_step,
                multi_step, eval_step, steps_per_call: int) -> None:
    """Compile the programs the loop will run, now, while nothing is unsaved.

    ``jit(f).lower(...).compile()`` fills the cache the later calls use, so a stop
    request during the run waits at most one step or one evaluation batch, never a
    compilation (:mod:`ride_jax.interrupt`). Only the programs this run reaches: the
    full-batch step (unless every full batch is scanned), the smaller last batch of an
    epoch, a scanned chunk, the evaluation batch. A mid-epoch resume with scanned steps
    may still compile its leftover single steps when it reaches them.
    """
    spe = loader.steps_per_epoch
    end = config.epochs * spe
    if config.max_steps:
        end = min(end, config.max_steps)
    sizes = loader.train_batch_sizes()
    if step < end and sizes:
        kind, first = next(loader.epoch_calls(0, steps_per_call=steps_per_call))
        lead = 1 if kind > 1 else 0         # a scanned chunk is [k, B, ...]

        def single(x, size):                 # the abstract batch of ``size`` examples
            return jax.ShapeDtypeStruct((size,) + x.shape[lead + 1:], x.dtype,
                                        sharding=loader.batch_sharding)

        full = sum(1 for size in sizes if size == loader.batch_size)
        if kind > 1:
            multi_step.lower(state, first, consts).compile()
        if full and (kind == 1 or full % (steps_per_call or full)):
            train_step.lower(state, jax.tree.map(lambda x: single(x, loader.batch_size), first),
                             consts).compile()
        if sizes[-1] != loader.batch_size and (step // spe + 1) * spe <= end:
            train_step.lower(state, jax.tree.map(lambda x: single(x, sizes[-1]), first),
                             consts).compile()
    if config.epochs == 0 or _evals_between(config, step, end, spe):
        batch = next(iter(loader.eval_batches()), None)
        if batch is not None:
            eval_step.lower(state, batch).compile()

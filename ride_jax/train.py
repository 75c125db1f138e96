"""``train_and_evaluate(config, workdir)``: the training loop behind ``ride_jax.main``.

The loop names no method and no stage: a method (:mod:`ride_jax.methods`: loss, model
settings, recipe, evaluation transform) and a stage (:mod:`ride_jax.stages`: what
trains, BatchNorm mode, ``init_from``, extra outputs, loss) are data it reads. The
pieces live in their own modules: the pure step functions in :mod:`ride_jax.steps`,
evaluation in :mod:`ride_jax.evaluation`, networks in :mod:`ride_jax.networks`, loaders
in :mod:`ride_jax.data.loader`, metrics in :mod:`ride_jax.metric_writer`, checkpoints in
:mod:`ride_jax.checkpointing`, config checks in :mod:`ride_jax.config_checks`.

One state pytree ``{'params', 'batch_stats', 'opt_state', 'step', 'rng'}`` replicated
over a 1-D ``'data'`` mesh of all devices (:mod:`ride_jax.sharding`); batches sharded
``P('data')``; one jitted, state-donating train step (a second compiled shape only for
the official smaller last batch of an epoch). BatchNorm statistics are computed over the
GLOBAL batch (the official multi-GPU runs use per-GPU statistics: ``docs/parity.md``).
The LR and the DRW switch are functions of the traced step: nothing recompiles.

Everything a run needs to resume is in ``workdir``: Orbax checkpoints (state + config;
the newest ``keep_checkpoints`` and the best evaluation), ``config.json``,
``dataset.json``, ``metrics.jsonl``, ``eval/epoch_NNNN.json`` and ``results.json`` (best
and last evaluation, ``best_step``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ride_jax import compiler, config_checks, evaluation, flops, methods, networks, optim, stages
from ride_jax.checkpointing import Checkpointer, NonFiniteState, abstract_like, load_run
from ride_jax.data import load_cache, load_dataset
from ride_jax.data.loader import check_steps_per_call, loader_from_config
from ride_jax.interrupt import GracefulStop
from ride_jax.metric_writer import MetricWriter, TrainLog
from ride_jax.models import make_router
from ride_jax.sharding import batch_sharding, data_mesh, replicated
from ride_jax.workdir import WorkdirLock, check_workdir
# The pieces' old home: names kept for notebooks and scripts that import them from here.
from ride_jax.evaluation import make_eval_step  # noqa: F401
from ride_jax.networks import DTYPES, MODEL_DEFAULTS, MODEL_KEYS  # noqa: F401
from ride_jax.networks import fusion_barriers as _fusion_barriers  # noqa: F401
from ride_jax.networks import model_from_config as _model_from  # noqa: F401
from ride_jax.config_checks import RUNTIME_KEYS  # noqa: F401
from ride_jax.steps import (create_state, init_state, make_forward,  # noqa: F401
                            make_multi_step, make_train_step, put_params, scan_unroll,
                            take_params)

def build_dataset(config: ml_collections.ConfigDict):
    """The dataset named by ``config.dataset``, or its prepared copy ``dataset.cache``
    (an in-memory ``.npz``, or a streamed dataset's ArrayRecord folder)."""
    if config.dataset.cache:
        from ride_jax.data.records import is_records, load_records
        if is_records(config.dataset.cache):     # a streamed dataset's ArrayRecord copy
            return load_records(config.dataset.cache)
        return load_cache(config.dataset.cache)
    return load_dataset(config.dataset.name, **config.dataset.args.to_dict())


def make_loss_fn(loss_cfg: ml_collections.ConfigDict, train_counts: Any, scale: float,
                 *, stage: str = "train", pos_weight: float = 100.0,
                 distill: ml_collections.ConfigDict | None = None) -> Callable:
    """``(outputs, labels, epoch) -> (loss, aux)`` of ``stage`` for the method
    ``loss_cfg.name`` (:mod:`ride_jax.methods`, :mod:`ride_jax.stages`), from a loss
    block alone (``scale``: ``model.scale``; ``pos_weight``: ``router.pos_weight``)."""
    config = ml_collections.ConfigDict({
        "loss": loss_cfg, "model": {"scale": scale}, "router": {"pos_weight": pos_weight},
        "distill": distill if distill is not None else {}})
    return stages.make_loss(stages.get(stage), methods.get(loss_cfg.name), config,
                            train_counts)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Any = None, dataset: Any = None) -> dict[str, Any]:
    """Train and evaluate as ``config`` says, in ``workdir`` (resuming what is there).

    Every config value, the workdir and everything the run is built from (dataset,
    network, method, ``init_from``, teacher) is checked before anything is written: a
    mistake is a ``ValueError`` naming it, and leaves no file behind. The workdir is then
    locked (:class:`~ride_jax.workdir.WorkdirLock`) for the whole run.

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
        another config, a method that does not load, or only damaged checkpoints.
      FloatingPointError: a non-finite loss or state (nothing non-finite is saved).
    """
    config_checks.check_config(config)
    workdir = check_workdir(workdir)
    is_main = jax.process_index() == 0
    cfg = json.loads(config.to_json())      # JSON-able: written, saved, compared
    config_checks.check_resumable(workdir, cfg, config.resume_with_different_config)
    stage, method = stages.get(config.stage), methods.get(config.loss.name)
    stages.check(stage, method, config)

    mesh = data_mesh(devices)
    repl, batch_sh = replicated(mesh), batch_sharding(mesh)
    platform = mesh.devices.flat[0].platform
    xla_options = compiler.compiler_options(config.get("cpu_convolutions", "eigen"), platform)
    barriers = networks.fusion_barriers(config, platform)
    steps_per_call = check_steps_per_call(config.get("steps_per_call", 1))
    logging.info("devices: %d (%s), processes: %d", jax.device_count(),
                 jax.devices()[0].device_kind, jax.process_count())

    dataset = build_dataset(config) if dataset is None else dataset
    train_counts = dataset.train_counts
    described = dataset.describe()        # hashes the subset: once
    loader = loader_from_config(dataset, config, mesh, networks.DTYPES[config.model.dtype])
    spe = loader.steps_per_epoch
    model = networks.model_from_config(config.model, dataset.num_classes, barriers)
    sample = jnp.zeros((1,) + dataset.image_shape, jnp.float32)

    loaded, router, teacher, consts = _sources(config, stage, model, dataset, described,
                                               barriers, repl)

    schedule = optim.schedule_from_config(config.optim, spe, config.epochs)
    tx = optim.optimizer_from_config(config.optim, schedule)
    forward = make_forward(model, bn_train=stage.bn_train,
                           router=router if stage.router else None, teacher=teacher,
                           teacher_bn_train=config.distill.teacher_bn == "train")
    step_fn = make_train_step(model, tx, stages.make_loss(stage, method, config, train_counts),
                              schedule, spe, forward=forward, trainable=stage.trainable)
    jit = functools.partial(jax.jit, compiler_options=xla_options)
    init = jax.jit(functools.partial(init_state, model, tx, sample, stage, router),
                   out_shardings=repl)
    # The call inputs keep their own shardings (None): see _input_step.
    train_step = jit(_input_step(loader, step_fn, batch_sh, "train_step"),
                     in_shardings=(repl, None, repl), out_shardings=(repl, repl),
                     donate_argnums=0)
    multi_step = None
    if steps_per_call != 1:
        multi_step = jit(_input_step(loader, make_multi_step(step_fn, scan_unroll(platform)),
                                     loader.chunk_sharding(), "multi_step"),
                         in_shardings=(repl, None, repl), out_shardings=(repl, repl),
                         donate_argnums=0)
    transform = method.eval_transform and method.eval_transform(config, train_counts)
    eval_step = jit(make_eval_step(
        model, tau=config.tau, router=router, mesh=mesh, num_buckets=config.router.num_buckets,
        force_all=config.router.force_all, transform=transform,
        class_counts=np.asarray(train_counts), logit_adjust_tau=config.eval.logit_adjust_tau),
        in_shardings=(repl, batch_sh), out_shardings=repl)
    rng = jax.random.key(config.seed)
    abstract = jax.eval_shape(init, rng, loaded)
    if methods.is_plugin(config.loss.name) and config.epochs:
        # Trace your method's loss now: a wrong output key or return value is an error
        # before anything is written.
        jax.eval_shape(step_fn, abstract, loader.batch_spec(loader.batch_size), consts)
    macs = None
    if router is not None:
        macs = (flops.model_macs(model, image_shape=dataset.image_shape), router.macs)

    # Everything is checked: from here on the run writes to its workdir.
    lock = WorkdirLock(workdir) if is_main else None
    # SIGTERM / Ctrl-C from here on (every process at the same step): ride_jax.interrupt
    stop = GracefulStop(synchronized=jax.process_count() > 1)
    with (lock or contextlib.nullcontext()), stop:
        if lock is not None:
            stop.at_forced_exit(lock.release)
        config_checks.check_resumable(workdir, cfg, config.resume_with_different_config)  # locked now
        if is_main:
            _write_run_files(workdir, cfg, described, dataset)
        ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
        writer = None
        try:
            state, step, found = _restore_or_init(ckpt, abstract, repl, init, rng, loaded,
                                                  stage, stop)
            # Rows after the checkpoint (written before a kill) are redone: drop them.
            writer = MetricWriter(workdir, is_main, resume_step=step if found else -1)
            stop.at_forced_exit(writer.close)
            if step == 0:
                writer.hparams(cfg)
            evaluator = evaluation.Evaluator(
                eval_step, loader, train_counts, workdir, writer, write=is_main, stop=stop,
                macs=macs, logit_adjust_tau=config.eval.logit_adjust_tau)
            return _train_loop(config, cfg, state, step, loader, (train_step, multi_step),
                               eval_step, consts, ckpt, evaluator, writer, steps_per_call,
                               stop, show_bar=is_main and sys.stderr.isatty())
        finally:
            ckpt.wait()
            ckpt.close()
            if writer is not None:
                writer.close()


def _input_step(loader, fn, sharding, name: str):
    """``fn(state, batch, consts)`` taking the loader's call inputs instead of a batch (a
    ready batch, or with ``data.fuse_input`` an in-memory loader's epoch plan and step
    number): the batch is made inside the step by the loader's pure ``step_batch``."""
    def step(state, inputs, consts=None):
        batch = jax.lax.with_sharding_constraint(loader.step_batch(inputs), sharding)
        return fn(state, batch, consts)
    step.__name__ = name
    return step


def _sources(config, stage: stages.Stage, model, dataset, described, barriers, repl):
    """What the stage starts from, loaded and checked against this run: ``(loaded
    variables of init_from or None, router or None, teacher network or None, the
    step's constants: {'teacher': its variables} or None)``."""
    loaded = router = teacher = consts = None
    if stage.from_init:
        init_cfg, loaded, init_info = load_run(config.init_from, config.init_from_checkpoint)
        what = f"init_from {config.init_from!r}"
        networks.check_same_model(config, init_cfg, what)
        networks.check_same_data(described, init_info, what)
    if stage.router or (loaded is not None and "router" in loaded["params"]):
        router = make_router(model, dataset.image_shape, top_k=config.router.top_k,
                             hidden=config.router.hidden)
    if stage.teacher:
        t_cfg, t_vars, t_info = load_run(config.distill.teacher,
                                         config.distill.teacher_checkpoint)
        networks.check_same_data(described, t_info, f"teacher {config.distill.teacher!r}")
        teacher = networks.model_from_config(t_cfg["model"], dataset.num_classes, barriers)
        consts = {"teacher": jax.device_put(t_vars, repl)}
    return loaded, router, teacher, consts


def _write_run_files(workdir: str, cfg: dict, described: dict, dataset) -> None:
    """The run's description: ``config.json``, ``dataset.json`` and the selected
    subset's indices (``selected_indices.npy``) where the dataset has one."""
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    evaluation.write_json(os.path.join(workdir, "config.json"), cfg)
    evaluation.write_json(os.path.join(workdir, "dataset.json"), described)
    if getattr(dataset, "selected", None) is not None:
        np.save(os.path.join(workdir, "selected_indices.npy"), dataset.selected)


def _restore_or_init(ckpt, abstract, repl, init, rng, loaded, stage: stages.Stage,
                     stop: GracefulStop):
    """``(state, step, resumed)``: the newest intact checkpoint, or a new state."""
    found = ckpt.restore_intact(abstract_like(abstract, repl))
    if found is not None:
        state, _, step = found
        stop.last_saved = step
        logging.info("resumed from step %d in %s", step, ckpt.directory)
        return state, step, True
    state = init(rng, loaded)
    n = sum(x.size for x in jax.tree.leaves(take_params(state["params"], stage.trainable)))
    logging.info("%s trainable parameters", f"{n:,}")
    return state, 0, False


def _eval_due(config, epoch: int) -> bool:
    return epoch == config.epochs or (epoch > 0 and epoch % config.eval_every_epochs == 0)


def _evals_between(config, step: int, end: int, spe: int) -> list[int]:
    """The epochs whose evaluation is still to run from ``step`` (an evaluation at
    ``step`` itself included: it comes after the step) up to step ``end``."""
    return [e for e in range(max(1, -(-step // spe)), config.epochs + 1)
            if _eval_due(config, e) and e * spe <= end]


def _train_loop(config, cfg, state, step, loader, train_steps, eval_step, consts, ckpt,
                evaluator, writer, steps_per_call, stop: GracefulStop, show_bar: bool):
    """The epochs of a run from ``step`` on: train, log, evaluate, checkpoint, stop."""
    train_step, multi_step = train_steps
    spe = loader.steps_per_epoch
    total_steps = config.epochs * spe
    status = "finished"

    def last_good() -> str:
        ckpt.wait()
        latest = ckpt.latest_step()
        return ("there is no checkpoint yet" if latest is None else
                f"the last good checkpoint is step {latest} in {ckpt.directory}")

    log = TrainLog(writer, total_steps=total_steps, steps_per_epoch=spe,
                   log_every=config.log_every_steps, batch_size=config.data.batch_size,
                   evals_left=lambda s: len(_evals_between(config, s, total_steps, spe)),
                   eval_seconds=evaluator.seconds, last_good=last_good, show_bar=show_bar)

    def evaluate(epoch: int) -> dict | None:
        t0 = time.perf_counter()
        summary = evaluator(state, epoch, step)
        log.exclude(time.perf_counter() - t0)
        return summary

    def save(force: bool = False, summary: dict | None = None) -> None:
        t0 = time.perf_counter()
        metrics = None if summary is None else {"accuracy": summary["accuracy"]}
        try:
            ckpt.save(step, state, cfg, metrics=metrics, force=force)
        except NonFiniteState as e:
            raise NonFiniteState(f"{e}; {last_good()}") from None
        stop.last_saved = step
        log.exclude(time.perf_counter() - t0)

    done_calls = 0      # train calls of this run so far: the same on every process

    def should_stop() -> bool:
        return stop.poll(done_calls) or bool(config.max_steps and step >= config.max_steps)

    with jax.set_mesh(loader.mesh):
        try:
            start_epoch, offset = divmod(step, spe)
            t0 = time.perf_counter()
            _precompile(config, loader, step, state, consts, train_step, multi_step,
                        eval_step, steps_per_call)
            logging.info("compiled in %.1f s", time.perf_counter() - t0)
            log.start(step)        # the first rate counts steps, not compiling
            interrupted_eval = False
            if config.epochs == 0:      # nothing to train (stage 'eval'): evaluate
                interrupted_eval = evaluate(0) is None
            elif (offset == 0 and 0 < start_epoch and _eval_due(config, start_epoch)
                  and not evaluator.done(start_epoch)):
                # The run was stopped during this evaluation: it runs first.
                interrupted_eval = evaluate(start_epoch) is None
            if interrupted_eval:
                stop.acknowledge()
                status = "interrupted"
            for epoch0 in range(start_epoch, config.epochs):
                if interrupted_eval:
                    break
                first = offset if epoch0 == start_epoch else 0
                # k > 1 steps scanned in one call (steps_per_call); never past max_steps
                # (k, inputs): the steps make their batches from them
                calls = loader.train_calls(
                    epoch0, start=first,
                    steps_per_call=steps_per_call if multi_step else 1,
                    stop=config.max_steps - epoch0 * spe if config.max_steps else None)
                for k, inputs in calls:
                    state, m = (multi_step if k > 1 else train_step)(state, inputs, consts)
                    done_calls += 1
                    stop.clean = False
                    due = log.add(step, m, k)
                    step += k
                    if due:
                        log.flush(step)
                    if should_stop():
                        break
                epoch = epoch0 + 1
                if should_stop():
                    stop.acknowledge()
                    log.flush(step)
                    save(force=True)
                    status = "interrupted" if stop.requested else "stopped_at_max_steps"
                    logging.info("%s at step %d: checkpoint saved", status, step)
                    break
                log.flush(step)
                last = epoch == config.epochs
                summary = evaluate(epoch) if _eval_due(config, epoch) else None
                if _eval_due(config, epoch) and summary is None:
                    stop.acknowledge()
                    save(force=True)
                    status = "interrupted"
                    logging.info("interrupted at step %d (during the evaluation of epoch "
                                 "%d): checkpoint saved", step, epoch)
                    break
                best = summary is not None and summary["is_best"]
                if last or best or epoch % config.checkpoint_every_epochs == 0:
                    save(force=last or best, summary=summary)
        finally:
            if show_bar:
                sys.stderr.write("\n")
    return {"status": status, "step": step, "last": evaluator.last, "best": evaluator.best}


def _precompile(config, loader, step: int, state, consts, train_step,
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
        # Abstract call inputs (nothing is read: a resumed run reads no batch before its
        # own).
        full = sum(1 for size in sizes if size == loader.batch_size)
        k = steps_per_call or full
        if 1 < k <= full:            # scanned chunks [k, B, ...] of the full batches
            multi_step.lower(state, loader.call_spec(loader.batch_size, k), consts).compile()
        if full and (k <= 1 or k > full or full % k):
            train_step.lower(state, loader.call_spec(loader.batch_size), consts).compile()
        if sizes[-1] != loader.batch_size and (step // spe + 1) * spe <= end:
            train_step.lower(state, loader.call_spec(sizes[-1]), consts).compile()
    if config.epochs == 0 or _evals_between(config, step, end, spe):
        batch = next(iter(loader.eval_batches()), None)
        if batch is not None:
            eval_step.lower(state, batch).compile()

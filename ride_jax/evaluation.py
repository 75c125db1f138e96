"""Evaluation: the jitted evaluation step and the :class:`Evaluator` of a run.

The step turns a batch into masked per-class sums (:mod:`ride_jax.metrics`); the
evaluator adds them over the test set, summarises them (overall, many / medium / few,
per class, per expert; routed inference: experts used and expected MACs; post-hoc logit
adjustment beside the plain numbers; calibration: top-label ECE overall and per shot
group, with the per-bin counts of a reliability diagram), writes ``eval/epoch_NNNN.json`` and the
``eval/*`` metrics, and keeps the run's best and last evaluation in ``results.json``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from absl import logging
from jax.sharding import PartitionSpec as P

from ride_jax import flops, losses, metrics
from ride_jax.data.long_tail import shot_masks
from ride_jax.models import routed_apply, tau_normalize
from ride_jax.sharding import DATA_AXIS

GROUPS = ("many", "medium", "few")
# The scalars of a summary written as eval/<name> metrics.
SCALARS = ("accuracy", "top5", "class_mean_accuracy", "many", "medium", "few", "loss",
           "mean_experts", "ece", "ece_many", "ece_medium", "ece_few")
# Equal-width confidence bins of the evaluation's calibration (ECE, reliability diagram).
CALIBRATION_BINS = 15


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` to ``path`` atomically (a reader never sees half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def make_eval_step(model, *, tau: float = -1.0, router=None, mesh=None,
                   num_buckets: int = 4, force_all: bool = False,
                   transform: Callable[[dict], dict] | None = None,
                   class_counts: Any = None, logit_adjust_tau: float = 0.0,
                   calibration_bins: int = CALIBRATION_BINS) -> Callable:
    """``(state, batch) -> eval_counts`` (masked sums, see :mod:`ride_jax.metrics`).

    The counts also hold ``'calibration'``: :func:`ride_jax.metrics.calibration_counts`
    of the softmax of the evaluated logits (the ones the accuracy scores: after tau-norm,
    the method's transform and routing), under ``'all'`` and, with ``class_counts``, per
    shot group of those training counts (``'many'``, ``'medium'``, ``'few'``).

    Args:
      tau: >= 0: evaluate with tau-normalised linear heads (:func:`tau_normalize`).
      router: evaluate with routed inference (:func:`routed_apply`, run per device
        shard over ``mesh``); the counts then hold the experts used (``'usage'``) and,
        under ``'all_experts'``, the counts of the same network with every expert.
      num_buckets, force_all: see :func:`routed_apply`.
      transform: the method's evaluation transform of the outputs
        (:attr:`ride_jax.methods.Method.eval_transform`), applied before predicting.
      class_counts: the training class counts (shot groups of the calibration; the prior
        of the post-hoc adjustment).
      logit_adjust_tau: > 0: also count the post-hoc logit-adjusted
        prediction ``argmax(logits - tau * log(prior))`` (prior: the training
        ``class_counts``; :func:`ride_jax.losses.posthoc_logit_adjust`) under
        ``'posthoc_adjusted'``.
      calibration_bins: equal-width confidence bins of the calibration counts.
    """
    transform = transform or (lambda out: out)
    groups = {} if class_counts is None else shot_masks(class_counts)

    def eval_fn(state, batch):
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        if tau >= 0:
            variables = tau_normalize(variables, tau)
        out = transform(model.apply(variables, batch["image"], train=False))
        logits = out["logits"].astype(jnp.float32)
        extra = {}
        if router is not None:
            def routed(variables, images):
                r = routed_apply(model, router, variables, images,
                                 num_buckets=num_buckets, force_all=force_all)
                return transform(r)["logits"], r["num_experts"]
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
        # Routed: ``logits`` is the global [B, C] output of the shard_map (out_specs
        # P(DATA_AXIS)), so the calibration counts are those of the routed prediction.
        counts["calibration"] = metrics.group_calibration_counts(
            jax.nn.softmax(logits, axis=-1), batch["label"], groups, calibration_bins,
            batch.get("mask"))
        if router is not None:
            counts["all_experts"] = metrics.eval_counts(all_logits, batch["label"],
                                                        batch.get("mask"))
        if logit_adjust_tau > 0:
            adjusted = losses.posthoc_logit_adjust(logits, class_counts, logit_adjust_tau)
            counts["posthoc_adjusted"] = metrics.eval_counts(adjusted, batch["label"],
                                                           batch.get("mask"))
        return counts
    return eval_fn


def calibration_summary(calibration: dict[str, dict]) -> dict[str, Any]:
    """``{'ece', 'ece_many', 'ece_medium', 'ece_few', 'calibration'}`` from the summed
    ``'calibration'`` counts of :func:`make_eval_step`.

    ECE values are fractions (:func:`ride_jax.metrics.ece_from_counts`); a shot group
    without test examples (or without class counts in the step) has None. ``'calibration'``
    holds the overall per-bin ``count``, ``confidence_sum`` and ``correct`` as lists
    (what :func:`ride_jax.metrics.reliability_diagram` draws).
    """
    def ece(counts):
        if counts is None or float(jax.device_get(counts["count"]).sum()) <= 0:
            return None
        return metrics.ece_from_counts(counts)

    out: dict[str, Any] = {"ece": ece(calibration["all"])}
    for g in GROUPS:
        out[f"ece_{g}"] = ece(calibration.get(g))
    out["calibration"] = {k: [float(x) for x in jax.device_get(calibration["all"][k])]
                          for k in ("count", "confidence_sum", "correct")}
    return out


class Evaluator:
    """Evaluates a run's state on the test set and keeps its best and last results.

    ``results.json`` (``{'best', 'last', 'best_step'}``) is read back on resume, so the
    best of a resumed run covers the evaluations before the interruption too.

    Args:
      eval_step: the jitted :func:`make_eval_step`.
      loader: gives ``eval_batches()``.
      train_counts: training class counts (the shot groups).
      workdir: where ``eval/`` and ``results.json`` go (written by the main process).
      writer: a :class:`~ride_jax.metric_writer.MetricWriter` (``eval/*`` metrics).
      write: this process writes files (the main process).
      stop: polled after every batch (``stop.requested``): an evaluation stopped half-way
        returns None and writes nothing.
      macs: ``(ModelMacs, router MACs)`` of a routed model (expected MACs reported).
      logit_adjust_tau: the post-hoc adjustment's tau, reported with its numbers.
    """

    def __init__(self, eval_step, loader, train_counts, workdir: str, writer, *,
                 write: bool = True, stop=None, macs=None, logit_adjust_tau: float = 0.0):
        self.eval_step, self.loader, self.train_counts = eval_step, loader, train_counts
        self.logit_adjust_tau = logit_adjust_tau
        self.workdir, self.writer, self.write, self.stop, self.macs = (
            workdir, writer, write, stop, macs)
        self.path = os.path.join(workdir, "results.json")
        self.results = {"best": None, "last": None, "best_step": None}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.results.update(json.load(f))
        self.seconds: list[float] = []

    @property
    def best(self) -> dict | None:
        return self.results["best"]

    @property
    def last(self) -> dict | None:
        return self.results["last"]

    def done(self, epoch: int) -> bool:
        """The evaluation of ``epoch`` is on disk."""
        return os.path.exists(os.path.join(self.workdir, "eval", f"epoch_{epoch:04d}.json"))

    def __call__(self, state, epoch: int, step: int) -> dict[str, Any] | None:
        """The evaluation of ``state`` after ``epoch`` (``step``); None if stopped.

        The summary's ``'is_best'`` says whether it is the best evaluation so far."""
        t0 = time.perf_counter()
        counts = None
        for batch in self.loader.eval_batches():
            counts = metrics.add_counts(counts, self.eval_step(state, batch))
            if self.stop is not None and self.stop.requested:
                logging.info("stop requested: evaluation of epoch %d abandoned (it runs "
                             "again on resume)", epoch)
                return None
        summary = self._summarize(counts)
        summary.update(epoch=epoch, step=step)
        best = self.results["best"]
        is_best = best is None or summary["accuracy"] > best["accuracy"]
        self.results["last"] = summary
        if is_best:
            self.results.update(best=summary, best_step=step)
        if self.write:
            write_json(os.path.join(self.workdir, "eval", f"epoch_{epoch:04d}.json"), summary)
            scalars = {k: summary[k] for k in SCALARS if summary.get(k) is not None}
            for k, v in (summary.get("posthoc_adjusted") or {}).items():
                if k in ("accuracy", "top5", "class_mean_accuracy") + GROUPS and v is not None:
                    scalars[f"posthoc_adjusted_{k}"] = v
            self.writer.scalars(step, scalars, "eval")
            write_json(self.path, self.results)
        self._log(epoch, summary)
        self.seconds.append(time.perf_counter() - t0)
        return dict(summary, is_best=is_best)

    def _summarize(self, counts) -> dict[str, Any]:
        counts = dict(counts)
        all_experts = counts.pop("all_experts", None)
        adjusted = counts.pop("posthoc_adjusted", None)
        calibration = counts.pop("calibration", None)
        summary = metrics.summarize(counts, self.train_counts)
        if calibration is not None:
            summary.update(calibration_summary(calibration))
        if all_experts is not None:      # routed inference: compute and the comparison
            full = metrics.summarize(all_experts, self.train_counts)
            summary["all_experts"] = {k: full[k] for k in ("accuracy",) + GROUPS}
            summary["macs"] = flops.routed_macs(self.macs[0], self.macs[1],
                                                summary["experts_used"]["all"])
            logging.info("routed: mean experts %.3f, used %s, expected MACs %.4g (all "
                         "experts %.4g; all-experts accuracy %.4f)",
                         summary["mean_experts"], summary["experts_used"]["all"],
                         summary["macs"]["expected"], summary["macs"]["all_experts"],
                         full["accuracy"])
        if adjusted is not None:
            summary["posthoc_adjusted"] = dict(metrics.summarize(adjusted, self.train_counts),
                                             tau=self.logit_adjust_tau)
        return summary

    @staticmethod
    def _log(epoch: int, summary: dict) -> None:
        if summary.get("ece") is not None:
            logging.info("eval epoch %d: ECE %.4f  %s", epoch, summary["ece"], "  ".join(
                f"{g} {summary['ece_' + g]:.4f}" for g in GROUPS
                if summary.get("ece_" + g) is not None))
        def groups(s):
            return "  ".join(f"{g} {s[g]:.4f}" for g in GROUPS if s.get(g) is not None)
        absent = [g for g in GROUPS if summary.get(g) is None]
        logging.info("eval epoch %d: accuracy %.4f  %s%s", epoch, summary["accuracy"],
                     groups(summary),
                     f"  (no {'/'.join(absent)}-shot classes)" if absent else "")
        la = summary.get("posthoc_adjusted")
        if la is not None:
            logging.info("eval epoch %d, post-hoc logit adjustment: accuracy %.4f  %s",
                         epoch, la["accuracy"], groups(la))

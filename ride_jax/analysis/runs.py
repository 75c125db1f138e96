"""Analyses of a finished run: its test predictions, per-class figures and a summary.

``predict_run(workdir)`` evaluates the newest checkpoint of a run on its test set with
the run's own settings (test-time classifier, ``tau``, routed inference when the run
has a router) and returns host arrays; ``analyze_run(workdir)`` writes the figures and
``analysis.json`` into ``<workdir>/analysis``. The command line is
``python -m ride_jax.analysis run --workdir=DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from ride_jax import evaluation, metrics
from ride_jax.analysis import core, plots

# A confusion matrix is drawn only for this many classes or fewer (readable at 640 px).
CONFUSION_MAX_CLASSES = 30


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A checkpoint of a finished run, ready to evaluate images (see :func:`load_predictor`).

    Attributes:
      apply: jitted ``(variables, images [B, H, W, C] normalised) -> (logits [B, C],
        expert_logits [E, B, C], num_experts [B] int32)``: the run's evaluation (the
        method's evaluation transform, routed inference when the run has a router).
      variables: ``{'params', 'batch_stats'}`` (tau-normalised when ``tau >= 0``).
      dataset: the in-memory dataset.
      config: the run's config (JSON dict).
      experts: jitted ``(variables, images) -> expert_logits [E, B, C]`` (every expert,
        no router, no transform).
      num_experts: E.
      routed: the run has a router.
      dtype: the network's input dtype.
    """
    apply: Any
    variables: Any
    dataset: Any
    config: dict
    experts: Any
    num_experts: int
    routed: bool
    dtype: Any


def load_predictor(workdir: str | os.PathLike, *, dataset: Any = None,
                   which: str | int = "latest") -> Predictor:
    """Checkpoint ``which`` (``'latest'``, ``'best'`` or a step) of a run, with the run's own
    evaluation settings, as a :class:`Predictor`.

    Args:
      dataset: the in-memory dataset to use instead of the one the run's config names
        (e.g. when its files moved); must have the run's number of classes.

    Raises:
      ValueError: the dataset is streamed (one line).
    """
    from ride_jax.data.base import ArrayDataset
    from ride_jax.models import make_router, routed_apply, tau_normalize
    from ride_jax.checkpointing import load_run
    from ride_jax.networks import DTYPES, model_from_config
    from ride_jax.train import build_dataset

    cfg, variables, _ = load_run(os.fspath(workdir), which)
    config = ml_collections.ConfigDict(cfg)
    ds = build_dataset(config) if dataset is None else dataset
    if not isinstance(ds, ArrayDataset):
        raise ValueError(f"run analysis needs an in-memory dataset; {config.dataset.name!r} "
                         "is streamed (prepare a cache with python -m ride_jax.data.prepare "
                         "and pass it as dataset=load_cache(...))")
    model = model_from_config(cfg["model"], ds.num_classes)
    if config.tau >= 0:
        variables = tau_normalize(variables, config.tau)
    transform = _eval_transform(config, np.asarray(ds.train_counts))
    router = None
    if "router" in variables["params"]:
        router = make_router(model, ds.image_shape, top_k=config.router.top_k,
                             hidden=config.router.hidden)

    @jax.jit
    def apply(variables, images):
        out = model.apply(variables, images, train=False)
        logits = transform(out)["logits"]
        used = jax.numpy.full(images.shape[:1], model.num_experts, jax.numpy.int32)
        if router is not None:
            r = routed_apply(model, router, variables, images,
                             num_buckets=config.router.num_buckets,
                             force_all=config.router.force_all)
            logits, used = transform(r)["logits"], r["num_experts"]
        return logits, out["expert_logits"], used

    @jax.jit
    def experts(variables, images):
        return model.apply(variables, images, train=False)["expert_logits"]

    return Predictor(apply=apply, variables=variables, dataset=ds, config=cfg,
                     experts=experts, num_experts=model.num_experts, routed=router is not None,
                     dtype=DTYPES[config.model.dtype])


def _eval_transform(config: ml_collections.ConfigDict, counts: np.ndarray):
    """The method's evaluation transform of the outputs (identity without one, or for a
    plug-in method that does not import here: :func:`ride_jax.methods.find`)."""
    from ride_jax import methods
    method = methods.find(config.loss.name)
    if method is None or method.eval_transform is None:
        return lambda out: out
    return method.eval_transform(config, counts)


def predict_run(workdir: str | os.PathLike, *, dataset: Any = None,
                batch_size: int | None = None, which: str | int = "latest",
                predictor: Predictor | None = None) -> dict[str, Any]:
    """Test-set outputs of a finished run (checkpoint ``which``), on the host.

    Args:
      workdir: the run's workdir.
      dataset: the in-memory dataset to use instead of the one the run's config names
        (e.g. when its files moved); must have the run's number of classes.
      batch_size: evaluation batch (default: the run's ``data.eval_batch_size``).
      which: ``'latest'`` (default), ``'best'`` or a step.
      predictor: :func:`load_predictor`'s output, if already loaded.

    Returns:
      ``{'logits': [N, C] float32 (what the run's evaluation scores), 'expert_logits':
      [E, N, C], 'labels': [N] int, 'num_experts': [N] int (experts used; E without a
      router), 'routed': bool (the run has a router), 'train_counts': [C],
      'class_names': list | None, 'config': dict}``.
    """
    from ride_jax.data.loader import data_mesh
    from ride_jax.data import make_loader

    pr = predictor or load_predictor(workdir, dataset=dataset, which=which)
    config, ds = ml_collections.ConfigDict(pr.config), pr.dataset
    mesh = data_mesh(jax.devices()[:1])
    loader = make_loader(ds, config.data.batch_size,
                         eval_batch_size=batch_size or config.data.eval_batch_size, mesh=mesh,
                         augment="none", dtype=pr.dtype)
    parts = []
    for batch in loader.eval_batches():
        logits, expert, used = pr.apply(pr.variables, batch["image"])
        keep = np.asarray(batch["mask"])
        parts.append((np.asarray(logits, np.float32)[keep],
                      np.asarray(expert, np.float32)[:, keep],
                      np.asarray(batch["label"])[keep], np.asarray(used)[keep]))
    logits, expert, labels, used = zip(*parts)
    return {"logits": np.concatenate(logits), "expert_logits": np.concatenate(expert, axis=1),
            "labels": np.concatenate(labels).astype(np.int64),
            "num_experts": np.concatenate(used).astype(np.int64), "routed": pr.routed,
            "train_counts": np.asarray(ds.train_counts), "class_names": ds.class_names,
            "config": pr.config}


def _last_evaluation(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The newest ``eval/epoch_NNNN.json`` of a run (None without one)."""
    eval_dir = os.path.join(os.fspath(workdir), "eval")
    if not os.path.isdir(eval_dir):
        return None
    epochs = []
    for name in os.listdir(eval_dir):
        stem, ext = os.path.splitext(name)
        if ext == ".json" and stem.startswith("epoch_") and stem[6:].isdigit():
            epochs.append((int(stem[6:]), name))
    if not epochs:
        return None
    with open(os.path.join(eval_dir, max(epochs)[1])) as f:
        return json.load(f)


def analyze_run(workdir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                dataset: Any = None, predictions: dict | None = None) -> dict[str, Any]:
    """Figures and a JSON summary of a finished run, in ``out_dir`` (``<workdir>/analysis``).

    Writes ``accuracy_vs_count.png``, ``hardest_negatives.png``, ``confusion.png`` (for
    at most :data:`CONFUSION_MAX_CLASSES` classes), ``expert_usage.png`` (runs with a
    router), ``reliability.png`` (the reliability diagram of the run's last evaluation,
    from the per-bin calibration counts stored in its ``eval/epoch_NNNN.json``, when
    present) and ``analysis.json`` (per-class accuracy and training counts, accuracy,
    ECE and mean hardest-negative score per shot group, experts used per class).

    ``'ece'`` is the top-label ECE (a fraction; :func:`ride_jax.metrics.group_ece`, 15
    bins) of the softmax of the predictions, overall (``'all'``) and per shot group (None
    for an empty group); ``'last_evaluation'`` (when the run has one) gives the epoch
    and ECE that the trainer's last evaluation reported.

    Args:
      predictions: :func:`predict_run`'s output, if already computed.

    Returns:
      The summary written to ``analysis.json`` plus ``'files'`` (the paths written).
    """
    p = predict_run(workdir, dataset=dataset) if predictions is None else predictions
    out_dir = os.fspath(out_dir or os.path.join(os.fspath(workdir), "analysis"))
    os.makedirs(out_dir, exist_ok=True)
    labels, counts = p["labels"], np.asarray(p["train_counts"])
    num_classes = len(counts)
    preds = p["logits"].argmax(-1)
    acc = core.per_class_accuracy(preds, labels, num_classes)
    hardest = core.hardest_negative_scores(core.softmax(p["logits"]), labels)
    files = [plots.plot_accuracy_vs_count(acc, counts, os.path.join(out_dir,
                                                                    "accuracy_vs_count.png"))]
    files.append(plots.plot_hardest_negative_histograms(
        core.histograms_by_group(hardest, labels, counts),
        os.path.join(out_dir, "hardest_negatives.png")))
    if num_classes <= CONFUSION_MAX_CLASSES:
        files.append(plots.plot_confusion_matrix(
            core.confusion_matrix(preds, labels, num_classes),
            os.path.join(out_dir, "confusion.png"), class_names=p.get("class_names")))
    num_experts = p["expert_logits"].shape[0]
    usage = np.zeros((num_experts, num_classes), np.int64)
    np.add.at(usage, (p["num_experts"] - 1, labels), 1)
    if p["routed"]:
        files.append(plots.plot_expert_usage(usage, counts,
                                             os.path.join(out_dir, "expert_usage.png")))

    ece = metrics.group_ece(core.softmax(p["logits"]).astype(np.float32), labels, counts,
                            num_bins=evaluation.CALIBRATION_BINS)
    last_eval = _last_evaluation(workdir)
    if last_eval is not None and last_eval.get("calibration") is not None and sum(
            last_eval["calibration"]["count"]) > 0:
        files.append(metrics.reliability_diagram(
            {k: np.asarray(v, np.float64) for k, v in last_eval["calibration"].items()},
            os.path.join(out_dir, "reliability.png"),
            title=f"epoch {last_eval.get('epoch')}"))

    def clean(x):
        return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)

    summary = {
        "workdir": os.path.abspath(os.fspath(workdir)),
        "accuracy": float(np.mean(preds == labels)),
        "groups": {g: clean(v) for g, v in core.group_means(acc, counts).items()},
        "hardest_negative_mean": {
            g: clean(v) for g, v in
            core.group_means(core.per_class_means(hardest, labels, num_classes),
                             counts).items()},
        "per_class": {"train_count": counts.tolist(),
                      "accuracy": [clean(a) for a in acc],
                      "experts_used": usage.T.tolist()},
        "mean_experts": float(np.mean(p["num_experts"])),
        "ece": {g: clean(v) for g, v in ece.items()},
    }
    if last_eval is not None:
        summary["last_evaluation"] = {
            "epoch": last_eval.get("epoch"),
            **{k: last_eval.get(k) for k in ("ece", "ece_many", "ece_medium", "ece_few")}}
    with open(os.path.join(out_dir, "analysis.json"), "w") as f:
        json.dump(summary, f, indent=1)
    summary["files"] = files
    return summary
